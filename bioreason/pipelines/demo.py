"""The demo run behind ``make demo``: the whole pipeline on built-in synthetic data.

:func:`demo_config` is :class:`~bioreason.pipelines.run.PipelineConfig` sized for a
2-core CPU (``pipelines/configs/demo.yaml`` holds the same settings): a simulated
Perturb-seq screen with known ground truth, SAMS-VAE, a task of questions about NMF
programs with p* from the outcome simulator, the default small LM warm-started once,
then every RL method of the paper's comparison fine-tuned from it, scored on held-out
questions and written up in ``report.html``. :func:`run_demo` runs it through
:func:`~bioreason.pipelines.run.run_pipeline` (each stage skipped when up to date, an
interrupted run resumed, nothing replaced that bioreason did not write unless
``force``) and prints the headline table and the report's path.
"""

from __future__ import annotations

import time
from pathlib import Path

from bioreason.pipelines.lm_runs import METHODS

__all__ = [
    "DEMO_METHODS",
    "DEMO_SCREEN",
    "DEMO_TEMPLATE",
    "DEMO_VAE",
    "DEMO_VAE_STEPS",
    "demo_config",
    "run_demo",
]

#: the simulated screen (ScreenConfig fields)
DEMO_SCREEN = {
    "n_cells_per_condition": 100,
    "n_genes": 500,
    "n_perturbations": 20,
    "n_combinations": 12,
}
#: SAMS-VAE's architecture (VAEConfig fields)
DEMO_VAE = {"n_latent": 10, "n_hidden": 128}
DEMO_VAE_STEPS = 1500
#: the demo's prompt: the condition and the program (each program's threshold is fixed, so
#: the question need not spell it out); short prompts make RL steps about 2x faster
DEMO_TEMPLATE = (
    "Does {condition_text} shift {readout} in a 100-cell screen? "
    "Answer in percent inside <answer></answer>."
)
#: the methods of the demo (every estimator family of the comparison)
DEMO_METHODS = list(METHODS)


def demo_config(seed: int = 0):
    """The demo's pipeline settings.

    Parameters
    ----------
    seed : int, default 0
        Seeds the screen, split, model, task and the one fine-tuning seed.

    Returns
    -------
    bioreason.pipelines.run.PipelineConfig
    """
    from bioreason.pipelines.run import PipelineConfig

    return PipelineConfig.from_dict(
        {
            "name": "demo",
            "seed": seed,
            "data": {"source": "simulate", "screen": dict(DEMO_SCREEN), "heldout_fraction": 0.25},
            "vae": {"model": "sams_vae", "options": dict(DEMO_VAE), "steps": DEMO_VAE_STEPS},
            "task": {
                "source": "simulator",
                "options": {
                    "n_programs": 20,
                    "template": DEMO_TEMPLATE,
                    "outcome_options": {"threshold": None, "n_cells": 100},
                    "split": "random",
                    "test_fraction": 0.5,
                    "val_fraction": 0.0,
                    "budget": {"target_se": 0.02, "max_draws": 1000},
                },
            },
            "lm": {"model": "tiny", "warm_start_steps": 30, "warm_start_lr": 1e-3},
            "finetune": {
                "methods": list(DEMO_METHODS),
                "seeds": [seed],
                "steps": 500,
                "lr": 5e-4,
                "group_size": 8,
                "questions_per_step": 8,
            },
            "calibration": {"n_boot": 1000, "seed": seed},
        },
        where="demo config",
    )


def run_demo(
    out: str | Path = "runs/demo", seed: int = 0, force: bool = False, workers: int | None = None
) -> dict:
    """Run (or resume) the demo pipeline into ``out``; print progress, the headline table
    and the report's path.

    Parameters
    ----------
    out : str or Path, default ``runs/demo``
        The run folder; created when missing.
    seed : int, default 0
    force : bool, default False
        Replace files in ``out`` that the demo did not write (or that changed since).
        Without it such a file stops the demo with a ``FileExistsError`` naming it.
    workers : int, optional
        Parallel fine-tuning jobs (default: the cores, at most 4).

    Returns
    -------
    dict of str to StageResult
        Every stage's folder and result (:func:`~bioreason.pipelines.run.run_pipeline`).
    """
    from bioreason.pipelines.cli_run import default_workers, print_headline
    from bioreason.pipelines.run import run_pipeline

    out = Path(out)
    start = time.perf_counter()
    results = run_pipeline(
        demo_config(seed),
        out,
        force=force,
        workers=workers or default_workers(),
        command=f"bioreason demo --out {out} --seed {seed}",
    )
    print()
    print_headline(results["calibration"].result)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s")
    report = out / "report.html"
    if report.exists():
        print(f"report: {report}")
    return results
