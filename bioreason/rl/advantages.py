"""Advantage estimators: one registry, one signature.

Every estimator maps ``rewards`` of shape ``(n_questions, group_size)`` (the rollouts
of a question form its group) to advantages of the same shape::

    estimator(rewards, *, values=None, answers=None, **options) -> advantages

``values`` (a learned baseline, broadcastable to ``rewards``) is used by estimators
flagged ``requires_values``; ``answers`` (each rollout's answer, e.g. its probability q)
by those flagged ``requires_answers``. Look estimators up with :func:`get_advantage`,
which also understands ``"h_target:<target>"``.
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

from bioreason.rl.bernstein import fit_bernstein_coefficients

__all__ = [
    "ADVANTAGES",
    "H_TARGETS",
    "AdvantageEstimator",
    "HTarget",
    "gae",
    "get_advantage",
    "grpo",
    "grpo_no_std",
    "h_target",
    "h_target_coefficients",
    "ppo",
    "register_advantage",
    "reinforce",
    "rejection_sampling",
    "rloo",
    "seed_grpo",
]


class AdvantageEstimator(Protocol):
    def __call__(
        self, rewards: Tensor, *, values: Tensor | None = None, answers: Tensor | None = None
    ) -> Tensor: ...


ADVANTAGES: dict[str, Callable[..., Tensor]] = {}


def register_advantage(
    name: str, *, requires_values: bool = False, requires_answers: bool = False
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: add an estimator to :data:`ADVANTAGES` under ``name``."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        fn.requires_values = requires_values  # type: ignore[attr-defined]
        fn.requires_answers = requires_answers  # type: ignore[attr-defined]
        ADVANTAGES[name] = fn
        return fn

    return wrap


def _as_group(rewards: Tensor, min_group: int = 1) -> Tensor:
    rewards = torch.as_tensor(rewards)
    if rewards.ndim != 2:
        raise ValueError(
            f"rewards must have shape (n_questions, group_size), got {tuple(rewards.shape)}"
        )
    if rewards.shape[1] < min_group:
        raise ValueError(f"this estimator needs group_size >= {min_group}, got {rewards.shape[1]}")
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.float64)
    return rewards


@register_advantage("reinforce")
def reinforce(rewards: Tensor, *, values: Tensor | None = None, answers: Tensor | None = None):
    """REINFORCE without a baseline: ``A_i = R_i``."""
    return _as_group(rewards).clone()


@register_advantage("rloo")
def rloo(rewards: Tensor, *, values: Tensor | None = None, answers: Tensor | None = None):
    """REINFORCE leave-one-out: ``A_i = R_i - mean_{j != i} R_j`` (Kool et al. 2019)."""
    rewards = _as_group(rewards, 2)
    group = rewards.shape[1]
    return (rewards - rewards.sum(1, keepdim=True) / group) * (group / (group - 1))


@register_advantage("grpo_no_std")
def grpo_no_std(rewards: Tensor, *, values: Tensor | None = None, answers: Tensor | None = None):
    """Mean-centred rewards without std normalisation (Dr. GRPO): ``A_i = R_i - mean R``."""
    rewards = _as_group(rewards)
    return rewards - rewards.mean(1, keepdim=True)


def _group_std(rewards: Tensor, ddof: int) -> tuple[Tensor, Tensor]:
    group = rewards.shape[1]
    if not 0 <= ddof < group:
        raise ValueError(f"ddof must be in [0, group_size), got ddof={ddof}, group_size={group}")
    centred = rewards - rewards.mean(1, keepdim=True)
    std = ((centred * centred).sum(1, keepdim=True) / (group - ddof)).sqrt()
    return centred, std


@register_advantage("grpo")
def grpo(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    ddof: int = 1,
    eps: float = 1e-6,
):
    """GRPO (Shao et al. 2024): ``A_i = (R_i - mean R) / (std R + eps)``.

    A group whose rewards are all equal gets zero advantages (never NaN), whatever ``eps``.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    rewards = _as_group(rewards)
    centred, std = _group_std(rewards, ddof)
    constant = rewards.amax(1, keepdim=True) == rewards.amin(1, keepdim=True)
    safe = torch.where(constant, torch.ones_like(std), std + eps)
    return torch.where(constant, torch.zeros_like(centred), centred / safe)


@register_advantage("ppo", requires_values=True)
def ppo(rewards: Tensor, *, values: Tensor | None = None, answers: Tensor | None = None):
    """Learned-baseline advantage ``A_i = R_i - V`` (one-step PPO; see :func:`gae` for tokens).

    ``values`` must broadcast to ``rewards`` (e.g. shape ``(n_questions, 1)``).
    """
    rewards = _as_group(rewards)
    if values is None:
        raise ValueError("the 'ppo' estimator needs values (a learned baseline); pass values=...")
    return rewards - torch.as_tensor(values, dtype=rewards.dtype)


@register_advantage("rejection_sampling")
def rejection_sampling(
    rewards: Tensor, *, values: Tensor | None = None, answers: Tensor | None = None
):
    """Rejection-sampling fine-tuning: the accepted (reward 1) rollouts share weight equally.

    ``A_i = M R_i / max(1, sum_j R_j)`` for 0/1 rewards, so a group with k successes puts
    weight M/k on each (an SFT loss averaged over accepted samples). Its objective tends
    to ``log p``.
    """
    rewards = _as_group(rewards)
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
    if group_size < 2:
        raise ValueError(f"h_target needs group_size >= 2, got {group_size}")
    return _cached_coefficients(_resolve_target(target), group_size).clone()


@register_advantage("h_target")
def h_target(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    target: str | HTarget | Callable[[np.ndarray], np.ndarray] = "log",
    reward_range: tuple[float, float] = (0.0, 1.0),
):
    """h-targeted estimator (Davis & Recht 2025): ``Z_i = a(S_i) (R_i - S_i / (M - 1))``.

    ``S_i`` is the leave-one-out reward sum and ``a_s`` come from
    :func:`h_target_coefficients`, so for 0/1 rewards the expected update is
    ``h_M'(p) grad p`` with ``h_M' ~= h'``. The leave-one-out baseline does not change the
    expectation (only ``f(1, s) - f(0, s)`` matters) but lowers the variance.

    Rewards outside {0, 1} are first mapped to [0, 1] by ``reward_range`` and ``a`` is
    interpolated linearly between integer ``S``; the theory holds for 0/1 rewards only.
    """
    rewards = _as_group(rewards, 2)
    low, high = reward_range
    if not high > low:
        raise ValueError(f"reward_range must be (low, high) with high > low, got {reward_range}")
    scaled = (rewards - low) / (high - low)
    if bool((scaled < -1e-9).any()) or bool((scaled > 1 + 1e-9).any()):
        raise ValueError(
            f"h_target: rewards fall outside reward_range={reward_range}; "
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


@register_advantage("seed_grpo", requires_answers=True)
def seed_grpo(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    alpha: float = 1.0,
    n_bins: int = 10,
    ddof: int = 1,
    eps: float = 1e-6,
):
    """SEED-GRPO (Chen et al. 2025): GRPO advantages scaled by ``1 - alpha * H / H_max``.

    ``H`` is the semantic entropy of the group's answers, clustered by meaning; a
    probability answer q in [0, 1] falls in cluster ``floor(q * n_bins)``.
    ``H_max = log(min(group_size, n_bins))`` is the largest entropy a group can have.
    ``alpha`` in [0, 1]: 0 is plain GRPO.

    ``answers`` : Tensor, shape (n_questions, group_size), probabilities in [0, 1].
    """
    if answers is None:
        raise ValueError("seed_grpo needs each rollout's answer (answers=...) to cluster them")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    rewards = _as_group(rewards)
    answers = torch.as_tensor(answers, dtype=torch.float64)
    if answers.shape != rewards.shape:
        raise ValueError(
            f"answers must have the shape of rewards {tuple(rewards.shape)}, "
            f"got {tuple(answers.shape)}"
        )
    group = rewards.shape[1]
    clusters = (answers * n_bins).floor().long().clamp(0, n_bins - 1)
    counts = torch.zeros(rewards.shape[0], n_bins, dtype=torch.float64)
    counts.scatter_add_(1, clusters, torch.ones_like(answers))
    freq = counts / group
    entropy = -torch.xlogy(freq, freq).sum(1, keepdim=True)
    max_entropy = math.log(min(group, n_bins))
    scale = 1 - alpha * entropy / max_entropy if max_entropy > 0 else torch.ones_like(entropy)
    return grpo(rewards, ddof=ddof, eps=eps) * scale.to(rewards.dtype)


def get_advantage(name: str, **options: Any) -> Callable[..., Tensor]:
    """Look up an estimator by registry name, binding ``options``.

    ``"h_target:log"`` is ``h_target`` with ``target="log"``. Unknown names or options
    raise a ValueError/TypeError that lists what is accepted.
    """
    base, _, suffix = name.partition(":")
    if base not in ADVANTAGES:
        raise ValueError(
            f"unknown advantage estimator {name!r}; choose one of {sorted(ADVANTAGES)} "
            f"(h_target takes a target: h_target:<{'|'.join(sorted(H_TARGETS))}>)"
        )
    fn = ADVANTAGES[base]
    if suffix:
        if base != "h_target":
            raise ValueError(f"only h_target takes a ':<target>' suffix, got {name!r}")
        _resolve_target(suffix)
        options = {"target": suffix, **options}
    accepted = set(inspect.signature(fn).parameters) - {"rewards", "values", "answers"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"estimator {base!r} does not take option(s) {unknown}; it takes {sorted(accepted)}"
        )
    bound = functools.partial(fn, **options)
    bound.requires_values = fn.requires_values  # type: ignore[attr-defined]
    bound.requires_answers = fn.requires_answers  # type: ignore[attr-defined]
    bound.name = name  # type: ignore[attr-defined]
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
    """
    if rewards.shape != values.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and values {tuple(values.shape)} must match"
        )
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
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
