"""How a trainer gets experimental outcomes: a small protocol, and its two sources.

Anything with ``.sample(questions, n, seed)`` returning 0/1 outcomes of shape
``(len(questions), n)`` can be plugged in: a simulator built on a perturbation model, a
table of recorded assay results (:class:`TableOutcomes`: a task table's ``outcome``, the
same every time), or :class:`BernoulliOutcomes` for known probabilities (a new draw every
time; :meth:`BernoulliOutcomes.from_task` reads a task table's ``p_star``).
``bioreason.rl`` never imports the simulators themselves.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from bioreason.rl._checks import check_int

__all__ = ["BernoulliOutcomes", "OutcomeSource", "TableOutcomes"]


@runtime_checkable
class OutcomeSource(Protocol):
    def sample(self, questions: Tensor, n: int, seed: int) -> Tensor:
        """0/1 outcomes, shape ``(len(questions), n)``."""
        ...


class BernoulliOutcomes:
    """Outcomes of questions with known probabilities ``p_star``.

    Parameters
    ----------
    p_star : Tensor, shape (n_questions,)
        ``P(outcome = 1)`` of each question.
    """

    def __init__(self, p_star: Tensor) -> None:
        p_star = torch.as_tensor(p_star, dtype=torch.float64)
        if p_star.ndim != 1:
            raise ValueError(
                "p_star must be a 1-d tensor of probabilities in [0, 1], one per question, "
                f"got shape {tuple(p_star.shape)}"
            )
        inside = (p_star >= 0) & (p_star <= 1)  # False for NaN
        if not bool(inside.all()):
            index = int((~inside).nonzero()[0])
            raise ValueError(
                f"BernoulliOutcomes: p_star[{index}] = {p_star[index].item()}: p_star must be "
                "probabilities in [0, 1] (no NaN)"
            )
        self.p_star = p_star

    @classmethod
    def from_task(cls, task: Any, rows: np.ndarray | None = None) -> BernoulliOutcomes:
        """Bernoulli(p*) outcomes of a task table's questions (an LM trainer's
        ``outcomes="live"`` without an ``outcome_source``: each draw a new simulated
        experiment).

        Parameters
        ----------
        task : pandas.DataFrame
            A task table with a ``p_star`` column; question ``i`` is row position ``i``.
        rows : ndarray of int, optional
            The row positions that will be drawn (the training questions); every other
            row gets p* = 1/2 (never drawn), so its p* may be missing. Default: all rows.

        Returns
        -------
        BernoulliOutcomes
            Over every row of ``task``.

        Raises
        ------
        ValueError
            The table has no ``p_star`` column, or a row of ``rows`` has no probability
            in [0, 1] there (naming the row).
        """
        import pandas as pd

        if "p_star" not in task:
            raise ValueError(
                "outcomes='live' draws a new outcome at every rollout from the task's p_star "
                "column, which this task lacks: pass outcome_source= (anything with "
                ".sample(questions, n, seed), e.g. a simulator) or use outcomes='table'"
            )
        p_star = pd.to_numeric(task["p_star"], errors="coerce").to_numpy(np.float64)
        drawn = np.zeros(len(task), bool)
        drawn[np.arange(len(task)) if rows is None else rows] = True
        bad = drawn & ~((p_star >= 0) & (p_star <= 1))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"outcomes='live' draws outcomes from p_star, but {int(bad.sum())} training "
                f"question(s) have no probability in [0, 1] (row {first}: {p_star[first]}); "
                "use outcomes='table' (the task's recorded outcomes) or pass outcome_source="
            )
        return cls(torch.as_tensor(np.where(drawn, p_star, 0.5)))

    def sample(self, questions: Tensor, n: int, seed: int) -> Tensor:
        """0/1 outcomes, shape ``(len(questions), n)``: ``questions`` are integer indices
        into ``p_star``, ``n`` >= 1 draws each, ``seed`` an integer."""
        where = "BernoulliOutcomes.sample"
        questions = _indices(questions, self.p_star.numel(), where)
        _check_draw(n, seed, where)
        generator = torch.Generator().manual_seed(seed)
        p = self.p_star[questions][:, None].expand(-1, n)
        return torch.bernoulli(p, generator=generator)


class TableOutcomes:
    """Recorded outcomes: the same outcomes every time a question is drawn.

    Parameters
    ----------
    outcomes : array, shape (n_questions, n_outcomes)
        0/1 outcomes of each question (NaN where none was recorded): column 0 is the
        task table's ``outcome``, the others its ``further_outcomes``.

    Attributes
    ----------
    outcomes : ndarray of float64, shape (n_questions, n_outcomes)
    """

    def __init__(self, outcomes: Any) -> None:
        outcomes = np.asarray(outcomes, dtype=np.float64)
        if outcomes.ndim != 2:
            raise ValueError(
                "TableOutcomes: outcomes must be a 2-d array (questions x recorded "
                f"outcomes), got shape {outcomes.shape}"
            )
        self.outcomes = outcomes

    @classmethod
    def from_task(
        cls, task: Any, n_outcomes: int = 1, rows: np.ndarray | None = None
    ) -> TableOutcomes:
        """The recorded outcomes of a task table (an LM trainer's ``outcomes="table"``).

        Parameters
        ----------
        task : pandas.DataFrame
            A task table: ``outcome`` and, for ``n_outcomes > 1``, ``further_outcomes``
            (a list per row, its first ``n_outcomes - 1`` entries are used).
        n_outcomes : int, default 1
            Outcomes needed per question: 1 (one shared by a question's group) or the
            group size (one per completion).
        rows : ndarray of int, optional
            The row positions that will be drawn (the training questions); each must
            have ``n_outcomes`` 0/1 outcomes. Default: all rows.

        Returns
        -------
        TableOutcomes
            ``outcomes`` of shape (len(task), n_outcomes), NaN where missing.

        Raises
        ------
        ValueError
            The table has no ``outcome`` column, or a row of ``rows`` lacks a 0/1
            outcome (naming the question and its row).
        """
        import pandas as pd

        if "outcome" not in task:
            raise ValueError(
                "outcomes='table' reads the task table's 'outcome' column, which it lacks; "
                "add it or use outcomes='live' with an outcome_source"
            )
        columns = [pd.to_numeric(task["outcome"], errors="coerce").to_numpy(np.float64)]
        further = task["further_outcomes"] if "further_outcomes" in task else [None] * len(task)
        for k in range(1, n_outcomes):
            columns.append(
                np.array(
                    [
                        float(v[k - 1])
                        if v is not None and not _is_nan(v) and len(v) >= k
                        else math.nan
                        for v in further
                    ]
                )
            )
        outcomes = np.stack(columns, 1)
        rows = np.arange(len(task)) if rows is None else np.asarray(rows)
        bad = ~np.isin(outcomes[rows], (0.0, 1.0))
        if bad.any():
            row = int(rows[np.flatnonzero(bad.any(1))[0]])
            sharing = "group" if n_outcomes == 1 else "completion"
            what = (
                "'outcome'"
                if n_outcomes == 1
                else f"'outcome' plus {n_outcomes - 1} 'further_outcomes' (group_size per question)"
            )
            raise ValueError(
                f"outcomes='table' with outcome_sharing={sharing!r} needs {what} as 0/1 for "
                f"every training question; question {task['question_id'].iloc[row]!r} (row "
                f"{row}) lacks it. Use outcome_sharing='group' or outcomes='live' with an "
                "outcome_source"
            )
        return cls(outcomes)

    def sample(self, questions: Tensor, n: int, seed: int) -> Tensor:
        """The first ``n`` recorded outcomes of each question, float64 of shape
        ``(len(questions), n)``; ``seed`` is ignored (nothing is drawn)."""
        where = "TableOutcomes.sample"
        questions = _indices(questions, len(self.outcomes), where)
        _check_draw(n, seed, where)
        if n > self.outcomes.shape[1]:
            raise ValueError(
                f"{where}: {n} outcomes per question asked for, but the table records "
                f"{self.outcomes.shape[1]}"
            )
        return torch.as_tensor(self.outcomes[questions.numpy(), :n])


def _indices(questions: Any, n_questions: int, where: str) -> Tensor:
    """``questions`` as a 1-d int64 tensor of indices in [0, n_questions)."""
    questions = torch.as_tensor(questions)
    if questions.is_floating_point() or questions.is_complex() or questions.ndim != 1:
        raise TypeError(
            f"{where}: questions must be a 1-d tensor of integer indices, got "
            f"{questions.dtype} of shape {tuple(questions.shape)}"
        )
    questions = questions.to(torch.long)
    if questions.numel() and (questions.min() < 0 or questions.max() >= n_questions):
        raise ValueError(f"{where}: questions must be indices in [0, {n_questions})")
    return questions


def _check_draw(n: Any, seed: Any, where: str) -> None:
    check_int(n, "n", where, 1)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{where}: seed must be an integer, got {seed!r}")


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
