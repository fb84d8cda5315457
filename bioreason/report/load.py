"""Reading a pipeline run folder for the report, tolerant of missing or partial stages.

Every reader returns ``None`` for a file that is not there, and records a file that is
there but cannot be read, or that lacks the columns its stage writes, in
:attr:`RunFolder.problems` (the report lists them, ``bioreason report`` exits with status
1) instead of raising: a report of a run that stopped half-way is still worth having.

Two kinds of folder are read: a run of ``bioreason run`` / ``bioreason demo`` (its stage
folders), and the synthetic calibration experiment with a tabular policy, either the
folder of ``bioreason synthetic-calibration --out DIR`` or the ``tabular`` stage of a
``kind: tabular`` pipeline run (:attr:`RunFolder.tabular`).
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
        Files that exist but could not be read, or lack the columns their stage writes,
        with the reason.
    kind : {"pipeline", "synthetic_calibration"}
        ``pipeline``: a folder of ``bioreason run`` (``pipeline.json`` is its record);
        ``synthetic_calibration``: a folder of ``bioreason synthetic-calibration``
        (``pipeline.json`` is that experiment's config).
    tabular_dir : Path or None
        The synthetic calibration's folder (``metrics.csv``, ``<run>.png``,
        ``runs/<run>/``): the folder itself, or ``tabular/runs`` of a ``kind: tabular``
        pipeline run; None for an LM pipeline.
    tabular : DataFrame or None
        Its ``metrics.csv``, one row per run.
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
    kind: str = "pipeline"
    tabular_dir: Path | None = None
    tabular: pd.DataFrame | None = None

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


def _table(reader, columns: tuple[str, ...], remedy: str):
    """A reader that also requires ``columns``: a file without them is malformed (the
    message ends with ``remedy``)."""

    def read(path: Path) -> pd.DataFrame:
        frame = reader(path)
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            found = ", ".join(map(str, frame.columns[:8])) or "none"
            raise ValueError(
                f"malformed: no column {', '.join(map(repr, missing))} (its columns: {found}); "
                f"{remedy}"
            )
        return frame

    return read


def _rerun(stage: str) -> str:
    return (
        f"the {stage} stage writes it: delete {stage}/ and rerun the pipeline "
        f"(bioreason run CONFIG --out RUN --from {stage})"
    )


def _is_synthetic_calibration(record: dict[str, Any]) -> bool:
    """A ``pipeline.json`` that is the config of ``bioreason synthetic-calibration``,
    not the record of ``bioreason run`` (which has ``stages`` and ``commands``)."""
    return (
        "stages" not in record
        and "commands" not in record
        and {"methods", "n_questions"} <= set(record)
    )


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
    if _is_synthetic_calibration(run.pipeline):
        run.kind = "synthetic_calibration"
        _read_tabular(run, path)
        return run
    if (path / "tabular").is_dir() and "tabular" in (run.pipeline.get("stages") or {}):
        _read_tabular(run, path / "tabular" / "runs")
        run.stage_dirs["tabular"] = path / "tabular"
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
        task = _table(pd.read_parquet, ("question_id", "p_star"), _rerun("task"))
        run.task = _read(run, run.stage_dirs["task"] / TASK_FILE, task)
    if "calibration" in run.stage_dirs:
        folder = run.stage_dirs["calibration"]
        remedy = _rerun("calibration")
        predictions = _table(pd.read_parquet, ("method", "question_id", "q_sampled"), remedy)
        run.predictions = _read(run, folder / PREDICTIONS_FILE, predictions)
        run.summary = _read(run, folder / SUMMARY_FILE, _table(_csv, ("method",), remedy))
    if "finetune" in run.stage_dirs:
        run.runs = _finetune_runs(run, run.stage_dirs["finetune"])
    return run


def _read_tabular(run: RunFolder, folder: Path) -> None:
    run.tabular_dir = folder
    remedy = "rerun the synthetic calibration (it rewrites metrics.csv from its runs)"
    run.tabular = _read(run, folder / "metrics.csv", _table(_csv, ("method", "ece"), remedy))


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
