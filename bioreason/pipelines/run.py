"""``bioreason run CONFIG.yaml``: the whole chain, stage by stage, into ``runs/<name>/``.

Stages (each a folder with its artifacts, ``result.json`` and ``manifest.json``, run
through :func:`bioreason.stage.run_stage`, so a stage whose manifest matches is
skipped and an interrupted one resumes):

``data``
    Simulate a screen (:class:`bioreason.data.ScreenConfig`), or read an ``.h5ad`` file
    or a dataset of the registry (``data/datasets.yaml``); hold out a share of the
    combinations whose parts were measured alone. ``data.h5ad``, ``split.npz``.
``vae``
    Fit a perturbation model (``sams_vae``, ``cpa_vae``, ``conditional_vae``,
    ``svae_plus``) on the training cells; held-out IWELBO, average-treatment-effect
    agreement on the held-out combinations, mask recovery and a posterior predictive
    check where the truth is known. ``model/``.
``task``
    Questions, p* (the fitted model's posterior predictive probability through
    :class:`bioreason.sim.OutcomeSimulator`), p_true on simulated screens, sampled
    outcomes and a split (:func:`bioreason.sim.build_task_from_config`); or the
    published Replogle task (``task.source: replogle``) or any task table
    (``task.source: PATH.parquet``), in which case there are no ``data`` / ``vae``
    stages. ``task.parquet``.
``warm_start``
    One warm-started LM per seed (:func:`bioreason.lm.warm_start`: the answer format
    with uniform answers). ``seed<S>/model``.
``finetune``
    Every method x seed, each a job in its own folder ``<method>_seed<S>`` (in
    ``--workers`` processes; a finished job is skipped on rerun, so an interrupted stage
    resumes job by job). Each job is also an independent ``bioreason finetune`` command
    for a cluster (``docs/pipelines.md``).
``calibration``
    Every job's held-out predictions scored against outcomes, p* and p_true, per method
    with 95 % bootstrap intervals over seeds and conditions, question-level figures
    (corr(q, p*), sd of q, AUROC, overconfidence per question), the theory's fixed point
    per question beside the measured end state, and the verdict on the paper's finding
    judged question by question (GRPO overconfident, the others not).
    ``predictions.parquet``, ``runs.csv``, ``summary.csv``, ``summary.md``.

Then ``report.html`` and ``report.md`` in the run folder (:func:`bioreason.report.write_report`)
and ``pipeline.json`` (config, commands, versions, per-stage status and seconds).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bioreason.pipelines.calibration_stage import calibration_stage, finding
from bioreason.pipelines.config import PipelineConfig, load_pipeline_config
from bioreason.pipelines.data_stage import data_stage
from bioreason.pipelines.lm_stages import finetune_stage, warm_start_stage
from bioreason.pipelines.preflight import RECORD_GENERATOR, preflight_pipeline, record_is_ours
from bioreason.pipelines.stages import Stage, run_stages, say, selected_stages
from bioreason.pipelines.tabular_stage import tabular_stage
from bioreason.pipelines.task_stage import task_stage
from bioreason.pipelines.vae_stage import vae_stage
from bioreason.run_layout import PIPELINE_RECORD, STAGES
from bioreason.stage import StageResult

__all__ = [
    "STAGES",
    "PipelineConfig",
    "finding",
    "load_pipeline_config",
    "pipeline_stages",
    "run_pipeline",
]


def pipeline_stages(
    config: PipelineConfig, out: Path, *, workers: int = 1, force: bool = False
) -> list[Stage]:
    """The stages ``config`` runs, in order (no ``data`` / ``vae`` for a task from a file).

    Returns
    -------
    list of Stage
    """
    if config.kind == "tabular":
        return [tabular_stage(config)]
    config = config.seeded()
    stages = []
    if config.task.from_simulator:
        stages += [data_stage(config), vae_stage(config)]
    stages += [
        task_stage(config),
        warm_start_stage(config, force),
        finetune_stage(config, workers, force),
        calibration_stage(config),
    ]
    return stages


def _versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {"python": platform.python_version()}
    for package in ("bioreason", "torch", "pyro-ppl", "transformers", "numpy", "pandas"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def run_pipeline(
    config: PipelineConfig,
    out: str | Path | None = None,
    *,
    only: str | None = None,
    from_: str | None = None,
    force: bool = False,
    workers: int = 1,
    report: bool = True,
    command: str | None = None,
) -> dict[str, StageResult]:
    """Run (or resume) a pipeline into ``out`` (default ``runs/<config.name>``).

    Parameters
    ----------
    config : PipelineConfig
    out : str or Path, optional
        The run folder.
    only, from_ : str, optional
        Run one stage (``--only``) or a stage and the ones after it (``--from``); the
        earlier stages must be complete and up to date.
    force : bool, default False
        Let the stages that run, the run record and the report replace files bioreason
        did not write (or that changed since); an up-to-date stage is still skipped
        (delete its folder to redo it). Without it such a file stops the run before its
        first stage (:func:`~bioreason.pipelines.preflight.preflight_pipeline`, which
        also checks the inputs, the base model and the devices up front).
    workers : int, default 1
        Parallel processes of the ``finetune`` stage's jobs.
    report : bool, default True
        Write ``report.html`` / ``report.md`` at the end.
    command : str, optional
        The command line recorded in ``pipeline.json`` (default ``sys.argv``).

    Returns
    -------
    dict of str to StageResult
        Every stage's folder and result, by name, in order.

    Raises
    ------
    FileExistsError
        A file the run would replace that bioreason did not write (``pipeline.json``,
        a stage's or a job's file, ``report.html``, a report figure), and ``force`` is
        false; raised before the first stage.
    FileNotFoundError, ValueError
        A missing input, a base model that cannot be found, a device that is not there,
        a bad ``only`` / ``from_``: before the first stage.
    """
    from bioreason._io import atomic_write_text, check_output_folder

    out = Path(out) if out is not None else Path("runs") / config.name
    check_output_folder(out)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    stages = pipeline_stages(config, out, workers=workers, force=force)
    start, stop = selected_stages(stages, only, from_)
    # everything that can be checked without the work, before the first stage
    preflight_pipeline(
        config,
        out,
        stages,
        run=[stage.name for stage in stages[start:stop]],
        force=force,
        report=report,
    )
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / PIPELINE_RECORD
    record: dict[str, Any] = {}
    if record_is_ours(record_path):  # else (--force) a new record replaces the file
        record = json.loads(record_path.read_text())
    commands = list(record.get("commands", []))
    commands.append(command or " ".join(["bioreason", *sys.argv[1:]]))
    status = dict(record.get("stages", {}))
    for stage in stages:
        status.setdefault(stage.name, {"status": "not run", "seconds": None})
    record.update(
        {
            "generator": RECORD_GENERATOR,
            "name": config.name,
            "config": json.loads(json.dumps(config.to_dict(), default=str)),
            "commands": commands,
            "versions": _versions(),
            "stages": status,
            "started": _now(),
            "finished": None,
        }
    )

    def save() -> None:
        atomic_write_text(record_path, json.dumps(record, indent=2) + "\n")

    save()
    for stage in stages:
        inner = stage.compute

        def timed_compute(path, upstream, inner=inner, name=stage.name):
            status[name] = {"status": "running", "seconds": None}
            save()
            start = time.perf_counter()
            try:
                result = inner(path, upstream)
            except BaseException:
                status[name] = {"status": "failed", "seconds": time.perf_counter() - start}
                save()
                raise
            status[name] = {"status": "done", "seconds": time.perf_counter() - start}
            save()
            return result

        stage.compute = timed_compute
    results = run_stages(stages, out, only=only, from_=from_, force=force, log=say)
    for name, result in results.items():
        if result.skipped and status.get(name, {}).get("status") != "done":
            status[name] = {"status": "done", "seconds": None}
    record["finished"] = _now()
    save()
    if report and "calibration" in results and only in (None, "calibration"):
        _write_report(out, force)
    return results


def _write_report(out: Path, force: bool) -> None:
    try:
        from bioreason.report import write_report
    except ImportError:  # pragma: no cover - the report package ships with bioreason
        return
    files = write_report(out, force=force)
    say(f"[report] {files.html}")
    for problem in files.problems:
        say(f"[report] warning: left out, malformed or unreadable: {problem}")
