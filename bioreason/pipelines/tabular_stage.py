"""The ``tabular`` stage (``kind: tabular``): the synthetic calibration experiment with a
tabular policy (:func:`bioreason.pipelines.synthetic_calibration.run_synthetic_calibration`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bioreason.pipelines.config import PipelineConfig
from bioreason.pipelines.stages import Stage, say
from bioreason.stage import StageResult

__all__ = ["tabular_stage"]


def tabular_stage(config: PipelineConfig) -> Stage:
    """The ``tabular`` stage (``kind: tabular``).

    Returns
    -------
    Stage
    """
    tabular = config.tabular
    tabular.validate()

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason.pipelines.synthetic_calibration import run_synthetic_calibration

        say(
            f"[tabular] {len(tabular.methods)} methods, {tabular.n_questions} questions, "
            f"{tabular.rl.steps} steps per run"
        )
        metrics = run_synthetic_calibration(stage_dir / "runs", tabular, progress=False)
        columns = [
            c for c in ("run", "method", "ece", "mae_p_true", "overconfidence") if c in metrics
        ]
        return {"metrics": metrics[columns].to_dict(orient="records")}

    return Stage(
        "tabular", compute, config={"tabular": tabular}, seed=tabular.seed, outputs=["runs"]
    )
