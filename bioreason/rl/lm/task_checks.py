"""What a task table must hold before an LM is fine-tuned on it, checked row by row: an
error names the table, the column and the questions, and says what is expected."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["check_task_table", "split_rows"]

#: columns read as numbers (a text value there is refused rather than read as NaN)
_NUMERIC_COLUMNS = ("outcome", "p_star", "p_true")


def _some(values: Sequence[Any], limit: int = 5) -> str:
    """Up to ``limit`` values and how many more there are."""
    shown = ", ".join(repr(v) for v in list(values)[:limit])
    more = len(values) - limit
    return f"{shown} and {more} more" if more > 0 else shown


def check_task_table(task: Any, where: str = "the task table") -> pd.DataFrame:
    """Check a task table for LM fine-tuning and return it with a fresh index.

    Parameters
    ----------
    task : pandas.DataFrame
        A task table (:mod:`bioreason.data.tasks`): ``question_id`` and ``prompt``;
        ``outcome``, ``p_star`` and ``p_true`` when present are numbers (NaN when unknown).
    where : str, default "the task table"
        How errors name the table (e.g. ``"task table runs/task.parquet"``).

    Returns
    -------
    pandas.DataFrame
        ``task`` with a ``RangeIndex`` (row positions are question indices).

    Raises
    ------
    TypeError
        ``task`` is not a DataFrame.
    ValueError
        A column is missing; the table has no rows; a ``question_id`` is missing or
        repeated; a prompt is missing (null: it would be read as the text ``"None"``) or
        empty; ``outcome``, ``p_star`` or ``p_true`` holds text; an outcome is neither
        0, 1 nor NaN. Each names the question ids concerned.
    """
    if not isinstance(task, pd.DataFrame):
        raise TypeError(f"task must be a pandas DataFrame (a task table), got {type(task)}")
    missing = [c for c in ("question_id", "prompt") if c not in task.columns]
    if missing:
        raise ValueError(
            f"{where} lacks column(s) {missing}; a task table (bioreason.data.tasks) has "
            "question_id, prompt, split, outcome, p_star, ..."
        )
    if len(task) == 0:
        raise ValueError(f"{where} has no rows")
    task = task.reset_index(drop=True)
    ids = task["question_id"]
    if ids.isna().any():
        rows = np.flatnonzero(ids.isna().to_numpy())
        raise ValueError(
            f"{where}: column 'question_id' is empty (null) in row(s) {_some(rows.tolist())}; "
            "every question needs an id"
        )
    shown_ids = ids.astype(str)
    repeated = shown_ids[shown_ids.duplicated(keep=False)]
    if len(repeated):
        counts = repeated.value_counts()
        raise ValueError(
            f"{where}: column 'question_id' repeats {_some(counts.index.tolist())} "
            f"({len(repeated)} rows share {len(counts)} id(s)); each question needs its own "
            "id, since predictions and scores are matched to questions by it"
        )
    prompts = task["prompt"]
    null = prompts.isna().to_numpy()
    if null.any():
        raise ValueError(
            f"{where}: column 'prompt' is empty (null) for {int(null.sum())} question(s): "
            f"{_some(shown_ids[null].tolist())}; a null prompt would be read as the text "
            "'None'. Fill in their prompts or drop those rows"
        )
    not_text = np.array([not isinstance(p, str) for p in prompts])
    if not_text.any():
        first = prompts[not_text].iloc[0]
        raise ValueError(
            f"{where}: column 'prompt' holds {type(first).__name__} values, not text, for "
            f"{int(not_text.sum())} question(s): {_some(shown_ids[not_text].tolist())}"
        )
    blank = prompts.str.strip().eq("").to_numpy()
    if blank.any():
        raise ValueError(
            f"{where}: column 'prompt' is empty for {int(blank.sum())} question(s): "
            f"{_some(shown_ids[blank].tolist())}; a question needs a prompt to answer. Fill "
            "in their prompts or drop those rows"
        )
    for column in _NUMERIC_COLUMNS:
        if column not in task.columns:
            continue
        values = task[column]
        text = np.array([isinstance(v, (str, bytes)) for v in values])
        if text.any():
            words = list(dict.fromkeys(values[text].tolist()))
            expected = (
                "numbers: 1 (the outcome happened), 0 (it did not), NaN when unknown; e.g. "
                "task['outcome'] = (task['outcome'] == 'yes').astype(float)"
                if column == "outcome"
                else "probabilities in [0, 1] (NaN when unknown)"
            )
            raise ValueError(
                f"{where}: column {column!r} holds text ({_some(words)}) for "
                f"{int(text.sum())} question(s), e.g. {_some(shown_ids[text].tolist(), 3)}; "
                f"expected {expected}"
            )
    if "outcome" in task.columns:
        outcome = pd.to_numeric(task["outcome"], errors="coerce").to_numpy(np.float64)
        bad = ~np.isnan(outcome) & ~np.isin(outcome, (0.0, 1.0))
        if bad.any():
            raise ValueError(
                f"{where}: column 'outcome' holds {_some(sorted(set(outcome[bad].tolist())))} "
                f"for {int(bad.sum())} question(s), e.g. {_some(shown_ids[bad].tolist(), 3)}; "
                "an outcome is 1 (it happened), 0 (it did not) or NaN (unknown)"
            )
    return task


def split_rows(
    split: np.ndarray | None, name: str | None, n_rows: int, field: str, *, held_out: bool
) -> np.ndarray:
    """Row positions of the split ``name`` of a task table.

    Parameters
    ----------
    split : ndarray of str, shape (n_rows,), or None
        The table's ``split`` column (None when it has none).
    name : str or None
        The split asked for (``LMRLConfig.train_split`` / ``eval_split``).
    n_rows : int
    field : str
        The config field that named it, for the error.
    held_out : bool
        True for the evaluation split: None selects no rows, and a table without a
        ``split`` column is refused (evaluating "every row" would score the training
        questions as held-out ones). False for the training split: None, or a table
        without a ``split`` column, selects every row.

    Returns
    -------
    ndarray of int64, shape (n_selected,)

    Raises
    ------
    ValueError
        No row has the split (naming it and the table's splits), or the table has no
        ``split`` column for a held-out split.
    """
    if name is None:
        return np.zeros(0, np.int64) if held_out else np.arange(n_rows)
    if split is None:
        if not held_out:
            return np.arange(n_rows)
        raise ValueError(
            f"{field}={name!r}, but the task table has no 'split' column to hold out "
            f"questions by; add one, or set {field}=None (no held-out evaluation; "
            "evaluate() and predict() then take every question)"
        )
    rows = np.flatnonzero(split == name)
    if len(rows) == 0:
        instead = "None (no held-out evaluation)" if held_out else "None for every row"
        raise ValueError(
            f"{field}={name!r}: the task table has no rows with split == {name!r}; its "
            f"splits are {sorted(set(split.tolist()))}. Set {field} to one of them, or "
            f"{instead}"
        )
    return rows.astype(np.int64)
