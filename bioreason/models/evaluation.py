"""Evaluation of perturbation VAEs: held-out IWELBO, mask recovery on synthetic
screens, posterior predictive checks.

Model-free expression summaries (condition means, average treatment effects and their
agreement, differential expression) live in :mod:`bioreason.data.expression`; the ELBO
machinery (log importance weights) in :mod:`bioreason.models.objectives`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bioreason.models.objectives import log_importance_weights

__all__ = [
    "iwelbo",
    "mask_recovery",
    "plot_posterior_predictive",
    "posterior_predictive_check",
]


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
    data = model.data_for(adata)
    observed = data.get_counts(np.arange(data.n_cells)).toarray().astype(np.float64)
    replicated = model.replicate_cells(adata, n_global_draws=n_global_draws, seed=seed)
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
