"""The ``vae`` stage: fit a perturbation model (``sams_vae``, ``cpa_vae``,
``conditional_vae``, ``svae_plus``) on the ``data`` stage's training cells and evaluate it
(:func:`bioreason.models.fit_vae`, the function ``bioreason train-vae`` and the VAE
benchmarks call): by default its held-out IWELBO, average-treatment-effect agreement on
the held-out and seen conditions, mask recovery where the truth is known and a posterior
predictive check (``vae.evaluation``). Writes ``model/`` (and, with ``vae.fits`` > 1,
``model_fit1/`` ...: the same model fitted from other seeds)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bioreason.pipelines.config import PipelineConfig
from bioreason.pipelines.stages import Stage, say
from bioreason.run_layout import DATA_FILE, SPLIT_FILE, fit_model_dir
from bioreason.stage import StageResult

__all__ = ["vae_stage"]

_CHECKPOINT = "checkpoint"
#: fit k of ``vae.fits`` trains with the pipeline's seed + k times this
_FIT_SEED_STEP = 1000


def vae_stage(config: PipelineConfig) -> Stage:
    """The ``vae`` stage: fit the perturbation model on the training cells and evaluate it.

    Returns
    -------
    Stage
    """

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        import anndata as ad

        from bioreason.data import ScreenGroundTruth, Split
        from bioreason.models import fit_vae

        vae = config.vae
        data_dir = upstream["data"].path
        adata = ad.read_h5ad(data_dir / DATA_FILE)
        arrays = np.load(data_dir / SPLIT_FILE)
        split = Split(
            arrays["train"],
            arrays["val"],
            arrays["test"],
            tuple(upstream["data"].result["heldout_conditions"]),
        )
        truth = (
            ScreenGroundTruth.from_uns(adata.uns["ground_truth"])
            if "ground_truth" in adata.uns
            else None
        )
        fitted = []
        for fit in range(vae.fits):
            # left only by an interrupted run: resume it
            checkpoint = stage_dir / _checkpoint(fit)
            seed = vae.train.seed + _FIT_SEED_STEP * fit
            which = f" (fit {fit + 1} of {vae.fits}, seed {seed})" if vae.fits > 1 else ""
            resume = checkpoint.is_dir()
            say(
                f"[vae] fitting {vae.model}: {vae.train.max_steps} steps on "
                f"{split.train.size} cells{which}"
                + (f", resuming from {checkpoint.name}/" if resume else "")
            )
            model, result = fit_vae(
                adata,
                split,
                vae.model,
                vae.options,
                # a stage prints no progress bar
                dataclasses.replace(vae.train, progress=False, seed=seed),
                vae.evaluation,
                truth=truth,
                checkpoint_dir=checkpoint,
                resume=resume,
            )
            model.save(stage_dir / fit_model_dir(fit), overwrite=True)
            seconds = result["train_seconds"]
            say(
                f"[vae] {seconds:.0f} s; held-out IWELBO "
                f"{result.get('iwelbo_heldout', math.nan):.1f} nats/cell, ATE Pearson on "
                f"held-out combinations {result.get('ate_pearson_heldout', math.nan):.2f}"
            )
            fitted.append({"seed": seed, **result})
        result = dict(fitted[0])
        del result["seed"]
        if vae.fits > 1:
            result["fits"] = fitted  # every fit's figures, fit 0's first
        return result

    return Stage(
        "vae",
        compute,
        config={"vae": config.vae},
        inputs=lambda up: {"data": up["data"].path / DATA_FILE},
        seed=config.seed,
        outputs=[fit_model_dir(fit) for fit in range(config.vae.fits)],
        scratch=[_checkpoint(fit) for fit in range(config.vae.fits)],
    )


def _checkpoint(fit: int) -> str:
    """The training checkpoint's folder of fit ``fit``."""
    return _CHECKPOINT if fit == 0 else f"{_CHECKPOINT}_fit{fit}"
