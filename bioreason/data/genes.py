"""Gene selection and one-call preparation of a raw screen."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bioreason.data.labels import DEFAULT_CONTROLS
from bioreason.data.perturbation import PerturbationData
from bioreason.data.validation import get_layer


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

    Returns a copy; with ``subset=True`` it holds only the selected genes, else all
    genes with ``var["highly_variable"]``. ``adata`` is not modified.
    """
    import scanpy as sc

    get_layer(adata, layer)  # clear error for a missing layer
    if n_top_genes <= 0:
        raise ValueError(f"n_top_genes must be positive, got {n_top_genes}")
    out = adata.copy()
    n_top = min(n_top_genes, out.n_vars)
    sc.pp.highly_variable_genes(
        out, n_top_genes=n_top, flavor=flavor, layer=layer, batch_key=batch_key, subset=False
    )
    if subset:
        out = out[:, out.var["highly_variable"].to_numpy()].copy()
    return out


def prepare(
    adata: Any,
    *,
    perturbation_key: str = "perturbation",
    control: str | Sequence[str] = DEFAULT_CONTROLS,
    delimiter: str = "+",
    layer: str | None = "counts",
    dosage_key: str | None = None,
    n_top_genes: int | None = None,
) -> tuple[Any, PerturbationData]:
    """From a raw screen to a model-ready object in one call.

    Optionally keeps the ``n_top_genes`` most variable genes (seurat_v3 on counts),
    then parses perturbations and validates counts.

    Returns
    -------
    (AnnData, PerturbationData)
        The (possibly gene-subset) AnnData and the parsed data.
    """
    if n_top_genes is not None:
        adata = select_genes(adata, n_top_genes, layer=layer)
    data = PerturbationData.from_anndata(
        adata,
        perturbation_key=perturbation_key,
        control=control,
        delimiter=delimiter,
        layer=layer,
        dosage_key=dosage_key,
    )
    return adata, data
