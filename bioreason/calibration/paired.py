"""Paired comparison of methods on the same questions: the difference in Brier score and
log loss between two methods, question by question, with an interval.

Two methods that answered the same questions are compared on those questions: the
per-question losses are differenced (questions matched by id), so the question-to-question
spread that both methods share cancels and the interval is much narrower than two
separate intervals would suggest.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd

from bioreason.calibration.metrics import bootstrap_ci
from bioreason.calibration.table import (
    TextParser,
    _check_columns,
    _number,
    _outcomes,
    answer_probabilities,
    markdown_table,
    resolve_columns,
)

__all__ = ["PAIRED_INTERVALS", "PAIRED_METRICS", "format_paired_comparison", "paired_comparison"]

#: The losses compared (lower is better): per question ``(q - y)^2`` and
#: ``-[y log q + (1 - y) log(1 - q)]`` (q clipped to [1e-15, 1 - 1e-15] as in
#: :func:`bioreason.calibration.log_loss`).
PAIRED_METRICS = ("brier", "log_loss")

#: ``"bootstrap"``: percentile bootstrap over questions (``n_boot`` resamples);
#: ``"normal"``: ``mean(d) +- z * sd(d) / sqrt(n)`` of the per-question differences d.
PAIRED_INTERVALS = ("bootstrap", "normal")

_EPS = 1e-15


def _losses(outcomes: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    q = np.clip(probs, _EPS, 1 - _EPS)
    return {
        "brier": (probs - outcomes) ** 2,
        "log_loss": -(outcomes * np.log(q) + (1 - outcomes) * np.log1p(-q)),
    }


def _interval(
    differences: np.ndarray, interval: str, n_boot: int, level: float, seed: int
) -> tuple[float, float]:
    if interval == "normal":
        n = differences.size
        if n < 2:
            return math.nan, math.nan
        z = NormalDist().inv_cdf(0.5 + level / 2)
        half = z * float(np.std(differences, ddof=1)) / math.sqrt(n)
        mean = float(differences.mean())
        return mean - half, mean + half
    _, low, high = bootstrap_ci(np.mean, differences, n_boot=n_boot, level=level, seed=seed)
    return low, high


def _check_ids(per_method: dict[str, pd.Series], id_col: str, method_col: str) -> None:
    """Every method answered the same questions; else an error naming the differences."""
    names = list(per_method)
    reference = set(per_method[names[0]].index)
    for name in names[1:]:
        ids = set(per_method[name].index)
        if ids == reference:
            continue
        only_first = sorted(map(str, reference - ids))
        only_this = sorted(map(str, ids - reference))

        def show(values: list[str]) -> str:
            shown = ", ".join(repr(v) for v in values[:5])
            return shown + (f" and {len(values) - 5} more" if len(values) > 5 else "")

        parts = []
        if only_first:
            parts.append(f"{len(only_first)} only in {names[0]!r} ({show(only_first)})")
        if only_this:
            parts.append(f"{len(only_this)} only in {name!r} ({show(only_this)})")
        raise ValueError(
            f"a paired comparison needs the same questions ({id_col!r}) for every "
            f"{method_col!r}: {name!r} and {names[0]!r} differ: {'; '.join(parts)}"
        )


def paired_comparison(
    frame: pd.DataFrame,
    *,
    method_col: str,
    id_col: str = "question_id",
    prob_col: str | None = None,
    outcome_col: str | None = None,
    baseline: str | None = None,
    interval: str = "bootstrap",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    parser: TextParser | None = None,
) -> pd.DataFrame:
    """Each method against a baseline on the same questions: the difference in mean
    Brier score and log loss, ``method - baseline`` (negative: the method is better).

    Parameters
    ----------
    frame : DataFrame
        One prediction per row, with a method and a question id. Several rows of one
        method and question (e.g. seeds) are averaged: the question's loss is the mean
        of its rows' losses.
    method_col
        The methods compared (their values are the table's rows).
    id_col
        Question ids: the questions are matched by id. Every method must have answered
        the same set of questions (else ``ValueError`` naming ids found in only one).
    prob_col, outcome_col
        As in :func:`bioreason.calibration.calibration_table` (defaults ``q`` /
        ``prob`` / ``probability`` and ``y`` / ``outcome``). Invalid answers (missing,
        or text the ``parser`` cannot read) are left out; a pair is compared on the
        questions both methods answered validly (``n_left_out`` counts the others).
    baseline
        The method the others are compared with; default the first in sorted order.
    interval
        ``"bootstrap"`` (percentile bootstrap over questions, ``n_boot`` resamples,
        ``seed``) or ``"normal"`` (``mean +- z sd / sqrt(n)`` of the per-question
        differences; NaN with fewer than 2 questions).
    level
        The intervals' coverage, in (0, 1).

    Returns
    -------
    DataFrame, one row per method other than the baseline
        ``method``, ``baseline``, ``n_questions`` (compared), ``n_left_out``; for
        ``m`` in :data:`PAIRED_METRICS`: ``m_method``, ``m_baseline`` (their mean losses
        on the compared questions), ``m_diff`` (method - baseline), ``m_diff_low``,
        ``m_diff_high``.

    Raises
    ------
    ValueError
        Missing columns, fewer than two methods, an unknown ``baseline`` or ``interval``,
        mismatched question ids, outcomes other than 0/1 or probabilities outside [0, 1],
        or a pair with no question both answered.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"paired_comparison: frame must be a pandas DataFrame, got {frame!r}")
    if interval not in PAIRED_INTERVALS:
        raise ValueError(
            f"paired_comparison: interval must be one of {', '.join(PAIRED_INTERVALS)}, "
            f"got {interval!r}"
        )
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"paired_comparison: level must be in (0, 1), got {level!r}")
    prob_col, outcome_col = resolve_columns(frame, prob_col, outcome_col)
    _check_columns(
        frame,
        {"prob_col": prob_col, "outcome_col": outcome_col, "method_col": method_col,
         "id_col": id_col},
    )  # fmt: skip
    if len(frame) == 0:
        raise ValueError("the predictions table has no rows")
    frame = frame.reset_index(drop=True)
    if frame[id_col].isna().any():
        row = int(np.flatnonzero(frame[id_col].isna().to_numpy())[0])
        raise ValueError(f"column {id_col!r}, row {row} (0-based): a question id is missing")
    probs, valid, _ = answer_probabilities(frame[prob_col], parser, prob_col)
    outcomes = _outcomes(frame[outcome_col], outcome_col)
    losses = _losses(outcomes, probs)  # NaN where the answer is invalid
    rows = pd.DataFrame({"method": frame[method_col].astype(str), "id": frame[id_col]})
    for name, values in losses.items():
        rows[name] = values
    methods = sorted(rows["method"].unique())
    if len(methods) < 2:
        raise ValueError(
            f"a paired comparison needs at least two values of {method_col!r}, got {methods}"
        )
    if baseline is None:
        baseline = methods[0]
    elif str(baseline) not in methods:
        raise ValueError(
            f"baseline {baseline!r} is not a value of {method_col!r}; the values are: "
            f"{', '.join(methods)}"
        )
    baseline = str(baseline)
    # per method: question id -> mean loss over its valid rows (NaN: no valid row)
    per_method = {
        m: rows[rows["method"] == m].groupby("id", sort=True)[list(PAIRED_METRICS)].mean()
        for m in [baseline, *(m for m in methods if m != baseline)]
    }
    _check_ids(per_method, id_col, method_col)
    base = per_method[baseline]
    table = []
    for method, own in per_method.items():
        if method == baseline:
            continue
        own = own.loc[base.index]
        both = (base.notna().all(axis=1) & own.notna().all(axis=1)).to_numpy()
        if not both.any():
            raise ValueError(
                f"{method!r} and {baseline!r} have no question that both answered validly"
            )
        row: dict[str, object] = {
            "method": method,
            "baseline": baseline,
            "n_questions": int(both.sum()),
            "n_left_out": int((~both).sum()),
        }
        for name in PAIRED_METRICS:
            mine, theirs = own[name].to_numpy()[both], base[name].to_numpy()[both]
            differences = mine - theirs
            low, high = _interval(differences, interval, n_boot, level, seed)
            row[f"{name}_method"] = float(mine.mean())
            row[f"{name}_baseline"] = float(theirs.mean())
            row[f"{name}_diff"] = float(differences.mean())
            row[f"{name}_diff_low"], row[f"{name}_diff_high"] = low, high
        table.append(row)
    return pd.DataFrame(table)


def format_paired_comparison(table: pd.DataFrame) -> str:
    """:func:`paired_comparison` as an aligned Markdown table (differences with their
    intervals in brackets)."""
    if len(table) == 0:
        raise ValueError("format_paired_comparison: the table has no rows")
    headers = ["method", "baseline", "questions", "Brier", "Brier diff", "log loss",
               "log loss diff"]  # fmt: skip
    body = []
    for _, row in table.iterrows():
        cells = [str(row["method"]), str(row["baseline"]), str(int(row["n_questions"]))]
        for name in PAIRED_METRICS:
            cells.append(f"{_number(row[f'{name}_method'])} vs {_number(row[f'{name}_baseline'])}")
            cells.append(
                f"{_number(row[f'{name}_diff'], 4)} "
                f"[{_number(row[f'{name}_diff_low'], 4)}, {_number(row[f'{name}_diff_high'], 4)}]"
            )
        body.append(cells)
    return markdown_table(headers, body)
