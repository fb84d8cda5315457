"""Evaluation of perturbation VAEs: held-out IWELBO, average treatment effects, mask
recovery on synthetic screens, posterior predictive checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyro
import scipy.sparse as sp
import torch
from pyro import poutine

from bioreason.models._module import CELLS_PLATE
from bioreason.models._sampling import PARTICLE_DIM, draw_globals, seeded
from bioreason.models.training import batch_arguments

TARGET_SUM = 1e4


# ------------------------------------------------------------------------- IWELBO
def _local_log_prob(trace, n_particles: int, n_cells: int) -> torch.Tensor:
    """Sum of the log-probabilities of the per-cell sites, shape (n_particles, n_cells)."""
    total = torch.zeros(n_particles, n_cells)
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        if not any(frame.name == CELLS_PLATE for frame in site["cond_indep_stack"]):
            continue
        log_prob = site["fn"].log_prob(site["value"])
        # per-cell sites have shape (..., B, L) or (..., B, 1): sum the last dimension
        total = total + log_prob.sum(-1).expand(n_particles, n_cells).double().cpu()
    return total


@torch.no_grad()
def log_importance_weights(
    module: Any,
    loader: Any,
    categories: torch.Tensor,
    n_particles: int = 100,
    particle_chunk: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """log p(x_i, z_ik | g_k) - log q(z_ik | x_i, g_k), shape (n_particles, n_cells).

    The global latents g_k (embeddings, masks, ...) are drawn once per particle from the
    guide -- the posterior approximation fitted on the training cells -- and shared by
    all cells; the local latents z_ik are drawn per cell and particle. No prior / guide
    density of g_k enters: conditional on the training data, q(g) stands in for the
    posterior predictive of the globals.
    """
    with seeded(seed):
        return _log_importance_weights(module, loader, categories, n_particles, particle_chunk)


def _log_importance_weights(module, loader, categories, n_particles, particle_chunk):
    globals_ = draw_globals(module, n_particles)
    out = []
    for batch in loader:
        n_cells = batch.counts.shape[0]
        args = batch_arguments(batch, categories, n_cells)
        chunk = particle_chunk or max(
            1, min(n_particles, (1 << 22) // (n_cells * batch.counts.shape[1]))
        )
        weights = []
        for start in range(0, n_particles, chunk):
            stop = min(start + chunk, n_particles)
            values = {name: value[start:stop] for name, value in globals_.items()}
            with (
                pyro.plate("particles", stop - start, dim=PARTICLE_DIM),
                pyro.validation_enabled(False),
            ):
                guide_trace = poutine.trace(poutine.condition(module.guide, data=values)).get_trace(
                    *args
                )
                drawn = {
                    name: site["value"]
                    for name, site in guide_trace.nodes.items()
                    if site["type"] == "sample"
                }
                model_trace = poutine.trace(poutine.condition(module.model, data=drawn)).get_trace(
                    *args
                )
            weights.append(
                _local_log_prob(model_trace, stop - start, n_cells)
                - _local_log_prob(guide_trace, stop - start, n_cells)
            )
        out.append(torch.cat(weights, dim=0))
    return torch.cat(out, dim=1)


def iwelbo(
    module: Any,
    loader: Any,
    categories: torch.Tensor,
    n_particles: int = 100,
    particle_chunk: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell IWELBO and ELBO estimates in nats, each shape (n_cells,).

    ``IWELBO_i = log (1/K) sum_k w_ik`` and ``ELBO_i = (1/K) sum_k log w_ik`` with the
    log weights of :func:`log_importance_weights`; IWELBO >= ELBO for every draw (Jensen)
    and its expectation increases with K (Burda et al. 2016).
    """
    log_w = log_importance_weights(module, loader, categories, n_particles, particle_chunk, seed)
    per_cell_iwelbo = torch.logsumexp(log_w, dim=0) - math.log(n_particles)
    return per_cell_iwelbo.numpy(), log_w.mean(0).numpy()


# ---------------------------------------------------------------------------- ATE
def log_normalized(adata: Any, layer: str | None = "counts", target_sum: float = TARGET_SUM) -> Any:
    """A new AnnData with ``X = log2(1 + counts normalized to target_sum per cell)``
    (scanpy ``normalize_total`` and ``log1p(base=2)``)."""
    import anndata as ad
    import scanpy as sc

    matrix = adata.X if layer is None else adata.layers[layer]
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
    """Mean log2-normalized expression per condition, DataFrame (conditions x genes)."""
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
    """ATE per condition and gene: mean of log2(1 + normalized counts) of the condition's
    cells minus that of the control cells. DataFrame (conditions x genes)."""
    means = condition_means(adata, perturbation_key, layer)
    if control not in means.index:
        raise ValueError(f"no control cells labelled {control!r} in obs[{perturbation_key!r}]")
    if conditions is None:
        conditions = [c for c in means.index if c != control]
    missing = [c for c in conditions if c not in means.index]
    if missing:
        raise ValueError(f"conditions {missing[:10]} have no cells in obs[{perturbation_key!r}]")
    return means.loc[list(conditions)] - means.loc[control]


def _r2(truth: np.ndarray, prediction: np.ndarray) -> float:
    residual = ((truth - prediction) ** 2).sum()
    total = ((truth - truth.mean()) ** 2).sum()
    return float(1.0 - residual / total) if total > 0 else float("nan")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def ate_agreement(data_ate: pd.DataFrame, model_ate: pd.DataFrame, top_k: int = 20) -> pd.DataFrame:
    """Pearson r and R^2 between data and model ATE for each condition, over all genes
    and over the ``top_k`` genes with the largest |data ATE|.

    Returns
    -------
    DataFrame indexed by condition with ``pearson_all, r2_all, pearson_top, r2_top``;
    R^2 is ``1 - SS_res / SS_tot`` with the data ATE as truth.
    """
    missing = [c for c in data_ate.index if c not in model_ate.index]
    if missing:
        raise ValueError(f"model ATE lacks conditions {missing[:10]}")
    if list(data_ate.columns) != list(model_ate.columns):
        raise ValueError("data and model ATE have different genes")
    rows = {}
    for condition in data_ate.index:
        truth = data_ate.loc[condition].to_numpy(float)
        prediction = model_ate.loc[condition].to_numpy(float)
        top = np.argsort(-np.abs(truth))[:top_k]
        rows[condition] = {
            "pearson_all": _pearson(truth, prediction),
            "r2_all": _r2(truth, prediction),
            "pearson_top": _pearson(truth[top], prediction[top]),
            "r2_top": _r2(truth[top], prediction[top]),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("condition")


def differential_expression(
    adata: Any,
    condition: str,
    control: str = "control",
    perturbation_key: str = "perturbation",
    layer: str | None = "counts",
    n_genes: int = 20,
) -> pd.DataFrame:
    """Top differentially expressed genes of ``condition`` against ``control``
    (scanpy ``rank_genes_groups``, Wilcoxon, on log2-normalized counts)."""
    import scanpy as sc

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
    """ATE of a simulated screen from its true generative parameters
    (:class:`~bioreason.data.ScreenGroundTruth`), by drawing ``n_cells`` cells of each
    condition and of control. DataFrame (conditions x genes)."""
    import anndata as ad

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


# ------------------------------------------------------------------ mask recovery
def _abs_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    norm = np.linalg.norm(a, axis=0)[:, None] * np.linalg.norm(b, axis=0)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.abs(a.T @ b) / norm
    return np.nan_to_num(corr, nan=0.0)


def mask_recovery(
    true_masks: np.ndarray,
    true_effects: np.ndarray,
    mask_probability: np.ndarray,
    inferred_effects: np.ndarray,
) -> dict[str, Any]:
    """AUROC of inferred mask probabilities against true masks, up to a permutation of
    latent dimensions.

    Alignment: the latent dimensions of a VAE are identified only up to permutation (and
    sign), so each true dimension is matched to one model dimension by the Hungarian
    algorithm (``scipy.optimize.linear_sum_assignment``) maximizing the summed absolute
    Pearson correlation, across perturbations, between the true effects E*M (column a)
    and the inferred mean effects E_q[E*M] (column b). Model dimensions left unmatched
    (when the model has more) are not scored.

    Parameters
    ----------
    true_masks, true_effects : arrays, shape (P, L_true)
    mask_probability, inferred_effects : arrays, shape (P, L_model)

    Returns
    -------
    dict with ``auroc``, ``true_dims``, ``model_dims`` (the matching) and
    ``correlation`` (mean |r| of matched pairs).
    """
    from scipy.optimize import linear_sum_assignment
    from sklearn.metrics import roc_auc_score

    true_masks = np.asarray(true_masks, bool)
    if true_masks.shape[0] != mask_probability.shape[0]:
        raise ValueError(
            f"true masks have {true_masks.shape[0]} perturbations, "
            f"inferred ones {mask_probability.shape[0]}"
        )
    corr = _abs_correlation(np.asarray(true_effects, float), np.asarray(inferred_effects, float))
    rows, cols = linear_sum_assignment(-corr)
    labels = true_masks[:, rows].ravel()
    scores = np.asarray(mask_probability)[:, cols].ravel()
    auroc = float(roc_auc_score(labels, scores)) if 0 < labels.sum() < labels.size else float("nan")
    return {
        "auroc": auroc,
        "true_dims": rows,
        "model_dims": cols,
        "correlation": float(corr[rows, cols].mean()),
    }


# -------------------------------------------------------- posterior predictive check
def posterior_predictive_check(
    model: Any, adata: Any | None = None, n_global_draws: int = 50, seed: int = 0
) -> pd.DataFrame:
    """Observed vs replicated mean and variance of each gene's counts per condition.

    Every observed cell is replicated once from the fitted model with its own condition
    and library size.

    Returns
    -------
    DataFrame with columns ``condition, gene, observed_mean, replicated_mean,
    observed_variance, replicated_variance`` (one row per condition and gene).
    """
    data = model._data_for(adata)
    rows = np.arange(data.n_cells)
    observed = data.get_counts(rows).toarray().astype(np.float64)
    dosage = data.dosage.toarray()
    category = model._cell_categories(data.cell_condition, data.is_control)
    with seeded(seed):
        replicated = model._generate(
            dosage, data.library_size.astype(np.float32), category, n_global_draws
        )
    tables = []
    conditions = data.cell_condition
    for condition in pd.unique(conditions):
        cells = conditions == condition
        obs_block, rep_block = observed[cells], replicated[cells].astype(np.float64)
        tables.append(
            pd.DataFrame(
                {
                    "condition": condition,
                    "gene": model.gene_names,
                    "observed_mean": obs_block.mean(0),
                    "replicated_mean": rep_block.mean(0),
                    "observed_variance": obs_block.var(0),
                    "replicated_variance": rep_block.var(0),
                }
            )
        )
    return pd.concat(tables, ignore_index=True)


def plot_posterior_predictive(table: pd.DataFrame, path: str | Path | None = None):
    """Log-log scatter of observed vs replicated gene means and variances; saves a PNG
    when ``path`` is given. Returns the matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, stat in zip(axes, ("mean", "variance")):
        x = table[f"observed_{stat}"].to_numpy() + 1e-3
        y = table[f"replicated_{stat}"].to_numpy() + 1e-3
        ax.scatter(x, y, s=3, alpha=0.4)
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"observed {stat}")
        ax.set_ylabel(f"replicated {stat}")
        ax.set_title(f"gene {stat} per condition")
    fig.tight_layout()
    if path is not None:
        from bioreason._io import atomic_path

        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    return fig
