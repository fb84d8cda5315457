"""Count validation: errors name the layer and the first offending cell and gene."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bioreason.data._matrix import DEFAULT_CHUNK_ROWS, iter_row_chunks


def layer_label(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def get_layer(adata: Any, layer: str | None) -> Any:
    """The matrix for ``layer`` (``None`` = ``X``), with an error listing the layers."""
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty; pass layer= naming the layer with raw counts")
        return adata.X
    if layer not in adata.layers:
        existing = list(adata.layers.keys())
        hint = (
            " If X holds raw counts pass layer=None; if it holds log1p-normalized data, "
            "bioreason.data.recover_counts(adata) rebuilds integer counts into layers['counts']."
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
        For NaN/inf, negative or non-integer values, naming the layer, cell and gene.
    """
    n_cells = len(cell_names)
    library_size = np.zeros(n_cells, dtype=np.float32)
    checks = (
        (lambda v: ~np.isfinite(v), "a non-finite value (NaN or inf)"),
        (lambda v: v < 0, "a negative value"),
        (lambda v: v != np.round(v), "a non-integer value"),
    )
    for start, block in iter_row_chunks(matrix, n_cells, chunk_rows):
        values = block.data
        for test, what in checks:
            bad = np.flatnonzero(test(values))
            if bad.size:
                position = int(bad[0])
                row = int(np.searchsorted(block.indptr, position, side="right") - 1)
                column = int(block.indices[position])
                cell = start + row
                raise ValueError(
                    f"{layer_label(layer)} has {what} ({values[position]!r}) at cell "
                    f"{cell_names[cell]!r} (row {cell}), gene {gene_names[column]!r} "
                    f"(column {column}). The models need raw integer UMI counts: pass layer= "
                    "naming the raw-count layer, or rebuild counts from log1p-normalized data "
                    "with bioreason.data.recover_counts(adata)."
                )
        library_size[start : start + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
    return library_size
