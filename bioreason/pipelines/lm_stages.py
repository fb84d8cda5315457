"""The LM stages. ``warm_start``: one warm-started LM per seed
(:func:`bioreason.lm.warm_start`: the answer format with uniform answers), in
``seed<S>/model``. ``finetune``: every method x seed, each a job in its own folder
``<method>_seed<S>`` (in ``--workers`` processes; a finished job is skipped on rerun, so an
interrupted stage resumes job by job); each job is also an independent
``bioreason finetune`` command for a cluster (``docs/pipelines.md``)."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bioreason.pipelines.config import FinetuneStageConfig, PipelineConfig
from bioreason.pipelines.stages import Stage, say
from bioreason.run_layout import METRICS_FILE, MODEL_DIR, TASK_FILE, job_folder_name
from bioreason.stage import RESULT, StageResult

__all__ = ["finetune_stage", "warm_start_stage"]


def warm_start_stage(config: PipelineConfig, force: bool) -> Stage:
    """The ``warm_start`` stage: one warm-started LM per seed.

    Returns
    -------
    Stage
    """
    lm = config.lm

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason.pipelines.lm_runs import warm_start_folder

        task_path = upstream["task"].path / TASK_FILE
        start = time.perf_counter()
        folders, spreads = {}, {}
        for seed in config.finetune.seeds:
            say(f"[warm_start] seed {seed}: {lm.warm_start_steps} steps of uniform answers")
            folders[str(seed)] = str(
                warm_start_folder(
                    task_path,
                    stage_dir / f"seed{seed}",
                    seed,
                    model=lm.model,
                    steps=lm.warm_start_steps,
                    lr=lm.warm_start_lr,
                    device=config.finetune.rl.device,
                    force=force,
                    trainable=lm.warm_start_trainable,
                    open_answer=config.finetune.rl.open_answer,
                ).relative_to(stage_dir)
            )
            # the prompt spread at the answer position before and after (its folder's result)
            seed_result = json.loads((stage_dir / f"seed{seed}" / RESULT).read_text())
            spreads[str(seed)] = {
                when: seed_result.get(f"prompt_spread_{when}") for when in ("before", "after")
            }
        return {
            "models": folders,
            "prompt_spread": spreads,
            "seconds": time.perf_counter() - start,
            **dataclasses.asdict(lm),
        }

    return Stage(
        "warm_start",
        compute,
        config={
            "lm": lm,
            "seeds": config.finetune.seeds,
            "device": config.finetune.rl.device,
            "open_answer": config.finetune.rl.open_answer,
        },
        inputs=lambda up: {"task": up["task"].path / TASK_FILE},
        outputs=[f"seed{seed}" for seed in config.finetune.seeds],
    )


def _jobs(config: PipelineConfig, stage_dir: Path, task_path: Path, warm_dir: Path) -> list[dict]:
    """One job per seed x method: the task, the job's folder and its
    :class:`~bioreason.rl.lm.FinetuneConfig` (the seed's warm start, ``finetune.rl`` with
    the job's method and seed)."""
    from bioreason.rl.lm import FinetuneConfig

    tune = config.finetune
    jobs = []
    for seed in tune.seeds:
        for method in tune.methods:
            rl = dataclasses.replace(tune.rl, method=method, seed=seed)
            job_config = FinetuneConfig(
                model=str(warm_dir / f"seed{seed}" / MODEL_DIR),
                n_boot=0,
                threads=tune.threads,
                rl=rl,
            )
            folder = stage_dir / job_folder_name(method, seed)
            jobs.append({"task": str(task_path), "folder": str(folder), "config": job_config})
    return jobs


def finetune_stage(config: PipelineConfig, workers: int, force: bool) -> Stage:
    """The ``finetune`` stage: every method x seed, each a job in its own folder.

    Returns
    -------
    Stage
    """
    tune = config.finetune

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason.pipelines.lm_runs import prepare_job_folder, read_job_row, run_jobs

        jobs = _jobs(
            config, stage_dir, upstream["task"].path / TASK_FILE, upstream["warm_start"].path
        )
        todo = []
        for job in jobs:
            rl = job["config"].rl
            if prepare_job_folder(Path(job["folder"]), job, force):
                say(f"[finetune] up to date: {rl.method} seed {rl.seed}")
            else:
                todo.append(job)
        start = time.perf_counter()
        done = [len(jobs) - len(todo)]

        def finished(row: dict[str, Any]) -> None:
            done[0] += 1
            say(
                f"[finetune] {done[0]}/{len(jobs)} {row['method']} seed {row['seed']}: "
                f"ECE {row['ece']:.3f}, |q - p*| {row.get('mae_to_reference', math.nan):.3f}, "
                f"{row['seconds_per_step']:.3f} s/step"
            )

        if todo:
            say(
                f"[finetune] {len(todo)} jobs ({len(tune.methods)} methods x "
                f"{len(tune.seeds)} seeds, {tune.rl.steps} steps each) in {workers} worker(s)"
            )
        run_jobs(todo, workers=workers, finished=finished)
        rows = [read_job_row(Path(job["folder"]) / METRICS_FILE) for job in jobs]
        return {
            "jobs": [
                {"method": r["method"], "seed": r["seed"], "folder": Path(j["folder"]).name}
                for r, j in zip(rows, jobs)
            ],
            "seconds": time.perf_counter() - start,
            "workers": workers,
        }

    return Stage(
        "finetune",
        compute,
        config={"finetune": _speed_free(tune)},
        inputs=lambda up: {
            "task": up["task"].path / TASK_FILE,
            "warm_start": up["warm_start"].path / RESULT,
        },
    )


def _speed_free(tune: FinetuneStageConfig) -> FinetuneStageConfig:
    """The finetune settings that change results (the stage's manifest config): ``tune``
    with threads and compilation at their defaults, since they change only the speed. It
    stays a dataclass, so a setting added to bioreason since a run finished matches that
    run at its default (:func:`bioreason.stage.config_differences`)."""
    defaults = type(tune)()
    return dataclasses.replace(
        tune,
        threads=defaults.threads,
        rl=dataclasses.replace(tune.rl, torch_compile=defaults.rl.torch_compile),
    )
