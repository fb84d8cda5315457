"""Schedules of a coefficient over training: the KL weight, the entropy bonus and the
learning rate of an RL run move from a start value to an end value along a shape.

``scheduled(start, end, step, total, shape)`` is a pure function of the step. The shapes
(:data:`SCHEDULE_SHAPES`), with ``t = step / total`` clipped to [0, 1]:

* ``"constant"``: ``start`` throughout (``end`` unused);
* ``"linear"``: ``start + t (end - start)``;
* ``"cosine"``: ``end + (start - end) (1 + cos(pi t)) / 2`` (flat at both ends);
* ``"exponential"``: ``start (end / start)^t``, the geometric path (equal ratios per
  step; both ends must be > 0), the natural one for a weight annealed over decades such
  as a KL coefficient from 0.1 to 0.001.

A warm-up (:func:`warmup_factor`) multiplies a learning rate by ``(step + 1) / warmup``
over its first ``warmup`` steps.
"""

from __future__ import annotations

import math

__all__ = ["SCHEDULE_SHAPES", "check_schedule", "scheduled", "warmup_factor"]

SCHEDULE_SHAPES = ("constant", "linear", "cosine", "exponential")


def check_schedule(name: str, start: float, end: float | None, shape: str) -> None:
    """Raise a ``ValueError`` naming ``name`` when ``(start, end, shape)`` is not a
    schedule: an unknown shape, a negative or non-finite value, or an exponential
    schedule with an end at 0.

    Parameters
    ----------
    name : str
        The coefficient's field name, for the message (``"kl_coef"``).
    start, end : float
        The values at the first and the last step (``end`` None: ``start``).
    shape : str
        One of :data:`SCHEDULE_SHAPES`.
    """
    if shape not in SCHEDULE_SHAPES:
        raise ValueError(f"{name}_schedule must be one of {list(SCHEDULE_SHAPES)}, got {shape!r}")
    for label, value in ((name, start), (f"{name}_end", start if end is None else end)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{label} must be a finite number >= 0, got {value}")
    if shape == "exponential" and not (start > 0 and (end is None or end > 0)):
        raise ValueError(
            f"{name}_schedule 'exponential' moves by equal ratios: {name} and {name}_end "
            f"must both be > 0, got {start} and {end}"
        )


def scheduled(start: float, end: float | None, step: int, total: int, shape: str) -> float:
    """The value of a schedule at ``step`` of ``total`` (see the module docstring).

    Parameters
    ----------
    start, end : float
        Values at step 0 and at step ``total`` (``end`` None: constant ``start``).
    step, total : int
        The step (0 = before the first update) and the number of steps (>= 1).
    shape : str
        One of :data:`SCHEDULE_SHAPES`.

    Returns
    -------
    float
    """
    if end is None or shape == "constant":
        return float(start)
    t = min(max(step / max(total, 1), 0.0), 1.0)
    if shape == "linear":
        return float(start + t * (end - start))
    if shape == "cosine":
        return float(end + (start - end) * (1.0 + math.cos(math.pi * t)) / 2.0)
    if shape == "exponential":
        return float(start * (end / start) ** t)
    raise ValueError(f"unknown schedule shape {shape!r}; choose one of {list(SCHEDULE_SHAPES)}")


def warmup_factor(step: int, warmup: int) -> float:
    """The learning-rate factor of a linear warm-up: ``(step + 1) / warmup`` for the
    first ``warmup`` steps (``step`` counted from 0), then 1.

    Returns
    -------
    float
    """
    if warmup <= 0 or step >= warmup:
        return 1.0
    return (step + 1) / warmup
