"""Gene selection and one-call preparation of a raw screen."""

from __future__ import annotations

from typing import Any

from bioreason.data.perturbation import PerturbationData
from bioreason.data.setup import PerturbationSetup
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
    setup: PerturbationSetup | dict[str, Any] | None = None,
    *,
    n_top_genes: int | None = None,
    **setup_fields: Any,
) -> tuple[Any, PerturbationData]:
    """From a raw screen to a model-ready object in one call.

    Optionally keeps the ``n_top_genes`` most variable genes (seurat_v3 on the counts
    layer of the setup), then parses perturbations and validates counts.

    Parameters
    ----------
    adata : AnnData
    setup : PerturbationSetup, optional
        Where labels, controls and counts are; defaults to ``PerturbationSetup()``.
    n_top_genes : int, optional
        Keep this many highly variable genes; ``None`` keeps all genes.
    **setup_fields
        Fields of :class:`~bioreason.data.PerturbationSetup` that override those of
        ``setup`` (``perturbation_key``, ``control``, ``layer``, ``delimiter``,
        ``dosage_key``); an unknown name raises a ``ValueError``.

    Returns
    -------
    (AnnData, PerturbationData)
        The (possibly gene-subset) AnnData and the parsed data.
    """
    setup = PerturbationSetup.resolve(setup, where="prepare", **setup_fields)
    if n_top_genes is not None:
        adata = select_genes(adata, n_top_genes, layer=setup.layer)
    data = PerturbationData.from_anndata(adata, setup)
    return adata, data
