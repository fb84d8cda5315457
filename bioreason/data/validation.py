"""Count validation: errors name the layer and the first offending cell and gene."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from bioreason.data._matrix import DEFAULT_CHUNK_ROWS, iter_row_chunks

#: obs columns that name the experiment a cell comes from; several values in one of
#: them suggest a file that mixes experiments (e.g. the PerturBench devel file)
EXPERIMENT_COLUMNS = ("dataset", "cell_type", "cell_line", "perturbation_type")

#: how many offending cells an error message lists by name
N_NAMED = 5

#: the largest count accepted in one entry: counts are stored as float32, which holds
#: whole numbers exactly only up to 2**24, and no sequencing depth puts 16.7 million
#: UMIs of one gene in one cell
MAX_COUNT = float(2**24)

#: how to rebuild counts from log-normalized values, on each surface
RECOVER_HINT = (
    "If it holds log-normalized values, rebuild integer counts into layers['counts']: "
    "--recover-counts (bioreason inspect / train-vae), data.recover_counts: true in a "
    "pipeline config, or bioreason.data.recover_counts(adata) in Python."
)


def layer_label(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def check_anndata(adata: Any, where: str) -> None:
    """Raise a ``TypeError`` unless ``adata`` is an AnnData (in memory or backed)."""
    import anndata as ad

    if not isinstance(adata, ad.AnnData):
        hint = (
            "; read the file first with anndata.read_h5ad(path)"
            if isinstance(adata, (str, bytes)) or hasattr(adata, "__fspath__")
            else ""
        )
        raise TypeError(f"{where}: adata must be an AnnData, got {type(adata).__name__}{hint}")


def named_cells(cell_names: Sequence[Any], rows: np.ndarray, n: int = N_NAMED) -> str:
    """``'c1', 'c7', ...`` for the first ``n`` of ``rows``."""
    names = ", ".join(repr(str(cell_names[int(row)])) for row in rows[:n])
    return names + (", ..." if len(rows) > n else "")


def check_no_empty_cells(
    library_size: np.ndarray, cell_names: Sequence[Any], layer: str | None
) -> None:
    """Raise a ``ValueError`` when a cell's total count is 0 (or not a positive number).

    A cell without counts has no library size; a model fit to it diverges, so it is
    refused here, where the message can say which cells and what to do.
    """
    library_size = np.asarray(library_size)
    where = layer_label(layer)
    invalid = np.flatnonzero(~np.isfinite(library_size) | (library_size < 0))
    if invalid.size:
        raise ValueError(
            f"{invalid.size} of {library_size.size} cells have a total count in {where} that "
            f"is negative or not finite ({named_cells(cell_names, invalid)}); parse with "
            "validate=True to find the offending entries"
        )
    empty = np.flatnonzero(library_size == 0)
    if empty.size:
        matrix = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        raise ValueError(
            f"{empty.size} of {library_size.size} cells have no counts in {where} "
            f"({named_cells(cell_names, empty)}): a cell without counts has no library size "
            "and a model cannot be fit to it. Remove them first, e.g. "
            f"adata = adata[np.asarray({matrix}.sum(axis=1)).ravel() > 0].copy(), or call "
            "bioreason.data.prepare(adata, ..., drop_empty_cells=True), which drops them "
            "with a warning."
        )


def warn_mixed_experiments(adata: Any, stacklevel: int = 3) -> None:
    """Warn when an obs column of :data:`EXPERIMENT_COLUMNS` holds several values.

    Cells of different experiments that share perturbation labels (CRISPRa and CRISPRi
    of the same gene) would be merged into one condition.
    """
    mixed = []
    for column in EXPERIMENT_COLUMNS:
        if column in adata.obs.columns:
            values = sorted(map(str, pd.unique(adata.obs[column].dropna())))
            if len(values) > 1:
                mixed.append((column, values))
    if not mixed:
        return
    described = "; ".join(
        f"obs[{column!r}] holds {len(values)} values {values[:10]}"
        + (" ..." if len(values) > 10 else "")
        for column, values in mixed
    )
    column, values = mixed[0]
    warnings.warn(
        f"{described}. The cells may come from different experiments, and cells with the "
        "same perturbation label are merged into one condition across them. To use one "
        f"experiment, subset first: adata = adata[adata.obs[{column!r}] == {values[0]!r}].copy()",
        UserWarning,
        stacklevel=stacklevel,
    )


def get_layer(adata: Any, layer: str | None) -> Any:
    """The matrix for ``layer`` (``None`` = ``X``), with an error listing the layers."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the layer with raw counts")
        return adata.X
    if layer not in adata.layers:
        existing = list(adata.layers.keys())
        hint = (
            " If adata.X holds the raw counts, read them from there: --layer X on the command "
            "line (setup.layer: null in a config, layer=None in Python). " + RECOVER_HINT
        )
        raise ValueError(f"layer {layer!r} not found in adata.layers (layers: {existing}).{hint}")
    return adata.layers[layer]


def validate_counts(
    matrix: Any,
    *,
    cell_names: Sequence[str],
    gene_names: Sequence[str],
    layer: str | None = "counts",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> np.ndarray:
    """Check that ``matrix`` holds raw counts and return per-cell library sizes.

    Reads ``matrix`` in row chunks, so a backed matrix is never loaded whole.

    Returns
    -------
    library_size : ndarray, shape (n_cells,)
        Total counts per cell (float32).

    Raises
    ------
    ValueError
        For NaN/inf, negative or non-integer values, or a count above
        :data:`MAX_COUNT` (2**24: beyond any sequencing depth, and beyond what float32
        holds exactly), naming the layer, cell and gene; for names that do not match
        the matrix's shape.
    """
    n_cells = len(cell_names)
    shape = tuple(getattr(matrix, "shape", ()))
    if len(shape) != 2:
        raise ValueError(f"{layer_label(layer)} must be a 2-D matrix, got shape {shape}")
    if shape[0] != n_cells:
        raise ValueError(
            f"{layer_label(layer)} has {shape[0]} rows but {n_cells} cell names were given"
        )
    if shape[1] != len(gene_names):
        raise ValueError(
            f"{layer_label(layer)} has {shape[1]} columns but {len(gene_names)} gene names "
            "were given"
        )
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer)):
        raise TypeError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows}")
    library_size = np.zeros(n_cells, dtype=np.float32)
    checks = (
        (lambda v: ~np.isfinite(v), "a non-finite value (NaN or inf)", ""),
        (lambda v: v < 0, "a negative value", ""),
        (lambda v: v != np.round(v), "a non-integer value", ""),
        (
            lambda v: v > MAX_COUNT,
            f"a count above {MAX_COUNT:,.0f}",
            " No sequencing depth gives that many UMIs of one gene in one cell, and "
            "float32 counts cannot hold it exactly: these are not raw counts (scaled or "
            "corrupted values?).",
        ),
    )
    for start, block in iter_row_chunks(matrix, n_cells, chunk_rows):
        values = block.data
        for test, what, why in checks:
            bad = np.flatnonzero(test(values))
            if bad.size:
                position = int(bad[0])
                row = int(np.searchsorted(block.indptr, position, side="right") - 1)
                column = int(block.indices[position])
                cell = start + row
                raise ValueError(
                    f"{layer_label(layer)} has {what} ({float(values[position]):.6g}) at cell "
                    f"{cell_names[cell]!r} (row {cell}), gene {gene_names[column]!r} "
                    f"(column {column}).{why} The models need raw integer UMI counts: name "
                    "the layer that holds them (--layer on the command line, setup.layer in "
                    f"a config, layer= in Python). {RECOVER_HINT}"
                )
        library_size[start : start + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
    return library_size
