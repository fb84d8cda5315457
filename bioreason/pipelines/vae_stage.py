"""The ``vae`` stage: fit a perturbation model (``sams_vae``, ``cpa_vae``,
``conditional_vae``, ``svae_plus``) on the ``data`` stage's training cells, then its
held-out IWELBO, average-treatment-effect agreement on the held-out combinations, mask
recovery and a posterior predictive check where the truth is known. Writes ``model/``."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bioreason.pipelines.config import PipelineConfig
from bioreason.pipelines.stages import Stage, say
from bioreason.stage import StageResult

__all__ = ["vae_stage"]


def vae_stage(config: PipelineConfig) -> Stage:
    """The ``vae`` stage: fit the perturbation model on the training cells and evaluate it.

    Returns
    -------
    Stage
    """

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        import anndata as ad

        from bioreason.data import PerturbationData, ScreenGroundTruth
        from bioreason.data.expression import ate_agreement, average_treatment_effect
        from bioreason.models import MODELS
        from bioreason.models.evaluation import mask_recovery, posterior_predictive_check

        vae = config.vae
        data_dir = upstream["data"].path
        adata = ad.read_h5ad(data_dir / "data.h5ad")
        split = np.load(data_dir / "split.npz")
        train, val, test = split["train"], split["val"], split["test"]
        data = PerturbationData.from_anndata(adata)
        cls = MODELS.get(vae.model)
        train_adata = adata[np.concatenate([train, val])].copy()
        cls.setup_anndata(train_adata)
        model = cls(
            train_adata,
            perturbation_names=data.perturbation_names,
            seed=config.seed,
            **vae.options.to_dict(),
        )
        start = time.perf_counter()
        say(f"[vae] fitting {vae.model}: {vae.train.max_steps} steps on {train.size} cells")
        model.train(
            **{**vae.train.to_dict(), "progress": False},  # a stage prints no progress bar
            train_indices=np.arange(train.size),
            validation_indices=np.arange(train.size, train_adata.n_obs) if val.size else None,
            checkpoint_dir=stage_dir / "checkpoint",
            resume=(stage_dir / "checkpoint").is_dir(),
        )
        seconds = time.perf_counter() - start
        model.save(stage_dir / "model", overwrite=True)
        history = model.history
        curve = history[["step", "train_loss"]].dropna()
        every = max(1, len(curve) // 100)
        result: dict[str, Any] = {
            "model": vae.model,
            "steps": int(history["step"].iloc[-1]),
            "train_seconds": seconds,
            "loss_curve": curve.iloc[::every].to_numpy().tolist(),
        }
        heldout = list(upstream["data"].result["heldout_conditions"])
        if val.size:
            result["iwelbo_validation"] = float(
                model.iwelbo(train_adata[train.size :].copy(), n_particles=vae.iwelbo_particles)
            )
        if test.size and model.composes:
            result["iwelbo_heldout"] = float(
                model.iwelbo(adata[test].copy(), n_particles=vae.iwelbo_particles)
            )
            control = np.flatnonzero(data.is_control)
            data_ate = average_treatment_effect(
                adata[np.concatenate([control, test])].copy(),
                control=model.control_label,
                conditions=heldout,
            )
            model_ate = model.average_treatment_effect(heldout, n_cells=vae.ate_cells)
            agreement = ate_agreement(data_ate, model_ate, top_k=20)
            result["ate_pearson_heldout"] = float(agreement["pearson_all"].mean())
            result["ate_pearson_heldout_top20"] = float(agreement["pearson_top"].mean())
        seen = [c for c in data.condition_table().index if c not in heldout and c != "control"]
        seen = [c for c in seen if c != model.control_label][:20]
        if seen:
            cells = np.concatenate([train, val])
            data_ate = average_treatment_effect(
                adata[cells].copy(), control=model.control_label, conditions=seen
            )
            model_ate = model.average_treatment_effect(seen, n_cells=vae.ate_cells)
            agreement = ate_agreement(data_ate, model_ate, top_k=20)
            result["ate_pearson_seen"] = float(agreement["pearson_all"].mean())
        effects = model.get_perturbation_effects()
        if "mask_probability" in effects and "ground_truth" in adata.uns:
            truth = ScreenGroundTruth.from_uns(adata.uns["ground_truth"])
            frame, effect = effects["mask_probability"], effects["effect"]
            rows = [truth.perturbation_names.index(p) for p in frame.index]
            recovery = mask_recovery(
                truth.masks[rows], truth.effects[rows], frame.to_numpy(), effect.to_numpy()
            )
            result["mask_auroc"] = float(recovery["auroc"])
        ppc = posterior_predictive_check(model, n_global_draws=20, seed=config.seed)
        result["ppc"] = {
            "mean_log_ratio_median": float(
                np.median(
                    np.abs(
                        np.log1p(ppc["replicated_mean"].to_numpy())
                        - np.log1p(ppc["observed_mean"].to_numpy())
                    )
                )
            ),
            "mean_corr": float(np.corrcoef(ppc["observed_mean"], ppc["replicated_mean"])[0, 1]),
            "variance_corr": float(
                np.corrcoef(
                    np.log1p(ppc["observed_variance"]), np.log1p(ppc["replicated_variance"])
                )[0, 1]
            ),
        }
        say(
            f"[vae] {seconds:.0f} s; held-out IWELBO "
            f"{result.get('iwelbo_heldout', math.nan):.1f} nats/cell, ATE Pearson on held-out "
            f"combinations {result.get('ate_pearson_heldout', math.nan):.2f}"
        )
        return result

    return Stage(
        "vae",
        compute,
        config={"vae": config.vae},
        inputs=lambda up: {"data": up["data"].path / "data.h5ad"},
        seed=config.seed,
        outputs=["model"],
    )
