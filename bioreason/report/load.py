"""Reading a pipeline run folder for the report, tolerant of missing or partial stages.

Every reader returns ``None`` for a file that is not there, and records a file that is
there but cannot be read in :attr:`RunFolder.problems` (the report lists them) instead of
raising: a report of a run that stopped half-way is still worth having.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bioreason.run_layout import (
    EVAL_LOG_FILE,
    LOG_FILE,
    PIPELINE_RECORD,
    PREDICTIONS_FILE,
    SUMMARY_FILE,
    TASK_FILE,
    method_slug,
)

__all__ = ["FinetuneRun", "RunFolder", "load_run"]

#: The stage folders in pipeline order; ``warm_start`` is also read as ``warm``.
STAGES = ("data", "vae", "task", "warm_start", "finetune", "calibration")
_STAGE_FOLDERS = {"warm_start": ("warm_start", "warm")}
_RUN_FOLDER = re.compile(r"^(?P<slug>.+)_seed(?P<seed>\d+)$")


@dataclass
class FinetuneRun:
    """One method x seed fine-tuning job: its folder and its logs.

    Attributes
    ----------
    folder : Path
    slug : str
        The method part of the folder name.
    seed : int
    log : DataFrame or None
        ``log.csv``, one row per training step.
    eval : DataFrame or None
        ``eval.csv``, one row per evaluation.
    method : str
        The method's display name (its name in the predictions / summary tables when
        one matches the slug, else the slug).
    """

    folder: Path
    slug: str
    seed: int
    log: pd.DataFrame | None = None
    eval: pd.DataFrame | None = None
    method: str = ""


@dataclass
class RunFolder:
    """What a run folder holds; ``None`` for every file that is missing.

    Attributes
    ----------
    path : Path
    pipeline : dict
        ``pipeline.json``.
    stage_dirs : dict of str to Path
        The stage folders that exist, by stage name.
    results : dict of str to dict
        Each stage's ``result.json`` that exists and could be read.
    task : DataFrame or None
        ``task/task.parquet``.
    runs : list of FinetuneRun
        ``finetune/<method>_seed<S>/``, sorted by method then seed.
    predictions : DataFrame or None
        ``calibration/predictions.parquet``.
    summary : DataFrame or None
        ``calibration/summary.csv``.
    problems : list of str
        Files that exist but could not be read, with the reason.
    """

    path: Path
    pipeline: dict[str, Any]
    stage_dirs: dict[str, Path] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    task: pd.DataFrame | None = None
    runs: list[FinetuneRun] = field(default_factory=list)
    predictions: pd.DataFrame | None = None
    summary: pd.DataFrame | None = None
    problems: list[str] = field(default_factory=list)

    def methods(self) -> list[str]:
        """The methods in display order: the summary's, then the predictions', then the
        fine-tuning folders'.

        Returns
        -------
        list of str
        """
        names: list[str] = []
        for frame in (self.summary, self.predictions):
            if frame is not None and "method" in frame.columns:
                names += [str(m) for m in pd.unique(frame["method"]) if str(m) not in names]
        names += [run.method for run in self.runs if run.method not in names]
        return names


def _read(run: RunFolder, path: Path, reader) -> Any:
    if not path.is_file():
        return None
    try:
        return reader(path)
    except Exception as error:  # a damaged file is reported, not fatal
        run.problems.append(f"{path.relative_to(run.path)}: {type(error).__name__}: {error}")
        return None


def _json(path: Path) -> dict[str, Any]:
    value = json.loads(path.read_text())
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def _read_pipeline(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        if path.exists():
            raise NotADirectoryError(f"{path} is a file; give the run folder (runs/<name>)")
        raise FileNotFoundError(f"run folder {path} does not exist")
    record = path / PIPELINE_RECORD
    if not record.is_file():
        raise FileNotFoundError(
            f"{record} not found: {path} is not a pipeline run folder (a run folder holds "
            "pipeline.json, written by `bioreason run`)"
        )
    try:
        pipeline = json.loads(record.read_text())
    except ValueError as error:
        raise ValueError(f"{record} is not valid JSON ({error}); rerun the pipeline") from None
    if not isinstance(pipeline, dict):
        raise ValueError(f"{record} must hold a JSON object, got {type(pipeline).__name__}")
    return pipeline


def load_run(path: str | Path) -> RunFolder:
    """Read a pipeline run folder (see :mod:`bioreason.report` for the layout).

    Parameters
    ----------
    path : str or Path
        ``runs/<name>``, holding ``pipeline.json`` and any of the stage folders.

    Returns
    -------
    RunFolder

    Raises
    ------
    FileNotFoundError
        When the folder or its ``pipeline.json`` is missing.
    ValueError
        When ``pipeline.json`` is not a JSON object.
    """
    path = Path(path)
    run = RunFolder(path=path, pipeline=_read_pipeline(path))
    for stage in STAGES:
        for name in _STAGE_FOLDERS.get(stage, (stage,)):
            if (path / name).is_dir():
                run.stage_dirs[stage] = path / name
                break
    for stage, folder in run.stage_dirs.items():
        result = _read(run, folder / "result.json", _json)
        if result is not None:
            run.results[stage] = result
    if "task" in run.stage_dirs:
        run.task = _read(run, run.stage_dirs["task"] / TASK_FILE, pd.read_parquet)
    if "calibration" in run.stage_dirs:
        folder = run.stage_dirs["calibration"]
        run.predictions = _read(run, folder / PREDICTIONS_FILE, pd.read_parquet)
        run.summary = _read(run, folder / SUMMARY_FILE, _csv)
    if "finetune" in run.stage_dirs:
        run.runs = _finetune_runs(run, run.stage_dirs["finetune"])
    return run


def _finetune_runs(run: RunFolder, folder: Path) -> list[FinetuneRun]:
    known = {}
    for frame in (run.summary, run.predictions):
        if frame is not None and "method" in frame.columns:
            known.update({method_slug(str(m)): str(m) for m in pd.unique(frame["method"])})
    runs = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        match = _RUN_FOLDER.match(child.name)
        if match is None:
            continue
        slug = match["slug"]
        job = FinetuneRun(child, slug, int(match["seed"]), method=known.get(slug, slug))
        job.log = _read(run, child / LOG_FILE, _csv)
        job.eval = _read(run, child / EVAL_LOG_FILE, _csv)
        runs.append(job)
    return sorted(runs, key=lambda r: (r.method, r.seed))
