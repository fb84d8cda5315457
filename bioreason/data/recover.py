"""Opt-in recovery of integer counts from log1p library-normalized expression."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from bioreason.data.validation import N_NAMED, check_anndata, get_layer, layer_label


@dataclass(frozen=True)
class RecoveryReport:
    """How far the recovered counts were from integers.

    Attributes
    ----------
    max_deviation : float
        Largest ``|x / unit - round(x / unit)|`` over all stored entries.
    mean_deviation : float
    n_cells_over_tolerance : int
        Cells with an entry farther than ``tolerance`` from an integer.
    n_cells_rescaled : int
        Cells whose smallest positive value was found (through ``library_key``) to be
        more than one count, e.g. a cell with no gene at exactly one count.
    target_sum : float or None
        The normalization total inferred from ``library_key`` (e.g. 1e4).
    tolerance : float
    n_cells_library_mismatch : int
        Cells whose ``library_key`` value disagrees with their values (see
        :func:`recover_counts`); with ``on_failure="warn"`` they were recovered from
        their values alone.
    """

    max_deviation: float
    mean_deviation: float
    n_cells_over_tolerance: int
    n_cells_rescaled: int
    target_sum: float | None
    tolerance: float
    n_cells_library_mismatch: int = 0


def _check_fraction(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number in (0, 0.5), got {value!r}")
    if not 0.0 < float(value) < 0.5:
        raise ValueError(f"{name} must be a number in (0, 0.5), got {value!r}")
    return float(value)


def _library_column(adata: Any, library_key: str) -> np.ndarray:
    """``obs[library_key]`` as float64, with a TypeError naming the column if not numbers."""
    column = adata.obs[library_key]
    try:
        return np.asarray(column.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(
            f"obs[{library_key!r}] must hold numbers (each cell's total count before "
            f"normalization), got values like {column.iloc[0]!r}; pass library_key= naming "
            "such a column, or library_key=None"
        ) from None


def recover_counts(
    adata: Any,
    *,
    layer: str | None = None,
    key_added: str = "counts",
    library_key: str | None = "ncounts",
    tolerance: float = 0.05,
    library_tolerance: float = 0.05,
    on_failure: Literal["raise", "warn"] = "raise",
) -> tuple[Any, RecoveryReport]:
    """Rebuild integer counts from ``log1p(normalize_total(counts))`` data.

    In each cell one count maps to one value ``unit = target_sum / library_size``;
    the smallest positive ``expm1(x)`` in the cell is taken as one count. When
    ``obs[library_key]`` holds the cells' total UMI counts, ``target_sum`` is
    estimated as the median of ``unit * library_size`` and cells whose smallest value
    is really 2 or more counts are rescaled (those cells have no gene at one count).

    The library column is checked first. For every cell with values it must be a
    finite number above 0, ``unit * library_size / target_sum`` must lie within
    ``library_tolerance`` (relative) of a whole number ``k >= 1``, a cell read as
    ``k >= 2`` counts per smallest value must need it (its values are not whole counts
    as they stand: otherwise the column cannot be told apart from one that is ``k``
    times too large), and the recovered counts must not add up to more than the
    library size. Cells that fail raise a ``ValueError`` naming the column, how many
    cells and the first few (``on_failure="raise"``), or, with ``on_failure="warn"``,
    a warning, after which those cells are recovered from their values alone.

    Parameters
    ----------
    adata : AnnData
        Not modified; a copy is returned.
    layer : str or None
        Where the log1p-normalized values live (``None``: ``X``).
    key_added : str
        Layer of the returned copy that receives the counts (CSR float32).
    library_key : str or None
        ``obs`` column with each cell's total count before normalization; ``None``
        takes every cell's smallest positive value as one count.
    tolerance : float
        Largest allowed distance from an integer, in (0, 0.5).
    library_tolerance : float
        Largest allowed relative distance of a cell's library size from a whole
        multiple of what its values imply, in (0, 0.5).
    on_failure : {"raise", "warn"}

    Returns
    -------
    (AnnData, RecoveryReport)
    """
    check_anndata(adata, "recover_counts")
    if on_failure not in ("raise", "warn"):
        raise ValueError(f"on_failure must be 'raise' or 'warn', got {on_failure!r}")
    tolerance = _check_fraction("tolerance", tolerance)
    library_tolerance = _check_fraction("library_tolerance", library_tolerance)
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty layer name, got {key_added!r}")
    if library_key is not None and not isinstance(library_key, str):
        raise TypeError(f"library_key must be an obs column name or None, got {library_key!r}")
    source = get_layer(adata, layer)
    values = sp.csr_matrix(source, dtype=np.float64, copy=True)
    values.sum_duplicates()
    if values.data.size and (values.data.min() < 0 or not np.isfinite(values.data).all()):
        raise ValueError(
            f"{layer_label(layer)} has negative or non-finite values; it does not look like "
            "log1p-normalized expression"
        )
    values.data = np.expm1(values.data)
    values.eliminate_zeros()
    n_cells = values.shape[0]
    nnz_per_cell = np.diff(values.indptr)
    unit = np.ones(n_cells)
    has_values = nnz_per_cell > 0
    # Per-cell minimum of stored values without a Python loop over cells.
    unit[has_values] = np.minimum.reduceat(values.data, values.indptr[:-1][has_values])
    row_of_entry = np.repeat(np.arange(n_cells), nnz_per_cell)

    target_sum = None
    multiple = np.ones(n_cells)  # counts in each cell's smallest value
    n_mismatch = 0
    if library_key is not None and library_key in adata.obs.columns:
        library = _library_column(adata, library_key)
        target_sum, multiple, mismatch, reasons = _multiples_from_library(
            values,
            unit,
            row_of_entry,
            library,
            has_values,
            library_key,
            tolerance,
            library_tolerance,
        )
        n_mismatch = int(mismatch.sum())
        if n_mismatch:
            rows = np.flatnonzero(mismatch)
            listed = "; ".join(
                f"{str(adata.obs_names[row])!r}: {reasons[row]}" for row in rows[:N_NAMED]
            )
            median = f" (median {target_sum:g})" if target_sum is not None else ""
            message = (
                f"obs[{library_key!r}] disagrees with {layer_label(layer)} for {n_mismatch} "
                f"of {n_cells} cells ({listed}{'; ...' if n_mismatch > N_NAMED else ''}). A "
                "cell's library size times the value of one count should be the same "
                f"normalization total in every cell{median}. Fix the column for these cells, "
                "pass library_key=None to take every cell's smallest value as one count, or "
                "on_failure='warn' to do that for these cells only."
            )
            if on_failure == "raise":
                raise ValueError(message)
            warnings.warn(message, stacklevel=2)
    elif library_key is not None:
        warnings.warn(
            f"obs[{library_key!r}] not found: assuming every cell's smallest positive value "
            "is one count (cells with no gene at one count will be scaled wrongly)",
            stacklevel=2,
        )
    n_rescaled = int((multiple[has_values] > 1).sum())
    unit = unit / multiple

    ratio = values.data / unit[row_of_entry]
    rounded = np.rint(ratio)
    deviation = np.abs(ratio - rounded)
    cell_max = np.zeros(n_cells)
    np.maximum.at(cell_max, row_of_entry, deviation)
    n_bad = int((cell_max > tolerance).sum())
    report = RecoveryReport(
        max_deviation=float(deviation.max()) if deviation.size else 0.0,
        mean_deviation=float(deviation.mean()) if deviation.size else 0.0,
        n_cells_over_tolerance=n_bad,
        n_cells_rescaled=n_rescaled,
        target_sum=target_sum,
        tolerance=tolerance,
        n_cells_library_mismatch=n_mismatch,
    )
    if n_bad:
        worst = int(np.argmax(cell_max))
        message = (
            f"recovered counts of {n_bad} cell(s) are farther than {tolerance} from integers "
            f"(worst: cell {adata.obs_names[worst]!r}, deviation {cell_max[worst]:.3f}); "
            f"{layer_label(layer)} may not be log1p of library-normalized counts"
        )
        if on_failure == "raise":
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)

    counts = sp.csr_matrix(
        (rounded.astype(np.float32), values.indices.copy(), values.indptr.copy()),
        shape=values.shape,
    )
    counts.eliminate_zeros()
    out = adata.copy()
    out.layers[key_added] = counts
    return out, report


def _multiples_from_library(
    values: sp.csr_matrix,
    unit: np.ndarray,
    row_of_entry: np.ndarray,
    library: np.ndarray,
    has_values: np.ndarray,
    library_key: str,
    tolerance: float,
    library_tolerance: float,
) -> tuple[float | None, np.ndarray, np.ndarray, dict[int, str]]:
    """Counts per smallest value of each cell from the library column, and the cells
    where the column disagrees with the values.

    Returns
    -------
    target_sum : float or None
        Median of ``unit * library`` over cells with values and a usable library.
    multiple : ndarray, shape (n_cells,)
        Whole number >= 1 per cell; 1 for cells that disagree.
    mismatch : ndarray of bool, shape (n_cells,)
    reasons : dict
        Row -> why that cell disagrees (for the first few rows).
    """
    n_cells = unit.size
    multiple = np.ones(n_cells)
    invalid = has_values & ~(np.isfinite(library) & (library > 0))
    usable = has_values & ~invalid
    if not usable.any():
        reasons = {int(r): f"{library_key} is {library[r]:g}" for r in np.flatnonzero(invalid)}
        return None, multiple, invalid, reasons
    scaled = unit * np.where(usable, library, 0.0)
    target_sum = float(np.median(scaled[usable]))
    implied = scaled / target_sum  # the cell's smallest value in counts, by the library
    nearest = np.maximum(np.rint(implied), 1.0)
    off = usable & ((np.rint(implied) < 1) | (np.abs(implied / nearest - 1.0) > library_tolerance))
    # Would the values be whole counts with the smallest one as one count?
    ratio_at_one = values.data / unit[row_of_entry]
    deviation_at_one = np.zeros(n_cells)
    np.maximum.at(deviation_at_one, row_of_entry, np.abs(ratio_at_one - np.rint(ratio_at_one)))
    unneeded = usable & ~off & (nearest >= 2) & (deviation_at_one <= tolerance)
    multiple[usable & ~off & ~unneeded] = nearest[usable & ~off & ~unneeded]
    totals = np.bincount(
        row_of_entry, weights=np.rint(ratio_at_one * multiple[row_of_entry]), minlength=n_cells
    )
    over = usable & ~off & ~unneeded & (totals > library * (1.0 + library_tolerance))
    mismatch = invalid | off | unneeded | over
    multiple[mismatch] = 1.0
    reasons: dict[int, str] = {}
    for row in np.flatnonzero(mismatch)[:N_NAMED]:
        size = library[row]
        if invalid[row]:
            reasons[row] = f"{library_key} is {size:g}"
        elif off[row]:
            reasons[row] = (
                f"{library_key} {size:g} is {implied[row]:.3g} times the library size its "
                "values imply, not a whole multiple"
            )
        elif unneeded[row]:
            reasons[row] = (
                f"{library_key} {size:g} is {nearest[row]:g} times the library size its "
                "values imply, yet its values are whole counts as they stand"
            )
        else:
            reasons[row] = f"its recovered counts add up to {totals[row]:g}, more than {size:g}"
    return target_sum, multiple, mismatch, reasons
