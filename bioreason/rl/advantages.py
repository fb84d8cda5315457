"""Advantage estimators: one registry, one signature.

Every estimator maps ``rewards`` of shape ``(n_questions, group_size)`` (the rollouts
of a question form its group) to advantages of the same shape::

    estimator(rewards, *, values=None, answers=None, log_probs=None, **options) -> advantages

``values`` (a learned baseline, broadcastable to ``rewards``) is used by estimators
registered with ``requires_values``; ``answers`` (each rollout's answer, e.g. its
probability q) by those with ``requires_answers``; ``log_probs`` (each rollout's log
probability under the sampling policy) by those with ``requires_log_probs``. Every
estimator also registers ``theory``: what :mod:`bioreason.rl.theory` says its update
targets for a proper scoring-rule reward (``"unbiased"``, ``"group_std"`` or ``"none"``,
or a function of the estimator's options returning one of them). Look estimators up
with :func:`get_advantage`, which also understands ``"h_target:<target>"``.

**Validation.** :func:`register_advantage` wraps every estimator in one check, so a
registered estimator (the built-in ones and yours) never sees bad input: ``rewards``
must be a real-valued tensor of shape ``(n_questions, group_size)`` with at least one
question and one rollout, and finite; ``values`` must be finite and of shape
``(n_questions, 1)``, ``(n_questions, group_size)`` or a scalar; ``answers`` and
``log_probs`` finite and of the shape of ``rewards``; the advantages returned must
have the shape of ``rewards`` and be finite (huge rewards can overflow an estimator's
arithmetic). A violation raises a ValueError (TypeError for non-numbers) that names
the estimator and the first offending question (row). The checks are one vectorised
reduction per tensor; the row is located only on failure.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from bioreason.registry import Registry
from bioreason.rl.bernstein import fit_bernstein_coefficients

__all__ = [
    "ADVANTAGES",
    "H_TARGETS",
    "THEORY_KINDS",
    "AdvantageEstimator",
    "HTarget",
    "gae",
    "get_advantage",
    "grpo",
    "grpo_batch_std",
    "grpo_no_std",
    "h_target",
    "h_target_coefficients",
    "parse_method",
    "ppo",
    "register_advantage",
    "reinforce",
    "rejection_sampling",
    "rloo",
    "seed_grpo",
    "semantic_entropy",
]


class AdvantageEstimator(Protocol):
    """The signature every registered estimator has (options bound by
    :func:`get_advantage`)."""

    def __call__(
        self,
        rewards: Tensor,
        *,
        values: Tensor | None = None,
        answers: Tensor | None = None,
        log_probs: Tensor | None = None,
    ) -> Tensor: ...


#: Advantage estimators by name. Metadata: ``requires_values``, ``requires_answers``,
#: ``requires_log_probs`` (bool) and ``theory`` (see the module docstring).
ADVANTAGES: Registry[Callable[..., Tensor]] = Registry("advantage estimator")

#: The scoring-rule theories an estimator may declare (see :mod:`bioreason.rl.theory`).
THEORY_KINDS = ("unbiased", "group_std", "none")


def register_advantage(
    name: str,
    *,
    requires_values: bool = False,
    requires_answers: bool = False,
    requires_log_probs: bool = False,
    theory: str | Callable[[dict[str, Any]], str] | None = None,
    overwrite: bool = False,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: add an estimator to :data:`ADVANTAGES` under ``name``.

    Parameters
    ----------
    name : str
        Registry name.
    requires_values, requires_answers, requires_log_probs : bool
        Which of ``values``, ``answers``, ``log_probs`` a trainer must pass.
    theory : str or callable, optional
        What the estimator's expected update targets for a proper scoring-rule reward:
        ``"unbiased"`` (the true probability), ``"group_std"`` (GRPO's distorted
        probability, the reward divided by its spread within the question's group),
        ``"none"`` (no theory; reported as NaN), or a function of the estimator's
        options that returns one of these. Left out, asking the theory module about
        this estimator raises an error that says so.
    overwrite : bool
        Replace an estimator already registered under ``name``.

    Returns
    -------
    A decorator that returns the estimator wrapped in the shared input checks (module
    docstring); the registry holds the wrapped function.
    """
    if isinstance(theory, str) and theory not in THEORY_KINDS:
        raise ValueError(
            f"theory must be one of {list(THEORY_KINDS)} or a callable, got {theory!r}"
        )

    def add(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        checked = _validated(fn, name)
        ADVANTAGES.register(
            name,
            checked,
            overwrite=overwrite,
            requires_values=requires_values,
            requires_answers=requires_answers,
            requires_log_probs=requires_log_probs,
            theory=theory,
        )
        return checked

    return add


# ----- the shared input checks -----------------------------------------------------


def _real_tensor(value: Any, name: str, where: str, dtype: torch.dtype | None = None) -> Tensor:
    try:
        tensor = torch.as_tensor(value) if dtype is None else torch.as_tensor(value, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{where}: {name} must be a tensor of real numbers, got {type(value).__name__} ({err})"
        ) from None
    if tensor.is_complex():
        raise TypeError(f"{where}: {name} must be a tensor of real numbers, got {tensor.dtype}")
    if not tensor.is_floating_point():  # bool and integer tensors
        tensor = tensor.to(torch.float64)
    return tensor


def _first_bad_row(ok: Tensor) -> tuple[int, int]:
    """(first row with a False entry, number of such rows) of a 2-d bool tensor."""
    bad_rows = (~ok).reshape(ok.shape[0], -1).any(1).nonzero()[:, 0]
    return int(bad_rows[0]), int(bad_rows.numel())


def _all_finite(tensor: Tensor) -> bool:
    """Whether every entry is finite, by one sum: a sum of finite numbers is never NaN,
    and it is finite unless it overflows (then the exact, slower check decides): one
    reduction instead of a boolean tensor the size of the input."""
    return math.isfinite(tensor.sum().item()) or bool(torch.isfinite(tensor).all())


def _require_finite(tensor: Tensor, name: str, where: str, unit: str = "question") -> None:
    """One reduction; the offending row is located only when the check fails."""
    if _all_finite(tensor):
        return
    row, n_rows = _first_bad_row(torch.isfinite(tensor))
    values = tensor[row].reshape(-1)
    first = values[~torch.isfinite(values)][0].item()
    raise ValueError(
        f"{where}: {name} of {unit} {row} (row {row}) are not finite ({first}); "
        f"{n_rows} of {tensor.shape[0]} {unit}s have NaN or inf {name}. "
        "Give such rollouts a finite reward (e.g. a floor, as score_answers does for "
        "invalid answers) or drop the question"
    )


def _check_rewards(rewards: Any, where: str) -> Tensor:
    rewards = _real_tensor(rewards, "rewards", where)
    if rewards.ndim != 2:
        raise ValueError(
            f"{where}: rewards must have shape (n_questions, group_size), got "
            f"{tuple(rewards.shape)}; for one question pass rewards[None, :]"
        )
    if rewards.numel() == 0:
        raise ValueError(
            f"{where}: rewards is empty (shape {tuple(rewards.shape)}); need at least one "
            "question and one rollout"
        )
    _require_finite(rewards, "rewards", where)
    return rewards


def _check_values(values: Any, rewards: Tensor, where: str) -> Tensor:
    values = _real_tensor(values, "values", where, rewards.dtype)
    n_questions, group = rewards.shape
    if tuple(values.shape) not in ((), (n_questions, 1), (n_questions, group)):
        raise ValueError(
            f"{where}: values must have shape ({n_questions}, 1) (one baseline per question), "
            f"({n_questions}, {group}) (one per rollout) or be a scalar, got "
            f"{tuple(values.shape)}; a 1-d values would broadcast along the group axis, "
            "use values[:, None]"
        )
    if values.ndim:
        _require_finite(values, "values", where)
    elif not _all_finite(values):
        raise ValueError(f"{where}: values must be finite, got {values.item()}")
    return values


def _check_per_rollout(tensor: Any, rewards: Tensor, name: str, where: str) -> Tensor:
    tensor = _real_tensor(tensor, name, where)
    if tensor.shape != rewards.shape:
        raise ValueError(
            f"{where}: {name} must have shape {tuple(rewards.shape)} like rewards (one per "
            f"rollout), got {tuple(tensor.shape)}"
        )
    _require_finite(tensor, name, where)
    return tensor


def _validated(fn: Callable[..., Tensor], name: str) -> Callable[..., Tensor]:
    """``fn`` behind the shared checks of its inputs and output (module docstring)."""

    @functools.wraps(fn)
    def estimator(
        rewards: Tensor,
        *,
        values: Tensor | None = None,
        answers: Tensor | None = None,
        log_probs: Tensor | None = None,
        **options: Any,
    ) -> Tensor:
        rewards = _check_rewards(rewards, name)
        if values is not None:
            values = _check_values(values, rewards, name)
        if answers is not None:
            answers = _check_per_rollout(answers, rewards, "answers", name)
        if log_probs is not None:
            log_probs = _check_per_rollout(log_probs, rewards, "log_probs", name)
        advantages = fn(rewards, values=values, answers=answers, log_probs=log_probs, **options)
        if not isinstance(advantages, Tensor) or advantages.shape != rewards.shape:
            shape = tuple(getattr(advantages, "shape", ()))
            raise ValueError(
                f"{name} returned advantages of shape {shape}, expected the shape of "
                f"rewards {tuple(rewards.shape)}; an estimator must return one advantage "
                "per rollout"
            )
        if not _all_finite(advantages):
            row, n_rows = _first_bad_row(torch.isfinite(advantages))
            raise ValueError(
                f"{name}: the advantages of question {row} (row {row}) are not finite "
                f"({n_rows} questions affected) although its rewards are: rewards up to "
                f"|r| = {float(rewards.abs().max()):.3g} overflow the estimator's "
                "arithmetic; rescale the rewards"
            )
        return advantages

    return estimator


def _as_group(rewards: Tensor, min_group: int = 1, where: str = "this estimator") -> Tensor:
    """Rewards as a float tensor of shape (n_questions, group_size >= min_group)."""
    rewards = torch.as_tensor(rewards)
    if rewards.ndim != 2:
        raise ValueError(
            f"{where}: rewards must have shape (n_questions, group_size), "
            f"got {tuple(rewards.shape)}"
        )
    if rewards.shape[1] < min_group:
        raise ValueError(f"{where} needs group_size >= {min_group}, got {rewards.shape[1]}")
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.float64)
    return rewards


def _require_probabilities(tensor: Tensor, name: str, where: str) -> None:
    if tensor.numel():
        low, high = (bound.item() for bound in torch.aminmax(tensor))  # one pass
        if low >= 0 and high <= 1:  # False when NaN is present
            return
    inside = (tensor >= 0) & (tensor <= 1)  # False for NaN
    if not bool(inside.all()):
        row, n_rows = _first_bad_row(inside)
        raise ValueError(
            f"{where}: {name} of question {row} (row {row}) are not probabilities in "
            f"[0, 1] ({tensor[row].tolist()[:8]}); {n_rows} questions affected"
        )


def _check_int(value: Any, name: str, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_eps(eps: Any, where: str) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.number)):
        raise TypeError(f"{where}: eps must be a number >= 0, got {eps!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{where}: eps must be a finite number >= 0, got {eps}")
    return float(eps)


# Every estimator below takes rewards of shape (n_questions, group_size) and returns
# advantages of the same shape; the keyword-only inputs it does not use are ignored.


@register_advantage("reinforce", theory="unbiased")
def reinforce(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
) -> Tensor:
    """REINFORCE without a baseline: ``A_i = R_i``."""
    return _as_group(rewards).clone()


@register_advantage("rloo", theory="unbiased")
def rloo(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
) -> Tensor:
    """REINFORCE leave-one-out: ``A_i = R_i - mean_{j != i} R_j`` (Kool et al. 2019)."""
    rewards = _as_group(rewards, 2, "rloo")
    group = rewards.shape[1]
    return (rewards - rewards.sum(1, keepdim=True) / group) * (group / (group - 1))


@register_advantage("grpo_no_std", theory="unbiased")
def grpo_no_std(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
) -> Tensor:
    """Mean-centred rewards without std normalisation (Dr. GRPO): ``A_i = R_i - mean R``."""
    rewards = _as_group(rewards)
    return rewards - rewards.mean(1, keepdim=True)


def _group_std(rewards: Tensor, ddof: int, where: str = "grpo") -> tuple[Tensor, Tensor]:
    group = rewards.shape[1]
    ddof = _check_int(ddof, "ddof", where, 0)
    if not ddof < group:
        raise ValueError(
            f"{where}: ddof must be in [0, group_size), got ddof={ddof}, group_size={group}; "
            "use group_size >= 2, or ddof=0 (a group of one then gets advantage 0)"
        )
    centred = rewards - rewards.mean(1, keepdim=True)
    std = ((centred * centred).sum(1, keepdim=True) / (group - ddof)).sqrt()
    if not _all_finite(std):  # squares of huge rewards overflow to inf
        _raise_overflow(torch.isfinite(std), rewards, where)
    return centred, std


def _raise_overflow(ok: Tensor, rewards: Tensor, where: str) -> None:
    row, n_rows = _first_bad_row(ok)
    raise ValueError(
        f"{where}: the standard deviation of the rewards of question {row} (row {row}) is "
        f"not finite ({n_rows} questions affected): rewards up to "
        f"|r| = {float(rewards.abs().max()):.3g} overflow; rescale the rewards"
    )


@register_advantage("grpo", theory="group_std")
def grpo(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
    ddof: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """GRPO (Shao et al. 2024): ``A_i = (R_i - mean R) / (std R + eps)``, per group.

    A group whose rewards are all equal gets zero advantages (never NaN), whatever ``eps``.
    ``ddof`` is an integer in [0, group_size); ``eps`` a finite number >= 0.
    """
    eps = _check_eps(eps, "grpo")
    rewards = _as_group(rewards)
    centred, std = _group_std(rewards, ddof, "grpo")
    constant = rewards.amax(1, keepdim=True) == rewards.amin(1, keepdim=True)
    safe = torch.where(constant, torch.ones_like(std), std + eps)
    return torch.where(constant, torch.zeros_like(centred), centred / safe)


@register_advantage("grpo_batch_std", theory="unbiased")
def grpo_batch_std(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
    ddof: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """Group-mean-centred rewards divided by the std of *all* rewards in the batch.

    ``A_qi = (R_qi - mean_j R_qj) / (std_{q', j} R_q'j + eps)``: TRL's
    ``scale_rewards="batch"``. Every question of the batch shares one scale, which does
    not depend on that question's outcome, so the update stays unbiased for a proper
    scoring rule (up to a positive factor), unlike GRPO's per-group scale. A batch
    whose rewards are all equal gets zero advantages.
    """
    eps = _check_eps(eps, "grpo_batch_std")
    rewards = _as_group(rewards)
    n = rewards.numel()
    ddof = _check_int(ddof, "ddof", "grpo_batch_std", 0)
    if not ddof < n:
        raise ValueError(
            f"grpo_batch_std: ddof must be in [0, n_rewards), got ddof={ddof}, n_rewards={n}"
        )
    centred = rewards - rewards.mean(1, keepdim=True)
    batch_centred = rewards - rewards.mean()
    std = ((batch_centred * batch_centred).sum() / (n - ddof)).sqrt()
    if not bool(torch.isfinite(std)):
        raise ValueError(
            "grpo_batch_std: the standard deviation of the batch's rewards is not finite: "
            f"rewards up to |r| = {float(rewards.abs().max()):.3g} overflow; rescale the rewards"
        )
    if float(rewards.max() - rewards.min()) == 0.0:
        return torch.zeros_like(rewards)
    return centred / (std + eps)


@register_advantage("ppo", requires_values=True, theory="unbiased")
def ppo(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
) -> Tensor:
    """Learned-baseline advantage ``A_i = R_i - V`` (one-step PPO; see :func:`gae` for tokens).

    ``values``: shape ``(n_questions, 1)`` (one baseline per question),
    ``(n_questions, group_size)`` or a scalar (checked by the shared validation).
    """
    rewards = _as_group(rewards)
    if values is None:
        raise ValueError(
            "the 'ppo' estimator needs values (a learned baseline), shape (n_questions, 1); "
            "pass values=..."
        )
    return rewards - torch.as_tensor(values, dtype=rewards.dtype)


@register_advantage("rejection_sampling", theory="none")
def rejection_sampling(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
) -> Tensor:
    """Rejection-sampling fine-tuning: the accepted (reward 1) rollouts share weight equally.

    ``A_i = M R_i / max(1, sum_j R_j)`` for 0/1 rewards, so a group with k successes puts
    weight M/k on each (an SFT loss averaged over accepted samples). Its objective tends
    to ``log p``. Rewards must be 0/1 (accepted or not); others raise a ValueError
    naming the question.
    """
    rewards = _as_group(rewards)
    if int(torch.count_nonzero(rewards * (1 - rewards))):  # r (1 - r) = 0 only for 0/1
        row, n_rows = _first_bad_row((rewards == 0) | (rewards == 1))
        raise ValueError(
            f"rejection_sampling: rewards of question {row} (row {row}) are not 0/1 "
            f"({rewards[row].tolist()[:8]}...); {n_rows} questions affected. Rejection "
            "sampling needs a 0/1 (accept/reject) reward such as correctness_reward; "
            "for scoring-rule rewards use grpo, rloo or reinforce"
        )
    group = rewards.shape[1]
    successes = rewards.sum(1, keepdim=True).clamp(min=1.0)
    return group * rewards / successes


# ----- h-targeted estimator (Davis & Recht 2025) ---------------------------------


class HTarget:
    """A target objective ``h`` on (0, 1) and its derivative ``h'``."""

    def __init__(
        self,
        h: Callable[[np.ndarray], np.ndarray],
        h_prime: Callable[[np.ndarray], np.ndarray] | None = None,
        name: str = "custom",
    ) -> None:
        self.h = h
        self.name = name
        self.h_prime = h_prime or self._central_difference

    def _central_difference(self, t: np.ndarray) -> np.ndarray:
        step = 1e-6 * np.maximum(1.0, np.abs(t))
        return (np.asarray(self.h(t + step)) - np.asarray(self.h(t - step))) / (2 * step)

    def __repr__(self) -> str:
        return f"HTarget({self.name})"


H_TARGETS: dict[str, HTarget] = {
    "identity": HTarget(lambda t: t, lambda t: np.ones_like(t), "identity"),
    "log": HTarget(np.log, lambda t: 1 / t, "log"),
    "arcsin": HTarget(
        lambda t: 2 * np.arcsin(np.sqrt(t)), lambda t: 1 / np.sqrt(t * (1 - t)), "arcsin"
    ),
    "log_odds": HTarget(lambda t: np.log(t / (1 - t)), lambda t: 1 / (t * (1 - t)), "log_odds"),
}


def _resolve_target(target: str | HTarget | Callable[[np.ndarray], np.ndarray]) -> HTarget:
    if isinstance(target, HTarget):
        return target
    if isinstance(target, str):
        if target not in H_TARGETS:
            raise ValueError(
                f"unknown h target {target!r}; choose one of {sorted(H_TARGETS)} "
                "or pass a callable h(t)"
            )
        return H_TARGETS[target]
    if callable(target):
        return HTarget(target, name=getattr(target, "__name__", "custom"))
    raise TypeError(f"target must be a name, an HTarget or a callable h(t), got {target!r}")


@functools.lru_cache(maxsize=64)
def _cached_coefficients(target: HTarget, group_size: int) -> Tensor:
    return fit_bernstein_coefficients(target.h_prime, group_size - 1)


def h_target_coefficients(
    target: str | HTarget | Callable[[np.ndarray], np.ndarray], group_size: int
) -> Tensor:
    """Coefficients ``a_s = f(1, s) - f(0, s)``, ``s = 0..M-1``, whose Bernstein polynomial
    approximates ``h'`` (exactly when ``h'`` is a polynomial of degree < M).

    Returns
    -------
    Tensor, shape (group_size,)
    """
    group_size = _check_int(group_size, "group_size", "h_target_coefficients", 1)
    if group_size < 2:
        raise ValueError(f"h_target needs group_size >= 2, got {group_size}")
    return _cached_coefficients(_resolve_target(target), group_size).clone()


@register_advantage("h_target", theory="none")
def h_target(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
    target: str | HTarget | Callable[[np.ndarray], np.ndarray] = "log",
    reward_range: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """h-targeted estimator (Davis & Recht 2025): ``Z_i = a(S_i) (R_i - S_i / (M - 1))``.

    ``S_i`` is the leave-one-out reward sum and ``a_s`` come from
    :func:`h_target_coefficients`, so for 0/1 rewards the expected update is
    ``h_M'(p) grad p`` with ``h_M' ~= h'``. The leave-one-out baseline does not change the
    expectation (only ``f(1, s) - f(0, s)`` matters) but lowers the variance.

    Rewards outside {0, 1} are first mapped to [0, 1] by ``reward_range`` and ``a`` is
    interpolated linearly between integer ``S``; the theory holds for 0/1 rewards only.
    """
    rewards = _as_group(rewards, 2, "h_target")
    try:
        low, high = (float(bound) for bound in reward_range)
    except (TypeError, ValueError):
        raise TypeError(
            f"h_target: reward_range must be two numbers (low, high), got {reward_range!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(
            f"h_target: reward_range must be finite (low, high) with high > low, got {reward_range}"
        )
    scaled = (rewards - low) / (high - low)
    inside = (scaled >= -1e-9) & (scaled <= 1 + 1e-9)
    if not bool(inside.all()):
        row, n_rows = _first_bad_row(inside)
        raise ValueError(
            f"h_target: rewards of question {row} (row {row}) fall outside "
            f"reward_range={reward_range} ({n_rows} questions affected); "
            "pass the reward's true range"
        )
    group = rewards.shape[1]
    coefficients = h_target_coefficients(target, group).to(rewards.dtype)
    loo_sum = scaled.sum(1, keepdim=True) - scaled  # S_i in [0, M-1]
    position = loo_sum.clamp(0, group - 1)
    lower = position.floor().long().clamp(max=group - 2)
    frac = position - lower
    weight = coefficients[lower] * (1 - frac) + coefficients[lower + 1] * frac
    return weight * (scaled - loo_sum / (group - 1))


# ----- SEED-GRPO (Chen et al. 2025) ----------------------------------------------

_SEED_BASES = ("grpo_no_std", "grpo")


def semantic_entropy(answers: Tensor, log_probs: Tensor | None = None, n_bins: int = 10) -> Tensor:
    """Semantic entropy of each group's answers, clustered by meaning.

    A probability answer q in [0, 1] falls in cluster ``floor(q * n_bins)``. With
    ``log_probs``, a cluster's probability is the policy mass of the distinct answers
    sampled in it, normalised over the group's clusters (Kuhn et al. 2023; SEED-GRPO):
    ``p(C) = sum_{distinct o in C} pi(o) / sum_{distinct o} pi(o)``. Two rollouts count
    as the same sequence when both their answer and their log-probability agree.
    Without ``log_probs``, a cluster's probability is its share of the rollouts.

    Parameters
    ----------
    answers : Tensor, shape (n_questions, group_size)
        Probabilities in [0, 1].
    log_probs : Tensor, shape (n_questions, group_size), optional
        Log-probability of each rollout under the policy that sampled it.
    n_bins : int
        Clusters on [0, 1].

    Returns
    -------
    Tensor, shape (n_questions, 1)
    """
    where = "semantic_entropy"
    n_bins = _check_int(n_bins, "n_bins", where, 1)
    answers = _real_tensor(answers, "answers", where, torch.float64)
    if answers.ndim != 2:
        raise ValueError(
            f"{where}: answers must have shape (n_questions, group_size), "
            f"got {tuple(answers.shape)}"
        )
    _require_probabilities(answers, "answers", where)
    n_questions, group = answers.shape
    clusters = (answers * n_bins).floor().long().clamp(0, n_bins - 1)
    if log_probs is None:
        weight = torch.ones_like(answers)
    else:
        log_probs = _real_tensor(log_probs, "log_probs", where, torch.float64)
        if log_probs.shape != answers.shape:
            raise ValueError(
                f"{where}: log_probs must have the shape of answers {tuple(answers.shape)}, "
                f"got {tuple(log_probs.shape)}"
            )
        _require_finite(log_probs, "log_probs", where)
        same = (answers[:, :, None] == answers[:, None, :]) & (
            log_probs[:, :, None] == log_probs[:, None, :]
        )
        # each distinct sequence counts once: its copies share its probability
        weight = log_probs.exp() / same.sum(2).to(torch.float64)
    mass = torch.zeros(n_questions, n_bins, dtype=torch.float64)
    mass.scatter_add_(1, clusters, weight)
    mass = mass / mass.sum(1, keepdim=True).clamp(min=1e-300)
    return -torch.xlogy(mass, mass).sum(1, keepdim=True)


def _seed_theory(options: dict[str, Any]) -> str:
    # the entropy scale multiplies both outcomes' terms alike, so the base decides
    return ADVANTAGES.metadata(options.get("base", "grpo_no_std"))["theory"]


@register_advantage(
    "seed_grpo", requires_answers=True, requires_log_probs=True, theory=_seed_theory
)
def seed_grpo(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
    base: str = "grpo_no_std",
    alpha: float = 1.0,
    n_bins: int = 10,
    ddof: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """SEED-GRPO (Chen et al. 2025): a base advantage scaled by ``1 - alpha SE / SE_max``.

    ``SE`` is the semantic entropy of the group's answers (:func:`semantic_entropy`,
    from the clusters' probability mass when ``log_probs`` are given) and
    ``SE_max = log(group_size)``, the entropy of a group whose rollouts all differ in
    meaning (the paper's normalisation). ``alpha`` in [0, 1]; 0 is the base estimator.

    Parameters
    ----------
    rewards : Tensor, shape (n_questions, group_size)
    answers : Tensor, shape (n_questions, group_size)
        Probabilities in [0, 1], clustered into ``n_bins`` equal-width bins.
    log_probs : Tensor, shape (n_questions, group_size), optional
        Each rollout's log-probability under the sampling policy.
    base : {"grpo_no_std", "grpo"}
        The advantage that is scaled: the published method's mean-centred
        ``R_i - mean R`` (default), or GRPO's std-normalised one.
    ddof, eps
        Passed to :func:`grpo` when ``base="grpo"``.

    Returns
    -------
    Tensor, shape (n_questions, group_size)
    """
    if answers is None:
        raise ValueError("seed_grpo needs each rollout's answer (answers=...) to cluster them")
    if base not in _SEED_BASES:
        raise ValueError(f"seed_grpo: base must be one of {list(_SEED_BASES)}, got {base!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
        raise TypeError(f"seed_grpo: alpha must be a number in [0, 1], got {alpha!r}")
    if not 0 <= alpha <= 1:  # False for NaN
        raise ValueError(f"seed_grpo: alpha must be in [0, 1], got {alpha}")
    n_bins = _check_int(n_bins, "n_bins", "seed_grpo", 2)
    rewards = _as_group(rewards)
    answers = torch.as_tensor(answers, dtype=torch.float64)
    if answers.shape != rewards.shape:
        raise ValueError(
            f"seed_grpo: answers must have the shape of rewards {tuple(rewards.shape)}, "
            f"got {tuple(answers.shape)}"
        )
    _require_probabilities(answers, "answers", "seed_grpo")
    group = rewards.shape[1]
    entropy = semantic_entropy(answers, log_probs, n_bins)
    max_entropy = math.log(group)
    scale = 1 - alpha * entropy / max_entropy if max_entropy > 0 else torch.ones_like(entropy)
    if base == "grpo":
        advantages = grpo(rewards, ddof=ddof, eps=eps)
    else:
        advantages = grpo_no_std(rewards)
    return advantages * scale.to(rewards.dtype)


def _option_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_method(name: str) -> tuple[str, dict[str, Any]]:
    """Split a method name into the registry name and the options it carries.

    ``"grpo"`` -> ``("grpo", {})``; ``"seed_grpo:base=grpo,alpha=0.5"`` ->
    ``("seed_grpo", {"base": "grpo", "alpha": 0.5})``; ``"h_target:log"`` ->
    ``("h_target", {"target": "log"})`` (a bare part is h_target's target). Values are
    read as bool, int or float where they parse as one, else kept as strings.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a method name must be a non-empty string, got {name!r}")
    base, _, suffix = name.partition(":")
    options: dict[str, Any] = {}
    for part in filter(None, suffix.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            if base != "h_target":
                raise ValueError(
                    f"only h_target takes a ':<target>' suffix, got {name!r}; "
                    "give other options as ':key=value'"
                )
            key, value = "target", part
        options[key.strip()] = _option_value(value.strip()) if sep else value
    return base, options


def get_advantage(name: str, **options: Any) -> Callable[..., Tensor]:
    """Look up an estimator by method name, binding ``options``.

    The name may carry options (:func:`parse_method`): ``"h_target:log"`` is
    ``h_target`` with ``target="log"``, ``"seed_grpo:base=grpo"`` is ``seed_grpo`` with
    ``base="grpo"``; keyword ``options`` are added to those. Unknown names or options
    raise a ValueError/TypeError that lists what is accepted. The returned callable
    carries the registry metadata as attributes (``requires_values``,
    ``requires_answers``, ``requires_log_probs``) plus ``name``, ``base_name``,
    ``options`` and ``accepted_options``.
    """
    base = name.partition(":")[0] if isinstance(name, str) else name
    if base not in ADVANTAGES:
        raise ValueError(
            f"unknown advantage estimator {name!r}; choose one of {sorted(ADVANTAGES)} "
            f"(h_target takes a target: h_target:<{'|'.join(sorted(H_TARGETS))}>)"
        )
    base, named_options = parse_method(name)
    if "target" in named_options and base == "h_target":
        _resolve_target(named_options["target"])
    options = {**named_options, **options}
    fn = ADVANTAGES[base]
    accepted = set(inspect.signature(fn).parameters) - {
        "rewards",
        "values",
        "answers",
        "log_probs",
    }
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"estimator {base!r} does not take option(s) {unknown}; it takes {sorted(accepted)}"
        )
    bound = functools.partial(fn, **options)
    metadata = ADVANTAGES.metadata(base)
    bound.requires_values = metadata["requires_values"]  # type: ignore[attr-defined]
    bound.requires_answers = metadata["requires_answers"]  # type: ignore[attr-defined]
    bound.requires_log_probs = metadata["requires_log_probs"]  # type: ignore[attr-defined]
    bound.name = name  # type: ignore[attr-defined]
    bound.base_name = base  # type: ignore[attr-defined]
    bound.options = dict(options)  # type: ignore[attr-defined]
    bound.accepted_options = frozenset(accepted)  # type: ignore[attr-defined]
    return bound


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over tokens (Schulman et al. 2016).

    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, with
    the value after the last valid token taken as 0 (the episode ends).

    Parameters
    ----------
    rewards, values : Tensor, shape (batch, n_tokens)
        Per-token rewards (an outcome reward sits on the last valid token) and values.
    mask : Tensor of bool, shape (batch, n_tokens), optional
        Valid tokens (a right-padded completion). Padding gets advantage 0.

    Returns
    -------
    advantages, returns : Tensor, shape (batch, n_tokens)
        ``returns = advantages + values`` (the value targets).

    Raises
    ------
    ValueError
        Shapes other than (batch, n_tokens) or that differ, NaN/inf rewards or values
        (naming the sequence), ``gamma``/``lam`` outside [0, 1].
    """
    rewards = _real_tensor(rewards, "rewards", "gae")
    values = _real_tensor(values, "values", "gae")
    if rewards.ndim != 2:
        raise ValueError(
            f"gae: rewards must have shape (batch, n_tokens), got {tuple(rewards.shape)}"
        )
    if rewards.shape != values.shape:
        raise ValueError(
            f"gae: rewards {tuple(rewards.shape)} and values {tuple(values.shape)} must match"
        )
    for name, value in (("gamma", gamma), ("lam", lam)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"gae: {name} must be a number in [0, 1], got {value!r}")
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):  # False for NaN
        raise ValueError(f"gae: gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    if rewards.numel():
        _require_finite(rewards, "rewards", "gae", "sequence")
        _require_finite(values, "values", "gae", "sequence")
    if mask is not None:
        mask = torch.as_tensor(mask)
        if mask.shape != rewards.shape:
            raise ValueError(
                f"gae: mask must have shape {tuple(rewards.shape)} like rewards, "
                f"got {tuple(mask.shape)}"
            )
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("gae: mask must be 0/1 (or bool): 1 marks a valid token")
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    maskf = mask.to(rewards.dtype)
    n_tokens = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    # a loop over tokens (not samples): each step is vectorised over the batch
    for t in range(n_tokens - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        current = (delta + gamma * lam * next_advantage) * maskf[:, t]
        advantages[:, t] = current
        next_value = torch.where(mask[:, t], values[:, t], next_value)
        next_advantage = torch.where(mask[:, t], current, next_advantage)
    return advantages, (advantages + values) * maskf
