"""Settings of one RL run of a causal LM (:class:`LMRLConfig`), validated on creation."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

from bioreason._device import resolve_device
from bioreason.lm.answer_protocol import ANSWER_PARSERS, AnswerGrid
from bioreason.rl.lm.values import CRITICS
from bioreason.rl.loop import RLConfig
from bioreason.rl.losses import AGGREGATIONS, check_kl_loss_estimator
from bioreason.rl.rewards import FLOOR_REWARD
from bioreason.rl.schedules import check_schedule, scheduled, warmup_factor

__all__ = ["TRL_NAMES", "LMRLConfig", "coefficients_at", "length_dependent_settings"]

#: TRL's (``GRPOConfig`` / ``TrainingArguments``) names of settings -> the LMRLConfig field
#: and what differs; refused with the bioreason name (docs/finetune.md, "Coming from TRL")
TRL_NAMES: dict[str, tuple[str, str]] = {
    "learning_rate": ("lr", ""),
    "num_generations": ("group_size", ""),
    "max_completion_length": ("max_new_tokens", ""),
    "beta": ("kl_coef", ", the weight of the KL penalty to the initial policy"),
    "epsilon": ("clip_eps", ""),
    "max_steps": ("steps", ""),
    "num_train_epochs": (
        "steps",
        ": bioreason counts optimizer steps; an epoch is len(train questions) / "
        "questions_per_step steps",
    ),
    "per_device_train_batch_size": (
        "questions_per_step",
        ": bioreason counts questions per step, each with group_size completions "
        "(TRL counts completions)",
    ),
    "per_device_eval_batch_size": ("predict_batch_questions", ""),
    "gradient_accumulation_steps": ("grad_accumulation", ""),
    "num_iterations": ("updates_per_rollout", ""),
    "logging_steps": ("log_every", ""),
    "save_steps": ("checkpoint_every", ""),
    "eval_steps": ("eval_every", ""),
    "warmup_steps": ("lr_warmup_steps", ""),
    "lr_scheduler_type": ("lr_schedule", " with lr_end"),
    "report_to": ("tensorboard", " (true/false; TensorBoard files only, no network)"),
    "bf16": ("mixed_precision", " ('bf16', 'no' or 'auto')"),
}
_OUTPUT_DIR = (
    "output_dir is not an LMRLConfig setting: give the folder to the trainer "
    "(LMTrainer(..., output_dir=...) or trainer.train(output_dir=...)), or --out for "
    "bioreason finetune"
)


def trl_messages(prefix: str = "") -> dict[str, str]:
    """TRL's names -> the message naming the bioreason field (``prefix`` before it:
    ``"rl."`` in a fine-tuning job's flat form)."""
    messages = {
        trl: f"use {prefix}{ours} (TRL's {trl}){note}" for trl, (ours, note) in TRL_NAMES.items()
    }
    messages["output_dir"] = _OUTPUT_DIR
    return messages


_OUTCOME_MODES = ("table", "live")
_SHARING = ("group", "completion")
_PRECISION = ("auto", "bf16", "no")
_SAMPLING_NOISE = ("batch", "question")
_TRAINABLE = ("all", "embeddings")


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
        A parser of :data:`bioreason.lm.answer_protocol.ANSWER_PARSERS` (``"tagged"``:
        ``<answer>N</answer>``; ``"first_integer"``: the first integer word).
    answer_prefix : str, default ``"<answer>"``
        Text after which the answer token comes: ``q_exact`` is read at the position
        after prompt + prefix ("" reads it at the first completion token).
    stop_strings : list of str, default ``["</answer>"]``
        A completion stops at EOS or after one of these.
    answer_grid : (low, high, scale), default (1, 99, 100)
        The :class:`~bioreason.lm.AnswerGrid` of valid answers.
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
    train_split, eval_split : str or None, default "train", "test"
        Rows of the table's ``split`` column to train on / evaluate on (None: all
        rows / no evaluation); the held-out questions are scored by default (set
        ``"val"`` to select settings on a validation split).
    eval_every : int, default 0
        Evaluate every this many steps (0: never during training).
    eval_samples : int, default 8
        Completions per question for ``q_sampled`` in evaluation and :meth:`predict`.
    predict_batch_questions : int, default 32
        Questions per sampling pass in evaluation and prediction.
    kl_estimator : {"k2", "k3"}, default "k2"
        Per-token estimator of the KL term to the initial policy (used when ``kl_coef >
        0``), a name of :data:`bioreason.rl.losses.KL_ESTIMATORS` usable as a loss:
        ``"k2"`` (``(log pi - log ref)^2 / 2``) follows the gradient of KL(pi || ref),
        the penalty ``kl_coef`` weighs; ``"k3"`` (``r - 1 - log r``, ``r = ref / pi``,
        DeepSeekMath's GRPO) has KL(pi || ref) as its expected value but follows the
        gradient of KL(ref || pi). ``"k1"`` is refused: its expected gradient is zero
        (see :mod:`bioreason.rl.losses`).
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
        update (see :mod:`bioreason.rl.lm.trainer`).
    fast_forward : bool, default True
        Run a plain ``LlamaForCausalLM`` through :class:`bioreason.rl.lm.fast.FastLlama`
        (the same function with fewer operations); other models always use their own
        forward.
    torch_compile : bool, default False
        With ``fast_forward``, compile the decoder with ``torch.compile`` for the
        steps' forward and backward passes (fewer, fused kernels), after a compilation
        up front (shorter once inductor's disk cache holds the kernels; needs a C++
        compiler on CPU). Evaluation runs eagerly. What it saves and costs, measured:
        docs/finetune.md, "Speed".
    device : str, default "auto"
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda[:N]"``.
    mixed_precision : {"auto", "bf16", "no"}, default "auto"
        bf16 autocast; ``"auto"`` uses it on CUDA only.
    critic : {"separate", "shared"}, default "separate"
        PPO's value function, for estimators that need one (``ppo``; a name of
        :data:`bioreason.rl.lm.values.CRITICS`): ``"separate"``, a copy of the initial
        policy's trunk with a value head, trained by its own optimizer group
        (``value_lr``) and clipped apart from the policy, so the value loss never
        changes the policy's weights (one more forward and backward pass per update);
        ``"shared"``, a value head on the policy's own final hidden state, whose value
        loss also trains the policy's trunk. Other estimators have no critic.
    value_lr : float or None, default None
        Learning rate of the critic's parameters (None: ``lr``).
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
        see :mod:`bioreason.rl.lm.distributed`).
    open_answer : bool, default False
        End every prompt with ``answer_prefix`` (``<answer>``), so that the first token
        the policy writes is the answer (the completion is read with the prefix put back
        in front of it). The answer then sits right after the question, where the
        question's information is.
    kl_coef_end : float or None, default None
        ``kl_coef`` at the last step; the KL weight moves from ``kl_coef`` to it along
        ``kl_schedule`` (None: ``kl_coef`` throughout). E.g. 0.1 annealed to 0.001:
        a strong pull to the warm start while answers separate, then the paper's weight.
    kl_schedule : {"constant", "linear", "cosine", "exponential"}, default "constant"
        Shape of the KL weight's path (:mod:`bioreason.rl.schedules`).
    entropy_coef_end : float or None, default None
        ``entropy_coef`` at the last step (None: ``entropy_coef`` throughout).
    entropy_schedule : {"constant", "linear", "cosine", "exponential"}, default "constant"
        Shape of the entropy bonus's path.
    lr_end : float or None, default None
        The policy's learning rate at the last step (None: ``lr`` throughout, after the
        warm-up).
    lr_schedule : {"constant", "linear", "cosine", "exponential"}, default "constant"
        Shape of the learning rate's decay from ``lr`` to ``lr_end``.
    lr_warmup_steps : int, default 0
        Steps over which the learning rate rises linearly to its scheduled value.
    trainable : {"all", "embeddings"}, default "all"
        Which of the policy's parameters RL trains: every one with ``requires_grad``, or
        only the token embeddings (input and output), the transformer blocks frozen (their
        ``requires_grad`` is set False). Training the whole small default LM on a noisy
        reward collapses the state at the answer position onto one point for every
        question (docs/results_lm.md); with the blocks frozen, the state keeps the
        question and RL learns how the answer depends on it.
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
    eval_split: str | None = "test"
    eval_every: int = 0
    eval_samples: int = 8
    predict_batch_questions: int = 32
    kl_estimator: str = "k2"
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
    critic: str = "separate"
    value_lr: float | None = None
    value_coef: float = 0.5
    gae_gamma: float = 1.0
    gae_lambda: float = 1.0
    add_special_tokens: bool | None = None
    sampling_noise: str = "batch"
    open_answer: bool = False
    kl_coef_end: float | None = None
    kl_schedule: str = "constant"
    entropy_coef_end: float | None = None
    entropy_schedule: str = "constant"
    lr_end: float | None = None
    lr_schedule: str = "constant"
    lr_warmup_steps: int = 0
    trainable: str = "all"

    foreign_names: ClassVar[dict[str, str]] = trl_messages()

    def __post_init__(self) -> None:
        super().__post_init__()
        check_schedule("kl_coef", self.kl_coef, self.kl_coef_end, self.kl_schedule)
        check_schedule(
            "entropy_coef", self.entropy_coef, self.entropy_coef_end, self.entropy_schedule
        )
        check_schedule("lr", self.lr, self.lr_end, self.lr_schedule)
        if self.trainable not in _TRAINABLE:
            raise ValueError(f"trainable must be one of {list(_TRAINABLE)}, got {self.trainable!r}")
        if self.lr_warmup_steps < 0:
            raise ValueError(f"lr_warmup_steps must be >= 0, got {self.lr_warmup_steps}")
        if self.open_answer and not self.answer_prefix:
            raise ValueError(
                "open_answer ends each prompt with answer_prefix, which is empty; set "
                "answer_prefix (e.g. '<answer>') or open_answer=False"
            )
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
        check_kl_loss_estimator(self.kl_estimator, f"kl_estimator={self.kl_estimator!r}")
        if self.critic not in CRITICS:
            raise ValueError(f"critic must be one of {list(CRITICS)}, got {self.critic!r}")
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
        resolve_device(self.device)  # validates the name (and CUDA when asked for)

    @property
    def grid(self) -> AnswerGrid:
        """The answer grid of :attr:`answer_grid`."""
        return AnswerGrid(*self.answer_grid)


def length_dependent_settings(config: LMRLConfig) -> list[str]:
    """The settings of ``config`` whose path over the run follows ``config.steps`` (a
    schedule to an end value), as ``"name='value'"``: a run with any of them cannot be
    continued to more steps with the same result as a longer run (empty: it can).

    Returns
    -------
    list of str
    """
    found = []
    for name in ("kl", "entropy", "lr"):
        schedule = getattr(config, f"{name}_schedule")
        end = getattr(config, f"{name}_end" if name == "lr" else f"{name}_coef_end")
        if schedule != "constant" and end is not None:
            found.append(f"{name}_schedule={schedule!r}")
    return found


def coefficients_at(config: LMRLConfig, step: int) -> dict[str, float]:
    """The scheduled KL weight, entropy weight and learning rate at ``step`` (the number
    of optimizer steps taken so far) of a run of ``config.steps`` steps.

    Returns
    -------
    dict
        ``kl_coef``, ``entropy_coef`` and ``lr`` (the warm-up factor included).
    """
    total = config.steps
    return {
        "kl_coef": scheduled(config.kl_coef, config.kl_coef_end, step, total, config.kl_schedule),
        "entropy_coef": scheduled(
            config.entropy_coef, config.entropy_coef_end, step, total, config.entropy_schedule
        ),
        "lr": scheduled(config.lr, config.lr_end, step, total, config.lr_schedule)
        * warmup_factor(step, config.lr_warmup_steps),
    }


_dataclass_init = LMRLConfig.__init__


@functools.wraps(_dataclass_init)
def _init(self: LMRLConfig, *args: Any, **kwargs: Any) -> None:
    foreign = [name for name in kwargs if name in LMRLConfig.foreign_names]
    if foreign:
        raise TypeError(
            f"LMRLConfig got unknown argument(s) {foreign}: "
            + "; ".join(LMRLConfig.foreign_names[name] for name in foreign)
        )
    _dataclass_init(self, *args, **kwargs)


LMRLConfig.__init__ = _init  # type: ignore[method-assign]
