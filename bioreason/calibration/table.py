"""The calibration table of a predictions table: one row of metrics per group of rows.

What ``bioreason calibration`` computes, as a function of a pandas DataFrame. Answers
may be probabilities or text (``<answer>37</answer>``); text is read by a parser passed
in by the caller (``bioreason.lm.answer_protocol.ANSWER_PARSERS``: this package does
not import torch), and an answer it cannot read counts as invalid: it is counted, and left
out of the metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bioreason.calibration.metrics import (
    METRICS,
    REFERENCE_METRICS,
    _bin_options,
    bootstrap_ci,
    summarize,
)

__all__ = [
    "BOOTSTRAP_METRICS",
    "OUTCOME_COLUMN_NAMES",
    "PREDICTIONS_SUFFIXES",
    "PROB_COLUMN_NAMES",
    "TABLE_SUFFIXES",
    "answer_probabilities",
    "calibration_table",
    "format_calibration_table",
    "markdown_table",
    "read_predictions",
    "reliability_groups",
    "resolve_columns",
    "write_calibration_table",
]

#: Metrics that get bootstrap intervals (``<name>_low``, ``<name>_high``) in the table:
#: ECE and Brier against the outcomes and, with a reference, ``|q - ref|`` and
#: overconfidence. The others are point estimates (bootstrapping all ten costs several
#: times as much).
BOOTSTRAP_METRICS = ("ece", "brier", "mae_to_reference", "overconfidence")

#: The files :func:`read_predictions` reads.
PREDICTIONS_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")

#: The files :func:`write_calibration_table` writes.
TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".json", ".md")

#: The prediction column's names tried, in order, when none is given (exactly one may exist).
PROB_COLUMN_NAMES = ("q", "prob", "probability")

#: The outcome column's names tried when none is given (exactly one may exist).
OUTCOME_COLUMN_NAMES = ("y", "outcome")

#: A text parser: ``parser(texts) -> (probabilities, valid)``, arrays of shape (n,).
TextParser = Callable[[Sequence[str | None]], tuple[np.ndarray, np.ndarray]]


def _check_columns(frame: pd.DataFrame, columns: dict[str, str | None]) -> None:
    for role, column in columns.items():
        if column is not None and column not in frame.columns:
            existing = ", ".join(repr(str(c)) for c in frame.columns)
            raise ValueError(f"no column {column!r} ({role}); the columns are: {existing}")


def _default_column(
    frame: pd.DataFrame, given: str | None, names: tuple[str, ...], role: str, option: str
) -> str:
    if given is not None:
        return given
    found = [name for name in names if name in frame.columns]
    if len(found) == 1:
        return found[0]
    existing = ", ".join(repr(str(c)) for c in frame.columns)
    tried = " / ".join(repr(name) for name in names)
    if not found:
        raise ValueError(
            f"no {role} column: none of {tried} exists; name it with {option}. "
            f"The columns are: {existing}"
        )
    raise ValueError(
        f"the {role} column is ambiguous: {', '.join(repr(n) for n in found)} all exist; "
        f"choose one with {option}. The columns are: {existing}"
    )


def resolve_columns(
    frame: pd.DataFrame, prob_col: str | None = None, outcome_col: str | None = None
) -> tuple[str, str]:
    """The prediction and outcome columns of ``frame``: the ones given, else the one of
    :data:`PROB_COLUMN_NAMES` (``q``, ``prob``, ``probability``) and the one of
    :data:`OUTCOME_COLUMN_NAMES` (``y``, ``outcome``) that exists.

    Returns
    -------
    prob_col, outcome_col : str

    Raises
    ------
    ValueError
        No default name exists, or several do (ambiguous); the message lists the columns.
        A name that is given is not checked here (:func:`calibration_table` checks it).
    """
    return (
        _default_column(frame, prob_col, PROB_COLUMN_NAMES, "prediction", "prob_col (--prob-col)"),
        _default_column(
            frame, outcome_col, OUTCOME_COLUMN_NAMES, "outcome", "outcome_col (--outcome-col)"
        ),
    )


def _as_numbers(values: pd.Series) -> pd.Series | None:
    """``values`` as float64 when they are numbers (or text of numbers), else None."""
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        return values.astype(np.float64)
    converted = pd.to_numeric(values, errors="coerce")
    if converted.isna().equals(values.isna()):  # every non-missing entry was a number
        return converted.astype(np.float64)
    return None


def _first_bad(column: str, values: np.ndarray, bad: np.ndarray, rule: str) -> ValueError:
    rows = np.flatnonzero(bad)
    value = values[rows[0]]
    value = value.item() if isinstance(value, np.generic) else value
    return ValueError(
        f"column {column!r}, row {rows[0]} (0-based): {value!r} {rule} "
        f"({rows.size} of {values.size} rows are not)"
    )


def answer_probabilities(
    values: pd.Series, parser: TextParser | None = None, column: str = "answers"
) -> tuple[np.ndarray, np.ndarray, str]:
    """Read a column of answers as probabilities.

    Parameters
    ----------
    values : Series, shape (n,)
        Probabilities (numbers in [0, 1]; a missing one is an invalid answer), text
        answers, or text of both (``"0.37"`` is a probability, anything else an answer).
    parser : callable, optional
        ``parser(texts) -> (probabilities, valid)`` for text answers.
    column : str
        The column's name, for messages.

    Returns
    -------
    probabilities : array, shape (n,)
        NaN where the answer is invalid.
    valid : array of bool, shape (n,)
    kind : {"probability", "text", "mixed"}
        ``"mixed"``: a text column where some entries read as numbers (probabilities).

    Raises
    ------
    ValueError
        A number outside [0, 1] (naming its row), or text without a ``parser``.
    """
    if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
        numbers = values.astype(np.float64)
    else:  # text: entries that read as numbers are probabilities, the rest answers
        numbers = pd.to_numeric(values, errors="coerce").astype(np.float64)
    probs = numbers.to_numpy(copy=True)
    valid = ~np.isnan(probs)
    outside = valid & ~((probs >= 0) & (probs <= 1))
    if outside.any():
        raise _first_bad(
            column,
            probs,
            outside,
            "is not a probability in [0, 1]; give probabilities, "
            "or answers as text such as '<answer>37</answer>'",
        )
    text = ~valid & values.notna().to_numpy()
    if not text.any():
        return probs, valid, "probability"
    if parser is None:
        raise ValueError(f"column {column!r} holds text, and no answer parser was given")
    parsed, parsed_valid = parser([v if isinstance(v, str) else str(v) for v in values[text]])
    parsed_valid = np.asarray(parsed_valid, dtype=bool)
    probs[text] = np.where(parsed_valid, np.asarray(parsed, dtype=np.float64), np.nan)
    valid[text] = parsed_valid
    return probs, valid, "text" if not valid[~text].any() else "mixed"


def _numbers_or_nan(values: pd.Series) -> np.ndarray:
    numbers = _as_numbers(values)
    if numbers is None:  # text: entries that are not numbers become NaN (bad)
        numbers = pd.to_numeric(values, errors="coerce")
    return numbers.to_numpy(dtype=np.float64)


def _outcomes(values: pd.Series, column: str) -> np.ndarray:
    array = _numbers_or_nan(values)
    bad = ~((array == 0) | (array == 1))  # True for NaN
    if bad.any():
        raise _first_bad(column, values.to_numpy(), bad, "is not an outcome; outcomes must be 0/1")
    return array


def _reference(values: pd.Series, column: str) -> np.ndarray:
    array = _numbers_or_nan(values)
    bad = ~((array >= 0) & (array <= 1))  # True for NaN
    if bad.any():
        raise _first_bad(column, values.to_numpy(), bad, "is not a probability in [0, 1]")
    return array


def _group_row(
    outcomes: np.ndarray,
    probs: np.ndarray,
    valid: np.ndarray,
    reference: np.ndarray | None,
    n_bins: int,
    right: bool,
    n_boot: int,
    seed: int,
) -> dict[str, float]:
    n, n_valid = valid.size, int(valid.sum())
    row: dict[str, float] = {
        "n": n,
        "n_valid": n_valid,
        "n_invalid": n - n_valid,
        "invalid_rate": (n - n_valid) / n,
    }
    y, q = outcomes[valid], probs[valid]
    ref = reference[valid] if reference is not None else None
    names = list(METRICS) + (list(REFERENCE_METRICS) if ref is not None else [])
    if n_valid == 0:
        row.update({"outcome_rate": math.nan, "mean_prob": math.nan, "sharpness": math.nan})
        row.update({name: math.nan for name in names})
        if ref is not None:
            row["mean_reference"] = math.nan
        for name in BOOTSTRAP_METRICS:
            if name in names and n_boot:
                row[f"{name}_low"] = row[f"{name}_high"] = math.nan
        return row
    row["outcome_rate"] = float(y.mean())
    row["mean_prob"] = float(q.mean())
    if ref is not None:
        row["mean_reference"] = float(ref.mean())
    row.update(summarize(y, q, ref, n_bins=n_bins, right=right))
    if n_boot:
        for name in BOOTSTRAP_METRICS:
            if name not in names:
                continue
            registry, arrays = (
                (METRICS, (y, q)) if name in METRICS else (REFERENCE_METRICS, (q, ref))
            )
            fn, kwargs = registry.get(name), _bin_options(registry, name, n_bins, right)
            _, low, high = bootstrap_ci(
                lambda a, b, fn=fn, kw=kwargs: fn(a, b, **kw), *arrays, n_boot=n_boot, seed=seed
            )
            row[f"{name}_low"], row[f"{name}_high"] = low, high
    return row


def calibration_table(
    frame: pd.DataFrame,
    *,
    prob_col: str | None = None,
    outcome_col: str | None = None,
    ref_col: str | None = None,
    group_col: str | None = None,
    n_bins: int = 10,
    right: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    parser: TextParser | None = None,
) -> pd.DataFrame:
    """One row of calibration metrics per group of a predictions table.

    Parameters
    ----------
    frame : DataFrame, shape (n_rows, ...)
        One prediction per row.
    prob_col
        The answers: probabilities in [0, 1] (missing = invalid) or text read by
        ``parser`` (unreadable = invalid). Default: the one of ``q``, ``prob``,
        ``probability`` that exists (:func:`resolve_columns`).
    outcome_col
        0/1 outcomes (bool, numbers or their text). Default: ``y`` or ``outcome``.
    ref_col
        Reference probabilities (e.g. ``p_star``): adds ``mae_to_reference``,
        ``ece_to_reference`` and ``overconfidence`` (:data:`REFERENCE_METRICS`).
    group_col
        One row per value of this column (sorted); without it one row, ``"all"``.
    n_bins, right
        Equal-width bins of ECE/MCE (``right``: bins ``(a, b]`` instead of ``[a, b)``);
        ``n_bins`` is also the number of equal-mass bins of ``adaptive_ece``.
    n_boot, seed
        Bootstrap replicates (0: none) of the :data:`BOOTSTRAP_METRICS` intervals.
    parser
        ``parser(texts) -> (probabilities, valid)``, arrays of shape (n,), for text answers.

    Returns
    -------
    DataFrame, shape (n_groups, ...)
        The group column (``group_col`` or ``"group"``), ``n``, ``n_valid``,
        ``n_invalid``, ``invalid_rate``, ``outcome_rate`` and ``mean_prob`` (of the
        valid rows), every metric of :func:`summarize` on the valid rows, and
        ``<metric>_low``/``<metric>_high`` (95% percentile bootstrap). A group without
        valid answers has NaN metrics.

    Raises
    ------
    ValueError
        A missing column (listing those that exist), no default column or several
        (ambiguous), an outcome other than 0/1, or a probability outside [0, 1], naming
        the column and the first bad row (0-based).
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"calibration_table: frame must be a pandas DataFrame, got {frame!r}")
    prob_col, outcome_col = resolve_columns(frame, prob_col, outcome_col)
    _check_columns(
        frame,
        {
            "prob_col": prob_col,
            "outcome_col": outcome_col,
            "ref_col": ref_col,
            "group_col": group_col,
        },
    )
    if len(frame) == 0:
        raise ValueError("the predictions table has no rows")
    frame = frame.reset_index(drop=True)
    probs, valid, _ = answer_probabilities(frame[prob_col], parser, prob_col)
    outcomes = _outcomes(frame[outcome_col], outcome_col)
    reference = _reference(frame[ref_col], ref_col) if ref_col is not None else None
    label = group_col or "group"
    groups = _groups(frame, group_col)
    rows = []
    for key, index in groups:
        ref = reference[index] if reference is not None else None
        row = _group_row(
            outcomes[index], probs[index], valid[index], ref, n_bins, right, n_boot, seed
        )
        rows.append({label: key, **row})
    return pd.DataFrame(rows)


def _groups(frame: pd.DataFrame, group_col: str | None) -> list[tuple[str, np.ndarray]]:
    """``(name, row positions)`` per value of ``group_col`` (sorted), or ``("all", every
    row)``; ``frame`` has a default index."""
    if group_col is None:
        return [("all", np.arange(len(frame)))]
    grouped = frame.groupby(frame[group_col], sort=True, dropna=False).indices
    return [(str(key), index) for key, index in grouped.items()]


def reliability_groups(
    frame: pd.DataFrame,
    *,
    prob_col: str | None = None,
    outcome_col: str | None = None,
    group_col: str | None = None,
    parser: TextParser | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The valid ``(outcomes, probabilities)`` of each group of a predictions table, read
    as :func:`calibration_table` reads them: what a reliability diagram draws
    (:func:`bioreason.calibration.plot_reliability_diagrams`).

    Returns
    -------
    dict
        Group name (``"all"`` without ``group_col``) -> two arrays of shape (n_valid,).
    """
    prob_col, outcome_col = resolve_columns(frame, prob_col, outcome_col)
    _check_columns(
        frame, {"prob_col": prob_col, "outcome_col": outcome_col, "group_col": group_col}
    )
    if len(frame) == 0:
        raise ValueError("the predictions table has no rows")
    frame = frame.reset_index(drop=True)
    probs, valid, _ = answer_probabilities(frame[prob_col], parser, prob_col)
    outcomes = _outcomes(frame[outcome_col], outcome_col)
    return {
        key: (outcomes[index][valid[index]], probs[index][valid[index]])
        for key, index in _groups(frame, group_col)
    }


def _number(value: float, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return "nan"
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and text.strip("-0.") == "" else text  # no -0.000


def format_calibration_table(table: pd.DataFrame, ref_name: str | None = None) -> str:
    """The headline columns of :func:`calibration_table` as an aligned Markdown table
    (intervals in brackets where the table has them)."""
    label = table.columns[0]
    headers = [str(label), "n", "invalid", "ECE", "adaptive ECE", "Brier", "log loss", "AUROC"]
    columns = ["ece", "adaptive_ece", "brier", "log_loss", "auroc"]
    if "mae_to_reference" in table.columns:
        ref = ref_name or "ref"
        headers += [f"mean abs(q - {ref})", f"overconfidence vs {ref}"]
        columns += ["mae_to_reference", "overconfidence"]
    if len(table) == 0:
        raise ValueError("format_calibration_table: the table has no rows")
    body = []
    for _, row in table.iterrows():
        cells = [
            str(row[label]),
            str(int(row["n"])),
            f"{int(row['n_invalid'])} ({100 * row['invalid_rate']:.1f}%)",
        ]
        for name in columns:
            text = _number(row[name])
            if f"{name}_low" in table.columns:
                text += f" [{_number(row[f'{name}_low'])}, {_number(row[f'{name}_high'])}]"
            cells.append(text)
        body.append(cells)
    return markdown_table(headers, body)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An aligned GitHub-flavoured Markdown table: the first column left-aligned, the others
    right-aligned, every delimiter cell at least three characters (``---``, ``--:``) so
    the table is valid however narrow its columns; ``|`` in a cell is escaped.

    Raises
    ------
    ValueError
        No rows, or a row with another number of cells than ``headers``.
    """
    if not rows:
        raise ValueError("markdown_table: a table needs at least one row")
    if any(len(row) != len(headers) for row in rows):
        raise ValueError(
            f"markdown_table: every row needs {len(headers)} cells like the headers, got "
            f"{sorted({len(row) for row in rows})}"
        )
    headers = [str(h).replace("|", "\\|") for h in headers]
    body = [[str(cell).replace("|", "\\|") for cell in row] for row in rows]
    widths = [max(3, len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
        "| "
        + " | ".join(("-" * (w - 1) + (":" if i else "-")) for i, w in enumerate(widths))
        + " |",
    ]
    for cells in body:
        lines.append(
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
            )
            + " |"
        )
    return "\n".join(lines)


def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions table from a ``.csv``, ``.tsv`` or ``.parquet`` (``.pq``) file, with
    errors that name the file.

    Returns
    -------
    DataFrame

    Raises
    ------
    ValueError
        Another suffix, or a file that cannot be read as its suffix says.
    FileNotFoundError, IsADirectoryError
        The file does not exist, or is a folder.
    """
    from bioreason._io import require_input_file

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PREDICTIONS_SUFFIXES:
        raise ValueError(
            f"{path}: give a predictions table ending in {', '.join(PREDICTIONS_SUFFIXES)}"
        )
    require_input_file(path, "predictions file", "a .csv, .tsv or .parquet file")
    parquet = suffix in (".parquet", ".pq")
    try:
        if parquet:
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except (ValueError, OSError) as err:
        text = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(
            f"could not read {path} as {'parquet' if parquet else 'csv'}: {text}"
        ) from None


def write_calibration_table(
    table: pd.DataFrame,
    path: str | Path,
    *,
    text: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a :func:`calibration_table` atomically, in the format its suffix names.

    Parameters
    ----------
    table : DataFrame
        From :func:`calibration_table`.
    path : str or Path
        Ending in one of :data:`TABLE_SUFFIXES`: ``.csv``, ``.parquet``/``.pq`` (the
        table), ``.json`` (a list of row records, NaN as null) or ``.md`` (``text``).
    text : str, optional
        What a ``.md`` file holds; default :func:`format_calibration_table` of ``table``.
    overwrite : bool, default False
        Replace an existing file (else ``FileExistsError``).

    Returns
    -------
    Path
    """
    import json

    from bioreason._io import atomic_write, atomic_write_text, json_safe

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"{path}: a calibration table is written as {', '.join(TABLE_SUFFIXES)}")
    if suffix == ".md":
        markdown = format_calibration_table(table) + "\n" if text is None else text
        atomic_write_text(path, markdown, overwrite=overwrite)
    elif suffix == ".json":
        records = [{k: json_safe(v) for k, v in r.items()} for r in table.to_dict("records")]
        atomic_write_text(path, json.dumps(records, indent=2) + "\n", overwrite=overwrite)
    elif suffix == ".csv":
        atomic_write(path, lambda tmp: table.to_csv(tmp, index=False), overwrite=overwrite)
    else:
        atomic_write(path, lambda tmp: table.to_parquet(tmp, index=False), overwrite=overwrite)
    return path
