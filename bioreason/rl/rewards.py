"""Rewards for probability answers: answer parsing, proper scoring rules, 0/1 correctness.

A policy answers ``<answer>N</answer>`` with ``N`` an integer on a grid (by default
1..99, read as ``q = N / 100``). Rewards are pure functions of the answer ``q`` and the
binary outcome ``y`` of the experiment, and higher is better: :func:`brier_reward` is
``-(q - y)^2``, the negative of the calibration loss
:func:`bioreason.calibration.brier_loss`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bioreason.registry import Registry

__all__ = [
    "FLOOR_REWARD",
    "SCORING_RULES",
    "AnswerGrid",
    "ParsedAnswers",
    "brier_reward",
    "correctness_reward",
    "log_score",
    "parse_answers",
    "score_answers",
    "spherical_score",
]

#: Reward given to an unparsable or out-of-range answer: the log score of q = 0.01 when
#: the outcome happened (Bereket & Leskovec 2025 use this floor).
FLOOR_REWARD = math.log(0.01)

_ANSWER = re.compile(r"<answer>\s*([+-]?\d+)\s*</answer>", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class AnswerGrid:
    """The integer answers a policy may give and the probability each one means.

    Parameters
    ----------
    low, high
        Smallest and largest integer answer (inclusive).
    scale
        ``q = N / scale``.
    """

    low: int = 1
    high: int = 99
    scale: int = 100

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high < self.scale:
            raise ValueError(
                f"AnswerGrid needs 0 < low <= high < scale so that every q lies in (0, 1); "
                f"got low={self.low}, high={self.high}, scale={self.scale}"
            )

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def probabilities(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """The probabilities of the grid, shape ``(size,)``: 0.01, 0.02, ..., 0.99 by default."""
        return torch.arange(self.low, self.high + 1, dtype=dtype) / self.scale


@dataclass(frozen=True)
class ParsedAnswers:
    """Result of :func:`parse_answers`.

    Attributes
    ----------
    probabilities : Tensor, shape (n,)
        ``q = N / scale`` for valid answers, NaN for invalid ones.
    valid : Tensor of bool, shape (n,)
    n_invalid : int
        How many answers were unparsable or off the grid.
    """

    probabilities: Tensor
    valid: Tensor
    n_invalid: int


def parse_answers(texts: Sequence[str], grid: AnswerGrid | None = None) -> ParsedAnswers:
    """Parse ``<answer>N</answer>`` from each completion.

    The last ``<answer>`` tag of a completion counts (a model may quote the format
    before answering). ``N`` must be an integer in ``[grid.low, grid.high]``.
    """
    if isinstance(texts, str):
        raise TypeError("parse_answers expects a sequence of completions, got a single string")
    grid = grid or AnswerGrid()
    values = []
    for text in texts:
        matches = _ANSWER.findall(text or "")
        number = int(matches[-1]) if matches else None
        ok = number is not None and grid.low <= number <= grid.high
        values.append(number / grid.scale if ok else math.nan)
    probabilities = torch.tensor(values, dtype=torch.float64)
    valid = ~torch.isnan(probabilities)
    return ParsedAnswers(probabilities, valid, int((~valid).sum()))


def _check(q: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    q = torch.as_tensor(q)
    y = torch.as_tensor(y, dtype=q.dtype if q.is_floating_point() else torch.float64)
    return q, y


def log_score(q: Tensor, y: Tensor) -> Tensor:
    """Log score ``y log q + (1 - y) log(1 - q)`` (proper; maximal in expectation at q = p)."""
    q, y = _check(q, y)
    return torch.where(y > 0.5, torch.log(q), torch.log1p(-q))


def brier_reward(q: Tensor, y: Tensor) -> Tensor:
    """Brier *reward* ``-(q - y)^2``: the negative squared error, higher is better
    (proper). Shape of the broadcast ``q`` and ``y``."""
    q, y = _check(q, y)
    return -((q - y) ** 2)


def spherical_score(q: Tensor, y: Tensor) -> Tensor:
    """Spherical score ``q_y / sqrt(q^2 + (1 - q)^2)`` with ``q_1 = q, q_0 = 1 - q`` (proper)."""
    q, y = _check(q, y)
    q_outcome = torch.where(y > 0.5, q, 1 - q)
    return q_outcome / torch.sqrt(q**2 + (1 - q) ** 2)


def correctness_reward(answer: Tensor, y: Tensor) -> Tensor:
    """0/1 reward for a yes/no answer: 1 when ``answer == y``."""
    answer, y = _check(answer, y)
    return (answer.round() == y.round()).to(torch.float64)


#: Proper scoring rules of a probability answer q and a binary outcome y (rewards:
#: higher is better), by name; ``rule(q, y)`` keeps the broadcast shape of q and y.
SCORING_RULES: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("scoring rule")
SCORING_RULES.register("log", log_score, bounded=False)
SCORING_RULES.register("brier", brier_reward, bounded=True)
SCORING_RULES.register("spherical", spherical_score, bounded=True)


def score_answers(
    probabilities: Tensor, outcomes: Tensor, rule: str = "log", floor: float = FLOOR_REWARD
) -> tuple[Tensor, int]:
    """Reward parsed answers with a scoring rule; invalid (NaN) answers get ``floor``.

    Parameters
    ----------
    probabilities : Tensor, shape (n,)
        From :func:`parse_answers`; NaN marks an invalid answer.
    outcomes : Tensor, shape (n,)
        Binary outcomes.

    Returns
    -------
    rewards : Tensor, shape (n,)
    n_floored : int
        How many answers received the floor reward.
    """
    score = SCORING_RULES.get(rule)  # an unknown rule raises, listing the rules
    probabilities = torch.as_tensor(probabilities, dtype=torch.float64)
    invalid = torch.isnan(probabilities)
    safe = torch.where(invalid, torch.full_like(probabilities, 0.5), probabilities)
    rewards = score(safe, outcomes)
    rewards = torch.where(invalid, torch.full_like(rewards, floor), rewards)
    return rewards, int(invalid.sum())
