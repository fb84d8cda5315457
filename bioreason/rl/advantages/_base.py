"""The registry of advantage estimators, the one signature they share, and the checks
every registered estimator's inputs and output pass (see :mod:`bioreason.rl.advantages`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from bioreason.registry import Registry
from bioreason.rl._checks import all_finite, first_bad_row, real_tensor, require_finite


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


def _check_rewards(rewards: Any, where: str) -> Tensor:
    rewards = real_tensor(rewards, "rewards", where)
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
    require_finite(rewards, "rewards", where)
    return rewards


def _check_values(values: Any, rewards: Tensor, where: str) -> Tensor:
    values = real_tensor(values, "values", where, rewards.dtype)
    n_questions, group = rewards.shape
    if tuple(values.shape) not in ((), (n_questions, 1), (n_questions, group)):
        raise ValueError(
            f"{where}: values must have shape ({n_questions}, 1) (one baseline per question), "
            f"({n_questions}, {group}) (one per rollout) or be a scalar, got "
            f"{tuple(values.shape)}; a 1-d values would broadcast along the group axis, "
            "use values[:, None]"
        )
    if values.ndim:
        require_finite(values, "values", where)
    elif not all_finite(values):
        raise ValueError(f"{where}: values must be finite, got {values.item()}")
    return values


def _check_per_rollout(tensor: Any, rewards: Tensor, name: str, where: str) -> Tensor:
    tensor = real_tensor(tensor, name, where)
    if tensor.shape != rewards.shape:
        raise ValueError(
            f"{where}: {name} must have shape {tuple(rewards.shape)} like rewards (one per "
            f"rollout), got {tuple(tensor.shape)}"
        )
    require_finite(tensor, name, where)
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
        if not all_finite(advantages):
            row, n_rows = first_bad_row(torch.isfinite(advantages))
            raise ValueError(
                f"{name}: the advantages of question {row} (row {row}) are not finite "
                f"({n_rows} questions affected) although its rewards are: rewards up to "
                f"|r| = {float(rewards.abs().max()):.3g} overflow the estimator's "
                "arithmetic; rescale the rewards"
            )
        return advantages

    return estimator


def as_group(rewards: Tensor, min_group: int = 1, where: str = "this estimator") -> Tensor:
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


def check_eps(eps: Any, where: str) -> float:
    """``eps`` as a finite float >= 0."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.number)):
        raise TypeError(f"{where}: eps must be a number >= 0, got {eps!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{where}: eps must be a finite number >= 0, got {eps}")
    return float(eps)
