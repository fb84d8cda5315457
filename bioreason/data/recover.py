"""Opt-in recovery of integer counts from log1p library-normalized expression."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp

from bioreason.data.validation import get_layer, layer_label


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
    """

    max_deviation: float
    mean_deviation: float
    n_cells_over_tolerance: int
    n_cells_rescaled: int
    target_sum: float | None
    tolerance: float


def recover_counts(
    adata: Any,
    *,
    layer: str | None = None,
    key_added: str = "counts",
    library_key: str | None = "ncounts",
    tolerance: float = 0.05,
    on_failure: Literal["raise", "warn"] = "raise",
) -> tuple[Any, RecoveryReport]:
    """Rebuild integer counts from ``log1p(normalize_total(counts))`` data.

    In each cell one count maps to one value ``unit = target_sum / library_size``;
    the smallest positive ``expm1(x)`` in the cell is taken as one count. When
    ``obs[library_key]`` holds the cells' total UMI counts, ``target_sum`` is
    estimated as the median of ``unit * library_size`` and cells whose smallest value
    is really 2 or more counts are rescaled (those cells have no gene at one count).

    Parameters
    ----------
    adata : AnnData
        Not modified; a copy is returned.
    layer : str or None
        Where the log1p-normalized values live (``None``: ``X``).
    key_added : str
        Layer of the returned copy that receives the counts (CSR float32).
    library_key : str or None
        ``obs`` column with each cell's total count before normalization.
    tolerance : float
        Largest allowed distance from an integer.
    on_failure : {"raise", "warn"}

    Returns
    -------
    (AnnData, RecoveryReport)
    """
    if on_failure not in ("raise", "warn"):
        raise ValueError(f"on_failure must be 'raise' or 'warn', got {on_failure!r}")
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

    target_sum = None
    n_rescaled = 0
    if library_key is not None and library_key in adata.obs.columns:
        library = adata.obs[library_key].to_numpy(dtype=np.float64)
        scaled = unit * library
        target_sum = float(np.median(scaled[has_values]))
        counts_per_unit = np.maximum(np.rint(scaled / target_sum), 1.0)
        n_rescaled = int((counts_per_unit[has_values] > 1).sum())
        unit = unit / counts_per_unit
    elif library_key is not None:
        warnings.warn(
            f"obs[{library_key!r}] not found: assuming every cell's smallest positive value "
            "is one count (cells with no gene at one count will be scaled wrongly)",
            stacklevel=2,
        )

    row_of_entry = np.repeat(np.arange(n_cells), nnz_per_cell)
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
