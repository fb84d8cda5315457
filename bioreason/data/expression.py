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
    delimiter: str = "+",
) -> pd.DataFrame:
    """Average treatment effect per condition and gene: mean log2(1 + normalized counts)
    of the condition's cells minus that of the control cells.

    A condition is found in whatever order its parts are written: ``"KLF1+SET"`` finds
    the cells the data labels ``"SET+KLF1"`` (and both spellings' cells when the data
    uses both), and a row is named as it was asked for.

    Parameters
    ----------
    adata : AnnData
    control : str
        Label of the control cells.
    conditions : list of str, optional
        Rows to return, in this order and spelling; default every condition except
        ``control``, named canonically (parts sorted and joined by ``delimiter``, as
        :class:`~bioreason.data.PerturbationData` and the models name them), in order of
        first appearance.
    perturbation_key, layer
        Where the labels and the raw counts are.
    delimiter : str
        Joins the parts of a combination.

    Returns
    -------
    DataFrame, shape (n_conditions, n_genes)
        Indexed by ``condition``; columns are the genes.

    Raises
    ------
    TypeError
        ``conditions`` is one string, or holds something other than labels.
    ValueError
        No control cells, or a condition without cells (the message lists conditions
        that have cells).
    """
    control = _label_text(control, "control")
    _check_column(adata, perturbation_key)
    if adata.n_obs == 0:
        raise ValueError("adata has no cells; treatment effects need at least one cell")
    if not isinstance(delimiter, str) or not delimiter:
        raise ValueError(f"delimiter must be a non-empty string, got {delimiter!r}")
    asked = None
    if conditions is not None:
        if isinstance(conditions, (str, bytes)):
            raise TypeError(
                f"conditions must be a list of labels, got the string {conditions!r}; "
                f"pass [{conditions!r}] for one"
            )
        asked = [_label_text(c, "each entry of conditions") for c in conditions]
    label_codes, written = pd.factorize(adata.obs[perturbation_key].astype(str).to_numpy())
    key_of_label = [_condition_key(label, control, delimiter) for label in written]
    codes_of_label, names = pd.factorize(pd.Series(key_of_label, dtype=object))
    codes = codes_of_label[label_codes]
    position = {name: i for i, name in enumerate(names)}
    if control not in position:
        raise ValueError(f"no control cells labelled {control!r} in obs[{perturbation_key!r}]")
    if asked is None:
        rows = [name for name in names if name != control]
        keys = rows
    else:
        rows = asked
        keys = [_condition_key(c, control, delimiter) for c in asked]
        missing = [c for c, key in zip(asked, keys) if key not in position]
        if missing:
            present = [name for name in names if name != control]
            raise ValueError(
                f"conditions {missing[:10]} have no cells in obs[{perturbation_key!r}] (a "
                f"condition's parts are matched in any order, joined by {delimiter!r}); "
                f"conditions with cells: {present[:10]}{' ...' if len(present) > 10 else ''}"
            )
    normalized = log_normalized(adata, layer)
    means = _group_means(normalized.X, codes, len(names))
    effects = means[[position[key] for key in keys]] - means[position[control]]
    return pd.DataFrame(
        effects, index=pd.Index(list(rows), name="condition"), columns=normalized.var_names
    )


def _condition_key(label: str, control: str, delimiter: str) -> str:
    """The condition a label names, whatever the order of its parts: parts other than
    ``control`` sorted and joined by ``delimiter``; ``control`` when there are none.
    Unlike :func:`~bioreason.data.canonical_conditions` it accepts any text."""
    label = str(label)
    if label == control:
        return control
    parts = sorted(p.strip() for p in label.split(delimiter) if p.strip() != control)
    return delimiter.join(parts) if parts else control


def _group_means(matrix: Any, codes: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean row of ``matrix`` per group code, shape (n_groups, n_columns)."""
    indicator = sp.csr_matrix(
        (np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_groups, codes.size)
    )
    sums = indicator @ matrix
    sums = sums.toarray() if sp.issparse(sums) else np.asarray(sums)
    return sums / np.maximum(np.bincount(codes, minlength=n_groups), 1)[:, None]


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


def _aligned(
    data_ate: pd.DataFrame, model_ate: pd.DataFrame, delimiter: str = "+"
) -> tuple[np.ndarray, np.ndarray]:
    """Data and model ATE as float arrays of shape (n_conditions, n_genes), rows in the
    order of ``data_ate.index``; a data row finds the model's row of the same label, or
    else of the same parts in another order (``"SET+KLF1"`` and ``"KLF1+SET"``); raises
    when the model lacks a condition or the genes differ."""
    by_parts: dict[str, Any] = {}
    for label in model_ate.index:
        by_parts.setdefault(_condition_key(label, "", delimiter), label)
    rows = []
    for label in data_ate.index:
        if label in model_ate.index:
            rows.append(label)
        else:
            rows.append(by_parts.get(_condition_key(label, "", delimiter)))
    missing = [label for label, row in zip(data_ate.index, rows) if row is None]
    if missing:
        raise ValueError(
            f"model ATE lacks conditions {missing[:10]} (its rows: {list(model_ate.index)[:10]})"
        )
    if list(data_ate.columns) != list(model_ate.columns):
        raise ValueError("data and model ATE have different genes")
    truth = data_ate.to_numpy(float)
    prediction = model_ate.loc[rows].to_numpy(float)
    return truth, prediction


def _top_genes(truth: np.ndarray, top_k: int) -> np.ndarray:
    """Column indices of the ``top_k`` largest |truth| per row, shape (n_rows, top_k)."""
    return np.argsort(-np.abs(truth), axis=-1, kind="stable")[..., :top_k]


def ate_agreement(
    data_ate: pd.DataFrame, model_ate: pd.DataFrame, top_k: int = 20, delimiter: str = "+"
) -> pd.DataFrame:
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
        table may hold extra conditions. A row of ``data_ate`` finds the model's row of
        the same label, or of the same parts in another order (``"SET+KLF1"`` and
        ``"KLF1+SET"``).
    top_k : int
    delimiter : str
        Joins the parts of a combination.

    Returns
    -------
    DataFrame indexed by condition with ``pearson_all, r2_all, pearson_top, r2_top``;
    R^2 is ``1 - SS_res / SS_tot`` with the data ATE as truth.
    """
    top_k = _check_top_k(top_k)
    truth_all, prediction_all = _aligned(data_ate, model_ate, delimiter)
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
    data_ate: pd.DataFrame, model_ate: pd.DataFrame, top_k: int = 20, delimiter: str = "+"
) -> dict[str, float]:
    """Pooled agreement of data and model ATE: one Pearson r (and R^2) over all
    (condition, gene) entries together, as the SAMS-VAE reference evaluation reports.

    Pooling also rewards getting the differences *between* conditions right (a condition
    with large effects weighs more), which the per-condition values of
    :func:`ate_agreement` do not see.

    Parameters
    ----------
    data_ate, model_ate : DataFrame, shape (n_conditions, n_genes)
        As for :func:`ate_agreement` (rows matched in any order of their parts).
    top_k : int
        For the ``*_top`` values, each condition contributes its own ``top_k`` genes
        by |data ATE|: ``n_conditions * top_k`` entries pooled.
    delimiter : str
        Joins the parts of a combination.

    Returns
    -------
    dict with ``pearson_all`` and ``r2_all`` (all ``n_conditions * n_genes`` entries),
    ``pearson_top`` and ``r2_top`` (the top-k entries of every condition), and the
    numbers of entries ``n_all`` and ``n_top``.
    """
    top_k = _check_top_k(top_k)
    truth, prediction = _aligned(data_ate, model_ate, delimiter)
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
    delimiter: str = "+",
) -> pd.DataFrame:
    """Top differentially expressed genes of ``condition`` against ``control``
    (scanpy ``rank_genes_groups``, Wilcoxon, on log2-normalized counts).

    ``condition`` finds its cells in whatever order its parts are written
    (``"KLF1+SET"`` finds cells labelled ``"SET+KLF1"``).

    Parameters
    ----------
    adata : AnnData
    condition, control : str
        The condition's label (any order of its parts, joined by ``delimiter``) and the
        control label.
    perturbation_key, layer
        Where the labels and the raw counts are.
    n_genes : int
        Rows to return.
    delimiter : str
        Joins the parts of a combination.

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
    if not isinstance(delimiter, str) or not delimiter:
        raise ValueError(f"delimiter must be a non-empty string, got {delimiter!r}")
    labels = adata.obs[perturbation_key].astype(str)
    keys = labels.map({x: _condition_key(x, control, delimiter) for x in labels.unique()})
    wanted = _condition_key(condition, control, delimiter)
    if wanted == control and condition != control:
        raise ValueError(f"condition {condition!r} names no perturbation; it is the control")
    for name, label, key in (("condition", condition, wanted), ("control", control, control)):
        n_cells = int((keys == key).sum())
        if n_cells < 2:
            raise ValueError(
                f"{name} {label!r} has {'no cells' if n_cells == 0 else 'one cell'} in "
                f"obs[{perturbation_key!r}]; a Wilcoxon test needs two or more. Labels "
                f"include {labels.value_counts().index[:5].tolist()}"
            )
    if condition == control:
        raise ValueError(f"condition and control are the same label {condition!r}")
    normalized = log_normalized(adata, layer)
    # the condition's cells under the name asked for, whatever order the data writes
    grouped = np.where(keys == wanted, condition, labels.to_numpy(dtype=object))
    grouped = np.where(keys == control, control, grouped)
    normalized.obs[perturbation_key] = pd.Categorical(grouped.astype(str))
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
