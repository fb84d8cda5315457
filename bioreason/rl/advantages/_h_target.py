"""The h-targeted estimator (Davis & Recht 2025): per-rollout weights whose Bernstein
polynomial approximates the derivative of a chosen objective h."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from torch import Tensor

from bioreason.rl._checks import check_int, first_bad_row
from bioreason.rl.advantages._base import as_group, register_advantage
from bioreason.rl.bernstein import fit_bernstein_coefficients


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


def resolve_target(target: str | HTarget | Callable[[np.ndarray], np.ndarray]) -> HTarget:
    """A target given by name, as an HTarget, or as a callable h(t), as an HTarget."""
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
    group_size = check_int(group_size, "group_size", "h_target_coefficients", 1)
    if group_size < 2:
        raise ValueError(f"h_target needs group_size >= 2, got {group_size}")
    return _cached_coefficients(resolve_target(target), group_size).clone()


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
    rewards = as_group(rewards, 2, "h_target")
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
        row, n_rows = first_bad_row(inside)
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
