"""RL fine-tuning of a causal LM that answers probabilities (the LM counterpart of
:class:`bioreason.rl.TabularTrainer`).

One step: a batch of questions from a task table -> ``group_size`` sampled completions
per question (:func:`bioreason.rl.lm_rollout.sample_group_completions`: each prompt
encoded once, its cache shared by the group) -> answers read by a registered parser
(:data:`bioreason.rl.answer_formats.ANSWER_PARSERS`) -> outcomes (the task table's, or
drawn live from any :class:`~bioreason.rl.OutcomeSource`; one per question shared by its
group, as in Bereket & Leskovec 2025, or one per completion) -> rewards (a scoring rule
of :data:`~bioreason.rl.SCORING_RULES`; invalid answers get ``invalid_reward``) ->
advantages (any estimator of :data:`~bioreason.rl.ADVANTAGES`, named by
``config.method``) -> a registered policy loss over the completion tokens
(:func:`bioreason.rl.losses.policy_loss`: importance ratio and clipping, KL to the frozen
initial policy, entropy bonus, token or sequence aggregation) -> an AdamW step. The
trainer never branches on the method: what an estimator needs (values, answers,
log-probabilities) is read from its registry metadata.

**Values (PPO).** When the estimator asks for values, a value head (a linear layer on
the policy's final hidden state) predicts the return at every completion token; it is
trained on the rollouts toward the GAE returns (:func:`bioreason.rl.advantages.gae`, with
``gae_gamma`` and ``gae_lambda``), and the estimator receives, for each token, the
baseline that GAE implies (``R - A_t``; with the default ``gamma = lambda = 1`` that is
the value head's ``V_t``), so the registered ``ppo`` estimator ``R - V`` gives GAE's
per-token advantages.

**Speed.** With one update per rollout (on-policy), no gradient accumulation and no
gradient checkpointing, the sampling pass keeps its autograd graph and the loss is
back-propagated through it: a step is one sampling pass plus one backward pass, with no
training forward and no separate pass for the behaviour log-probabilities
(``fused_rollout``). Otherwise the sampling pass runs without gradients and records the
behaviour log-probabilities, and each update runs one teacher-forced training forward
(prompts encoded once per question, their cache repeated over the group).

**Predictions.** :meth:`LMTrainer.predict` gives each question's ``q_sampled`` (mean of
the valid sampled answers) and, when the grid's answers are single tokens,
``q_exact`` (the mean of the policy's answer distribution right after
``answer_prefix``, given a valid answer: no sampling noise).

The loop, checkpoints, CSV log and resume are :func:`bioreason.rl.loop.run_training_loop`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
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
from bioreason.calibration import REFERENCE_METRICS, summarize
from bioreason.rl import lm_distributed
from bioreason.rl.advantages import gae, get_advantage
from bioreason.rl.answer_formats import (
    ANSWER_PARSERS,
    single_token_answer_ids,
    stop_token_sequences,
)
from bioreason.rl.lm_rollout import (
    GroupRollout,
    PromptBatch,
    answer_distribution_at,
    left_pad,
    sample_group_completions,
    teacher_forced,
)
from bioreason.rl.loop import RLConfig, run_training_loop, write_csv_log
from bioreason.rl.losses import AGGREGATIONS, KL_ESTIMATORS, aggregate, kl_k3, policy_loss
from bioreason.rl.outcomes import OutcomeSource
from bioreason.rl.rewards import FLOOR_REWARD, SCORING_RULES, AnswerGrid, score_answers
from bioreason.rl.theory import predict_grpo_drift, theory_target
from bioreason.run_layout import PREDICTION_COLUMNS

__all__ = ["PREDICTION_COLUMNS", "LMRLConfig", "LMTrainer", "save_predictions"]


_OUTCOME_MODES = ("table", "live")
_SHARING = ("group", "completion")
_PRECISION = ("auto", "bf16", "no")
_SAMPLING_NOISE = ("batch", "question")
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
    "step_time",
)


@dataclasses.dataclass
class LMRLConfig(RLConfig):
    """Settings of one LM RL run: :class:`bioreason.rl.loop.RLConfig` (estimator, group
    size, steps, optimizer, reward, policy loss, ``kl_coef`` = beta, ``entropy_coef``,
    checkpoints, seed; some defaults changed for LMs) plus the following.

    Parameters
    ----------
    questions_per_step : int, default 8
        Questions per rollout; each gets ``group_size`` completions.
    max_new_tokens : int, default 8
        Longest completion.
    temperature : float, default 1.0
        Sampling temperature; log-probabilities are those of ``logits / temperature``.
    top_p : float, default 1.0
        Nucleus sampling (1 = off).
    answer_format : str, default ``"tagged"``
        A parser of :data:`bioreason.rl.answer_formats.ANSWER_PARSERS` (``"tagged"``:
        ``<answer>N</answer>``; ``"first_integer"``: the first integer word).
    answer_prefix : str, default ``"<answer>"``
        Text after which the answer token comes: ``q_exact`` is read at the position
        after prompt + prefix ("" reads it at the first completion token).
    stop_strings : list of str, default ``["</answer>"]``
        A completion stops at EOS or after one of these.
    answer_grid : (low, high, scale), default (1, 99, 100)
        The :class:`~bioreason.rl.AnswerGrid` of valid answers.
    invalid_reward : float, default log(0.01)
        Reward of an unparsable or off-grid answer.
    outcomes : {"table", "live"}, default "table"
        ``"table"``: the task table's ``outcome`` column (and ``further_outcomes`` for
        one outcome per completion), the same every time a question is drawn;
        ``"live"``: fresh outcomes at every rollout, from the ``outcome_source`` given
        to the trainer (indices are the table's row positions), by default
        Bernoulli(``p_star``) of the task table: the outcome of a new simulated
        experiment, as in the paper (each visit of a question a new draw, so the
        per-question optimum is p*, not the one recorded outcome).
    outcome_sharing : {"group", "completion"}, default "group"
        One outcome per question shared by its group (as in the paper), or one per
        completion.
    train_split, eval_split : str or None, default "train", "val"
        Rows of the table's ``split`` column to train on / evaluate on (None: all
        rows / no evaluation).
    eval_every : int, default 0
        Evaluate every this many steps (0: never during training).
    eval_samples : int, default 8
        Completions per question for ``q_sampled`` in evaluation and :meth:`predict`.
    predict_batch_questions : int, default 32
        Questions per sampling pass in evaluation and prediction.
    kl_estimator : {"k1", "k3"}, default "k3"
        Estimator of KL(pi || initial policy) per token (used when ``kl_coef > 0``).
    aggregation : str, default "token_mean"
        How per-token losses become a scalar (:data:`bioreason.rl.losses.AGGREGATIONS`).
    aggregation_constant : float or None, default None
        The constant of ``"sequence_sum"`` (None: ``max_new_tokens``).
    max_grad_norm : float or None, default 1.0
        Gradient clipping (None: none).
    grad_accumulation : int, default 1
        Micro-batches (of whole question groups) per optimizer step; the gradient equals
        the full batch's.
    gradient_checkpointing : bool, default False
        Recompute activations in the backward pass (less memory; full-sequence training
        forward).
    fused_rollout : bool, default True
        Back-propagate through the sampling pass when a step is on-policy with one
        update (see the module docstring).
    fast_forward : bool, default True
        Run a plain ``LlamaForCausalLM`` through :class:`bioreason.rl.lm_fast.FastLlama`
        (the same function with fewer operations); other models always use their own
        forward.
    torch_compile : bool, default False
        With ``fast_forward``, compile the decoder with ``torch.compile`` for the
        steps' forward and backward passes (fewer, fused kernels: 13-17 % less time per
        step on issue 11's workload on a 2-core CPU, after about a minute of compilation
        up front, seconds once inductor's disk cache holds the kernels; needs a C++
        compiler on CPU). Evaluation runs eagerly.
    device : str, default "auto"
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda[:N]"``.
    mixed_precision : {"auto", "bf16", "no"}, default "auto"
        bf16 autocast; ``"auto"`` uses it on CUDA only.
    value_lr : float or None, default None
        Learning rate of the value head (None: ``lr``).
    value_coef : float, default 0.5
        Weight of the value loss ``0.5 (V_t - return_t)^2`` (token mean).
    gae_gamma, gae_lambda : float, default 1.0
        Discount and GAE parameter over completion tokens.
    add_special_tokens : bool or None, default None
        Let the tokenizer add its special tokens (``<bos>``) to each prompt; None: yes
        unless the tokenizer has a chat template (which writes its own), as
        :func:`bioreason.lm.encode_prompts` does.
    sampling_noise : {"batch", "question"}, default "batch"
        ``"batch"``: one sampling generator for the rollout (one sampling pass; under
        several processes one per process and step); ``"question"``: one generator per
        question seeded from (seed, step, position in the batch), so a run under several
        processes samples the same completions as one process (one pass per question;
        see :mod:`bioreason.rl.lm_distributed`).
    """

    group_size: int = 8
    steps: int = 200
    lr: float = 1e-4
    clip_eps: float | None = 0.2
    checkpoint_every: int = 50
    log_every: int = 10
    questions_per_step: int = 8
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    answer_format: str = "tagged"
    answer_prefix: str = "<answer>"
    stop_strings: list[str] = dataclasses.field(default_factory=lambda: ["</answer>"])
    answer_grid: tuple[int, int, int] = (1, 99, 100)
    invalid_reward: float = FLOOR_REWARD
    outcomes: str = "table"
    outcome_sharing: str = "group"
    train_split: str | None = "train"
    eval_split: str | None = "val"
    eval_every: int = 0
    eval_samples: int = 8
    predict_batch_questions: int = 32
    kl_estimator: str = "k3"
    aggregation: str = "token_mean"
    aggregation_constant: float | None = None
    max_grad_norm: float | None = 1.0
    grad_accumulation: int = 1
    gradient_checkpointing: bool = False
    fused_rollout: bool = True
    fast_forward: bool = True
    torch_compile: bool = False
    device: str = "auto"
    mixed_precision: str = "auto"
    value_lr: float | None = None
    value_coef: float = 0.5
    gae_gamma: float = 1.0
    gae_lambda: float = 1.0
    add_special_tokens: bool | None = None
    sampling_noise: str = "batch"

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in (
            "questions_per_step",
            "max_new_tokens",
            "eval_samples",
            "predict_batch_questions",
            "grad_accumulation",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0 (0: no evaluation), got {self.eval_every}")
        if self.grad_accumulation > self.questions_per_step:
            raise ValueError(
                f"grad_accumulation={self.grad_accumulation} splits the questions of a step "
                f"into micro-batches; it cannot exceed questions_per_step="
                f"{self.questions_per_step}"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.answer_format not in ANSWER_PARSERS:
            raise ValueError(
                f"answer_format must be one of {sorted(ANSWER_PARSERS)}, got {self.answer_format!r}"
            )
        AnswerGrid(*self.answer_grid)  # validates
        if not math.isfinite(self.invalid_reward):
            raise ValueError(f"invalid_reward must be finite, got {self.invalid_reward}")
        for name, value, choices in (
            ("outcomes", self.outcomes, _OUTCOME_MODES),
            ("outcome_sharing", self.outcome_sharing, _SHARING),
            ("mixed_precision", self.mixed_precision, _PRECISION),
            ("sampling_noise", self.sampling_noise, _SAMPLING_NOISE),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"kl_estimator must be one of {sorted(KL_ESTIMATORS)}, got {self.kl_estimator!r}"
            )
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"aggregation must be one of {sorted(AGGREGATIONS)}, got {self.aggregation!r}"
            )
        if self.aggregation_constant is not None and not self.aggregation_constant > 0:
            raise ValueError(f"aggregation_constant must be > 0, got {self.aggregation_constant}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")
        if self.value_lr is not None and not self.value_lr > 0:
            raise ValueError(f"value_lr must be > 0 or None, got {self.value_lr}")
        if self.value_coef < 0:
            raise ValueError(f"value_coef must be >= 0, got {self.value_coef}")
        if not (0 <= self.gae_gamma <= 1 and 0 <= self.gae_lambda <= 1):
            raise ValueError("gae_gamma and gae_lambda must be in [0, 1]")
        if self.kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        resolve_device(self.device)  # validates the name (and CUDA when asked for)

    @property
    def grid(self) -> AnswerGrid:
        """The answer grid of :attr:`answer_grid`."""
        return AnswerGrid(*self.answer_grid)


class _ValueHead(torch.nn.Module):
    """``V_t = w . h_t + b`` on the policy's final hidden state, zero at initialisation."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden`` shape (..., hidden_size) -> values of shape (...), float32."""
        return self.linear(hidden.float())[..., 0]


@dataclasses.dataclass
class _Rollout:
    """One rollout of a step (tensors on the trainer's device unless said)."""

    questions: Tensor  # (B,) row positions in the task table (CPU)
    prompts: PromptBatch
    tokens: Tensor  # (N, T)
    mask: Tensor  # (N, T) bool
    old_log_probs: Tensor  # (N, T) detached
    advantages: Tensor  # (N, T) or (N, 1)
    rewards: Tensor  # (B, G) float64, CPU
    answers: Tensor  # (B, G) float64, NaN = invalid, CPU
    outcomes: Tensor  # (B, G) float64, CPU
    entropy: Tensor  # (N, T) detached
    returns: Tensor | None = None  # (N, T) value targets
    ref_log_probs: Tensor | None = None  # (N, T)
    graph: GroupRollout | None = None  # the sampling pass with gradients (fused)


class LMTrainer:
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
    ) -> None:
        if not isinstance(config, LMRLConfig):
            raise TypeError(f"config must be an LMRLConfig, got {type(config).__name__}")
        self.config = config
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
        self._pad_id = _pad_id(tokenizer)
        texts = [self._format(str(text)) for text in self._table["prompt"]]
        special = config.add_special_tokens
        if special is None:
            special = not getattr(tokenizer, "chat_template", None)
        self._prompt_ids: list[list[int]] = tokenizer(texts, add_special_tokens=special)[
            "input_ids"
        ]
        prefix = config.answer_prefix
        self._prefix_ids = tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
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
        self.train_rows = _rows(split, config.train_split, len(self._table), "train_split")
        if config.outcomes == "live" and outcome_source is None:
            outcome_source = _p_star_outcomes(self._table, self.train_rows)
        self.outcome_source = outcome_source
        self.eval_rows = (
            np.zeros(0, dtype=np.int64)
            if config.eval_split is None or split is None
            else np.flatnonzero(split == config.eval_split)
        )
        if config.eval_every and len(self.eval_rows) == 0:
            raise ValueError(
                f"eval_every={config.eval_every} but the task table has no rows with split "
                f"== {config.eval_split!r}; set eval_split to one of "
                f"{sorted(set(split)) if split is not None else '(no split column)'} or "
                "eval_every=0"
            )
        self._outcome_table = self._read_outcomes()

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

        self.value_head: _ValueHead | None = None
        if estimator.requires_values:
            self.value_head = _ValueHead(_hidden_size(model)).to(self.device)
        self.reference: torch.nn.Module | None = None
        self._reference_digest = ""
        if config.kl_coef > 0:
            self.reference = copy.deepcopy(model).eval().requires_grad_(False)
            self._reference_digest = _module_digest(self.reference)
        if config.gradient_checkpointing:
            _enable_checkpointing(model)
        self.model.eval()
        self._policy_parameters = [p for p in model.parameters() if p.requires_grad]
        if not self._policy_parameters:
            raise ValueError("the model has no trainable parameters (requires_grad)")
        groups: list[dict[str, Any]] = [{"params": self._policy_parameters}]
        if self.value_head is not None:
            groups.append(
                {"params": list(self.value_head.parameters()), "lr": config.value_lr or config.lr}
            )
        self.optimizer = _adamw(groups, config)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.sample_generator = torch.Generator(device=self.device).manual_seed(config.seed + 7919)
        self._order = torch.randperm(len(self.train_rows), generator=self.generator)
        self._cursor = 0
        self.step = 0
        self.eval_rows_log: list[dict[str, Any]] = []
        self._rollout: _Rollout | None = None
        self._last: dict[str, float] = dict.fromkeys(_DIAGNOSTICS, math.nan)
        self._eval_log_path: Path | None = None
        self._predictions_path: Path | None = None
        self._predictions: list[pd.DataFrame] = []
        self.data_fingerprint = {
            "n_questions": len(self._table),
            "question_ids": _digest_strings(self._table["question_id"].astype(str)),
            "prompts": _digest_strings(texts),
            "outcomes": _digest_array(self._outcome_table),
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
        if not isinstance(task, pd.DataFrame):
            raise TypeError(f"task must be a pandas DataFrame (a task table), got {type(task)}")
        missing = [c for c in ("question_id", "prompt") if c not in task.columns]
        if missing:
            raise ValueError(
                f"the task table lacks column(s) {missing}; a task table (bioreason.data.tasks) "
                "has question_id, prompt, split, outcome, p_star, ..."
            )
        if len(task) == 0:
            raise ValueError("the task table has no rows")
        return task.reset_index(drop=True)

    def _read_outcomes(self) -> np.ndarray:
        """Outcomes of the table, shape (n_questions, n_available); NaN where missing."""
        config = self.config
        table = self._table
        width = 1 if config.outcome_sharing == "group" else config.group_size
        if config.outcomes == "live":
            return np.zeros((len(table), 0))
        if "outcome" not in table:
            raise ValueError(
                "outcomes='table' reads the task table's 'outcome' column, which it lacks; "
                "add it or use outcomes='live' with an outcome_source"
            )
        columns = [pd.to_numeric(table["outcome"], errors="coerce").to_numpy(np.float64)]
        if width > 1:
            further = table["further_outcomes"] if "further_outcomes" in table else None
            for k in range(1, width):
                columns.append(
                    np.array(
                        [
                            float(v[k - 1])
                            if v is not None and not _is_nan(v) and len(v) >= k
                            else math.nan
                            for v in (further if further is not None else [None] * len(table))
                        ]
                    )
                )
        outcomes = np.stack(columns, 1)
        rows = outcomes[self.train_rows]
        bad = ~np.isin(rows, (0.0, 1.0))
        if bad.any():
            row = int(self.train_rows[np.flatnonzero(bad.any(1))[0]])
            what = (
                "'outcome'"
                if width == 1
                else f"'outcome' plus {width - 1} 'further_outcomes' (group_size per question)"
            )
            raise ValueError(
                f"outcomes='table' with outcome_sharing={config.outcome_sharing!r} needs "
                f"{what} as 0/1 for every training question; question "
                f"{table['question_id'].iloc[row]!r} (row {row}) lacks it. Use "
                "outcome_sharing='group' or outcomes='live' with an outcome_source"
            )
        return outcomes

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
        """0/1 outcomes of shape (n_questions, group_size), float64 (CPU)."""
        config = self.config
        width = 1 if config.outcome_sharing == "group" else config.group_size
        if config.outcomes == "live":
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.generator))
            # drawn for the whole batch and sliced, so that a question's outcomes do not
            # depend on how many processes share the batch
            everyone = self._batch_questions if self.processes.distributed else questions
            drawn = torch.as_tensor(self.outcome_source.sample(everyone, width, seed))
            if tuple(drawn.shape) != (len(everyone), width):
                raise ValueError(
                    f"outcome_source.sample returned shape {tuple(drawn.shape)}, expected "
                    f"({len(everyone)}, {width})"
                )
            if self.processes.distributed:
                drawn = drawn[self._shard[0] : self._shard[1]]
            outcomes = drawn.to(torch.float64)
        else:
            outcomes = torch.as_tensor(self._outcome_table[questions.numpy(), :width])
        return outcomes.expand(len(questions), config.group_size)

    def _decode(self, tokens: Tensor, mask: Tensor) -> list[str]:
        lengths = mask.sum(1).tolist()
        rows = [row[:n] for row, n in zip(tokens.tolist(), lengths)]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=False)

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

    def _new_rollout(self) -> _Rollout:
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
            entropy_grad=bool(config.entropy_coef),
            hidden=self.value_head is not None,
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
        returns = None
        if self.value_head is not None:
            with torch.no_grad():
                values = self.value_head(sample.hidden.detach())
            advantages, returns = self._token_advantages(rewards, values, mask, kwargs)
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
        return _Rollout(
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
        )

    def _token_advantages(
        self, rewards: Tensor, values: Tensor, mask: Tensor, kwargs: dict[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Per-token advantages of an estimator that takes values, and GAE returns.

        ``values``: shape (N, T) from the value head. The reward sits on each completion's
        last token; GAE gives ``A_t`` and the returns; the estimator gets, for token t, the
        baseline ``R - A_t`` (``V_t`` when gamma = lambda = 1).
        """
        config = self.config
        n_questions, group = rewards.shape
        rewards_flat = rewards.reshape(-1).to(values.device, torch.float64)
        last = mask.sum(1) - 1
        token_rewards = torch.zeros(values.shape, dtype=torch.float64, device=values.device)
        token_rewards[torch.arange(len(last), device=values.device), last] = rewards_flat
        gae_advantages, returns = gae(
            token_rewards, values.double(), mask, gamma=config.gae_gamma, lam=config.gae_lambda
        )
        baselines = (rewards_flat[:, None] - gae_advantages).cpu()
        columns = [
            self.estimator(
                rewards, values=baselines[:, t].view(n_questions, group), **kwargs
            ).reshape(-1)
            for t in range(values.shape[1])
        ]
        advantages = torch.stack(columns, 1).to(values.device) * mask
        return advantages, returns.float()

    def _micro_batches(self, rollout: _Rollout) -> list[tuple[Tensor, GroupRollout, float, float]]:
        """(rows, completions with the current policy's log-probs, policy weight, value
        weight) per micro-batch; the weights make the sum of the micro-batches' losses the
        full batch's loss for any aggregation that is linear in the values."""
        config = self.config
        group = config.group_size
        n_questions = rollout.prompts.n_questions
        full_mask = rollout.mask
        if rollout.graph is not None:
            rows = torch.arange(len(full_mask), device=self.device)
            return [(rows, rollout.graph, 1.0, 1.0)]
        parts = []
        constant = self._constant()
        total_tokens = float(full_mask.sum())
        for chunk in torch.arange(n_questions).tensor_split(config.grad_accumulation):
            if len(chunk) == 0:
                continue
            rows = (chunk[:, None] * group + torch.arange(group)[None, :]).reshape(-1)
            rows = rows.to(self.device)
            prompts = PromptBatch(
                rollout.prompts.input_ids[chunk.to(self.device)],
                None
                if rollout.prompts.attention_mask is None
                else rollout.prompts.attention_mask[chunk.to(self.device)],
                rollout.prompts.lengths[chunk.to(self.device)],
            )
            with self._training_mode():
                current = teacher_forced(
                    self.model,
                    prompts,
                    rollout.tokens[rows],
                    rollout.mask[rows],
                    temperature=config.temperature,
                    shared_prefix=not config.gradient_checkpointing,
                    hidden=self.value_head is not None,
                    autocast=self._autocast(),
                    fast=self.config.fast_forward,
                    compile=self.config.torch_compile,
                )
            if config.grad_accumulation == 1:
                weight = 1.0
            else:
                indicator = torch.zeros(full_mask.shape, device=self.device)
                indicator[rows] = 1.0
                part_mask = full_mask[rows]
                weight = float(
                    aggregate(indicator, full_mask, config.aggregation, constant)
                    / aggregate(
                        torch.ones(part_mask.shape, device=self.device),
                        part_mask,
                        config.aggregation,
                        constant,
                    )
                )
            value_weight = float(full_mask[rows].sum()) / total_tokens
            parts.append((rows, current, weight, value_weight))
        return parts

    def _constant(self) -> float | None:
        config = self.config
        return (
            config.aggregation_constant
            if config.aggregation_constant is not None
            else float(config.max_new_tokens)
        )

    def _update(self, rollout: _Rollout, first_update: bool) -> dict[str, float]:
        config = self.config
        totals = {"clip_fraction": 0.0, "kl": 0.0, "kl_behaviour": 0.0, "value_loss": 0.0}
        reference = rollout.ref_log_probs
        for rows, current, weight, value_weight in self._micro_batches(rollout):
            mask = rollout.mask[rows]
            log_probs = current.log_probs
            old = log_probs.detach() if rollout.graph is not None else rollout.old_log_probs[rows]
            advantages = rollout.advantages[rows]
            loss, stats = policy_loss(
                log_probs,
                old,
                advantages,
                loss=config.policy_loss,
                mask=mask,
                clip_eps=config.clip_eps,
                ref_log_probs=None if reference is None else reference[rows],
                kl_coef=config.kl_coef,
                kl_estimator=config.kl_estimator,
                entropy=current.entropy if config.entropy_coef else None,
                entropy_coef=config.entropy_coef,
                aggregation=config.aggregation,
                constant=self._constant(),
            )
            loss = loss * (weight * self._shard_weights[0])
            if self.value_head is not None:
                values = self.value_head(current.hidden)
                errors = 0.5 * (values - rollout.returns[rows]) ** 2
                value_loss = aggregate(errors, mask, "token_mean")
                value_weight = value_weight * self._shard_weights[1]
                loss = loss + config.value_coef * value_weight * value_loss
                totals["value_loss"] += value_weight * float(value_loss.detach())
            loss.backward()
            totals["clip_fraction"] += weight * float(stats.get("clip_fraction", math.nan))
            totals["kl"] += weight * float(stats.get("kl", math.nan))
            # KL(behaviour || current) from the behaviour's samples
            behaviour = aggregate(kl_k3(old, log_probs.detach()), mask, "token_mean")
            totals["kl_behaviour"] += (
                float(mask.sum()) / float(rollout.mask.sum()) * float(behaviour)
            )
        parameters = self._policy_parameters + (
            list(self.value_head.parameters()) if self.value_head is not None else []
        )
        lm_distributed.sum_gradients(parameters, self.processes)
        norm = torch.nn.utils.clip_grad_norm_(
            parameters, config.max_grad_norm if config.max_grad_norm else math.inf
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.value_head is None:
            totals["value_loss"] = math.nan
        if rollout.ref_log_probs is None:
            totals["kl"] = math.nan
        totals["grad_norm"] = float(norm)
        return totals

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
        stats = self._update(rollout, first_update)
        rollout.graph = None  # the sampling graph serves the first update only
        self.step += 1
        self._last = {
            **self._step_figures(rollout, stats),
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

    def _step_figures(self, rollout: _Rollout, stats: dict[str, float]) -> dict[str, float]:
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

    # ----- predictions and evaluation -------------------------------------------------

    def _question_rows(self, questions: Any) -> np.ndarray:
        if questions is None:
            return self.eval_rows if len(self.eval_rows) else np.arange(len(self._table))
        if isinstance(questions, str):
            if "split" not in self._table:
                raise ValueError(f"questions={questions!r} names a split, but the table has none")
            rows = np.flatnonzero(self._table["split"].astype(str).to_numpy() == questions)
            if len(rows) == 0:
                raise ValueError(f"no questions with split == {questions!r}")
            return rows
        rows = np.asarray(questions)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise TypeError("questions must be None, a split name or 1-d integer row positions")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self._table)):
            raise ValueError(f"question rows must lie in [0, {len(self._table)})")
        return rows.astype(np.int64)

    def _predict(
        self, rows: np.ndarray, n_samples: int, seed: int
    ) -> tuple[pd.DataFrame, Tensor | None]:
        config = self.config
        generator = torch.Generator(device=self.device).manual_seed(seed)
        sampled, valid_counts, exact, distributions = [], [], [], []
        for start in range(0, len(rows), config.predict_batch_questions):
            batch = rows[start : start + config.predict_batch_questions].tolist()
            prompts = self._prompts(batch)
            sample = self._sample(prompts, n_samples, generator)
            parsed = ANSWER_PARSERS[config.answer_format](
                self._decode(sample.tokens, sample.mask), self.grid
            )
            answers = parsed.probabilities.view(len(batch), n_samples)
            valid = ~torch.isnan(answers)
            counts = valid.sum(1)
            total = torch.nan_to_num(answers, nan=0.0).sum(1)
            sampled.append(torch.where(counts > 0, total / counts.clamp(min=1), math.nan))
            valid_counts.append(counts)
            if self.answer_token_ids is not None:
                distribution = answer_distribution_at(
                    self.model,
                    self._prompts(batch, with_prefix=True),
                    self.answer_token_ids,
                    temperature=config.temperature,
                    autocast=self._autocast(),
                    fast=self.config.fast_forward,
                ).cpu()
                distribution = distribution / distribution.sum(1, keepdim=True)
                distributions.append(distribution)
                exact.append(distribution @ self._grid_probs)
        table = self._table.iloc[rows]
        frame = pd.DataFrame(
            {
                "question_id": table["question_id"].to_numpy(),
                "method": config.method,
                "seed": config.seed,
                "step": self.step,
                "q_sampled": torch.cat(sampled).numpy(),
                "q_exact": torch.cat(exact).numpy() if exact else np.full(len(rows), math.nan),
                "p_star": _column(table, "p_star"),
                "p_true": _column(table, "p_true"),
                "outcome": _column(table, "outcome"),
                "split": table["split"].astype(str).to_numpy() if "split" in table else "",
                "n_valid": torch.cat(valid_counts).numpy(),
            }
        )
        return frame, (torch.cat(distributions) if distributions else None)

    def predict(
        self,
        questions: Any = None,
        *,
        n_samples: int | None = None,
        seed: int | None = None,
    ) -> pd.DataFrame:
        """Each question's probability under the current policy.

        Parameters
        ----------
        questions : None, str or sequence of int
            None: the evaluation split (all questions when there is none); a split name;
            or row positions in the task table.
        n_samples : int, optional
            Completions per question for ``q_sampled`` (default ``eval_samples``).
        seed : int, optional
            Seed of the sampling (default: from the config's seed and the step); the
            training random state is not touched.

        Returns
        -------
        pandas.DataFrame
            One row per question with :data:`PREDICTION_COLUMNS`: ``q_sampled`` (mean of
            the valid sampled answers, NaN when none is valid), ``q_exact`` (mean of the
            answer distribution at the answer position given a valid answer; NaN when
            the answers are not single tokens), ``p_star``, ``p_true``, ``outcome`` (NaN
            when the table lacks them), ``n_valid`` (valid sampled answers).
        """
        rows = self._question_rows(questions)
        n_samples = self.config.eval_samples if n_samples is None else int(n_samples)
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        seed = self._eval_seed() if seed is None else int(seed)
        frame, _ = self._predict(rows, n_samples, seed)
        return frame

    def _eval_seed(self) -> int:
        return (self.config.seed * 1_000_003 + self.step * 7_919 + 17) % (2**62)

    def evaluate(self, questions: Any = None) -> dict[str, Any]:
        """Calibration of the current policy on held-out questions (default: the
        ``eval_split`` rows), appended to :attr:`eval_rows_log` and returned.

        The probability judged is ``q_exact`` when available, else ``q_sampled``
        (questions without a valid sampled answer are left out). Metrics: every metric
        of :func:`bioreason.calibration.summarize` against the outcomes, the reference
        metrics against ``p_star`` (no suffix) and ``p_true`` (suffix ``_p_true``) when
        the table has them for every question (NaN otherwise); and the theory's drift
        (:mod:`bioreason.rl.theory`) at the current answer distribution when answers
        are single tokens, beside the measured one:

        - ``grpo_predicted_outward``: mean over questions of ``sign(p - 1/2) (p~ - p)``,
          where GRPO's expected update is unbiased for ``p~`` (positive: pushed toward
          0/1); ``p`` is ``p_star`` (``p_true`` when p* is unknown);
        - ``method_predicted_outward``: the same for ``config.method``'s theory target
          (0 for unbiased estimators, NaN where the estimator declares no theory);
        - ``measured_outward``: mean of ``sign(p - 1/2) (q - p)`` now, and
          ``measured_outward_change`` since the previous evaluation.

        Returns
        -------
        dict
            ``step``, ``n_questions``, ``n_scored``, ``q_source``, ``invalid_rate``, the
            metrics and the drift figures.
        """
        config = self.config
        rows = self._question_rows(questions)
        frame, distribution = self._predict(rows, config.eval_samples, self._eval_seed())
        exact = frame["q_exact"].to_numpy()
        use_exact = bool(np.isfinite(exact).all())
        q = exact if use_exact else frame["q_sampled"].to_numpy()
        outcome = frame["outcome"].to_numpy()
        keep = np.isfinite(q) & np.isin(outcome, (0.0, 1.0))
        row: dict[str, Any] = {
            "step": self.step,
            "n_questions": len(rows),
            "n_scored": int(keep.sum()),
            "q_source": "exact" if use_exact else "sampled",
            "invalid_rate": float(1 - frame["n_valid"].sum() / (len(rows) * config.eval_samples)),
        }
        references = {}
        for column in ("p_star", "p_true"):
            reference = frame[column].to_numpy()
            if keep.any() and np.isfinite(reference[keep]).all():
                references[column] = reference
        metrics: dict[str, float] = {}
        if keep.any():
            metrics = summarize(
                outcome[keep],
                q[keep],
                p_star=references["p_star"][keep] if "p_star" in references else None,
                references={"p_true": references["p_true"][keep]}
                if "p_true" in references
                else None,
            )
        row.update(_metric_template())
        row.update(metrics)
        row.update(self._drift(frame, q, distribution, references))
        self.eval_rows_log.append(row)
        if self._eval_log_path is not None:
            write_csv_log(self._eval_log_path, self.eval_rows_log)
        if self._predictions_path is not None:
            self._predictions.append(frame)
            save_predictions(
                pd.concat(self._predictions, ignore_index=True), self._predictions_path
            )
        return row

    def _drift(
        self,
        frame: pd.DataFrame,
        q: np.ndarray,
        distribution: Tensor | None,
        references: dict[str, np.ndarray],
    ) -> dict[str, float]:
        out = dict.fromkeys(
            (
                "grpo_predicted_outward",
                "method_predicted_outward",
                "measured_outward",
                "measured_outward_change",
            ),
            math.nan,
        )
        reference = references.get("p_star", references.get("p_true"))
        if reference is None:
            return out
        p = torch.as_tensor(reference, dtype=torch.float64)
        sign = torch.sign(p - 0.5)
        q_t = torch.as_tensor(q, dtype=torch.float64)
        finite = torch.isfinite(q_t)
        if finite.any():
            out["measured_outward"] = float((sign * (q_t - p))[finite].mean())
            previous = self.eval_rows_log[-1]["measured_outward"] if self.eval_rows_log else None
            if previous is not None and math.isfinite(previous):
                out["measured_outward_change"] = out["measured_outward"] - previous
        if distribution is not None:
            answers = self._grid_probs
            drift = predict_grpo_drift(distribution, answers, p, rule=self.config.reward)
            out["grpo_predicted_outward"] = float(drift.outward.mean())
            target = theory_target(
                self.config.method,
                distribution,
                answers,
                p,
                rule=self.config.reward,
                options=self.estimator.options,
            )
            out["method_predicted_outward"] = float((sign * (target - p)).mean())
        return out

    # ----- loop, logging, checkpoints ---------------------------------------------------

    def diagnostics(self) -> dict[str, float]:
        """Figures of the last step for the training log (NaN before the first step):
        ``step``, ``reward_mean``, ``reward_std``, ``zero_std_fraction`` (groups whose
        rewards are all equal), ``invalid_rate``, ``completion_length`` (tokens),
        ``entropy`` (per token, sampling pass), ``kl`` (to the reference; NaN without
        one), ``kl_behaviour`` (k3 of the updated-from policy vs the sampling one),
        ``clip_fraction``, ``value_loss`` (NaN without a value head), ``grad_norm``
        (before clipping), ``step_time`` (seconds)."""
        return {"step": self.step, **{k: self._last.get(k, math.nan) for k in _DIAGNOSTICS}}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: weights, optimizer, random states, the
        question order, the evaluations so far, the config and the data fingerprint."""
        return {
            "step": self.step,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "value_head": None
            if self.value_head is None
            else {k: v.detach().cpu().clone() for k, v in self.value_head.state_dict().items()},
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
        config = self.config.to_dict()
        if _plain(state.get("config")) != _plain(config):
            raise ValueError(
                "checkpoint was written with a different config "
                f"({_differences(_plain(state.get('config') or {}), _plain(config))}); "
                "start a new run"
            )
        if state.get("data") != self.data_fingerprint:
            raise ValueError(
                "checkpoint was written for other questions "
                f"({_differences(state.get('data') or {}, self.data_fingerprint)}); "
                "start a new run"
            )
        if state.get("reference", "") != self._reference_digest:
            raise ValueError(
                "checkpoint was written with another initial (reference) policy: the KL "
                "penalty is to the weights the run started from; build the trainer from the "
                "same initial model to resume"
            )
        self.model.load_state_dict(state["model"])
        if self.value_head is not None:
            self.value_head.load_state_dict(state["value_head"])
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

    def train(
        self,
        *,
        checkpoint_path: Path | None = None,
        log_path: Path | None = None,
        eval_log_path: Path | None = None,
        predictions_path: Path | None = None,
        extra_log: Callable[[LMTrainer], dict[str, float]] | None = None,
        progress: bool = True,
        description: str | None = None,
        resume: bool | str = "auto",
    ) -> dict[str, float]:
        """Run until ``config.steps``, resuming from ``checkpoint_path``.

        Writes a CSV row every ``log_every`` steps to ``log_path`` (:meth:`diagnostics`)
        and a checkpoint every ``checkpoint_every`` steps, atomically (see
        :func:`bioreason.rl.loop.run_training_loop` for ``resume``). Every evaluation
        rewrites ``eval_log_path`` (CSV, one row per evaluation) and
        ``predictions_path`` (parquet, the predictions of every evaluation; a resumed
        run keeps the rows up to its checkpoint's step). TensorBoard scalars go to
        ``tb/`` beside ``log_path`` (``config.tensorboard``). Under several processes
        (:mod:`bioreason.rl.lm_distributed`) every process reads the checkpoint, and
        only the main one writes files, shows progress and evaluates.

        Returns
        -------
        dict
            ``seconds``, ``steps_run`` and ``steps_per_second`` of this call.
        """
        self._eval_log_path = None if eval_log_path is None else Path(eval_log_path)
        self._predictions_path = None if predictions_path is None else Path(predictions_path)
        self._predictions = []
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
            )
        finally:
            self._eval_log_path = None
            self._predictions_path = None
        return result

    def _resume_predictions(self) -> None:
        """Keep the saved predictions of the evaluations up to the resumed step."""
        path = self._predictions_path
        self._predictions = []
        if path is not None and path.exists():
            earlier = pd.read_parquet(path)
            self._predictions = [earlier[earlier["step"] <= self.step]]


def save_predictions(frame: pd.DataFrame, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write a predictions table (:meth:`LMTrainer.predict`) as parquet, atomically.

    Returns
    -------
    Path
        The written file.
    """
    from bioreason._io import atomic_write

    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"save_predictions: the table lacks column(s) {missing}")
    path = Path(path)
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False), overwrite=overwrite)
    return path


# ----- helpers ------------------------------------------------------------------------


def _adamw(groups: list[dict[str, Any]], config: LMRLConfig) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where torch supports it (about 4x faster per step on
    CPU for a small model), else torch's default implementation."""
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


def _metric_template() -> dict[str, float]:
    """Every metric key an evaluation row has, NaN (so that CSV rows share columns)."""
    from bioreason.calibration import METRICS

    keys = ["sharpness", *METRICS]
    for suffix in ("", "_p_true"):
        keys += [f"{name}{suffix}" for name in REFERENCE_METRICS]
    return dict.fromkeys(keys, math.nan)


def _rows(split: np.ndarray | None, name: str | None, n: int, field: str) -> np.ndarray:
    if name is None or split is None:
        return np.arange(n)
    rows = np.flatnonzero(split == name)
    if len(rows) == 0:
        raise ValueError(
            f"{field}={name!r}: the task table has no rows with that split; its splits are "
            f"{sorted(set(split))} (or set {field}=None for all rows)"
        )
    return rows


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in table:
        return np.full(len(table), math.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(np.float64)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _pad_id(tokenizer: Any) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def _hidden_size(model: torch.nn.Module) -> int:
    embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[1])
    return int(model.config.hidden_size)


def _digest_strings(values: Any) -> str:
    hasher = hashlib.sha256()
    for value in values:
        hasher.update(str(value).encode())
        hasher.update(b"\0")
    return hasher.hexdigest()[:16]


def _p_star_outcomes(table: pd.DataFrame, train_rows: np.ndarray) -> OutcomeSource:
    """Bernoulli(p*) outcomes of the task table's rows (``outcomes="live"`` by default).

    Returns
    -------
    BernoulliOutcomes
        Over every row; rows outside ``train_rows`` get 1/2 (never drawn), so their p*
        may be missing.
    """
    from bioreason.rl.outcomes import BernoulliOutcomes

    if "p_star" not in table:
        raise ValueError(
            "outcomes='live' draws a new outcome at every rollout from the task's p_star "
            "column, which this task lacks: pass outcome_source= (anything with "
            ".sample(questions, n, seed), e.g. a simulator) or use outcomes='table'"
        )
    p_star = pd.to_numeric(table["p_star"], errors="coerce").to_numpy(np.float64)
    rows = np.zeros(len(table), bool)
    rows[train_rows] = True
    bad = rows & ~((p_star >= 0) & (p_star <= 1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"outcomes='live' draws outcomes from p_star, but {int(bad.sum())} training "
            f"question(s) have no probability in [0, 1] (row {first}: {p_star[first]}); "
            "use outcomes='table' (the task's recorded outcomes) or pass outcome_source="
        )
    return BernoulliOutcomes(torch.as_tensor(np.where(rows, p_star, 0.5)))


def _digest_array(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array, dtype=np.float64)
    hasher = hashlib.sha256(str(array.shape).encode())
    hasher.update(array.tobytes())
    return hasher.hexdigest()[:16]


def _module_digest(module: torch.nn.Module) -> str:
    hasher = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        hasher.update(name.encode())
        hasher.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return hasher.hexdigest()[:16]


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively (a checkpoint's config and the live one compare equal)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> str:
    keys = list(dict.fromkeys([*saved, *current]))
    return "; ".join(
        f"{k}: {saved.get(k, '(absent)')} -> {current.get(k, '(absent)')}"
        for k in keys
        if saved.get(k, "(absent)") != current.get(k, "(absent)")
    )
