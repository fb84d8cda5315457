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
    "amortization_gap",
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
    true_effects = np.asarray(true_effects, float)
    mask_probability = np.asarray(mask_probability, float)
    inferred_effects = np.asarray(inferred_effects, float)
    for name, array in (
        ("true_masks", true_masks),
        ("true_effects", true_effects),
        ("mask_probability", mask_probability),
        ("inferred_effects", inferred_effects),
    ):
        if array.ndim != 2:
            raise ValueError(
                f"{name} must be a 2-D array (perturbations x latent dimensions), got shape "
                f"{array.shape}"
            )
    if true_masks.shape != true_effects.shape:
        raise ValueError(
            f"true_masks {true_masks.shape} and true_effects {true_effects.shape} must have "
            "the same shape (perturbations x true latent dimensions)"
        )
    if mask_probability.shape != inferred_effects.shape:
        raise ValueError(
            f"mask_probability {mask_probability.shape} and inferred_effects "
            f"{inferred_effects.shape} must have the same shape (perturbations x model "
            "latent dimensions)"
        )
    if true_masks.shape[0] != mask_probability.shape[0]:
        raise ValueError(
            f"true masks have {true_masks.shape[0]} perturbations, "
            f"inferred ones {mask_probability.shape[0]}"
        )
    corr = _abs_correlation(true_effects, inferred_effects)
    rows, cols = linear_sum_assignment(-corr)
    labels = true_masks[:, rows].ravel()
    scores = mask_probability[:, cols].ravel()
    auroc = float(roc_auc_score(labels, scores)) if 0 < labels.sum() < labels.size else float("nan")
    return {
        "auroc": auroc,
        "true_dims": rows,
        "model_dims": cols,
        "correlation": float(corr[rows, cols].mean()),
    }


# -------------------------------------------------------- posterior predictive check
def _cells_of(model: Any, adata: Any | None, function: str) -> Any:
    """``model.data_for(adata)`` with errors that name ``function``'s own fix."""
    if adata is None and getattr(model, "adata", None) is None:
        raise ValueError(
            f"{function}: the model was loaded without an AnnData, so it has no cells of "
            f"its own; pass them: {function}(model, adata), or load the model with "
            f"{type(model).__name__}.load(folder, adata=adata)"
        )
    data = model.data_for(adata)
    if data.n_cells == 0:
        raise ValueError(f"{function}: adata has no cells (0 rows); pass at least one cell")
    return data


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
    data = _cells_of(model, adata, "posterior_predictive_check")
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


# --------------------------------------------------------------- amortization gap
class _PerCellGuide:
    """A module's model and global guide with free per-cell Gaussians q(z_i) = N(m_i, s_i)
    in place of the amortized encoder (for :func:`amortization_gap`)."""

    def __init__(self, module: Any, site: str, loc: torch.Tensor, log_scale: torch.Tensor):
        self.module = module
        self.site = site
        self.loc = loc
        self.log_scale = log_scale
        self.model = module.model
        self.global_sites = module.global_sites
        self.guide_globals = module.guide_globals

    def guide(self, counts, dosage, library_size, category, n_total) -> None:
        import pyro
        import pyro.distributions as dist

        from bioreason.models._module import cells_plate

        latent = self.module.latent_plate()
        self.module.guide_globals(latent)
        cells = cells_plate(n_total, library_size.shape[-1], library_size.device)
        with cells, latent:
            pyro.sample(self.site, dist.Normal(self.loc, self.log_scale.exp()))


def _local_site(module: Any, args: tuple) -> str:
    from pyro import poutine

    from bioreason.models._module import CELLS_PLATE

    with torch.no_grad():
        trace = poutine.trace(module.guide).get_trace(*args)
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and any(
            frame.name == CELLS_PLATE for frame in site["cond_indep_stack"]
        ):
            return name
    raise ValueError("the guide has no per-cell latent site")


def amortization_gap(
    model: Any,
    adata: Any,
    n_steps: int = 500,
    lr: float = 0.05,
    n_particles: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """IWELBO of the cells of ``adata`` with the amortized encoder and with per-cell
    Gaussian posteriors fitted to each cell (decoder and global guide fixed).

    The difference is the amortization gap (Cremer et al. 2018): how much of the
    model's held-out likelihood is lost because the encoder does not generalize to
    the cells, as opposed to the decoder and the global latents.

    Parameters
    ----------
    model : PerturbationModel
    adata : AnnData
        At most a few thousand cells (they are optimized in one batch).
    n_steps, lr : int, float
        Adam steps on the per-cell means and log-scales (5-particle ELBO), started from
        the encoder's posterior means and a scale of 0.1.
    n_particles : int
        IWELBO particles.

    Returns
    -------
    dict with ``amortized_iwelbo``, ``optimized_iwelbo`` and ``gap`` (nats per cell).
    """
    import pyro

    from bioreason.models._sampling import check_count, seeded
    from bioreason.models.objectives import batch_arguments, log_importance_weights, make_elbo

    check_count("n_particles", n_particles)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"n_steps must be an integer >= 0, got {n_steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    data = _cells_of(model, adata, "amortization_gap")
    categories = model.categories_for(data)
    loader = model._loader(data, data.n_cells)
    amortized = log_importance_weights(model.module, loader, categories, n_particles, seed=seed)
    batch = next(iter(loader))
    args = batch_arguments(batch, categories, data.n_cells)
    module = model.module
    site = _local_site(module, args)
    with torch.no_grad(), seeded(seed):
        start = module.latent_mean(
            batch.counts,
            batch.dosage,
            categories[batch.index],
            "basal",
            module.perturbation_effects(200).get("effect"),
        )
    loc = start.clone().requires_grad_(True)
    log_scale = torch.full_like(start, math.log(0.1)).requires_grad_(True)
    per_cell = _PerCellGuide(module, site, loc, log_scale)
    elbo = make_elbo(5)
    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    frozen = [p for p in module.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with seeded(seed), pyro.validation_enabled(False):
            for _ in range(n_steps):
                optimizer.zero_grad()
                loss = elbo.differentiable_loss(module.model, per_cell.guide, *args)
                loss.backward()
                optimizer.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    loc.requires_grad_(False)
    log_scale.requires_grad_(False)
    optimized = log_importance_weights(per_cell, loader, categories, n_particles, seed=seed)

    def value(log_w: torch.Tensor) -> float:
        return float((torch.logsumexp(log_w, 0) - math.log(n_particles)).mean())

    result = {"amortized_iwelbo": value(amortized), "optimized_iwelbo": value(optimized)}
    result["gap"] = result["optimized_iwelbo"] - result["amortized_iwelbo"]
    return result
