"""Opt-in recovery of integer counts from log1p library-normalized expression."""

from __future__ import annotations

import math
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
    log_base : float
        The base of the logarithm the values were taken in: ``e`` (``log1p``, scanpy's
        default), 2 or 10, as given or as detected.
    """

    max_deviation: float
    mean_deviation: float
    n_cells_over_tolerance: int
    n_cells_rescaled: int
    target_sum: float | None
    tolerance: float
    n_cells_library_mismatch: int = 0
    log_base: float = math.e

    def summary(self) -> str:
        """The recovery in one line (base, distance from integers, rescaled cells).

        Returns
        -------
        str
        """
        line = (
            f"counts recovered from log(1 + x) values in base {_base_name(self.log_base)}: "
            f"largest distance from an integer {self.max_deviation:.2g}"
        )
        if self.target_sum is not None:
            line += f", normalization total {self.target_sum:.4g}"
        if self.n_cells_rescaled:
            line += f", {self.n_cells_rescaled} cells rescaled by their library size"
        if self.n_cells_library_mismatch:
            line += (
                f", {self.n_cells_library_mismatch} cells recovered from their values alone "
                "(their library size disagreed)"
            )
        return line


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
    log_base: float | None = None,
) -> tuple[Any, RecoveryReport]:
    """Rebuild integer counts from ``log1p(normalize_total(counts))`` data.

    The logarithm's base is detected unless ``log_base`` gives it: natural (``log1p``,
    scanpy's default), 2 (``sc.pp.log1p(base=2)``) or 10 is the one under which each
    cell's values are whole multiples of its smallest value. Values that are whole
    numbers already (raw counts) or that fit no base raise a ``ValueError`` that says
    what was found.

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
    log_base : float, optional
        Base of the logarithm (``math.e``, 2, 10, ...); None detects it among e, 2 and
        10.

    Returns
    -------
    (AnnData, RecoveryReport)
        The report's ``log_base`` is the base used.

    Raises
    ------
    ValueError
        Negative or non-finite values; values that are raw counts already (the message
        says so and how to use them); values that fit none of the bases e, 2, 10 (the
        message gives the share of cells each base fits); a library column that
        disagrees with the values, or recovered counts far from integers (with
        ``on_failure="raise"``).
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
    base_note = ""
    if log_base is None:
        best, shares = _base_shares(values, tolerance, layer_label(layer))
        log_base = LOG_BASES[best]
        if shares[best] < 0.5:
            # no base fits: read it as log1p and let the integer check below say so
            log_base = math.e
            base_note = (
                "; no logarithm base makes its values whole counts (share of cells that "
                f"become whole: {_shares_text(shares)}): is it scaled, centred or "
                "batch-corrected rather than log-normalized?"
            )
    elif (
        isinstance(log_base, bool)
        or not isinstance(log_base, (int, float, np.integer, np.floating))
        or not (math.isfinite(log_base) and log_base > 1)
    ):
        raise ValueError(f"log_base must be a number above 1 (e, 2, 10) or None, got {log_base!r}")
    values.data = np.expm1(values.data * math.log(float(log_base)))
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
                f"of {n_cells} cells, reading the values as log(1 + x) in base "
                f"{_base_name(float(log_base))}{base_note} "
                f"({listed}{'; ...' if n_mismatch > N_NAMED else ''}). A "
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
        log_base=float(log_base),
    )
    if n_bad:
        worst = int(np.argmax(cell_max))
        message = (
            f"recovered counts of {n_bad} cell(s) are farther than {tolerance} from integers "
            f"(worst: cell {adata.obs_names[worst]!r}, deviation {cell_max[worst]:.3f}); "
            f"{layer_label(layer)} may not be log(1 + x) of library-normalized counts "
            f"(read in base {_base_name(float(log_base))}){base_note}"
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


#: bases a log-normalized matrix is commonly written in, by name
LOG_BASES = {"e": math.e, "2": 2.0, "10": 10.0}

#: cells read to detect the base
_DETECTION_CELLS = 2000


#: how a message names each base
_BASE_NAMES = {"e": "e (natural log, log1p)", "2": "2 (log2)", "10": "10 (log10)"}


def _base_name(base: float) -> str:
    for name, value in LOG_BASES.items():
        if math.isclose(base, value):
            return _BASE_NAMES[name]
    return f"{base:g}"


def detect_log_base(values: Any, *, tolerance: float = 0.05, where: str = "the matrix") -> float:
    """The base of ``log(1 + normalized counts)`` values: e, 2 or 10.

    Under the right base every cell's values, ``base**x - 1``, are whole multiples of
    its smallest one (one count). Up to 2,000 cells with two or more distinct values are
    read (evenly spaced), and the base that makes the most of them whole within
    ``tolerance`` wins.

    Parameters
    ----------
    values : sparse or dense matrix, shape (n_cells, n_genes)
        Non-negative log-normalized values.
    tolerance : float
        Largest distance from a whole multiple.
    where : str
        What ``values`` is, for error messages (e.g. ``"adata.X"``).

    Returns
    -------
    float
        ``math.e``, 2.0 or 10.0.

    Raises
    ------
    ValueError
        The values are whole numbers (raw counts, not log-normalized), or no base makes
        half of the cells whole (the message gives each base's share).
    """
    best, shares = _base_shares(values, tolerance, where)
    if shares[best] < 0.5:
        raise ValueError(
            f"{where} does not look like log(1 + x) of library-normalized counts in base e, 2 "
            "or 10: the share of cells whose values become whole counts is "
            f"{_shares_text(shares)}. Check that it holds log-normalized values (not scaled, "
            "centred or batch-corrected ones), or give the counts themselves."
        )
    return LOG_BASES[best]


def _shares_text(shares: dict[str, float]) -> str:
    return ", ".join(f"base {name}: {share:.0%}" for name, share in shares.items())


def _base_shares(values: Any, tolerance: float, where: str) -> tuple[str, dict[str, float]]:
    """The best-fitting base's name and, for each base of :data:`LOG_BASES`, the share of
    informative cells whose values it makes whole; raises when the values are whole
    numbers already (raw counts)."""
    matrix = sp.csr_matrix(values, dtype=np.float64)
    matrix.eliminate_zeros()
    data = matrix.data
    if data.size == 0:
        return "e", {name: 1.0 for name in LOG_BASES}
    if np.all(np.abs(data - np.rint(data)) <= 1e-6):
        raise ValueError(
            f"{where} holds whole numbers (largest {data.max():g}): these look like raw "
            "counts already, not log-normalized values, so there is nothing to recover. "
            "Use them as the counts: layer=None in Python, --layer X on the command line "
            "(without --recover-counts), or leave data.recover_counts false in a pipeline."
        )
    nnz = np.diff(matrix.indptr)
    candidates = np.flatnonzero(nnz >= 2)
    if candidates.size > _DETECTION_CELLS:
        candidates = candidates[np.linspace(0, candidates.size - 1, _DETECTION_CELLS).astype(int)]
    sample = matrix[candidates]
    row_of_entry = np.repeat(np.arange(sample.shape[0]), np.diff(sample.indptr))
    shares = {}
    for name, base in LOG_BASES.items():
        linear = np.expm1(sample.data * math.log(base))
        unit = np.minimum.reduceat(linear, sample.indptr[:-1]) if sample.nnz else linear
        ratio = linear / unit[row_of_entry]
        worst = np.zeros(sample.shape[0])
        np.maximum.at(worst, row_of_entry, np.abs(ratio - np.rint(ratio)))
        # cells whose values are all equal fit every base; they decide nothing
        distinct = np.zeros(sample.shape[0])
        np.maximum.at(distinct, row_of_entry, ratio)
        informative = distinct > 1 + tolerance
        shares[name] = float(np.mean(worst[informative] <= tolerance)) if informative.any() else 1.0
    best = max(shares, key=shares.get)
    return best, shares


def recover_into_setup(adata: Any, setup: Any, where: str) -> tuple[Any, RecoveryReport]:
    """Recover counts from the log-normalized values in ``adata.X`` into the counts layer
    that ``setup`` reads (what ``--recover-counts`` and ``data.recover_counts: true`` do).

    Parameters
    ----------
    adata : AnnData
        In memory (not backed); not modified.
    setup : PerturbationSetup
        Its ``layer`` receives the counts; it must name a layer, not ``X``.
    where : str
        The option that asked for it, for error messages (``"--recover-counts"``).

    Returns
    -------
    (AnnData, RecoveryReport)
        A copy with the counts in ``layers[setup.layer]``, and the report.

    Raises
    ------
    ValueError
        ``setup.layer`` is None (``X``), the AnnData is backed, or the recovery fails
        (see :func:`recover_counts`).
    """
    if setup.layer is None:
        raise ValueError(
            f"{where} writes the recovered counts into a layer and reads the log-normalized "
            "values from adata.X, so the counts layer cannot be X: leave the layer at its "
            "default ('counts') or name another layer"
        )
    if getattr(adata, "isbacked", False):
        raise ValueError(f"{where} needs the file in memory: do not open it backed")
    library_key = "ncounts" if "ncounts" in adata.obs.columns else None
    try:
        return recover_counts(adata, layer=None, key_added=setup.layer, library_key=library_key)
    except ValueError as err:
        if library_key is None or "disagrees with" not in str(err):
            raise
        raise ValueError(
            f"{where}: {err} ({where} reads each cell's library size from obs['ncounts'] "
            "when the file has that column; without it every cell is recovered from its "
            "values alone.)"
        ) from None


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
