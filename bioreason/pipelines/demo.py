"""The demo run behind ``make demo``: the whole pipeline on built-in synthetic data.

Its settings live in one place, ``pipelines/configs/demo.yaml``, sized for a 2-core CPU:
a simulated Perturb-seq screen with known ground truth, SAMS-VAE, a task of questions
about NMF programs with p* from the outcome simulator, the default small LM warm-started
once, then every RL method of the paper's comparison fine-tuned from it, scored on
held-out questions and written up in ``report.html``. :func:`demo_config` reads it;
:func:`run_demo` runs it through :func:`~bioreason.pipelines.run.run_pipeline` (each stage
skipped when up to date, an interrupted run resumed, nothing replaced that bioreason did
not write unless ``force``) and prints the headline table and the report's path.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

__all__ = ["DEMO_CONFIG", "demo_config", "demo_screen", "run_demo"]

#: the demo's settings (a pipeline config); ``bioreason run`` reads the same file
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "pipelines" / "configs" / "demo.yaml"


def demo_config(seed: int = 0):
    """The demo's pipeline settings: :data:`DEMO_CONFIG` with ``seed`` as the pipeline's
    seed, its one fine-tuning seed and the bootstrap's seed.

    Parameters
    ----------
    seed : int, default 0

    Returns
    -------
    bioreason.pipelines.config.PipelineConfig
    """
    from bioreason.pipelines.config import load_pipeline_config

    config = load_pipeline_config(DEMO_CONFIG)
    replace = dataclasses.replace
    return replace(
        config,
        seed=seed,
        finetune=replace(config.finetune, seeds=[seed]),
        calibration=replace(config.calibration, seed=seed),
    )


def demo_screen(overrides: dict | None = None):
    """The demo's simulated screen settings, with some fields replaced.

    Benchmarks that run on "the demo screen" call this, so that one flag
    (``--screen JSON``) reruns them on another screen, e.g. the demo's earlier one with
    ``{"mask_probability": 0.1}``.

    Parameters
    ----------
    overrides : dict, optional
        ``ScreenConfig`` fields and their values; an unknown field is an error that lists
        the valid ones.

    Returns
    -------
    bioreason.data.ScreenConfig
    """
    from bioreason.data import ScreenConfig

    base = demo_config().data.screen.to_dict()
    return ScreenConfig.from_dict({**base, **(overrides or {})}, where="screen")


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
    from bioreason.pipelines.headline import default_workers, print_headline
    from bioreason.pipelines.run import run_pipeline
    from bioreason.run_layout import REPORT_HTML

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
    report = out / REPORT_HTML
    if report.exists():
        print(f"report: {report}")
    return results
