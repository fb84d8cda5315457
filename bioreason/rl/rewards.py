"""Rewards for probability answers: answer parsing, proper scoring rules, 0/1 correctness.

A policy answers ``<answer>N</answer>`` with ``N`` an integer on a grid (by default
1..99, read as ``q = N / 100``). Rewards are pure functions of the answer ``q`` and the
binary outcome ``y`` of the experiment, and higher is better: :func:`brier_reward` is
``-(q - y)^2``, the negative of the calibration loss
:func:`bioreason.calibration.brier_loss`.

**Invalid answers.** :func:`parse_answers` marks an unparsable or off-grid answer with
NaN, and :func:`score_answers` gives it :data:`FLOOR_REWARD`. The scoring rules
themselves are pure math and check their inputs: ``q`` must be a probability in
[0, 1] (no NaN) and ``y`` a 0/1 outcome, of shapes that broadcast; anything else
raises a ValueError naming the function, the argument and the first bad index.
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
        for name in ("low", "high", "scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"AnswerGrid: {name} must be an integer, got {value!r}")
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
    if not isinstance(texts, Sequence) and not hasattr(texts, "__iter__"):
        raise TypeError(
            f"parse_answers expects a sequence of completions (strings), got {type(texts).__name__}"
        )
    if grid is not None and not isinstance(grid, AnswerGrid):
        raise TypeError(f"parse_answers: grid must be an AnswerGrid, got {grid!r}")
    grid = grid or AnswerGrid()
    values = []
    for index, text in enumerate(texts):
        if text is not None and not isinstance(text, str):
            raise TypeError(
                f"parse_answers: texts[{index}] is {type(text).__name__}, not a string; "
                "pass the completions' text (None counts as an invalid answer)"
            )
        matches = _ANSWER.findall(text or "")
        number = int(matches[-1]) if matches else None
        ok = number is not None and grid.low <= number <= grid.high
        values.append(number / grid.scale if ok else math.nan)
    probabilities = torch.tensor(values, dtype=torch.float64)
    valid = ~torch.isnan(probabilities)
    return ParsedAnswers(probabilities, valid, int((~valid).sum()))


def _real(value: object, name: str, where: str, dtype: torch.dtype | None = None) -> Tensor:
    try:
        tensor = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{where}: {name} must be a tensor of real numbers, got {type(value).__name__} ({err})"
        ) from None
    if tensor.is_complex():
        raise TypeError(f"{where}: {name} must be a tensor of real numbers, got {tensor.dtype}")
    if dtype is not None:
        return tensor.to(dtype)
    return tensor if tensor.is_floating_point() else tensor.to(torch.float64)


def _number(value: float) -> str:
    return repr(float(f"{value:.7g}"))


def _require(values: Tensor, ok: Tensor, name: str, where: str, rule: str) -> None:
    """Raise naming the first index where ``ok`` is False (located only on failure)."""
    if bool(ok.all()):
        return
    bad = (~ok).nonzero()
    index = tuple(bad[0].tolist())
    label = f"{name}[{', '.join(map(str, index))}]" if index else name
    value = values.expand(ok.shape)[index].item()
    raise ValueError(
        f"{where}: {label} = {_number(value)}: {rule} ({bad.shape[0]} of {ok.numel()} "
        "values are not)"
    )


def _broadcast(first: Tensor, second: Tensor, names: str, where: str) -> torch.Size:
    try:
        return torch.broadcast_shapes(first.shape, second.shape)
    except RuntimeError:
        raise ValueError(
            f"{where}: {names} shapes {tuple(first.shape)} and {tuple(second.shape)} do not "
            "broadcast; pass one outcome per answer (or one outcome for all)"
        ) from None


_Q_RULE = (
    "q must be probabilities in [0, 1] (no NaN; score_answers gives NaN-marked invalid "
    "answers the floor reward)"
)


def _check(q: Tensor, y: Tensor, where: str) -> tuple[Tensor, Tensor]:
    q = _real(q, "q", where)
    y = _real(y, "y", where, q.dtype)
    _broadcast(q, y, "q and y", where)
    _require(q, (q >= 0) & (q <= 1), "q", where, _Q_RULE)
    _require(y, (y == 0) | (y == 1), "y", where, "y must be 0/1 outcomes")
    return q, y


def log_score(q: Tensor, y: Tensor) -> Tensor:
    """Log score ``y log q + (1 - y) log(1 - q)`` (proper; maximal in expectation at q = p).

    ``q`` in [0, 1] and 0/1 ``y`` of shapes that broadcast; the result has the broadcast
    shape and is finite. A certain, wrong answer (q = 0 with y = 1, q = 1 with y = 0)
    has log score -inf and raises a ValueError: keep answers inside (0, 1), as
    :class:`AnswerGrid` does.
    """
    q, y = _check(q, y, "log_score")
    wrong = ((q == 0) & (y == 1)) | ((q == 1) & (y == 0))
    if bool(wrong.any()):
        index = tuple(wrong.nonzero()[0].tolist())
        q_value = q.expand(wrong.shape)[index].item()
        y_value = y.expand(wrong.shape)[index].item()
        raise ValueError(
            f"log_score: q[{', '.join(map(str, index))}] = {_number(q_value)} with outcome "
            f"{int(y_value)} has log score -inf (a certain, wrong answer); keep answers "
            "inside (0, 1), as AnswerGrid does, or use the brier or spherical rule"
        )
    return torch.where(y > 0.5, torch.log(q), torch.log1p(-q))


def brier_reward(q: Tensor, y: Tensor) -> Tensor:
    """Brier *reward* ``-(q - y)^2``: the negative squared error, higher is better
    (proper). ``q`` in [0, 1], 0/1 ``y``; shape of the broadcast ``q`` and ``y``."""
    q, y = _check(q, y, "brier_reward")
    return -((q - y) ** 2)


def spherical_score(q: Tensor, y: Tensor) -> Tensor:
    """Spherical score ``q_y / sqrt(q^2 + (1 - q)^2)`` with ``q_1 = q, q_0 = 1 - q`` (proper).

    ``q`` in [0, 1], 0/1 ``y``; shape of the broadcast ``q`` and ``y``."""
    q, y = _check(q, y, "spherical_score")
    q_outcome = torch.where(y > 0.5, q, 1 - q)
    return q_outcome / torch.sqrt(q**2 + (1 - q) ** 2)


def correctness_reward(answer: Tensor, y: Tensor) -> Tensor:
    """0/1 reward for a yes/no answer: 1 when ``answer == y``.

    ``answer`` in [0, 1] is rounded to the nearest of 0/1 (``torch.round``: 0.5 rounds to
    0); a NaN answer (unparsable) is wrong and gets 0. ``y``: 0/1 outcomes. Shape of the
    broadcast ``answer`` and ``y``.
    """
    where = "correctness_reward"
    answer = _real(answer, "answer", where)
    y = _real(y, "y", where, answer.dtype)
    _broadcast(answer, y, "answer and y", where)
    _require(y, (y == 0) | (y == 1), "y", where, "y must be 0/1 outcomes")
    inside = torch.isnan(answer) | ((answer >= 0) & (answer <= 1))
    _require(answer, inside, "answer", where, "answer must be in [0, 1] (NaN: invalid)")
    return (answer.round() == y).to(torch.float64)


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
        How many answers received the floor reward (the NaN ones).

    Raises
    ------
    ValueError
        A probability that is a number outside [0, 1] (e.g. ``37`` for ``0.37``: not an
        invalid answer but a caller's error), outcomes other than 0/1, shapes that do
        not broadcast, a non-finite ``floor``, or (log rule) a certain, wrong answer.
    """
    where = "score_answers"
    score = SCORING_RULES.get(rule)  # an unknown rule raises, listing the rules
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not math.isfinite(floor):
        raise ValueError(f"{where}: floor must be a finite number, got {floor!r}")
    probabilities = _real(probabilities, "probabilities", where, torch.float64)
    outcomes = _real(outcomes, "outcomes", where, torch.float64)
    _broadcast(probabilities, outcomes, "probabilities and outcomes", where)
    invalid = torch.isnan(probabilities)
    _require(
        probabilities,
        invalid | ((probabilities >= 0) & (probabilities <= 1)),
        "probabilities",
        where,
        "probabilities must be in [0, 1], or NaN for an invalid answer (which gets the "
        "floor reward); did you pass N instead of N / scale?",
    )
    _require(outcomes, (outcomes == 0) | (outcomes == 1), "outcomes", where, "outcomes must be 0/1")
    safe = torch.where(invalid, torch.full_like(probabilities, 0.5), probabilities)
    rewards = score(safe, outcomes)
    rewards = torch.where(invalid, torch.full_like(rewards, floor), rewards)
    return rewards, int(invalid.sum())
