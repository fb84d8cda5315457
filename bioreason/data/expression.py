"""Model-free expression summaries of a screen: log-normalized expression, condition
means, average treatment effects (ATE), their agreement, differential expression.

These read an AnnData and return numpy/pandas; nothing here imports the models, so the
simulator, task and report code can use them directly. Expression is
``log2(1 + counts normalized to 10,000 per cell)`` throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioreason.data.validation import check_anndata, get_layer

__all__ = [
    "TARGET_SUM",
    "ate_agreement",
    "average_treatment_effect",
    "condition_means",
    "differential_expression",
    "ground_truth_ate",
    "log_normalized",
    "pooled_ate_agreement",
]

#: counts per cell after normalization, before ``log2(1 + .)``
TARGET_SUM = 1e4


def log_normalized(adata: Any, layer: str | None = "counts", target_sum: float = TARGET_SUM) -> Any:
    """A new AnnData with ``X = log2(1 + counts normalized to target_sum per cell)``
    (scanpy ``normalize_total`` and ``log1p(base=2)``).

    Parameters
    ----------
    adata : AnnData
        Not modified.
    layer : str or None
        Layer with raw counts; ``None`` reads ``X``.
    target_sum : float
        Counts per cell after normalization.

    Returns
    -------
    AnnData, shape (n_cells, n_genes)
        float64 ``X`` (sparse when the counts are), ``adata``'s obs and var names.
    """
    import anndata as ad
    import scanpy as sc

    check_anndata(adata, "log_normalized")
    if (
        isinstance(target_sum, bool)
        or not isinstance(target_sum, (int, float, np.number))
        or not np.isfinite(target_sum)
        or target_sum <= 0
    ):
        raise ValueError(f"target_sum must be a finite number above 0, got {target_sum!r}")
    matrix = get_layer(adata, layer)
    matrix = (
        sp.csr_matrix(matrix, dtype=np.float64)
        if sp.issparse(matrix)
        else np.asarray(matrix, float)
    )
    out = ad.AnnData(X=matrix, obs=adata.obs.copy(), var=pd.DataFrame(index=adata.var_names.copy()))
    sc.pp.normalize_total(out, target_sum=target_sum)
    sc.pp.log1p(out, base=2)
    return out


def condition_means(
    adata: Any, perturbation_key: str = "perturbation", layer: str | None = "counts"
) -> pd.DataFrame:
    """Mean log2-normalized expression per label of ``obs[perturbation_key]``.

    Labels are grouped as written (``A+B`` and ``B+A`` are two rows).

    Returns
    -------
    DataFrame, shape (n_labels, n_genes)
        Indexed by ``condition`` in order of first appearance; columns are the genes.
    """
    _check_column(adata, perturbation_key)
    if adata.n_obs == 0:
        raise ValueError("adata has no cells; condition means need at least one cell")
    normalized = log_normalized(adata, layer)
    labels = normalized.obs[perturbation_key].astype(str).to_numpy()
    codes, names = pd.factorize(labels)
    indicator = sp.csr_matrix(
        (np.ones(codes.size), (codes, np.arange(codes.size))), shape=(len(names), codes.size)
    )
    sums = indicator @ normalized.X
    sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
    means = sums / np.bincount(codes)[:, None]
    return pd.DataFrame(
        means, index=pd.Index(names, name="condition"), columns=normalized.var_names
    )


def average_treatment_effect(
    adata: Any,
    control: str = "control",
    conditions: Sequence[str] | None = None,
    perturbation_key: str = "perturbation",
    layer: str | None = "counts",
) -> pd.DataFrame:
    """Average treatment effect per condition and gene: mean log2(1 + normalized counts)
    of the condition's cells minus that of the control cells.

    Parameters
    ----------
    adata : AnnData
    control : str
        Label of the control cells.
    conditions : list of str, optional
        Rows to return; default every label except ``control``.
    perturbation_key, layer
        Where the labels and the raw counts are.

    Returns
    -------
    DataFrame, shape (n_conditions, n_genes)
    """
    control = _label_text(control, "control")
    means = condition_means(adata, perturbation_key, layer)
    if control not in means.index:
        raise ValueError(f"no control cells labelled {control!r} in obs[{perturbation_key!r}]")
    if isinstance(conditions, str):
        raise TypeError(f"conditions must be a list of labels, got the string {conditions!r}")
    if conditions is None:
        conditions = [c for c in means.index if c != control]
    missing = [c for c in conditions if c not in means.index]
    if missing:
        raise ValueError(f"conditions {missing[:10]} have no cells in obs[{perturbation_key!r}]")
    return means.loc[list(conditions)] - means.loc[control]


def _label_text(label: object, name: str) -> str:
    """A label as the text it is compared as (an integer column's ``0`` is ``"0"``)."""
    if isinstance(label, str):
        return label
    if isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_)):
        return str(int(label))
    raise TypeError(f"{name} must be a label (text or an integer), got {label!r}")


def _check_top_k(top_k: object) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k <= 0:
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    return int(top_k)


def _check_column(adata: Any, key: str) -> None:
    check_anndata(adata, "bioreason.data.expression")
    if key not in adata.obs.columns:
        raise ValueError(
            f"perturbation column {key!r} not found in adata.obs; "
            f"columns are {list(adata.obs.columns)}"
        )


def _r2(truth: np.ndarray, prediction: np.ndarray) -> float:
    residual = ((truth - prediction) ** 2).sum()
    total = ((truth - truth.mean()) ** 2).sum()
    return float(1.0 - residual / total) if total > 0 else float("nan")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _aligned(data_ate: pd.DataFrame, model_ate: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Data and model ATE as float arrays of shape (n_conditions, n_genes), rows in the
    order of ``data_ate.index``; raises when the model lacks a condition or the genes
    differ."""
    missing = [c for c in data_ate.index if c not in model_ate.index]
    if missing:
        raise ValueError(f"model ATE lacks conditions {missing[:10]}")
    if list(data_ate.columns) != list(model_ate.columns):
        raise ValueError("data and model ATE have different genes")
    truth = data_ate.to_numpy(float)
    prediction = model_ate.loc[list(data_ate.index)].to_numpy(float)
    return truth, prediction


def _top_genes(truth: np.ndarray, top_k: int) -> np.ndarray:
    """Column indices of the ``top_k`` largest |truth| per row, shape (n_rows, top_k)."""
    return np.argsort(-np.abs(truth), axis=-1, kind="stable")[..., :top_k]


def ate_agreement(data_ate: pd.DataFrame, model_ate: pd.DataFrame, top_k: int = 20) -> pd.DataFrame:
    """Per-condition agreement of data and model ATE: Pearson r and R^2 over all genes
    and over the ``top_k`` genes with the largest |data ATE| of that condition.

    Each row is computed within one condition; the mean of a column over conditions is
    the "per-condition mean" of results tables. For one number over all (condition,
    gene) entries, as the SAMS-VAE reference evaluation reports, see
    :func:`pooled_ate_agreement`.

    Parameters
    ----------
    data_ate, model_ate : DataFrame, shape (n_conditions, n_genes)
        Rows are conditions, columns genes (same genes in the same order); the model
        table may hold extra conditions.
    top_k : int

    Returns
    -------
    DataFrame indexed by condition with ``pearson_all, r2_all, pearson_top, r2_top``;
    R^2 is ``1 - SS_res / SS_tot`` with the data ATE as truth.
    """
    top_k = _check_top_k(top_k)
    truth_all, prediction_all = _aligned(data_ate, model_ate)
    rows = {}
    for condition, truth, prediction in zip(data_ate.index, truth_all, prediction_all):
        top = _top_genes(truth, top_k)
        rows[condition] = {
            "pearson_all": _pearson(truth, prediction),
            "r2_all": _r2(truth, prediction),
            "pearson_top": _pearson(truth[top], prediction[top]),
            "r2_top": _r2(truth[top], prediction[top]),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("condition")


def pooled_ate_agreement(
    data_ate: pd.DataFrame, model_ate: pd.DataFrame, top_k: int = 20
) -> dict[str, float]:
    """Pooled agreement of data and model ATE: one Pearson r (and R^2) over all
    (condition, gene) entries together, as the SAMS-VAE reference evaluation reports.

    Pooling also rewards getting the differences *between* conditions right (a condition
    with large effects weighs more), which the per-condition values of
    :func:`ate_agreement` do not see.

    Parameters
    ----------
    data_ate, model_ate : DataFrame, shape (n_conditions, n_genes)
        As for :func:`ate_agreement`.
    top_k : int
        For the ``*_top`` values, each condition contributes its own ``top_k`` genes
        by |data ATE|: ``n_conditions * top_k`` entries pooled.

    Returns
    -------
    dict with ``pearson_all`` and ``r2_all`` (all ``n_conditions * n_genes`` entries),
    ``pearson_top`` and ``r2_top`` (the top-k entries of every condition), and the
    numbers of entries ``n_all`` and ``n_top``.
    """
    top_k = _check_top_k(top_k)
    truth, prediction = _aligned(data_ate, model_ate)
    top = _top_genes(truth, top_k)
    truth_top = np.take_along_axis(truth, top, axis=-1).ravel()
    prediction_top = np.take_along_axis(prediction, top, axis=-1).ravel()
    return {
        "pearson_all": _pearson(truth.ravel(), prediction.ravel()),
        "r2_all": _r2(truth.ravel(), prediction.ravel()),
        "pearson_top": _pearson(truth_top, prediction_top),
        "r2_top": _r2(truth_top, prediction_top),
        "n_all": int(truth.size),
        "n_top": int(truth_top.size),
    }


def differential_expression(
    adata: Any,
    condition: str,
    control: str = "control",
    perturbation_key: str = "perturbation",
    layer: str | None = "counts",
    n_genes: int = 20,
) -> pd.DataFrame:
    """Top differentially expressed genes of ``condition`` against ``control``
    (scanpy ``rank_genes_groups``, Wilcoxon, on log2-normalized counts).

    Returns
    -------
    DataFrame, ``n_genes`` rows
        scanpy's ``rank_genes_groups_df`` columns (``names``, ``scores``,
        ``logfoldchanges``, ``pvals``, ``pvals_adj``), best first.
    """
    import scanpy as sc

    _check_column(adata, perturbation_key)
    condition = _label_text(condition, "condition")
    control = _label_text(control, "control")
    if isinstance(n_genes, bool) or not isinstance(n_genes, (int, np.integer)) or n_genes <= 0:
        raise ValueError(f"n_genes must be a positive integer, got {n_genes!r}")
    labels = adata.obs[perturbation_key].astype(str)
    for name, label in (("condition", condition), ("control", control)):
        n_cells = int((labels == label).sum())
        if n_cells < 2:
            raise ValueError(
                f"{name} {label!r} has {'no cells' if n_cells == 0 else 'one cell'} in "
                f"obs[{perturbation_key!r}]; a Wilcoxon test needs two or more. Labels "
                f"include {labels.value_counts().index[:5].tolist()}"
            )
    if condition == control:
        raise ValueError(f"condition and control are the same label {condition!r}")
    normalized = log_normalized(adata, layer)
    normalized.obs[perturbation_key] = (
        normalized.obs[perturbation_key].astype(str).astype("category")
    )
    normalized.uns["log1p"] = {"base": 2}
    sc.tl.rank_genes_groups(
        normalized, perturbation_key, groups=[condition], reference=control, method="wilcoxon"
    )
    return sc.get.rank_genes_groups_df(normalized, group=condition).head(n_genes)


def ground_truth_ate(
    truth: Any,
    conditions: Sequence[str],
    gene_names: Sequence[str],
    control: str = "control",
    n_cells: int = 20_000,
    seed: int = 0,
) -> pd.DataFrame:
    """ATE of a simulated screen from its true generative parameters, by drawing
    ``n_cells`` cells of each condition and of control.

    Parameters
    ----------
    truth : ScreenGroundTruth
        The generating parameters (:class:`~bioreason.data.ScreenGroundTruth`).
    conditions : list of str
        Condition labels (``A``, ``A+B``).
    gene_names : list of str, length n_genes
    control : str
    n_cells : int
        Cells drawn per condition; the Monte Carlo error falls as ``1 / sqrt(n_cells)``.
    seed : int

    Returns
    -------
    DataFrame, shape (n_conditions, n_genes)
    """
    import anndata as ad

    if isinstance(n_cells, bool) or not isinstance(n_cells, (int, np.integer)) or n_cells <= 0:
        raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}")
    if isinstance(conditions, str):
        raise TypeError(f"conditions must be a list of labels, got the string {conditions!r}")
    rng = np.random.default_rng(seed)
    labels = [control, *conditions]
    dosage = truth.dosage_of(labels)
    counts, *_ = truth.sample_counts(np.repeat(dosage, n_cells, axis=0), rng)
    adata = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(
            {"perturbation": np.repeat(labels, n_cells)},
            index=[str(i) for i in range(counts.shape[0])],
        ),
        var=pd.DataFrame(index=pd.Index(list(gene_names))),
    )
    return average_treatment_effect(adata, control=control, conditions=list(conditions), layer=None)
