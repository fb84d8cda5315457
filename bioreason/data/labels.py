"""Parse perturbation labels (``control``, ``A``, ``A+B``) into a sparse dosage matrix."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

DEFAULT_CONTROLS = "control"

#: dose strings that mean "no dose given" (how NaN, None and pandas' NA print)
_MISSING_DOSES = frozenset({"nan", "none", "<na>", "", "nat"})


@dataclass(frozen=True)
class ParsedLabels:
    """Result of :func:`parse_perturbation_labels`.

    Attributes
    ----------
    dosage : csr_matrix, shape (n_cells, n_perturbations), float32
        ``dosage[i, t]`` is the dose of perturbation ``t`` in cell ``i`` (0 when absent).
    perturbation_names : list of str, length n_perturbations
        Sorted names of the single perturbations.
    condition_names : list of str, length n_conditions
        Canonical condition labels: the control label, or the cell's perturbations
        sorted and joined by the delimiter (``B+A`` and ``A+B`` are one condition).
    condition_codes : ndarray, shape (n_cells,)
        Index into ``condition_names`` for each cell.
    is_control : ndarray of bool, shape (n_cells,)
    """

    dosage: sp.csr_matrix
    perturbation_names: list[str]
    condition_names: list[str]
    condition_codes: np.ndarray
    is_control: np.ndarray


def control_label(value: object, where: str = "control") -> str:
    """One control label as text: a string, or an integer written in decimal.

    Labels are compared as text, so ``control=0`` matches an integer column's ``0``.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    raise TypeError(
        f"{where} must be a label (text, or an integer for an integer column) or a list of "
        f"labels, got {value!r}; labels are compared as text, so write a float label as it "
        "appears in obs (e.g. '1.0')"
    )


def as_controls(control: object, where: str = "control") -> tuple[str, ...]:
    """The control label(s) as a non-empty tuple of strings (see :func:`control_label`)."""
    if isinstance(control, (str, int, np.integer)) and not isinstance(control, (bool, np.bool_)):
        return (control_label(control, where),)
    if not isinstance(control, (list, tuple, np.ndarray, pd.Index, pd.Series)):
        control_label(control, where)  # raises with the message
    controls = tuple(control_label(c, where) for c in control)
    if not controls:
        raise ValueError(f"{where} is an empty list; give at least one control label")
    return controls


def _place(row: int, cell_names: Sequence[object] | None) -> str:
    if cell_names is None:
        return f"row {row}"
    return f"cell {str(cell_names[row])!r} (row {row})"


def _parse_dose(
    dose: str, parts: list[str], controls: set[str], label: str, delimiter: str, where: str
) -> list[float]:
    """One dose per part of ``label``: a number scales all, ``'1+2'`` gives one each.

    Every dose of a perturbation (not of a control part) must be a finite number > 0.
    """
    if dose.strip().lower() in _MISSING_DOSES:
        raise ValueError(
            f"{where}: the dose of label {label!r} is missing ({dose!r}); give every perturbed "
            "cell a dose, or leave dosage_key=None so that every dose is 1"
        )
    texts = [p.strip() for p in dose.split(delimiter)]
    try:
        values = [float(p) for p in texts]
    except ValueError:
        raise ValueError(
            f"{where}: dosage {dose!r} of label {label!r} is not a number or numbers joined "
            f"by {delimiter!r}"
        ) from None
    if len(values) == 1:
        values = values * len(parts)
    elif len(values) != len(parts):
        raise ValueError(
            f"{where}: dosage {dose!r} has {len(values)} parts but label {label!r} has "
            f"{len(parts)}; give one dose, or one per part joined by {delimiter!r}"
        )
    for part, value in zip(parts, values):
        # the dosage matrix is float32: a dose must stay finite and above 0 there too
        stored = float(np.float32(value)) if math.isfinite(value) else value
        if part not in controls and not (math.isfinite(stored) and stored > 0):
            raise ValueError(
                f"{where}: dose {value:g} of {part!r} in label {label!r} (dose {dose!r}) is not "
                "a finite number above 0; a cell without a perturbation is labelled without "
                "it (or as a control)"
            )
    return values


def parse_perturbation_labels(
    labels: Sequence[object] | pd.Series,
    *,
    control: str | int | Sequence[str | int] = DEFAULT_CONTROLS,
    delimiter: str = "+",
    dosages: Sequence[object] | pd.Series | None = None,
    perturbation_names: Sequence[str] | None = None,
    key: str = "perturbation",
    dosage_key: str | None = None,
    cell_names: Sequence[object] | None = None,
) -> ParsedLabels:
    """Turn per-cell labels into a dosage matrix.

    Each label is split on ``delimiter``; parts equal to a control label are dropped
    (so ``A+ctrl`` is the single perturbation ``A``); a label whose parts are all
    control labels is a control cell. Work is done once per distinct (label, dose)
    pair, not per cell.

    Labels are compared as text: an integer column with ``control=0`` works (its labels
    are ``"0"``, ``"1"``, ...). A label names each perturbation once: ``A+A`` is an
    error (give the dose in ``dosages`` instead), and so is a dose that is missing,
    not finite, zero or negative for a perturbed cell. No labels (an empty sequence)
    give an empty result with zero perturbations.

    Parameters
    ----------
    labels : sequence of str or int, length n_cells
    control : str, int, or list of them
        Label(s) that mark control cells, e.g. ``"control"``, ``"ctrl"``,
        ``"non-targeting"``, ``""`` or ``0``.
    delimiter : str
        Joins the genes of a combination.
    dosages : sequence, length n_cells, optional
        A number per cell (scales every perturbation of the cell) or a string of
        numbers joined by ``delimiter`` (one per perturbation of the label). Each dose
        of a perturbation must be finite and above 0; control cells' doses are ignored.
    perturbation_names : list of str, optional
        Fix the column order (e.g. to match a trained model); labels naming other
        perturbations raise an error.
    key : str
        Name of the obs column of labels, used in error messages.
    dosage_key : str, optional
        Name of the obs column of doses, used in error messages.
    cell_names : sequence, length n_cells, optional
        Names of the cells, used in error messages; by default the index of ``labels``
        when it is a ``pandas.Series``, else row numbers.

    Raises
    ------
    TypeError
        For ``labels`` given as one string, a ``control`` that is not text or an
        integer, a ``delimiter`` that is not a string.
    ValueError
        For a missing label, an empty part (``A+``), a perturbation named twice in one
        label, a bad dose, or a label naming a perturbation outside ``perturbation_names``;
        the message names the column, the label and the cell.
    """
    controls = as_controls(control)
    if not isinstance(delimiter, str):
        raise TypeError(f"delimiter must be a non-empty string, got {delimiter!r}")
    if not delimiter:
        raise ValueError("delimiter must be a non-empty string")
    if isinstance(labels, (str, bytes)):
        raise TypeError(
            f"labels must be a sequence with one label per cell, got the single string "
            f"{labels!r}; pass [{labels!r}] for one cell"
        )
    if cell_names is None and isinstance(labels, pd.Series):
        cell_names = labels.index
    array = np.asarray(labels, dtype=object)
    if array.ndim != 1:
        raise ValueError(
            f"obs[{key!r}]: labels must be one-dimensional, one label per cell; got shape "
            f"{array.shape}"
        )
    if cell_names is not None and len(cell_names) != array.size:
        raise ValueError(f"got {len(cell_names)} cell names for {array.size} labels")
    labels = pd.Series(array)
    if labels.isna().any():
        first = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise ValueError(
            f"obs[{key!r}] is missing (NaN) at {_place(first, cell_names)}; label every cell"
        )
    labels = labels.astype(str)
    dose_column = "dosages" if dosage_key is None else f"obs[{dosage_key!r}]"
    if dosages is not None:
        if isinstance(dosages, (str, bytes)):
            raise TypeError(f"{dose_column} must be a sequence with one dose per cell")
        dose_series = pd.Series(np.asarray(dosages, dtype=object).ravel()).astype(str)
        if len(dose_series) != len(labels):
            raise ValueError(
                f"{dose_column}: got {len(dose_series)} dosages for {len(labels)} cells"
            )
        pair = pd.MultiIndex.from_arrays([labels, dose_series])
        pair_codes, unique_pairs = pd.factorize(pair)
        unique_labels = [p[0] for p in unique_pairs]
        unique_doses: list[str | None] = [p[1] for p in unique_pairs]
    else:
        pair_codes, unique_index = pd.factorize(labels)
        unique_labels = list(unique_index)
        unique_doses = [None] * len(unique_labels)
    # first cell of each distinct (label, dose) pair, for error messages
    first_row = np.zeros(len(unique_labels), dtype=np.int64)
    first_row[pair_codes[::-1]] = np.arange(pair_codes.size)[::-1]

    if perturbation_names is not None:
        if isinstance(perturbation_names, (str, bytes)):
            raise TypeError(
                f"perturbation_names must be a list of names, got the string {perturbation_names!r}"
            )
        names = [str(name) for name in perturbation_names]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"perturbation_names repeats {repeated[:10]}; list each name once")

    control_set = set(controls)
    parsed: list[dict[str, float]] = []
    for index, (label, dose) in enumerate(zip(unique_labels, unique_doses)):
        where = _place(int(first_row[index]), cell_names)
        parts = [p.strip() for p in label.split(delimiter)]
        if label in control_set:
            parsed.append({})
            continue
        genes = [p for p in parts if p not in control_set]
        if "" in genes:
            raise ValueError(
                f"obs[{key!r}], {where}: label {label!r} has an empty part when split on "
                f"{delimiter!r}; fix the label or check delimiter="
            )
        if not genes:
            if all(p in control_set for p in parts):
                parsed.append({})
                continue
            raise ValueError(
                f"obs[{key!r}], {where}: label {label!r} parses to no perturbation with "
                f"delimiter {delimiter!r} and control labels {list(controls)}; fix the label "
                "or add it to control="
            )
        repeated = sorted({g for g in genes if genes.count(g) > 1})
        if repeated:
            raise ValueError(
                f"obs[{key!r}], {where}: label {label!r} names {repeated[0]!r} twice; a label "
                f"lists each perturbation once. For a dose of 2, label the cell "
                f"{repeated[0]!r} and give the dose in an obs column of doses (dosage_key=)."
            )
        if dose is None:
            values = [1.0] * len(parts)
        else:
            values = _parse_dose(
                dose, parts, control_set, label, delimiter, f"{dose_column}, {where}"
            )
        parsed.append(
            {part: value for part, value in zip(parts, values) if part not in control_set}
        )

    if perturbation_names is None:
        names = sorted({g for doses in parsed for g in doses})
    else:
        unknown = sorted({g for doses in parsed for g in doses} - set(names))
        if unknown:
            raise ValueError(
                f"obs[{key!r}] names perturbations {unknown[:10]} that are not among the "
                f"{len(names)} known perturbations"
            )
    column = {name: j for j, name in enumerate(names)}

    # Dosage of each distinct (label, dose) pair, then one row gather for all cells.
    rows, cols, vals = [], [], []
    for i, doses in enumerate(parsed):
        for gene, value in doses.items():
            rows.append(i)
            cols.append(column[gene])
            vals.append(value)
    pair_dosage = sp.csr_matrix(
        (np.asarray(vals, np.float32), (np.asarray(rows, np.int64), np.asarray(cols, np.int64))),
        shape=(len(parsed), len(names)),
    )
    dosage = pair_dosage[pair_codes].tocsr()

    canonical = [delimiter.join(sorted(doses)) if doses else controls[0] for doses in parsed]
    condition_codes_of_pair, condition_names = pd.factorize(pd.Series(canonical), sort=True)
    condition_codes = condition_codes_of_pair[pair_codes]
    is_control_pair = np.array([not doses for doses in parsed], dtype=bool)
    return ParsedLabels(
        dosage=dosage,
        perturbation_names=names,
        condition_names=list(condition_names),
        condition_codes=np.asarray(condition_codes, dtype=np.int64),
        is_control=is_control_pair[pair_codes],
    )


def canonical_conditions(
    conditions: Sequence[object],
    *,
    control: str | int | Sequence[str | int] = DEFAULT_CONTROLS,
    delimiter: str = "+",
    where: str = "conditions",
) -> list[str]:
    """The canonical condition of each label: its perturbations sorted and joined by
    ``delimiter`` (``"SET+KLF1"`` and ``"KLF1+SET"`` are both ``"KLF1+SET"``), control
    parts dropped, and the first control label for a control.

    This is the condition :func:`parse_perturbation_labels` gives a cell with that label,
    so a label written in any order, or as the data writes it, finds the same cells.

    Parameters
    ----------
    conditions : sequence of str, length n
        Condition labels as a user or a file writes them.
    control : str, int, or list of them
        The control label(s).
    delimiter : str
        Joins the parts of a combination.
    where : str
        What ``conditions`` is, for error messages (e.g. ``"heldout"``).

    Returns
    -------
    list of str, length n
        Canonical labels, in the order given.

    Raises
    ------
    TypeError
        ``conditions`` is one string (pass a list) or not a sequence.
    ValueError
        A label with an empty part or a perturbation named twice; the message names
        ``where`` and the label.
    """
    if isinstance(conditions, (str, bytes)):
        raise TypeError(
            f"{where} must be a list of condition labels, got the string {conditions!r}; "
            f"pass [{conditions!r}] for one"
        )
    try:
        labels = list(conditions)
    except TypeError:
        raise TypeError(
            f"{where} must be a list of condition labels, got {type(conditions).__name__}"
        ) from None
    if not labels:
        return []
    key = "__conditions__"
    try:
        parsed = parse_perturbation_labels(labels, control=control, delimiter=delimiter, key=key)
    except ValueError as err:
        message = str(err).replace(f"obs[{key!r}]", where).replace("row ", "entry ")
        raise ValueError(message) from None
    return [
        str(name)
        for name in np.asarray(parsed.condition_names, dtype=object)[parsed.condition_codes]
    ]
