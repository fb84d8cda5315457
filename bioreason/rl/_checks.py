"""The input checks the RL math shares: real tensors, integers, probabilities, finite
values. Each raises a TypeError (not a number) or ValueError (a bad value) that starts
with ``where`` (the public function's name) and names the argument; a tensor check is
one reduction, and the offending row or entry is located only when it fails."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

#: What :func:`require_finite` advises by default: the tensors of the advantage
#: estimators are per-rollout rewards.
FINITE_REWARD_ADVICE = (
    "Give such rollouts a finite reward (e.g. a floor, as score_answers does for "
    "invalid answers) or drop the question"
)


def real_tensor(value: Any, name: str, where: str, dtype: torch.dtype | None = None) -> Tensor:
    """``value`` as a tensor of real numbers: ``dtype`` when given, else its own floating
    dtype (bool and integer input become float64)."""
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{where}: {name} must be a tensor of real numbers, got {type(value).__name__} ({err})"
        ) from None
    if tensor.is_complex():
        raise TypeError(f"{where}: {name} must be a tensor of real numbers, got {tensor.dtype}")
    if dtype is not None:
        # converted from the input itself: a list of Python floats keeps its float64 digits
        return torch.as_tensor(value, dtype=dtype)
    return tensor if tensor.is_floating_point() else tensor.to(torch.float64)


def check_int(value: Any, name: str, where: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bool refused, numpy integers accepted)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value}")
    return int(value)


def unit_interval(value: Any, name: str, where: str) -> Tensor:
    """``value`` as a float64 tensor of values in [0, 1]; NaN refused, the first bad
    entry named by its flat index."""
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{where}: {name} must be real numbers ({err})") from None
    inside = (tensor >= 0) & (tensor <= 1)  # False for NaN
    if not bool(inside.all()):
        index = int((~inside.reshape(-1)).nonzero()[0])
        bad = tensor.reshape(-1)[index].item()
        raise ValueError(
            f"{where}: {name}[{index}] = {float(f'{bad:.7g}')!r}: {name} must lie in [0, 1]"
        )
    return tensor


def first_bad_row(ok: Tensor) -> tuple[int, int]:
    """(first row with a False entry, number of such rows) of a bool tensor of >= 1 dims."""
    bad_rows = (~ok).reshape(ok.shape[0], -1).any(1).nonzero()[:, 0]
    return int(bad_rows[0]), int(bad_rows.numel())


def all_finite(tensor: Tensor) -> bool:
    """Whether every entry is finite, by one sum: a sum of finite numbers is never NaN,
    and it is finite unless it overflows (then the exact, slower check decides): one
    reduction instead of a boolean tensor the size of the input."""
    return math.isfinite(tensor.sum().item()) or bool(torch.isfinite(tensor).all())


def require_finite(
    tensor: Tensor,
    name: str,
    where: str,
    unit: str = "question",
    advice: str = FINITE_REWARD_ADVICE,
) -> None:
    """Raise naming the first row (a ``unit``) of ``tensor`` that holds NaN or inf."""
    if all_finite(tensor):
        return
    row, n_rows = first_bad_row(torch.isfinite(tensor))
    values = tensor[row].reshape(-1)
    first = values[~torch.isfinite(values)][0].item()
    raise ValueError(
        f"{where}: {name} of {unit} {row} (row {row}) are not finite ({first}); "
        f"{n_rows} of {tensor.shape[0]} {unit}s have NaN or inf {name}. {advice}"
    )


def require_probabilities(tensor: Tensor, name: str, where: str) -> None:
    """Raise naming the first question (row) of ``tensor`` with a value outside [0, 1]
    (NaN included)."""
    if tensor.numel():
        low, high = (bound.item() for bound in torch.aminmax(tensor))  # one pass
        if low >= 0 and high <= 1:  # False when NaN is present
            return
    inside = (tensor >= 0) & (tensor <= 1)  # False for NaN
    if not bool(inside.all()):
        row, n_rows = first_bad_row(inside)
        raise ValueError(
            f"{where}: {name} of question {row} (row {row}) are not probabilities in "
            f"[0, 1] ({tensor[row].tolist()[:8]}); {n_rows} questions affected"
        )
