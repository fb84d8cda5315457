"""Row access to count matrices that may be dense, sparse or backed on disk."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp

DEFAULT_CHUNK_ROWS = 8192


def is_backed_matrix(matrix: Any) -> bool:
    """True for on-disk matrices (anndata backed sparse datasets, h5py datasets)."""
    return not isinstance(matrix, np.ndarray) and not sp.issparse(matrix)


def read_rows(matrix: Any, rows: np.ndarray) -> sp.csr_matrix:
    """Rows ``rows`` (in the given order) of ``matrix`` as CSR float32.

    Backed matrices are read with sorted indices (what h5py requires) and reordered.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if is_backed_matrix(matrix):
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        unique_rows, inverse = np.unique(sorted_rows, return_inverse=True)
        block = matrix[unique_rows]
        block = sp.csr_matrix(block) if not sp.issparse(block) else block.tocsr()
        block = block[inverse]
        undo = np.empty_like(order)
        undo[order] = np.arange(order.size)
        out = block[undo]
    elif sp.issparse(matrix):
        out = sp.csr_matrix(matrix)[rows] if not sp.isspmatrix_csr(matrix) else matrix[rows]
    else:
        out = sp.csr_matrix(np.asarray(matrix[rows]))
    out = sp.csr_matrix(out, dtype=np.float32)
    out.sort_indices()
    return out


def iter_row_chunks(
    matrix: Any, n_rows: int, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[tuple[int, sp.csr_matrix]]:
    """Yield ``(start, chunk)`` over consecutive row blocks as CSR (original dtype kept)."""
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        block = matrix[start:stop]
        if sp.issparse(block):
            block = block.tocsr()
        else:
            block = sp.csr_matrix(np.asarray(block))
        yield start, block


def to_csr_float32(matrix: Any, n_rows: int, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> sp.csr_matrix:
    """In-memory CSR float32 copy, built chunk by chunk (a dense input is never copied whole)."""
    if sp.issparse(matrix):
        out = sp.csr_matrix(matrix, dtype=np.float32)
    else:
        out = sp.vstack(
            [
                sp.csr_matrix(c, dtype=np.float32)
                for _, c in iter_row_chunks(matrix, n_rows, chunk_rows)
            ],
            format="csr",
        )
    out.sort_indices()
    return out
