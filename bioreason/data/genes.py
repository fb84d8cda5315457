"""Gene selection and one-call preparation of a raw screen."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from bioreason.data._matrix import iter_row_chunks
from bioreason.data.perturbation import PerturbationData
from bioreason.data.setup import PerturbationSetup
from bioreason.data.validation import check_anndata, get_layer, layer_label, named_cells

#: flavors of ``scanpy.pp.highly_variable_genes`` that select_genes accepts
FLAVORS = ("seurat_v3", "seurat_v3_paper", "seurat", "cell_ranger")


def _column_and_row_sums(matrix: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene and per-cell totals, read in row chunks (a backed matrix stays on disk)."""
    gene_totals = np.zeros(matrix.shape[1], dtype=np.float64)
    cell_totals = np.zeros(n_rows, dtype=np.float64)
    for start, block in iter_row_chunks(matrix, n_rows):
        gene_totals += np.asarray(block.sum(axis=0), dtype=np.float64).ravel()
        cell_totals[start : start + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
    return gene_totals, cell_totals


def _seurat_on_log_normalized(
    adata: Any, layer: str | None, n_top_genes: int, batch_key: str | None
) -> pd.DataFrame:
    """scanpy's ``seurat`` flavor on log1p(counts normalized per cell); its var table."""
    import anndata as ad
    import scanpy as sc
    import scipy.sparse as sp

    matrix = get_layer(adata, layer)
    matrix = sp.csr_matrix(matrix, dtype=np.float64) if sp.issparse(matrix) else matrix
    normalized = ad.AnnData(
        X=matrix if sp.issparse(matrix) else np.asarray(matrix, dtype=np.float64),
        obs=adata.obs[[batch_key]].copy() if batch_key is not None else None,
        var=pd.DataFrame(index=adata.var_names.copy()),
    )
    with warnings.catch_warnings():
        # cells without counts stay zero; prepare reports them by name afterwards
        warnings.filterwarnings("ignore", message=".*zero counts.*")
        sc.pp.normalize_total(normalized, target_sum=1e4)
    sc.pp.log1p(normalized)
    sc.pp.highly_variable_genes(
        normalized, n_top_genes=n_top_genes, flavor="seurat", batch_key=batch_key
    )
    table = normalized.var
    if batch_key is None and int(table["highly_variable"].sum()) != n_top_genes:
        # ties or NaN dispersions: take exactly n_top_genes by normalized dispersion
        order = np.argsort(-table["dispersions_norm"].fillna(-np.inf).to_numpy(), kind="stable")
        chosen = np.zeros(len(table), dtype=bool)
        chosen[order[:n_top_genes]] = True
        table["highly_variable"] = chosen
    return table


def select_genes(
    adata: Any,
    n_top_genes: int = 2000,
    *,
    layer: str | None = "counts",
    flavor: str = "seurat_v3",
    batch_key: str | None = None,
    subset: bool = True,
) -> Any:
    """Highly variable genes with scanpy (seurat_v3 on raw counts by default).

    Genes without any count are never selected. When ``n_top_genes`` is not fewer
    than the genes with counts, those genes are kept (with a warning if genes without
    counts are dropped) and no selection is run. When scanpy's ``seurat_v3`` fails (its
    loess fit of variance on mean breaks down on few or already-selected genes, as on
    the 500-gene Norman 2019 file), the genes are selected with the ``seurat`` flavor on
    log1p(counts normalized to 10,000 per cell) instead, with a warning that says so.

    Parameters
    ----------
    adata : AnnData
        Not modified.
    n_top_genes : int
        How many genes to keep (a positive integer).
    layer : str or None
        Layer with raw counts; ``None`` reads ``X``.
    flavor : {"seurat_v3", "seurat_v3_paper", "seurat", "cell_ranger"}
        scanpy's method; ``seurat`` and ``cell_ranger`` run on log-normalized counts.
    batch_key : str, optional
        ``obs`` column of batches, passed to scanpy.
    subset : bool
        Return only the selected genes; else all genes with ``var["highly_variable"]``.

    Returns
    -------
    AnnData
        A copy; with ``subset=True`` it holds only the selected genes, else all genes
        with ``var["highly_variable"]``.
    """
    import scanpy as sc

    check_anndata(adata, "select_genes")
    if isinstance(n_top_genes, bool) or not isinstance(n_top_genes, (int, np.integer)):
        raise TypeError(f"n_top_genes must be an integer, got {n_top_genes!r}")
    if n_top_genes <= 0:
        raise ValueError(f"n_top_genes must be positive, got {n_top_genes}")
    if flavor not in FLAVORS:
        raise ValueError(f"flavor must be one of {list(FLAVORS)}, got {flavor!r}")
    if batch_key is not None and batch_key not in adata.obs.columns:
        raise ValueError(
            f"batch_key {batch_key!r} not found in adata.obs; columns are {list(adata.obs.columns)}"
        )
    matrix = get_layer(adata, layer)  # clear error for a missing layer
    gene_totals, _ = _column_and_row_sums(matrix, adata.n_obs)
    expressed = gene_totals > 0
    n_expressed = int(expressed.sum())
    if n_expressed == 0:
        raise ValueError(f"{layer_label(layer)} has no counts in any gene; nothing to select")
    out = adata.copy()
    if n_top_genes >= n_expressed:
        if n_expressed < out.n_vars:
            warnings.warn(
                f"n_top_genes={n_top_genes} is not fewer than the {n_expressed} genes with "
                f"counts in {layer_label(layer)}; keeping those {n_expressed} genes (the "
                f"{out.n_vars - n_expressed} genes without any count are dropped)",
                UserWarning,
                stacklevel=2,
            )
        selected = expressed
    else:
        try:
            sc.pp.highly_variable_genes(
                out,
                n_top_genes=int(n_top_genes),
                flavor=flavor,
                layer=layer,
                batch_key=batch_key,
                subset=False,
            )
            selected = out.var["highly_variable"].to_numpy(dtype=bool) & expressed
        except ValueError as err:
            if not flavor.startswith("seurat_v3"):
                raise
            warnings.warn(
                f"scanpy's {flavor} gene selection failed on {layer_label(layer)} ({err}); "
                f"selected the {n_top_genes} genes with flavor='seurat' on log1p of counts "
                "normalized to 10,000 per cell instead",
                UserWarning,
                stacklevel=2,
            )
            table = _seurat_on_log_normalized(
                adata[:, expressed], layer, int(n_top_genes), batch_key
            )
            selected = np.zeros(out.n_vars, dtype=bool)
            selected[np.flatnonzero(expressed)] = table["highly_variable"].to_numpy(bool)
            for column in ("means", "dispersions", "dispersions_norm"):
                values = np.full(out.n_vars, np.nan)
                values[np.flatnonzero(expressed)] = table[column].to_numpy(float)
                out.var[column] = values
    out.var["highly_variable"] = selected
    if subset:
        out = out[:, selected].copy()
    return out


def prepare(
    adata: Any,
    setup: PerturbationSetup | dict[str, Any] | None = None,
    *,
    n_top_genes: int | None = None,
    drop_empty_cells: bool = False,
    **setup_fields: Any,
) -> tuple[Any, PerturbationData]:
    """From a raw screen to a model-ready object in one call.

    Optionally keeps the ``n_top_genes`` most variable genes (seurat_v3 on the counts
    layer of the setup, see :func:`select_genes`), optionally drops cells without
    counts, then parses perturbations and validates counts.

    Parameters
    ----------
    adata : AnnData
        Not modified.
    setup : PerturbationSetup, optional
        Where labels, controls and counts are; defaults to ``PerturbationSetup()``.
    n_top_genes : int, optional
        Keep this many highly variable genes; ``None`` keeps all genes.
    drop_empty_cells : bool, default False
        Cells whose counts are all zero (in the kept genes) cannot be modelled. ``False``
        raises a ``ValueError`` that names them; ``True`` drops them from the returned
        AnnData with a warning that says how many and which. Dropping happens here and
        not in ``PerturbationData.from_anndata`` so that the cells of the returned
        AnnData and of the parsed data stay the same, row for row (the models index
        cells by AnnData row).
    **setup_fields
        Fields of :class:`~bioreason.data.PerturbationSetup` that override those of
        ``setup`` (``perturbation_key``, ``control``, ``layer``, ``delimiter``,
        ``dosage_key``); an unknown name raises a ``ValueError``.

    Returns
    -------
    (AnnData, PerturbationData)
        The (possibly gene- and cell-subset) AnnData and the parsed data.
    """
    check_anndata(adata, "prepare")
    if not isinstance(drop_empty_cells, (bool, np.bool_)):
        raise TypeError(f"drop_empty_cells must be true or false, got {drop_empty_cells!r}")
    setup = PerturbationSetup.resolve(setup, where="prepare", **setup_fields)
    if n_top_genes is not None:
        adata = select_genes(adata, n_top_genes, layer=setup.layer)
    if drop_empty_cells and adata.n_obs and adata.n_vars:
        _, cell_totals = _column_and_row_sums(get_layer(adata, setup.layer), adata.n_obs)
        empty = np.flatnonzero(cell_totals == 0)
        if empty.size:
            warnings.warn(
                f"dropped {empty.size} of {adata.n_obs} cells without counts in "
                f"{layer_label(setup.layer)} ({named_cells(adata.obs_names, empty)})",
                UserWarning,
                stacklevel=2,
            )
            keep = np.ones(adata.n_obs, dtype=bool)
            keep[empty] = False
            adata = adata[keep].copy() if not adata.isbacked else adata[keep].to_memory()
    data = PerturbationData.from_anndata(adata, setup)
    return adata, data
