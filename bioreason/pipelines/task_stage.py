"""The ``task`` stage: questions, p* (the fitted model's posterior predictive probability,
:class:`bioreason.sim.OutcomeSimulator`), p_true on simulated screens, sampled outcomes
and a split (:func:`bioreason.sim.build_task_from_config`); or the published Replogle
task (``task.source: replogle``) or any task table (``task.source: PATH.parquet``), in
which case there are no ``data`` / ``vae`` stages. Writes ``task.parquet``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioreason.pipelines.config import PipelineConfig
from bioreason.pipelines.stages import Stage, say
from bioreason.run_layout import DATA_FILE, MODEL_DIR, TASK_FILE, fit_model_dir
from bioreason.stage import StageResult

__all__ = ["task_stage"]


def task_stage(config: PipelineConfig) -> Stage:
    """The ``task`` stage: questions, p* and outcomes, or a task read from a file.

    Returns
    -------
    Stage
    """
    task_config = config.task

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason.data.tasks import load_replogle_task, load_task, save_task, task_summary
        from bioreason.sim.accuracy import interval_coverage

        start = time.perf_counter()
        path = stage_dir / TASK_FILE
        if task_config.source == "simulator":
            from bioreason.sim.task_config import build_task_from_config

            data_dir = upstream["data"].path
            options = dataclasses.replace(
                task_config.options,
                seed=config.seed,
                ground_truth=bool(upstream["data"].result.get("ground_truth")),
                model=str(upstream["vae"].path / MODEL_DIR),
                ensemble=[str(upstream["vae"].path / d) for d in _further_fits(config)],
                adata=str(data_dir / DATA_FILE),
            )
            fits = f"the {config.vae.fits} fits of the model pooled" if options.ensemble else ""
            say(f"[task] questions and p* from {fits or 'the fitted model'} (outcome simulator)")
            train_cells = _train_cells(upstream["data"])
            table = build_task_from_config(options, train_cells=train_cells)
            cells = _check_on_cells(options, table, upstream["data"], train_cells)
        elif task_config.source == "replogle":
            table, cells = load_replogle_task(task_config.replogle_folder), None
        else:
            table, cells = load_task(task_config.source), None
        save_task(table, path, overwrite=True)
        summary = task_summary(table)
        result: dict[str, Any] = {
            "source": task_config.source,
            "n_questions": int(len(table)),
            "splits": {str(k): int(v) for k, v in table["split"].value_counts().items()},
            "outcome_rate": float(pd.to_numeric(table["outcome"], errors="coerce").mean()),
            "summary": summary,
            "seconds": time.perf_counter() - start,
        }
        if task_config.source == "simulator":
            result["n_fits"] = config.vae.fits  # p* from one fit, or from their mixture
        p_star = table["p_star"].to_numpy(dtype=float)
        p_true = table["p_true"].to_numpy(dtype=float)
        both = np.isfinite(p_star) & np.isfinite(p_true)
        if both.sum() >= 2:
            result["mae_p_star_p_true"] = float(np.abs(p_star[both] - p_true[both]).mean())
            result["corr_p_star_p_true"] = float(np.corrcoef(p_star[both], p_true[both])[0, 1])
            if {"p_star_low", "p_star_high"} <= set(table.columns):
                # the share of p_true inside p*'s 90 % interval: ~0.9 when honest
                result["p_true_in_90pct_interval"] = interval_coverage(
                    table["p_star_low"], table["p_star_high"], p_true
                )
        if cells is not None:
            result["check_on_cells"] = cells
        if np.isfinite(p_star).any():
            result["mean_p_star"] = float(np.nanmean(p_star))
            result["mean_spread"] = float(np.nanmean(table["p_star_spread"].to_numpy(dtype=float)))
        say(
            f"[task] {len(table)} questions ({result['splits']}), outcome rate "
            f"{result['outcome_rate']:.2f}"
            + (
                f"; |p* - p_true| {result['mae_p_star_p_true']:.3f}"
                if "mae_p_star_p_true" in result
                else ""
            )
        )
        return result

    def inputs(up: Mapping[str, StageResult]) -> dict[str, Path]:
        if task_config.source == "simulator":
            fits = {d: up["vae"].path / d for d in _further_fits(config)}
            return {
                MODEL_DIR: up["vae"].path / MODEL_DIR,
                **fits,
                "data": up["data"].path / DATA_FILE,
            }
        if task_config.source == "replogle":
            return {"replogle": Path(task_config.replogle_folder)}
        return {"task": Path(task_config.source)}

    return Stage(
        "task",
        compute,
        config={"task": task_config, "seed": config.seed},
        inputs=inputs,
        seed=config.seed,
        outputs=[TASK_FILE, f"{TASK_FILE}.summary.json"],
    )


def _further_fits(config: PipelineConfig) -> list[str]:
    """The ``vae`` stage's folders of its fits after the first (``vae.fits``)."""
    return [fit_model_dir(fit) for fit in range(1, config.vae.fits)]


def _train_cells(data: StageResult) -> np.ndarray | None:
    """The model's training and validation cells (the data stage's split), or None when
    the data stage held nothing out."""
    from bioreason.run_layout import SPLIT_FILE

    if not data.result.get("heldout_conditions") or not (data.path / SPLIT_FILE).exists():
        return None
    with np.load(data.path / SPLIT_FILE) as split:
        return np.concatenate([split["train"], split["val"]])


def _check_on_cells(
    options: Any, table: pd.DataFrame, data: StageResult, train_cells: np.ndarray | None
) -> dict[str, Any] | None:
    """Real data with held-out combinations (no p_true): p* of the held-out questions
    against their own cells (:func:`bioreason.sim.task_config.check_on_cells`), summed
    up for the report; None when there is nothing to check."""
    from bioreason.calibration.metrics import correlation_to_reference
    from bioreason.sim.accuracy import interval_coverage
    from bioreason.sim.task_config import check_on_cells

    heldout = list(data.result.get("heldout_conditions") or [])
    if data.result.get("ground_truth") or train_cells is None or options.outcome != "screen_hit":
        return None
    frame = check_on_cells(options, table, heldout, train_cells)
    if frame.empty:
        return None
    say(f"[task] p* of {frame['condition'].nunique()} held-out conditions against their cells")
    p_star, p_obs, additive = (frame[c].to_numpy(float) for c in ("p_star", "p_obs", "p_additive"))
    by_condition = frame.assign(error=np.abs(p_star - p_obs)).groupby("condition")["error"]
    answered = np.isfinite(additive)
    cells = {
        "heldout_conditions": sorted(frame["condition"].unique().tolist()),
        "n_questions": int(len(frame)),
        "mae_p_star_p_obs": float(np.abs(p_star - p_obs).mean()),
        "corr_p_star_p_obs": float(correlation_to_reference(p_star, p_obs)),
        "bias_p_star_p_obs": float(p_star.mean() - p_obs.mean()),
        # the additive baseline is NaN where a part was never measured alone
        "mae_additive_p_obs": float(np.abs(additive - p_obs)[answered].mean())
        if answered.any()
        else None,
        "corr_additive_p_obs": float(correlation_to_reference(additive[answered], p_obs[answered]))
        if answered.sum() >= 2
        else None,
        "n_questions_additive": int(answered.sum()),
        "p_obs_own_error": float(frame["p_obs_own_error"].mean()),
        "p_obs_own_bias": float(frame["p_obs_own_bias"].mean()),
        "mae_p_star_p_obs_by_condition": {str(k): float(v) for k, v in by_condition.mean().items()},
    }
    if {"p_star_low", "p_star_high"} <= set(frame.columns):
        cells["p_obs_in_90pct_interval"] = interval_coverage(
            frame["p_star_low"], frame["p_star_high"], p_obs
        )
    return cells
