"""RL fine-tuning of a causal LM that answers probabilities (the LM counterpart of
:class:`bioreason.rl.TabularTrainer`).

One step: a batch of questions from a task table -> ``group_size`` sampled completions
per question (:func:`bioreason.rl.lm.rollout.sample_group_completions`: each prompt
encoded once, its cache shared by the group) -> answers read by a registered parser
(:data:`bioreason.lm.answer_protocol.ANSWER_PARSERS`) -> outcomes from an
:class:`~bioreason.rl.OutcomeSource` (the task table's recorded ones,
:class:`~bioreason.rl.outcomes.TableOutcomes`, or drawn live, by default
Bernoulli(p*) of the table; one per question shared by its group, as in Bereket &
Leskovec 2025, or one per completion) -> rewards (a scoring rule of
:data:`~bioreason.rl.SCORING_RULES`; invalid answers get ``invalid_reward``) ->
advantages (any estimator of :data:`~bioreason.rl.ADVANTAGES`, named by
``config.method``; per token with a critic, :mod:`bioreason.rl.lm.values`) -> a
registered policy loss over the completion tokens (:func:`bioreason.rl.losses.policy_loss`:
importance ratio and clipping, KL to the frozen initial policy, entropy bonus, token or
sequence aggregation) -> an AdamW step. The trainer never branches on the method: what
an estimator needs (values, answers, log-probabilities) is read from its registry
metadata.

**Speed.** With one update per rollout (on-policy), no gradient accumulation and no
gradient checkpointing, the sampling pass keeps its autograd graph and the loss is
back-propagated through it: a step is one sampling pass plus one backward pass, with no
training forward and no separate pass for the behaviour log-probabilities
(``fused_rollout``). Otherwise the sampling pass runs without gradients and records the
behaviour log-probabilities, and each update runs one teacher-forced training forward
(prompts encoded once per question, their cache repeated over the group).

**Predictions and evaluation** (:meth:`LMTrainer.predict`, :meth:`LMTrainer.evaluate`):
``q_sampled`` and ``q_exact`` per question, scored by
:func:`bioreason.rl.lm.evaluation.evaluation_row`.

The loop, checkpoints, CSV log and resume are :func:`bioreason.rl.loop.run_training_loop`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from bioreason._device import resolve_device
from bioreason._io import json_safe
from bioreason.lm.answer_protocol import (
    ANSWER_PARSERS,
    pad_token_id,
    single_token_answer_ids,
    stop_token_sequences,
)
from bioreason.rl.advantages import get_advantage
from bioreason.rl.lm import distributed as lm_distributed
from bioreason.rl.lm.callbacks import check_callbacks, fire
from bioreason.rl.lm.config import LMRLConfig, coefficients_at, length_dependent_settings
from bioreason.rl.lm.evaluation import _PredictionMixin
from bioreason.rl.lm.rollout import (
    PromptBatch,
    left_pad,
    sample_group_completions,
    teacher_forced,
)
from bioreason.rl.lm.task_checks import check_task_table, split_rows
from bioreason.rl.lm.update import Rollout, _UpdateMixin
from bioreason.rl.lm.values import build_critic, token_advantages
from bioreason.rl.loop import run_training_loop
from bioreason.rl.outcomes import BernoulliOutcomes, OutcomeSource, TableOutcomes
from bioreason.rl.rewards import SCORING_RULES, score_answers
from bioreason.stage import describe_differences, digest

__all__ = ["LMTrainer"]


_DIAGNOSTICS = (
    "reward_mean",
    "reward_std",
    "zero_std_fraction",
    "invalid_rate",
    "completion_length",
    "entropy",
    "kl",
    "kl_behaviour",
    "clip_fraction",
    "value_loss",
    "grad_norm",
    "kl_coef",
    "entropy_coef",
    "lr",
    "step_time",
)


class LMTrainer(_UpdateMixin, _PredictionMixin):
    """Train a causal LM to answer the probabilities of a task table's questions.

    Parameters
    ----------
    model : transformers causal LM
        Moved to ``config.device``; its trainable parameters are optimised in place.
    tokenizer : transformers tokenizer
        Encodes the prompts and decodes completions.
    task : pandas.DataFrame
        A task table (:mod:`bioreason.data.tasks`): ``question_id`` and ``prompt``;
        ``split`` selects train / eval rows; ``outcome`` (and ``further_outcomes``) for
        ``outcomes="table"``; ``p_star`` and ``p_true`` (optional) are carried into
        predictions and evaluation.
    config : LMRLConfig
    outcome_source : OutcomeSource, optional
        For ``outcomes="live"``: ``sample(row_positions, n, seed)`` -> 0/1 outcomes of
        shape (len(row_positions), n).
    format_prompt : callable, optional
        ``question text -> the text the model reads`` (a chat template, say); default
        the prompt as it is.
    answer_token_ids : sequence of int, optional
        Token id of each grid answer after ``answer_prefix``; found from the tokenizer
        when not given (None when the answers are several tokens: no ``q_exact``).
    callbacks : callback or sequence of callbacks, optional
        Objects with any of the methods of :class:`bioreason.rl.lm.TrainerCallback`
        (``on_step``, ``on_log``, ``on_evaluate``, ``on_save``, ...), called in order;
        one may stop training cleanly (``trainer.should_stop = True``). More with
        :meth:`add_callback`.
    output_dir : str or Path, optional
        A folder that collects what :meth:`train` writes when it is given no paths:
        ``checkpoint.pt``, ``log.csv``, ``eval.csv``, ``predictions.parquet``, ``tb/``
        (TensorBoard); and :meth:`save_model`'s default ``model/`` (TRL's
        ``output_dir``).

    Raises
    ------
    ValueError
        The task table is unusable (:func:`bioreason.rl.lm.task_checks.check_task_table`:
        missing or empty prompts, repeated question ids, text outcomes, ...), or
        ``train_split`` / ``eval_split`` names a split without rows (naming the
        table's splits), or ``eval_split`` is set and the table has no ``split`` column.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        task: pd.DataFrame,
        config: LMRLConfig,
        *,
        outcome_source: OutcomeSource | None = None,
        format_prompt: Callable[[str], str] | None = None,
        answer_token_ids: Sequence[int] | None = None,
        callbacks: Any = None,
        output_dir: str | Path | None = None,
    ) -> None:
        if not isinstance(config, LMRLConfig):
            raise TypeError(f"config must be an LMRLConfig, got {type(config).__name__}")
        self.config = config
        #: the callbacks, called in order (:mod:`bioreason.rl.lm.callbacks`)
        self.callbacks: list[Any] = check_callbacks(callbacks)
        #: set True (by a callback) to stop training after the current step
        self.should_stop = False
        #: the folder :meth:`train` and :meth:`save_model` write into by default
        self.output_dir: Path | None = None if output_dir is None else Path(output_dir)
        self._log_rows: list[dict[str, Any]] = []
        device = resolve_device(config.device)
        self.processes = lm_distributed.current_process_group(device)
        self.device = lm_distributed.process_device(device, self.processes)
        self.model = model.to(self.device)
        lm_distributed.broadcast_module(self.model, self.processes)
        self._shard = lm_distributed.shard_bounds(config.questions_per_step, self.processes)
        self._batch_questions: Tensor | None = None
        self._shard_weights = (1.0, 1.0)
        self.tokenizer = tokenizer
        self.grid = config.grid
        self._grid_probs = self.grid.probabilities(torch.float64)
        bf16 = config.mixed_precision == "bf16" or (
            config.mixed_precision == "auto" and self.device.type == "cuda"
        )
        self._precision = torch.bfloat16 if bf16 else None
        self._table = self._check_task(task)
        self._format = format_prompt or (lambda text: text)
        self._pad_id = pad_token_id(tokenizer)
        texts = [self._format(str(text)) for text in self._table["prompt"]]
        if config.open_answer:  # each prompt ends where the answer token comes
            texts = [_open(text, config.answer_prefix) for text in texts]
        special = config.add_special_tokens
        if special is None:
            special = not getattr(tokenizer, "chat_template", None)
        self._prompt_ids: list[list[int]] = tokenizer(texts, add_special_tokens=special)[
            "input_ids"
        ]
        prefix = config.answer_prefix
        self._prefix_ids = tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
        # a completion after an open prompt starts after the prefix: read it with it put back
        self._completion_prefix = prefix if config.open_answer else ""
        if config.open_answer:
            self._prefix_ids = []  # q_exact is read right after the (open) prompt
        if answer_token_ids is None:
            answer_token_ids = single_token_answer_ids(tokenizer, self.grid, prefix)
        if answer_token_ids is not None and len(answer_token_ids) != self.grid.size:
            raise ValueError(
                f"answer_token_ids has {len(answer_token_ids)} ids for a grid of {self.grid.size}"
            )
        self.answer_token_ids = (
            None
            if answer_token_ids is None
            else torch.as_tensor(list(answer_token_ids), dtype=torch.long, device=self.device)
        )
        self._stop_ids, self._stop_sequences = stop_token_sequences(
            tokenizer, list(config.stop_strings)
        )
        self._check_lengths()
        split = self._table["split"].astype(str).to_numpy() if "split" in self._table else None
        n_rows = len(self._table)
        self.train_rows = split_rows(
            split, config.train_split, n_rows, "train_split", held_out=False
        )
        if config.outcomes == "live" and outcome_source is None:
            outcome_source = BernoulliOutcomes.from_task(self._table, self.train_rows)
        self.eval_rows = split_rows(split, config.eval_split, n_rows, "eval_split", held_out=True)
        if config.eval_every and len(self.eval_rows) == 0:
            raise ValueError(
                f"eval_every={config.eval_every} but eval_split=None: there is no held-out "
                "split to evaluate on; name one (e.g. eval_split='test') or set eval_every=0"
            )
        if config.outcomes == "table":
            outcome_source = TableOutcomes.from_task(
                self._table, self._outcomes_per_question, self.train_rows
            )
        self.outcome_source: OutcomeSource = outcome_source

        options = dict(config.advantage_options)
        estimator = get_advantage(config.method, **options)
        if "reward_range" in estimator.accepted_options and "reward_range" not in options:
            # estimators defined for bounded rewards learn the reward's range on the grid
            score = SCORING_RULES[config.reward]
            grid = self._grid_probs
            grid_rewards = torch.cat(
                [score(grid, torch.zeros_like(grid)), score(grid, torch.ones_like(grid))]
            )
            low = min(float(grid_rewards.min()), config.invalid_reward)
            high = max(float(grid_rewards.max()), config.invalid_reward)
            options["reward_range"] = (low, high)
            estimator = get_advantage(config.method, **options)
        self.estimator = lm_distributed.batch_estimator(estimator, self.processes)

        #: PPO's critic (``config.critic``, :data:`bioreason.rl.lm.values.CRITICS`), for
        #: estimators that need values; None otherwise
        self.critic: torch.nn.Module | None = None
        self._critic_parameters: list[torch.nn.Parameter] = []
        if estimator.requires_values:
            self.critic = build_critic(config.critic, self.model)
            lm_distributed.broadcast_module(self.critic, self.processes)
            self._critic_parameters = [p for p in self.critic.parameters() if p.requires_grad]
        self.reference: torch.nn.Module | None = None
        self._reference_digest = ""
        if config.kl_coef > 0 or (config.kl_coef_end or 0.0) > 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
            self._reference_digest = _weights_digest(self.reference)
        if config.gradient_checkpointing:
            _enable_checkpointing(model)
        self.model.eval()
        if config.trainable == "embeddings":
            _train_embeddings_only(model)
        self._policy_parameters = [p for p in model.parameters() if p.requires_grad]
        if not self._policy_parameters:
            raise ValueError("the model has no trainable parameters (requires_grad)")
        groups: list[dict[str, Any]] = [{"params": self._policy_parameters}]
        if self.critic is not None:
            groups.append({"params": self._critic_parameters, "lr": config.value_lr or config.lr})
        self.optimizer = _adamw(groups, config)
        self.optimizer.zero_grad(set_to_none=True)  # nothing left from earlier training
        self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self._coefficients = coefficients_at(config, 0)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.sample_generator = torch.Generator(device=self.device).manual_seed(config.seed + 7919)
        self._order = torch.randperm(len(self.train_rows), generator=self.generator)
        self._cursor = 0
        self.step = 0
        self.eval_rows_log: list[dict[str, Any]] = []
        self._rollout: Rollout | None = None
        self._last: dict[str, float] = dict.fromkeys(_DIAGNOSTICS, math.nan)
        self._eval_log_path: Path | None = None
        self._predictions_path: Path | None = None
        self._predictions: list[pd.DataFrame] = []
        self.data_fingerprint = {
            "n_questions": len(self._table),
            "question_ids": digest(np.asarray(self._table["question_id"].astype(str), object)),
            "prompts": digest(np.asarray(texts, object)),
            "outcomes": digest(outcome_source.outcomes)
            if isinstance(outcome_source, TableOutcomes)
            else "live",
            "answer_token_ids": None
            if self.answer_token_ids is None
            else self.answer_token_ids.tolist(),
        }

    @classmethod
    def from_predictor(
        cls, predictor: Any, task: pd.DataFrame, config: LMRLConfig, **options: Any
    ) -> LMTrainer:
        """A trainer for a :class:`bioreason.lm.Predictor` (its model, tokenizer, prompt
        format and answer token ids). ``options`` go to the constructor."""
        grid = getattr(predictor, "grid", None)
        if grid is not None and grid != config.grid:
            raise ValueError(
                f"the predictor's answer grid {grid} differs from config.answer_grid "
                f"{config.answer_grid}; set answer_grid=({grid.low}, {grid.high}, {grid.scale})"
            )
        options.setdefault("format_prompt", lambda text: predictor.format_prompt(text))
        if config.answer_prefix == "<answer>":
            options.setdefault("answer_token_ids", getattr(predictor, "answer_token_ids", None))
        return cls(predictor.model, predictor.tokenizer, task, config, **options)

    # ----- inputs ----------------------------------------------------------------

    def _check_task(self, task: pd.DataFrame) -> pd.DataFrame:
        return check_task_table(task)

    @property
    def _outcomes_per_question(self) -> int:
        """Outcomes drawn per question: 1 shared by its group, or one per completion."""
        return 1 if self.config.outcome_sharing == "group" else self.config.group_size

    def _check_lengths(self) -> None:
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        longest = max(len(ids) for ids in self._prompt_ids)
        need = longest + max(self.config.max_new_tokens, len(self._prefix_ids) + 1)
        if isinstance(limit, int) and need > limit:
            raise ValueError(
                f"the longest prompt ({longest} tokens) plus max_new_tokens="
                f"{self.config.max_new_tokens} exceeds the model's max_position_embeddings="
                f"{limit}; shorten the prompts or max_new_tokens"
            )

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._precision is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._precision)

    @contextlib.contextmanager
    def _training_mode(self):
        """Train mode only where needed: HF applies gradient checkpointing in train mode
        only; otherwise the policy stays in eval mode (no dropout), so that the sampling
        pass and the training forward compute the same function."""
        if self.config.gradient_checkpointing:
            self.model.train()
        try:
            yield
        finally:
            self.model.eval()

    def _prompts(self, rows: Sequence[int], with_prefix: bool = False) -> PromptBatch:
        extra = self._prefix_ids if with_prefix else []
        return left_pad([self._prompt_ids[int(r)] + extra for r in rows], self._pad_id, self.device)

    def _next_questions(self) -> Tensor:
        """Row positions of this process's share of the next ``questions_per_step``
        training questions (epochs of a random order, the same on every process); the
        whole batch is kept in ``_batch_questions``."""
        need = self.config.questions_per_step
        chosen = []
        while need:
            if self._cursor >= len(self._order):
                self._order = torch.randperm(len(self.train_rows), generator=self.generator)
                self._cursor = 0
            take = self._order[self._cursor : self._cursor + need]
            chosen.append(take)
            self._cursor += len(take)
            need -= len(take)
        self._batch_questions = torch.as_tensor(self.train_rows)[torch.cat(chosen)]
        start, stop = self._shard
        return self._batch_questions[start:stop]

    def _outcomes(self, questions: Tensor) -> Tensor:
        """0/1 outcomes of shape (n_questions, group_size), float64 (CPU), from the
        outcome source: drawn for the whole batch and sliced, so that a question's
        outcomes do not depend on how many processes share the batch. Live outcomes get
        a new seed from the trainer's generator at every rollout (recorded ones need
        none, and the generator's stream is left as it is)."""
        config = self.config
        width = self._outcomes_per_question
        seed = (
            int(torch.randint(2**31 - 1, (1,), generator=self.generator))
            if (config.outcomes == "live")
            else 0
        )
        everyone = self._batch_questions if self.processes.distributed else questions
        drawn = torch.as_tensor(self.outcome_source.sample(everyone, width, seed))
        if tuple(drawn.shape) != (len(everyone), width):
            raise ValueError(
                f"outcome_source.sample returned shape {tuple(drawn.shape)}, expected "
                f"({len(everyone)}, {width})"
            )
        if self.processes.distributed:
            drawn = drawn[self._shard[0] : self._shard[1]]
        return drawn.to(torch.float64).expand(len(questions), config.group_size)

    def _decode(self, tokens: Tensor, mask: Tensor) -> list[str]:
        lengths = mask.sum(1).tolist()
        rows = [row[:n] for row, n in zip(tokens.tolist(), lengths)]
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=False)
        return [self._completion_prefix + text for text in texts]

    # ----- one step ----------------------------------------------------------------

    @property
    def fused(self) -> bool:
        """Whether steps back-propagate through the sampling pass (module docstring)."""
        config = self.config
        return (
            config.fused_rollout
            and config.updates_per_rollout == 1
            and config.grad_accumulation == 1
            and not config.gradient_checkpointing
        )

    def _sample(self, prompts: list[str], n: int, generator: torch.Generator, **options: Any):
        """``n`` completions per prompt with the config's sampling settings
        (:func:`sample_group_completions`; ``options``: its gradient/hidden switches).
        ``generator`` may be a list, one per question (each sampled on its own)."""
        config = self.config
        if isinstance(generator, (list, tuple)):  # one generator per question
            return lm_distributed.sample_each_question(
                self._sample, prompts, n, generator, pad_id=self._pad_id, **options
            )
        return sample_group_completions(
            self.model,
            prompts,
            n,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            stop_ids=self._stop_ids,
            stop_sequences=self._stop_sequences,
            pad_id=self._pad_id,
            generator=generator,
            autocast=self._autocast(),
            fast=self.config.fast_forward,
            compile=self.config.torch_compile,
            **options,
        )

    def _new_rollout(self) -> Rollout:
        config = self.config
        group = config.group_size
        questions = self._next_questions()
        prompts = self._prompts(questions.tolist())
        fused = self.fused
        sample = self._sample(
            prompts,
            group,
            self._rollout_generator(),
            with_grad=fused,
            entropy_grad=bool(config.entropy_coef or config.entropy_coef_end),
            hidden=self._reads_policy_hidden,
        )
        n_questions = len(questions)
        parsed = ANSWER_PARSERS[config.answer_format](
            self._decode(sample.tokens, sample.mask), self.grid
        )
        answers = parsed.probabilities.view(n_questions, group)
        outcomes = self._outcomes(questions)
        rewards, _ = score_answers(
            parsed.probabilities,
            outcomes.reshape(-1),
            rule=config.reward,
            floor=config.invalid_reward,
        )
        rewards = rewards.view(n_questions, group)
        mask = sample.mask
        old_log_probs = sample.log_probs.detach()
        kwargs: dict[str, Tensor] = {}
        if self.estimator.requires_answers:
            # an invalid answer joins the middle of the grid (estimators need probabilities)
            kwargs["answers"] = torch.nan_to_num(answers, nan=0.5)
        if self.estimator.requires_log_probs:
            kwargs["log_probs"] = old_log_probs.sum(1).double().cpu().view(n_questions, group)
        returns = value_graph = None
        if self.critic is not None:
            # with gradients when the step is fused: its one update reuses them
            with torch.set_grad_enabled(fused):
                value_graph = self._values(prompts, sample)
            advantages, returns = token_advantages(
                self.estimator,
                rewards,
                value_graph.detach(),
                mask,
                kwargs,
                gamma=config.gae_gamma,
                lam=config.gae_lambda,
            )
        else:
            advantages = self.estimator(rewards, **kwargs).reshape(-1, 1)
        advantages = advantages.to(self.device, torch.float32)
        ref_log_probs = None
        if self.reference is not None:
            with torch.no_grad():
                ref_log_probs = teacher_forced(
                    self.reference,
                    prompts,
                    sample.tokens,
                    mask,
                    temperature=config.temperature,
                    autocast=self._autocast(),
                    fast=self.config.fast_forward,
                ).log_probs
        return Rollout(
            questions=questions,
            prompts=prompts,
            tokens=sample.tokens,
            mask=mask,
            old_log_probs=old_log_probs,
            advantages=advantages,
            rewards=rewards,
            answers=answers,
            outcomes=outcomes,
            entropy=sample.entropy.detach(),
            returns=returns,
            ref_log_probs=ref_log_probs,
            graph=sample if fused else None,
            value_graph=value_graph if fused else None,
        )

    def train_step(self) -> None:
        """One optimizer step (a new rollout first when the previous one is used up);
        evaluates afterwards every ``eval_every`` steps."""
        config = self.config
        start = time.perf_counter()
        first_update = self.step % config.updates_per_rollout == 0
        if first_update or self._rollout is None:
            self._rollout = self._new_rollout()
            self._shard_weights = lm_distributed.shard_loss_weights(
                self._rollout.mask,
                config.max_new_tokens,
                config.aggregation,
                self._constant(),
                self.processes,
            )
        rollout = self._rollout
        self._coefficients = coefficients_at(config, self.step)
        if config.lr_warmup_steps or (
            config.lr_end is not None and config.lr_schedule != "constant"
        ):
            for group, base in zip(self.optimizer.param_groups, self._base_lrs):
                group["lr"] = base * self._coefficients["lr"] / config.lr
        stats = self._update(rollout, first_update)
        rollout.graph = None  # the sampling graph serves the first update only
        self.step += 1
        self._last = {
            **self._step_figures(rollout, stats),
            **self._coefficients,
            "step_time": time.perf_counter() - start,
        }
        if config.eval_every and self.step % config.eval_every == 0 and self.processes.is_main:
            self.evaluate()

    def _rollout_generator(self) -> torch.Generator | list[torch.Generator]:
        """The sampling noise of a new rollout (``config.sampling_noise``): the trainer's
        generator alone, one per process and step under several processes, or one per
        question of this process's share."""
        config = self.config
        if config.sampling_noise == "question":
            positions = range(*self._shard)
            return lm_distributed.question_generators(
                config.seed, self.step, positions, self.device
            )
        if self.processes.distributed:  # a per-process generator would not survive resume
            (generator,) = lm_distributed.question_generators(
                config.seed, self.step, [2**32 + self.processes.rank], self.device
            )
            return generator
        return self.sample_generator

    def _step_figures(self, rollout: Rollout, stats: dict[str, float]) -> dict[str, float]:
        """Diagnostics of a step over the whole batch (every process's questions);
        ``stats`` of :meth:`_update` are averaged over processes, ``value_loss`` summed
        (each process holds its share)."""
        group = self.processes
        rewards = lm_distributed.all_gather_rows(rollout.rewards, group)
        answers = lm_distributed.all_gather_rows(rollout.answers, group)
        mask = rollout.mask
        sums = torch.tensor(
            [
                float(mask.sum()),
                float((rollout.entropy * mask).sum()),
                float(mask.shape[0]),
                *stats.values(),
            ],
            dtype=torch.float64,
        )
        sums = lm_distributed.all_reduce_sum(sums, group).tolist()
        tokens, entropy, rows = sums[:3]
        figures = dict(zip(stats, (value / group.world_size for value in sums[3:])))
        if "value_loss" in figures:
            figures["value_loss"] *= group.world_size
        figures["grad_norm"] = stats.get("grad_norm", math.nan)  # the same everywhere
        return {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
            "zero_std_fraction": float((rewards.amax(1) == rewards.amin(1)).double().mean()),
            "invalid_rate": float(torch.isnan(answers).double().mean()),
            "completion_length": tokens / rows,
            "entropy": entropy / tokens,
            **figures,
        }

    # ----- loop, logging, checkpoints ---------------------------------------------------

    def diagnostics(self) -> dict[str, float]:
        """Figures of the last step for the training log (NaN before the first step):
        ``step``, ``reward_mean``, ``reward_std``, ``zero_std_fraction`` (groups whose
        rewards are all equal), ``invalid_rate``, ``completion_length`` (tokens),
        ``entropy`` (per token, sampling pass), ``kl`` (to the reference; NaN without
        one), ``kl_behaviour`` (k3 of the updated-from policy vs the sampling one),
        ``clip_fraction``, ``value_loss`` (NaN without a critic), ``grad_norm`` (of
        the policy's parameters, before clipping; with a shared critic, of the policy and
        value head together), ``step_time`` (seconds)."""
        return {"step": self.step, **{k: self._last.get(k, math.nan) for k in _DIAGNOSTICS}}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: weights, optimizer, random states, the
        question order, the evaluations so far, the config and the data fingerprint."""
        return {
            "step": self.step,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "critic": None
            if self.critic is None
            else {k: v.detach().cpu().clone() for k, v in self.critic.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "sample_generator": self.sample_generator.get_state().cpu(),
            "order": self._order.clone(),
            "cursor": self._cursor,
            "eval_rows": [dict(row) for row in self.eval_rows_log],
            "config": self.config.to_dict(),
            "data": dict(self.data_fingerprint),
            "reference": self._reference_digest,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; one of another config, other questions or
        another reference policy raises a ``ValueError`` naming what differs."""
        saved, config = json_safe(state.get("config") or {}), json_safe(self.config.to_dict())
        if saved != config and {**saved, "steps": config["steps"]} == config:
            # only the run's length differs: continue it to the new length when no
            # schedule follows the length and the checkpoint lies before it
            fixed = length_dependent_settings(self.config)
            if fixed:
                raise ValueError(
                    f"checkpoint was written for a run of {saved.get('steps')} steps, and "
                    f"{', '.join(fixed)} follows the run's length, so the run cannot be "
                    f"continued to {config['steps']} steps; start a new run"
                )
            if int(state["step"]) > self.config.steps:
                raise ValueError(
                    f"checkpoint is at step {int(state['step'])}, past steps="
                    f"{self.config.steps}; start a new run"
                )
        elif saved != config:
            raise ValueError(
                "checkpoint was written with a different config "
                f"({'; '.join(describe_differences(saved, config))}); start a new run"
            )
        if state.get("data") != self.data_fingerprint:
            differences = describe_differences(state.get("data") or {}, self.data_fingerprint)
            raise ValueError(
                f"checkpoint was written for other questions ({'; '.join(differences)}); "
                "start a new run"
            )
        if state.get("reference", "") != self._reference_digest:
            raise ValueError(
                "checkpoint was written with another initial (reference) policy: the KL "
                "penalty is to the weights the run started from; build the trainer from the "
                "same initial model to resume"
            )
        self.model.load_state_dict(state["model"])
        if self.critic is not None:
            self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.sample_generator.set_state(state["sample_generator"])
        self._order = state["order"].clone()
        self._cursor = int(state["cursor"])
        self.eval_rows_log = [dict(row) for row in state.get("eval_rows", [])]
        self.step = int(state["step"])
        self._resume_predictions()
        self._rollout = None
        self._last = dict.fromkeys(_DIAGNOSTICS, math.nan)

    # ----- TRL habits: callbacks, history, saving ------------------------------------

    def add_callback(self, callback: Any) -> None:
        """Append a callback (an instance with any of the methods of
        :class:`bioreason.rl.lm.TrainerCallback`), called after those already given."""
        self.callbacks.extend(check_callbacks([callback]))

    @property
    def log_history(self) -> pd.DataFrame:
        """The training log and every evaluation so far, one row each, in step order (a
        training row before the evaluation of the same step): TRL's
        ``trainer.state.log_history`` as a DataFrame.

        Columns: ``step``, ``kind`` (``"train"`` or ``"eval"``), the training log's
        figures (:meth:`diagnostics` and ``extra_log``; NaN on evaluation rows) and the
        evaluations' figures prefixed ``eval_`` (``eval_ece``, ``eval_invalid_rate``,
        ...; NaN on training rows). A resumed run's history starts with the rows of
        its checkpoint.
        """
        rows = [{"step": row["step"], "kind": "train", **row} for row in self._log_rows]
        rows += [
            {
                "step": row["step"],
                "kind": "eval",
                **{f"eval_{k}": v for k, v in row.items() if k != "step"},
            }
            for row in self.eval_rows_log
        ]
        if not rows:
            return pd.DataFrame(columns=["step", "kind"])
        frame = pd.DataFrame(rows)
        order = np.lexsort((frame["kind"].eq("eval").to_numpy(), frame["step"].to_numpy()))
        return frame.iloc[order].reset_index(drop=True)

    def save_model(self, path: str | Path | None = None, *, overwrite: bool = False) -> Path:
        """Write the policy as a model folder: weights (``model.safetensors``) and config
        by ``save_pretrained``, the tokenizer, and the answer grid, so that
        :func:`bioreason.lm.load_predictor` (and transformers' ``from_pretrained``)
        reads it back. TRL's ``trainer.save_model``; :meth:`save_pretrained` is the same.

        Parameters
        ----------
        path : str or Path, optional
            The folder (default ``output_dir/model``).
        overwrite : bool, default False
            Replace an existing, non-empty folder (``output_dir/model`` is always
            replaced).

        Returns
        -------
        Path
            The folder.
        """
        from bioreason.lm import Predictor

        if path is None:
            if self.output_dir is None:
                raise ValueError(
                    "save_model() has no folder: pass save_model(path), or give the trainer an "
                    "output_dir (LMTrainer(..., output_dir=...) or train(output_dir=...))"
                )
            path, overwrite = self.output_dir / "model", True
        predictor = Predictor(
            self.model,
            self.tokenizer,
            grid=self.grid,
            answer_token_ids=None
            if self.answer_token_ids is None
            else self.answer_token_ids.tolist(),
        )
        folder = predictor.save(path, overwrite=overwrite)
        for callback in self.callbacks:
            if callable(getattr(callback, "on_save", None)):
                callback.on_save(self, folder)
        return folder

    def save_pretrained(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """:meth:`save_model` under transformers' name."""
        return self.save_model(path, overwrite=overwrite)

    def _fire(self, event: str, *args: Any) -> None:
        fire(self.callbacks, event, self, *args)

    def train(
        self,
        *,
        checkpoint_path: Path | None = None,
        log_path: Path | None = None,
        eval_log_path: Path | None = None,
        predictions_path: Path | None = None,
        extra_log: Callable[[LMTrainer], dict[str, float]] | None = None,
        progress: bool | None = None,
        description: str | None = None,
        resume: bool | str = "auto",
        output_dir: str | Path | None = None,
    ) -> dict[str, float]:
        """Run until ``config.steps``, resuming from ``checkpoint_path``.

        Writes a CSV row every ``log_every`` steps to ``log_path`` (:meth:`diagnostics`)
        and a checkpoint every ``checkpoint_every`` steps, atomically (see
        :func:`bioreason.rl.loop.run_training_loop` for ``resume``). Every evaluation
        rewrites ``eval_log_path`` (CSV, one row per evaluation) and
        ``predictions_path`` (parquet, the predictions of every evaluation; a resumed
        run keeps the rows up to its checkpoint's step). TensorBoard scalars go to
        ``tb/`` beside ``log_path`` (``config.tensorboard``). Under several processes
        (:mod:`bioreason.rl.lm.distributed`) every process reads the checkpoint, and
        only the main one writes files, shows progress and evaluates.

        The callbacks are called at every event (:mod:`bioreason.rl.lm.callbacks`); one
        that sets ``trainer.should_stop`` ends training after that step (logged and
        checkpointed: a later call continues). Every log row and evaluation is also kept
        in :attr:`log_history`.

        Parameters
        ----------
        output_dir : str or Path, optional
            The folder of every file not given a path: ``checkpoint.pt``, ``log.csv``,
            ``eval.csv``, ``predictions.parquet`` and ``tb/`` (default: the trainer's
            ``output_dir``; none: nothing is written but what the paths name).
        progress : bool or None, default None
            Show a tqdm progress bar with the mean reward; None shows it when standard
            error is a terminal.

        Returns
        -------
        dict
            ``seconds``, ``steps_run`` and ``steps_per_second`` of this call, and
            ``stopped_early`` (a callback stopped it before ``config.steps``).
        """
        import sys

        from bioreason.run_layout import (
            CHECKPOINT_FILE,
            EVAL_LOG_FILE,
            LOG_FILE,
            PREDICTIONS_FILE,
        )

        if output_dir is not None:
            self.output_dir = Path(output_dir)
        folder = self.output_dir
        if folder is not None:
            if folder.exists() and not folder.is_dir():
                raise NotADirectoryError(f"output_dir {folder} is a file, not a folder")
            if self.processes.is_main:
                folder.mkdir(parents=True, exist_ok=True)
            checkpoint_path = checkpoint_path or folder / CHECKPOINT_FILE
            log_path = log_path or folder / LOG_FILE
            eval_log_path = eval_log_path or folder / EVAL_LOG_FILE
            predictions_path = predictions_path or folder / PREDICTIONS_FILE
        if progress is None:
            progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
        self._eval_log_path = None if eval_log_path is None else Path(eval_log_path)
        self._predictions_path = None if predictions_path is None else Path(predictions_path)
        self._predictions = []
        self.should_stop = False
        try:
            result = run_training_loop(
                self,
                checkpoint_path=checkpoint_path,
                log_path=log_path,
                extra_log=None if extra_log is None else lambda: extra_log(self),
                progress=progress,
                description=description,
                resume=resume,
                main_process=self.processes.is_main,
                callback=self._fire,
                log_rows=self._log_rows,
            )
        finally:
            self._eval_log_path = None
            self._predictions_path = None
        return result


# ----- helpers ------------------------------------------------------------------------


def _train_embeddings_only(model: torch.nn.Module) -> None:
    """Freeze every parameter of ``model`` but its token embeddings (input and output,
    tied or not): the transformer blocks keep the representation they had."""
    embeddings = [
        module.weight
        for module in (model.get_input_embeddings(), model.get_output_embeddings())
        if module is not None and getattr(module, "weight", None) is not None
    ]
    if not embeddings:
        raise ValueError(
            "trainable='embeddings' needs a model with token embeddings "
            "(get_input_embeddings / get_output_embeddings)"
        )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for weight in embeddings:
        weight.requires_grad_(True)


def _open(text: str, prefix: str) -> str:
    """``text`` ending with the answer prefix (``"... <answer>"``), unless it does."""
    if text.rstrip().endswith(prefix):
        return text
    return (
        f"{text.rstrip()} {prefix}" if text[-1:].isalnum() or text[-1:] in ".?!" else text + prefix
    )


def _adamw(groups: list[dict[str, Any]], config: LMRLConfig) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where torch supports it (far less per-parameter
    overhead on CPU for a small model), else torch's default implementation."""
    options = {"lr": config.lr, "betas": config.betas, "weight_decay": config.weight_decay}
    try:
        return torch.optim.AdamW(groups, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, **options)


def _enable_checkpointing(model: torch.nn.Module) -> None:
    """Turn on transformers' activation (gradient) checkpointing, non-reentrant."""
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    else:
        raise ValueError(
            "gradient_checkpointing=True needs a transformers model "
            "(activation_checkpointing_enable / gradient_checkpointing_enable)"
        )


def _weights_digest(module: torch.nn.Module) -> str:
    """A fingerprint of a module's weights (parameter names and float32 values)."""
    state = module.state_dict()
    tensors = (tensor.detach().float().cpu().numpy() for tensor in state.values())
    return digest(np.asarray(list(state), dtype=object), *tensors)
