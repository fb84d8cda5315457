"""Rewards for probability answers: proper scoring rules, 0/1 correctness.

A policy answers ``<answer>N</answer>`` with ``N`` an integer on a grid (by default
1..99, read as ``q = N / 100``; :mod:`bioreason.lm.answer_protocol` parses it). Rewards
are pure functions of the answer ``q`` and the binary outcome ``y`` of the experiment,
and higher is better: :func:`brier_reward` is ``-(q - y)^2``, the negative of the
calibration loss :func:`bioreason.calibration.brier_loss`.

**Invalid answers.** An answer parser (:data:`bioreason.lm.answer_protocol.ANSWER_PARSERS`)
marks an unparsable or off-grid answer with NaN, and :func:`score_answers` gives it
:data:`FLOOR_REWARD`. The scoring rules themselves are pure math and check their
inputs: ``q`` must be a probability in [0, 1] (no NaN) and ``y`` a 0/1 outcome, of
shapes that broadcast; anything else raises a ValueError naming the function, the
argument and the first bad index.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from bioreason.registry import Registry
from bioreason.rl._checks import real_tensor

__all__ = [
    "FLOOR_REWARD",
    "SCORING_RULES",
    "brier_reward",
    "correctness_reward",
    "log_score",
    "score_answers",
    "spherical_score",
]

#: Reward given to an unparsable or out-of-range answer: the log score of q = 0.01 when
#: the outcome happened (Bereket & Leskovec 2025 use this floor).
FLOOR_REWARD = math.log(0.01)


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
    q = real_tensor(q, "q", where)
    y = real_tensor(y, "y", where, q.dtype)
    _broadcast(q, y, "q and y", where)
    _require(q, (q >= 0) & (q <= 1), "q", where, _Q_RULE)
    _require(y, (y == 0) | (y == 1), "y", where, "y must be 0/1 outcomes")
    return q, y


def log_score(q: Tensor, y: Tensor) -> Tensor:
    """Log score ``y log q + (1 - y) log(1 - q)`` (proper; maximal in expectation at q = p).

    ``q`` in [0, 1] and 0/1 ``y`` of shapes that broadcast; the result has the broadcast
    shape and is finite. A certain, wrong answer (q = 0 with y = 1, q = 1 with y = 0)
    has log score -inf and raises a ValueError: keep answers inside (0, 1), as
    :class:`~bioreason.lm.answer_protocol.AnswerGrid` does.
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
    answer = real_tensor(answer, "answer", where)
    y = real_tensor(y, "y", where, answer.dtype)
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
        From an answer parser (:func:`bioreason.lm.answer_protocol.parse_answers`);
        NaN marks an invalid answer.
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
    probabilities = real_tensor(probabilities, "probabilities", where, torch.float64)
    outcomes = real_tensor(outcomes, "outcomes", where, torch.float64)
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
