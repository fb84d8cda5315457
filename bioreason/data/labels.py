"""Parse perturbation labels (``control``, ``A``, ``A+B``) into a sparse dosage matrix."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

DEFAULT_CONTROLS = "control"


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


def _as_controls(control: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(control, str):
        return (control,)
    controls = tuple(control)
    if not controls or not all(isinstance(c, str) for c in controls):
        raise TypeError(f"control must be a label or a list of labels, got {control!r}")
    return controls


def _parse_dose(dose: object, n_parts: int, label: str, delimiter: str) -> list[float]:
    """One dose per component of ``label``: a number scales all, ``'1+2'`` gives one each."""
    if dose is None or (isinstance(dose, float) and np.isnan(dose)):
        return [1.0] * n_parts
    if isinstance(dose, (int, float, np.integer, np.floating)):
        return [float(dose)] * n_parts
    parts = [p.strip() for p in str(dose).split(delimiter)]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"dosage {dose!r} of label {label!r} is not a number or numbers joined by {delimiter!r}"
        ) from None
    if len(values) == 1:
        return values * n_parts
    if len(values) != n_parts:
        raise ValueError(
            f"dosage {dose!r} has {len(values)} parts but label {label!r} has {n_parts} "
            "perturbations"
        )
    return values


def parse_perturbation_labels(
    labels: Sequence[object] | pd.Series,
    *,
    control: str | Sequence[str] = DEFAULT_CONTROLS,
    delimiter: str = "+",
    dosages: Sequence[object] | pd.Series | None = None,
    perturbation_names: Sequence[str] | None = None,
    key: str = "perturbation",
) -> ParsedLabels:
    """Turn per-cell labels into a dosage matrix.

    Each label is split on ``delimiter``; parts equal to a control label are dropped
    (so ``A+ctrl`` is the single perturbation ``A``); a label whose parts are all
    control labels is a control cell. Work is done once per distinct (label, dose)
    pair, not per cell.

    Parameters
    ----------
    labels : sequence of str, length n_cells
    control : str or list of str
        Label(s) that mark control cells, e.g. ``"control"``, ``"ctrl"``,
        ``"non-targeting"`` or ``""``.
    delimiter : str
        Joins the genes of a combination.
    dosages : sequence, length n_cells, optional
        A number per cell (scales every perturbation of the cell) or a string of
        numbers joined by ``delimiter`` (one per perturbation of the label).
    perturbation_names : list of str, optional
        Fix the column order (e.g. to match a trained model); labels naming other
        perturbations raise an error.
    key : str
        Name of the obs column, used in error messages.
    """
    controls = _as_controls(control)
    if not delimiter:
        raise ValueError("delimiter must be a non-empty string")
    labels = pd.Series(np.asarray(labels, dtype=object))
    if labels.isna().any():
        first = int(np.flatnonzero(labels.isna().to_numpy())[0])
        raise ValueError(f"obs[{key!r}] is missing (NaN) at row {first}; label every cell")
    labels = labels.astype(str)
    if dosages is not None:
        dose_series = pd.Series(np.asarray(dosages, dtype=object)).astype(str)
        if len(dose_series) != len(labels):
            raise ValueError(f"got {len(dose_series)} dosages for {len(labels)} cells")
        pair = pd.MultiIndex.from_arrays([labels, dose_series])
        pair_codes, unique_pairs = pd.factorize(pair)
        unique_labels = [p[0] for p in unique_pairs]
        unique_doses: list[object] = [p[1] for p in unique_pairs]
    else:
        pair_codes, unique_index = pd.factorize(labels)
        unique_labels = list(unique_index)
        unique_doses = [None] * len(unique_labels)

    control_set = set(controls)
    parsed: list[dict[str, float]] = []
    for label, dose in zip(unique_labels, unique_doses):
        parts = [p.strip() for p in label.split(delimiter)]
        if label in control_set:
            parsed.append({})
            continue
        genes = [p for p in parts if p not in control_set]
        if "" in genes:
            raise ValueError(
                f"obs[{key!r}] label {label!r} has an empty part when split on {delimiter!r}; "
                "fix the label or check delimiter="
            )
        if not genes:
            if all(p in control_set for p in parts):
                parsed.append({})
                continue
            raise ValueError(
                f"obs[{key!r}] label {label!r} parses to no perturbation with delimiter "
                f"{delimiter!r} and control labels {list(controls)}; fix the label or add it "
                "to control="
            )
        values = _parse_dose(dose, len(parts), label, delimiter)
        doses = {}
        for part, value in zip(parts, values):
            if part in control_set:
                continue
            doses[part] = doses.get(part, 0.0) + value
        parsed.append(doses)

    if perturbation_names is None:
        names = sorted({g for doses in parsed for g in doses})
    else:
        names = list(perturbation_names)
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
