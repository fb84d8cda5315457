"""The ``calibration`` stage: every job's held-out predictions scored against outcomes,
p* and p_true, per method with 95 % bootstrap intervals over questions (seeds pooled),
the theory's predicted drift beside the measured one, and the verdict on the paper's
finding (GRPO overconfident, the others calibrated). Writes ``predictions.parquet``,
``runs.csv``, ``summary.csv``, ``summary.md``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioreason.pipelines.config import PipelineConfig
from bioreason.pipelines.stages import Stage
from bioreason.run_layout import (
    INVALID_RATE_LIMIT,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RUNS_FILE,
    SUMMARY_FILE,
    SUMMARY_MD,
    judged_probability,
)
from bioreason.stage import RESULT, StageResult

__all__ = ["CALIBRATED_ECE", "CALIBRATED_METHODS", "calibration_stage", "finding"]

#: methods whose predictions the paper finds calibrated (the verdict compares GRPO to them)
CALIBRATED_METHODS = ("grpo_no_std", "rloo", "reinforce", "ppo", "grpo_batch_std")
#: ECE against outcomes at or below which a method counts as calibrated in the verdict
CALIBRATED_ECE = 0.1


def finding(summary: pd.DataFrame) -> dict[str, Any]:
    """The verdict on the paper's finding: GRPO overconfident, the others calibrated.

    Shown when GRPO's ECE against outcomes is above :data:`CALIBRATED_ECE` with the
    lower end of its 95 % interval above every calibrated method's ECE, and every
    method of :data:`CALIBRATED_METHODS` in the run has ECE at most
    :data:`CALIBRATED_ECE`, and none of these methods stops answering (held-out
    invalid-answer rate above :data:`INVALID_RATE_LIMIT`, when the table has an
    ``invalid_rate`` column). The text names every method of the table that stops
    answering, compared or not.

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`bioreason.pipelines.lm_runs.summarize_methods`'s table.

    Returns
    -------
    dict
        ``shown`` (bool), ``text`` (one paragraph: the verdict and why), ``grpo_ece``,
        ``others_max_ece``.
    """
    by_method = summary.set_index("method")
    if "grpo" not in by_method.index:
        return {"shown": False, "text": "GRPO was not run, so the finding cannot be checked."}
    others = [m for m in CALIBRATED_METHODS if m in by_method.index]
    if not others:
        return {
            "shown": False,
            "text": "None of " + ", ".join(CALIBRATED_METHODS) + " was run beside GRPO.",
        }
    grpo = by_method.loc["grpo"]
    low = grpo["ece_low"] if np.isfinite(grpo["ece_low"]) else grpo["ece"]
    other_ece = by_method.loc[others, "ece"]
    worst = str(other_ece.idxmax())
    invalid = (
        by_method["invalid_rate"].astype(float)
        if "invalid_rate" in by_method
        else pd.Series(0.0, index=by_method.index)
    )
    silent = [str(m) for m in by_method.index if invalid[m] > INVALID_RATE_LIMIT]
    silent_compared = [m for m in ["grpo", *others] if m in silent]
    shown = bool(
        grpo["ece"] > CALIBRATED_ECE
        and low > other_ece.max()
        and other_ece.max() <= CALIBRATED_ECE
        and not silent_compared
    )
    if shown:
        text = (
            f"Shown: GRPO ends miscalibrated (ECE {grpo['ece']:.3f}, 95 % interval from "
            f"{low:.3f}), above every method without per-group std normalization "
            f"({', '.join(others)}: ECE at most {other_ece.max():.3f}, {worst})."
        )
    else:
        reasons = []
        if grpo["ece"] <= CALIBRATED_ECE:
            reasons.append(f"GRPO's ECE is only {grpo['ece']:.3f} (<= {CALIBRATED_ECE})")
        elif low <= other_ece.max():
            reasons.append(
                f"GRPO's ECE interval (from {low:.3f}) overlaps {worst}'s ECE {other_ece.max():.3f}"
            )
        if other_ece.max() > CALIBRATED_ECE:
            reasons.append(f"{worst} is not calibrated either (ECE {other_ece.max():.3f})")
        if silent_compared:
            reasons.append(f"{', '.join(silent_compared)} stopped answering validly")
        text = (
            "Not shown by this run: "
            + "; ".join(reasons)
            + ". The training budget may be too small for the drift to separate the methods "
            "(more steps, more seeds or a larger learning rate)."
        )
    if silent:
        rates = ", ".join(f"{m} {invalid[m]:.2f}" for m in silent)
        text += (
            f" Warning: {', '.join(silent)} stopped writing a valid answer on most held-out "
            f"questions (invalid-answer rate {rates}); {'its' if len(silent) == 1 else 'their'} "
            "metrics score the answer distribution after a forced <answer> tag, not "
            "anything the policy writes."
        )
    return {
        "shown": shown,
        "text": text,
        "grpo_ece": float(grpo["ece"]),
        "others_max_ece": float(other_ece.max()),
    }


def _final(predictions: pd.DataFrame) -> pd.DataFrame:
    """The rows of a job's last evaluation."""
    return predictions[predictions["step"] == predictions["step"].max()]


def calibration_stage(config: PipelineConfig) -> Stage:
    """The ``calibration`` stage: every job's held-out predictions scored per method.

    Returns
    -------
    Stage
    """

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason._io import atomic_write, atomic_write_text
        from bioreason.pipelines.lm_runs import (
            RUN_COLUMNS,
            markdown_table,
            read_job_row,
            summarize_methods,
        )

        folder = upstream["finetune"].path
        jobs = upstream["finetune"].result["jobs"]
        rows = [read_job_row(folder / job["folder"] / METRICS_FILE) for job in jobs]
        runs = pd.DataFrame(rows)
        runs = runs[[*RUN_COLUMNS, *[c for c in runs.columns if c not in RUN_COLUMNS]]]
        # each job's predictions at its last evaluation (a job evaluating every
        # rl.eval_every steps keeps the earlier ones in its own file)
        predictions = pd.concat(
            [_final(pd.read_parquet(folder / job["folder"] / PREDICTIONS_FILE)) for job in jobs],
            ignore_index=True,
        )
        summary = summarize_methods(
            predictions, runs, n_boot=config.calibration.n_boot, seed=config.calibration.seed
        )
        spread = (
            predictions.assign(q=judged_probability(predictions)[0])
            .groupby(["method", "seed"])["q"]
            .std()
        )
        summary["q_spread"] = summary["method"].map(spread.groupby(level=0).mean())
        table = markdown_table(summary)
        verdict = finding(summary)
        collapsed = int((spread < 0.01).sum())
        if collapsed:
            verdict["text"] += (
                f" Note: on {collapsed} of {len(spread)} runs the LM gives (almost) the same "
                "answer to every held-out question (standard deviation of q below 0.01), so "
                "these runs are calibrated or not only in their average answer; the error "
                "against p* measures how far one answer is from question-level truth."
            )
        for name, frame in ((RUNS_FILE, runs), (SUMMARY_FILE, summary)):
            atomic_write(stage_dir / name, lambda tmp, f=frame: f.to_csv(tmp, index=False))
        atomic_write(
            stage_dir / PREDICTIONS_FILE, lambda tmp: predictions.to_parquet(tmp, index=False)
        )
        atomic_write_text(stage_dir / SUMMARY_MD, table + "\n")
        headline = [
            {
                "method": row["method"],
                **{
                    f"{metric}{suffix}": row[f"{metric}{suffix}"]
                    for metric in ("ece", "mae_p_star", "mae_p_true", "overconfidence")
                    for suffix in ("", "_low", "_high")
                },
                "q_spread": row["q_spread"],
                "invalid_rate": row["invalid_rate"],
            }
            for _, row in summary.iterrows()
        ]
        return {"headline": headline, "finding": verdict, "n_jobs": len(jobs)}

    return Stage(
        "calibration",
        compute,
        config={"calibration": config.calibration},
        inputs=lambda up: {"finetune": up["finetune"].path / RESULT},
        outputs=[RUNS_FILE, SUMMARY_FILE, SUMMARY_MD, PREDICTIONS_FILE],
    )
