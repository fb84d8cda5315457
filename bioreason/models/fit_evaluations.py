"""The evaluations of :func:`bioreason.models.fit_vae`: their settings
(:class:`EvaluationConfig`), what each one sees (:class:`FitContext`) and the registry
:data:`EVALUATIONS` (name -> function returning result entries).

Adding an evaluation is one function and one line::

    @EVALUATIONS.register("my_figure", keys=("my_figure",))
    def my_figure(fit: FitContext) -> dict:
        return {"my_figure": float(fit.model.iwelbo(fit.adata[fit.split.test].copy()))}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch

from bioreason.config import Config
from bioreason.data import PerturbationData, PerturbationSetup, ScreenGroundTruth, Split
from bioreason.models._base import PerturbationModel
from bioreason.registry import Registry

__all__ = ["EVALUATIONS", "EvaluationConfig", "FitContext"]

#: genes ranked by |data ATE| per condition in the ``*_top20`` agreement figures
_TOP_K = 20
#: quantiles of the mask probabilities in ``mask_probability_quantiles``
_MASK_QUANTILES = (0.1, 0.5, 0.9, 0.99)
#: cells per batch of the IWELBO passes (the models' default)
_IWELBO_BATCH = 256
#: guide draws of the Monte Carlo KL of the global latents
_GLOBAL_KL_DRAWS = 100

#: evaluation name -> ``function(context: FitContext) -> dict`` of result entries;
#: metadata ``keys``: the result keys it writes
EVALUATIONS: Registry[Callable[[FitContext], dict[str, Any]]] = Registry("VAE evaluation")

#: what the pipeline's ``vae`` stage reports (the default of ``EvaluationConfig``)
_STAGE_EVALUATIONS = (
    "loss_curve",
    "validation_iwelbo",
    "heldout_iwelbo",
    "ate_heldout",
    "ate_seen",
    "mask_recovery",
    "mask_quantiles",
    "ppc",
)


@dataclass
class EvaluationConfig(Config):
    """Which figures :func:`~bioreason.models.fit_vae` computes after training, and how.

    Every Monte Carlo figure is seeded, and each restores the caller's random streams,
    so the figures do not depend on which others are computed or in which order.

    Attributes
    ----------
    evaluations : tuple of str, default the ``vae`` stage's eight
        Names in :data:`EVALUATIONS`, run in this order: ``loss_curve``,
        ``validation_iwelbo``, ``heldout_iwelbo``, ``ate_heldout``, ``ate_seen``,
        ``mask_recovery``, ``mask_quantiles``, ``ppc`` by default; also ``final_loss``,
        ``heldout_iwelbo_per_condition``, ``ate_pooled``, ``ate_truth``,
        ``iwelbo_terms``, ``global_kl``, ``amortization_gap``. See
        :func:`~bioreason.models.fit_vae` for the keys each writes.
    iwelbo_particles : int, default 20
        Importance samples K of every IWELBO (and of ``amortization_gap``).
    ate_cells : int, default 1000
        Cells generated per condition (control included) for the model's average
        treatment effects.
    ate_seen_conditions : int, default 20
        At most this many conditions seen in training (the first in the condition
        table's order, control and held-out conditions left out) enter ``ate_seen``.
    truth_ate_cells : int, default 10000
        Cells drawn per condition from the true parameters for ``ate_truth``.
    ppc_global_draws : int, default 20
        Draws of the global latents shared by blocks of replicated cells (``ppc``).
    loss_curve_points : int, default 100
        About this many ``[step, train_loss]`` points in ``loss_curve`` (every
        ``max(1, steps // loss_curve_points)``-th step).
    final_loss_steps : int, default 1
        ``final_train_loss`` is the mean training loss of the last this many steps.
    seed : int or None, default 0
        Seed of the IWELBO particles, the generated cells of the ATEs, the truth's
        cells and the KL draws. None: the run's seed (``TrainConfig.seed``).
    ppc_seed : int or None, default None
        Seed of the replicated cells of ``ppc``. None: the run's seed.
    """

    evaluations: tuple[str, ...] = _STAGE_EVALUATIONS
    iwelbo_particles: int = 20
    ate_cells: int = 1000
    ate_seen_conditions: int = 20
    truth_ate_cells: int = 10_000
    ppc_global_draws: int = 20
    loss_curve_points: int = 100
    final_loss_steps: int = 1
    seed: int | None = 0
    ppc_seed: int | None = None

    def __post_init__(self) -> None:
        self.evaluations = tuple(self.evaluations)
        for name in self.evaluations:
            EVALUATIONS.get(name)  # raises, listing the registered evaluations
        repeated = sorted({n for n in self.evaluations if self.evaluations.count(n) > 1})
        if repeated:
            raise ValueError(f"evaluations lists {repeated} more than once; name each once")
        for name in (
            "iwelbo_particles",
            "ate_cells",
            "ate_seen_conditions",
            "truth_ate_cells",
            "ppc_global_draws",
            "loss_curve_points",
            "final_loss_steps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("seed", "ppc_seed"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be an integer >= 0 or None, got {value!r}")


@dataclass
class FitContext:
    """A trained model and what it was trained on: the one argument of an evaluation.

    Attributes
    ----------
    model : PerturbationModel
        Trained on ``adata[concatenate([split.train, split.val])]`` (``model.adata``, in
        that order: its first ``split.train.size`` cells trained it).
    adata : AnnData
        Every cell: training, validation and test.
    data : PerturbationData
        ``adata`` parsed with ``setup``.
    split : Split
    setup : PerturbationSetup
    truth : ScreenGroundTruth or None
    config : EvaluationConfig
    seed : int
        The run's seed (``TrainConfig.seed``).
    notes : dict of str to str
        Evaluation name -> why it was skipped (filled by :meth:`skip`).
    """

    model: PerturbationModel
    adata: Any
    data: PerturbationData
    split: Split
    setup: PerturbationSetup
    truth: ScreenGroundTruth | None
    config: EvaluationConfig
    seed: int
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def estimate_seed(self) -> int:
        """Seed of the Monte Carlo estimates (``config.seed``, else the run's)."""
        return self.seed if self.config.seed is None else self.config.seed

    @property
    def heldout(self) -> list[str]:
        """The held-out conditions, as a list."""
        return list(self.split.heldout_conditions)

    @property
    def heldout_canonical(self) -> list[str]:
        """The held-out conditions as the data's canonical labels (parts sorted), in the
        order of :attr:`heldout`."""
        from bioreason.data import canonical_conditions

        return canonical_conditions(
            self.heldout, control=self.setup.control, delimiter=self.setup.delimiter
        )

    def skip(self, name: str, why: Exception | str) -> dict[str, Any]:
        """Record that evaluation ``name`` was skipped and why; returns ``{}``."""
        self.notes[name] = " ".join(str(why).split())
        return {}

    def data_ate(self, cells: np.ndarray, conditions: list[str]) -> pd.DataFrame:
        """Average treatment effects of the observed ``cells`` (rows of ``adata``)."""
        from bioreason.data.expression import average_treatment_effect

        return average_treatment_effect(
            self.adata[cells].copy(),
            control=self.model.control_label,
            conditions=conditions,
            perturbation_key=self.setup.perturbation_key,
            layer=self.setup.layer,
            delimiter=self.setup.delimiter,
        )

    def model_ate(self, conditions: list[str]) -> pd.DataFrame:
        """The model's average treatment effects of ``conditions``; a model that cannot
        generate them (SVAE+ and an unseen combination) raises ``ValueError``."""
        return self.model.average_treatment_effect(
            conditions, n_cells=self.config.ate_cells, seed=self.estimate_seed
        )

    @cached_property
    def heldout_per_cell_iwelbo(self) -> np.ndarray:
        """IWELBO of every test cell, shape (n_test,); ``ValueError`` when the model
        cannot score them."""
        return self.model.iwelbo(
            self.adata[self.split.test].copy(),
            n_particles=self.config.iwelbo_particles,
            seed=self.estimate_seed,
            return_per_cell=True,
        )

    @cached_property
    def heldout_data_ate(self) -> pd.DataFrame:
        """Data ATEs of the held-out conditions (control cells and test cells)."""
        control = np.flatnonzero(self.data.is_control)
        return self.data_ate(np.concatenate([control, self.split.test]), self.heldout)

    @cached_property
    def heldout_model_ate(self) -> pd.DataFrame:
        """The model's ATEs of the held-out conditions (``ValueError``: cannot)."""
        return self.model_ate(self.heldout)

    @cached_property
    def effects(self) -> dict[str, pd.DataFrame]:
        """``model.get_perturbation_effects()`` (its default draws and seed)."""
        return self.model.get_perturbation_effects()


# ------------------------------------------------------------------ evaluations
def _agreement(data_ate: pd.DataFrame, model_ate: pd.DataFrame) -> tuple[float, float]:
    """Mean over conditions of the per-condition Pearson r, all genes and top genes."""
    from bioreason.data.expression import ate_agreement

    table = ate_agreement(data_ate, model_ate, top_k=_TOP_K)
    return float(table["pearson_all"].mean()), float(table["pearson_top"].mean())


@EVALUATIONS.register("loss_curve", keys=("loss_curve",))
def _loss_curve(fit: FitContext) -> dict[str, Any]:
    curve = fit.model.history[["step", "train_loss"]].dropna()
    every = max(1, len(curve) // fit.config.loss_curve_points)
    return {"loss_curve": curve.iloc[::every].to_numpy().tolist()}


@EVALUATIONS.register("final_loss", keys=("final_train_loss", "final_validation_loss"))
def _final_loss(fit: FitContext) -> dict[str, Any]:
    history = fit.model.history
    train = history["train_loss"].dropna()
    validation = history["validation_loss"].dropna()
    return {
        "final_train_loss": (
            float(train.iloc[-fit.config.final_loss_steps :].mean()) if len(train) else None
        ),
        "final_validation_loss": float(validation.iloc[-1]) if len(validation) else None,
    }


@EVALUATIONS.register("validation_iwelbo", keys=("iwelbo_validation",))
def _validation_iwelbo(fit: FitContext) -> dict[str, Any]:
    if not fit.split.val.size:
        return {}
    cells = fit.model.adata[fit.split.train.size :].copy()
    value = fit.model.iwelbo(cells, n_particles=fit.config.iwelbo_particles, seed=fit.estimate_seed)
    return {"iwelbo_validation": float(value)}


@EVALUATIONS.register("heldout_iwelbo", keys=("iwelbo_heldout",))
def _heldout_iwelbo(fit: FitContext) -> dict[str, Any]:
    if not fit.split.test.size:
        return {}
    try:
        per_cell = fit.heldout_per_cell_iwelbo
    except ValueError as err:  # e.g. SVAE+ and a combination it has no category for
        return fit.skip("heldout_iwelbo", err)
    return {"iwelbo_heldout": float(per_cell.mean())}


@EVALUATIONS.register("heldout_iwelbo_per_condition", keys=("iwelbo_heldout_per_condition",))
def _heldout_iwelbo_per_condition(fit: FitContext) -> dict[str, Any]:
    if not fit.split.test.size or not fit.heldout:
        return {}
    try:
        per_cell = fit.heldout_per_cell_iwelbo
    except ValueError as err:
        return fit.skip("heldout_iwelbo_per_condition", err)
    labels = fit.data.cell_condition[fit.split.test]
    return {
        "iwelbo_heldout_per_condition": {
            c: float(per_cell[labels == canonical].mean())
            for c, canonical in zip(fit.heldout, fit.heldout_canonical)
        }
    }


def _heldout_ates(fit: FitContext, name: str) -> tuple[Any, Any] | dict[str, Any]:
    """(observed, model) ATE of the held-out conditions, or what the evaluation ``name``
    returns instead: nothing without held-out cells, a note when the model cannot
    predict the held-out conditions."""
    if not fit.split.test.size or not fit.heldout:
        return {}
    data_ate = fit.heldout_data_ate
    try:
        return data_ate, fit.heldout_model_ate
    except ValueError as err:
        return fit.skip(name, err)


@EVALUATIONS.register("ate_heldout", keys=("ate_pearson_heldout", "ate_pearson_heldout_top20"))
def _ate_heldout(fit: FitContext) -> dict[str, Any]:
    pair = _heldout_ates(fit, "ate_heldout")
    if isinstance(pair, dict):
        return pair
    data_ate, model_ate = pair
    everything, top = _agreement(data_ate, model_ate)
    return {"ate_pearson_heldout": everything, f"ate_pearson_heldout_top{_TOP_K}": top}


@EVALUATIONS.register(
    "ate_pooled", keys=("ate_pooled_pearson_heldout", "ate_pooled_pearson_heldout_top20")
)
def _ate_pooled(fit: FitContext) -> dict[str, Any]:
    from bioreason.data.expression import pooled_ate_agreement

    pair = _heldout_ates(fit, "ate_pooled")
    if isinstance(pair, dict):
        return pair
    data_ate, model_ate = pair
    pooled = pooled_ate_agreement(data_ate, model_ate, top_k=_TOP_K)
    return {
        "ate_pooled_pearson_heldout": float(pooled["pearson_all"]),
        f"ate_pooled_pearson_heldout_top{_TOP_K}": float(pooled["pearson_top"]),
    }


@EVALUATIONS.register(
    "ate_truth", keys=("ate_truth_pearson_heldout", "ate_truth_pearson_heldout_top20")
)
def _ate_truth(fit: FitContext) -> dict[str, Any]:
    from bioreason.data.expression import ground_truth_ate

    if fit.truth is None or not fit.heldout:
        return {}
    try:
        model_ate = fit.heldout_model_ate
    except ValueError as err:
        return fit.skip("ate_truth", err)
    exact = ground_truth_ate(
        fit.truth,
        fit.heldout,
        list(fit.adata.var_names),
        n_cells=fit.config.truth_ate_cells,
        seed=fit.estimate_seed,
    )
    everything, top = _agreement(exact, model_ate)
    return {"ate_truth_pearson_heldout": everything, f"ate_truth_pearson_heldout_top{_TOP_K}": top}


@EVALUATIONS.register("ate_seen", keys=("ate_pearson_seen",))
def _ate_seen(fit: FitContext) -> dict[str, Any]:
    table = fit.data.condition_table()
    heldout = set(fit.heldout_canonical)
    perturbed = table.index[table["n_perturbations"].to_numpy() > 0]
    seen = [c for c in perturbed if c not in heldout][: fit.config.ate_seen_conditions]
    if not seen:
        return {}
    data_ate = fit.data_ate(np.concatenate([fit.split.train, fit.split.val]), seen)
    try:
        model_ate = fit.model_ate(seen)
    except ValueError as err:
        return fit.skip("ate_seen", err)
    return {"ate_pearson_seen": _agreement(data_ate, model_ate)[0]}


@EVALUATIONS.register("mask_recovery", keys=("mask_auroc",))
def _mask_recovery(fit: FitContext) -> dict[str, Any]:
    from bioreason.models.evaluation import mask_recovery

    effects = fit.effects
    if fit.truth is None or "mask_probability" not in effects:
        return {}
    probability, effect = effects["mask_probability"], effects["effect"]
    # SVAE+ has one row per category (condition): keep those of single perturbations
    row_of = {name: row for row, name in enumerate(fit.truth.perturbation_names)}
    kept = [name for name in probability.index if name in row_of]
    if not kept:
        return fit.skip("mask_recovery", "no row of the model's effects is a true perturbation")
    rows = [row_of[name] for name in kept]
    recovery = mask_recovery(
        fit.truth.masks[rows],
        fit.truth.effects[rows],
        probability.loc[kept].to_numpy(),
        effect.loc[kept].to_numpy(),
    )
    return {"mask_auroc": float(recovery["auroc"])}


@EVALUATIONS.register(
    "mask_quantiles", keys=("mask_probability_quantiles", "mask_prior_probability")
)
def _mask_quantiles(fit: FitContext) -> dict[str, Any]:
    effects = fit.effects
    if "mask_probability" not in effects:
        return {}
    probability = effects["mask_probability"].to_numpy()
    out: dict[str, Any] = {
        "mask_probability_quantiles": {
            str(q): float(np.quantile(probability, q)) for q in _MASK_QUANTILES
        }
    }
    prior = getattr(fit.model, "get_mask_prior_probability", None)
    if prior is not None:
        out["mask_prior_probability"] = prior()
    return out


@EVALUATIONS.register("ppc", keys=("ppc",))
def _ppc(fit: FitContext) -> dict[str, Any]:
    from bioreason.models.evaluation import posterior_predictive_check

    seed = fit.seed if fit.config.ppc_seed is None else fit.config.ppc_seed
    table = posterior_predictive_check(
        fit.model, n_global_draws=fit.config.ppc_global_draws, seed=seed
    )
    observed_mean = table["observed_mean"].to_numpy()
    replicated_mean = table["replicated_mean"].to_numpy()
    log_ratio = np.abs(np.log1p(replicated_mean) - np.log1p(observed_mean))
    return {
        "ppc": {
            "mean_log_ratio_median": float(np.median(log_ratio)),
            "mean_corr": float(np.corrcoef(table["observed_mean"], table["replicated_mean"])[0, 1]),
            "variance_corr": float(
                np.corrcoef(
                    np.log1p(table["observed_variance"]), np.log1p(table["replicated_variance"])
                )[0, 1]
            ),
        }
    }


def _iwelbo_terms_of(fit: FitContext, cells: Any) -> tuple[dict[str, float], torch.Tensor]:
    """IWELBO, reconstruction and local KL of ``cells``; also the per-cell IWELBO."""
    from bioreason.models.objectives import local_terms

    model, particles = fit.model, fit.config.iwelbo_particles
    data = model.data_for(cells)
    terms = local_terms(
        model.module,
        model._loader(data, _IWELBO_BATCH),
        model.categories_for(data),
        n_particles=particles,
        seed=fit.estimate_seed,
    )
    model_sum = sum(v for k, v in terms.items() if k.startswith("model:"))
    guide_sum = sum(v for k, v in terms.items() if k.startswith("guide:"))
    per_cell = torch.logsumexp(model_sum - guide_sum, 0) - np.log(particles)
    reconstruction = terms["model:counts"]
    entry = {
        "iwelbo": float(per_cell.mean()),
        "reconstruction": float(reconstruction.mean()),
        "local_kl": float((guide_sum - (model_sum - reconstruction)).mean()),
    }
    return entry, per_cell


@EVALUATIONS.register("iwelbo_terms", keys=("iwelbo_terms",))
def _iwelbo_terms(fit: FitContext) -> dict[str, Any]:
    n_train, n_validation = fit.split.train.size, fit.split.val.size
    sets = {
        "heldout": fit.adata[fit.split.test],
        "validation": fit.model.adata[n_train:],
        "train": fit.model.adata[: min(n_validation, n_train)],
    }
    out: dict[str, Any] = {}
    for name, cells in sets.items():
        if not cells.n_obs:
            continue
        try:
            out[name], per_cell = _iwelbo_terms_of(fit, cells.copy())
        except ValueError as err:
            fit.skip("iwelbo_terms", f"{name} cells: {err}")
            continue
        if name == "heldout":
            labels = fit.data.cell_condition[fit.split.test]
            out[name]["per_condition"] = {
                c: float(per_cell[torch.as_tensor(labels == c)].mean()) for c in fit.heldout
            }
    return {"iwelbo_terms": out}


@EVALUATIONS.register("global_kl", keys=("global_kl", "global_kl_per_training_cell"))
def _global_kl(fit: FitContext) -> dict[str, Any]:
    from bioreason.models.objectives import global_kl

    kl = global_kl(fit.model.module, n_draws=_GLOBAL_KL_DRAWS, seed=fit.estimate_seed)
    return {"global_kl": kl, "global_kl_per_training_cell": kl / fit.split.train.size}


@EVALUATIONS.register(
    "amortization_gap", keys=("amortization_gap_validation", "optimized_iwelbo_validation")
)
def _amortization_gap(fit: FitContext) -> dict[str, Any]:
    from bioreason.models.evaluation import amortization_gap

    if not fit.split.val.size:
        return {}
    gap = amortization_gap(
        fit.model,
        fit.model.adata[fit.split.train.size :].copy(),
        n_particles=fit.config.iwelbo_particles,
        seed=fit.estimate_seed,
    )
    return {
        "amortization_gap_validation": gap["gap"],
        "optimized_iwelbo_validation": gap["optimized_iwelbo"],
    }
