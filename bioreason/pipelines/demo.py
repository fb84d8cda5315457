"""The demo run behind ``make demo``: the project end to end on built-in synthetic data.

Stages (each in ``OUT/<stage>/`` with a manifest, through
:func:`bioreason.pipelines.stages.run_stage`; a stage whose manifest matches is skipped
on re-run):

1. ``screen``: simulate a Perturb-seq screen with known ground truth, parse it, hold
   out 25 % of the two-gene combinations.
2. ``vae``: fit SAMS-VAE on the training cells, report held-out IWELBO and how well
   its predicted treatment effects of the unseen combinations match the data
   (``vae/result.json``).
3. ``calibration``: a shortened synthetic calibration experiment (GRPO against RLOO):
   GRPO's std normalization makes its predictions overconfident.

A file or folder the demo would write is replaced only when a stage's manifest records
that the demo wrote it and it is unchanged since (or with ``force=True``, ``--force``);
every stage's outputs are checked before any work starts.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bioreason._io import atomic_write, check_output_folder
from bioreason.pipelines.stages import preflight_stage, run_stage

DEMO_SCREEN = {
    "n_cells_per_condition": 100,
    "n_genes": 500,
    "n_perturbations": 20,
    "n_combinations": 12,
}
DEMO_VAE = {"n_latent": 10, "n_hidden": 128}
DEMO_VAE_STEPS = 800
DEMO_CALIBRATION = {
    "n_questions": 2000,
    "methods": ["grpo", "rloo"],
    "n_boot": 50,
    "rl": {"steps": 3000, "checkpoint_every": 1000, "log_every": 500},
}


def _screen_stage(out: Path, seed: int, force: bool = False):
    import anndata as ad

    from bioreason.data import ScreenConfig, simulate_screen

    path = out / "screen" / "screen.h5ad"
    config = ScreenConfig.from_dict({**DEMO_SCREEN, "seed": seed})

    def compute(stage_dir: Path) -> dict:
        start = time.perf_counter()
        adata = simulate_screen(config)
        atomic_write(path, lambda tmp: adata.write_h5ad(tmp))
        return {
            "n_cells": adata.n_obs,
            "n_genes": adata.n_vars,
            "seconds": time.perf_counter() - start,
        }

    stage = run_stage(
        path.parent,
        config,
        None,
        compute,
        seed=seed,
        force=force,
        outputs=[path.name],
        log=lambda _: print(f"[screen] up to date: {path}"),
    )
    if not stage.skipped:
        print(f"[screen] simulated in {stage.result['seconds']:.1f} s -> {path}")
    return ad.read_h5ad(path), path


def _vae_stage(out: Path, adata, screen_path: Path, split, seed: int, force: bool = False) -> None:
    from bioreason.data.expression import ate_agreement, average_treatment_effect
    from bioreason.models import SAMSVAE

    stage_dir = out / "vae"
    model_dir = stage_dir / "model"
    heldout = list(split.heldout_conditions)
    config = {**DEMO_VAE, "steps": DEMO_VAE_STEPS, "heldout": heldout}

    def compute(stage_dir: Path) -> dict:
        train_adata = adata[np.concatenate([split.train, split.val])].copy()
        test_adata = adata[split.test].copy()
        SAMSVAE.setup_anndata(train_adata)
        model = SAMSVAE(train_adata, guide="correlated", seed=seed, **DEMO_VAE)
        n_train = split.train.size
        start = time.perf_counter()
        model.train(
            max_steps=DEMO_VAE_STEPS,
            batch_size=512,
            n_particles=5,
            seed=seed,
            train_indices=np.arange(n_train),
            validation_indices=np.arange(n_train, train_adata.n_obs),
            early_stopping=False,
            progress=False,
        )
        seconds = time.perf_counter() - start
        print(f"[vae] SAMS-VAE trained for {DEMO_VAE_STEPS} steps in {seconds:.0f} s")
        model.save(model_dir, overwrite=True)
        iwelbo = model.iwelbo(test_adata, n_particles=20)
        control = np.flatnonzero(adata.obs["perturbation"] == "control")
        cells = np.concatenate([control, split.test])
        data_ate = average_treatment_effect(
            adata[cells].copy(), control="control", conditions=heldout
        )
        model_ate = model.average_treatment_effect(heldout, n_cells=1000)
        agreement = ate_agreement(data_ate, model_ate, top_k=20)
        return {
            "heldout": heldout,
            "train_seconds": seconds,
            "test_iwelbo": float(iwelbo),
            "ate_pearson_all": float(agreement["pearson_all"].mean()),
            "ate_pearson_top20": float(agreement["pearson_top"].mean()),
        }

    stage = run_stage(
        stage_dir,
        config,
        {"screen": screen_path},
        compute,
        seed=seed,
        force=force,
        outputs=[model_dir.name],
        log=lambda _: print(f"[vae] up to date: {model_dir}"),
    )
    result = stage.result
    print(f"[vae] held-out combinations: {', '.join(result['heldout'])}")
    print(f"[vae] test IWELBO (K=20): {result['test_iwelbo']:.1f} nats/cell")
    print(
        "[vae] ATE Pearson r, model vs data, unseen combinations: "
        f"all genes {result['ate_pearson_all']:.2f}, "
        f"top 20 genes {result['ate_pearson_top20']:.2f}"
    )


def _calibration_stage(out: Path, seed: int, force: bool = False) -> None:
    from bioreason.pipelines.synthetic_calibration import (
        SyntheticCalibrationConfig,
        run_synthetic_calibration,
    )

    values = {**DEMO_CALIBRATION, "seed": seed}
    values["rl"] = {**DEMO_CALIBRATION["rl"], "seed": seed}
    config = SyntheticCalibrationConfig.from_dict(values)
    start = time.perf_counter()
    run_synthetic_calibration(out / "calibration", config, overwrite=force, progress=False)
    print(
        f"[calibration] {config.n_questions} questions, {config.rl.steps} steps per method "
        f"({time.perf_counter() - start:.0f} s); metrics in {out / 'calibration' / 'metrics.csv'}"
    )


def _check_outputs(out: Path, force: bool) -> None:
    """Refuse, before any work, a run folder holding files the demo did not write."""
    from bioreason.pipelines.synthetic_calibration import _check_output_folder

    check_output_folder(out)
    # a stage with a manifest is checked when it runs (it may be up to date)
    for stage in ("screen", "vae"):
        preflight_stage(out / stage, force=force)
    _check_output_folder(out / "calibration")  # its own marker; --force does not bypass it


def run_demo(out: Path, seed: int = 0, force: bool = False) -> None:
    """Run every demo stage into the run folder ``out``.

    Parameters
    ----------
    out : Path
        The run folder; created when missing.
    seed : int, default 0
        Seeds the screen, the split, the VAE and the calibration runs.
    force : bool, default False
        Replace files in ``out`` that the demo did not write (or that changed since).
        Without it such a file stops the demo with a ``FileExistsError`` naming it.
    """
    from bioreason.data import MinibatchLoader, PerturbationData, split_heldout_combinations

    out = Path(out)
    _check_outputs(out, force)
    adata, screen_path = _screen_stage(out, seed, force)
    data = PerturbationData.from_anndata(adata)
    print(data.summary())
    split = split_heldout_combinations(data, fraction=0.25, seed=seed)
    print(
        f"split (25% of combinations held out): train {split.train.size}, "
        f"val {split.val.size}, test {split.test.size} cells"
    )
    loader = MinibatchLoader(data, split.train, batch_size=512, seed=seed)
    start = time.perf_counter()
    n_cells = sum(batch.counts.shape[0] for batch in loader)
    rate = n_cells / (time.perf_counter() - start)
    print(
        f"minibatch loader: {n_cells} training cells in {len(loader)} batches ({rate:,.0f} cells/s)"
    )
    _vae_stage(out, adata, screen_path, split, seed, force)
    _calibration_stage(out, seed, force)
