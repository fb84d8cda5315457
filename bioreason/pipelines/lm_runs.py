"""Language-model calibration runs: one fine-tuning job per method x seed from a shared
warm start, scored on held-out questions, and the per-method summary with bootstrap
intervals. Used by the pipeline's ``warm_start`` / ``finetune`` / ``calibration`` stages
(:mod:`bioreason.pipelines.run`) and by ``benchmarks/lm_calibration.py``.

A job is the fine-tuning job of ``bioreason finetune``
(:func:`bioreason.rl.lm.run_finetune`), described by a plain dict so that it crosses
process boundaries: ``task`` (parquet path), ``folder`` (the job's folder), ``config``
(a :class:`~bioreason.rl.lm.FinetuneConfig` or its ``to_dict()``: the model is the
seed's warm start folder), and optionally ``force`` and ``progress``. :func:`run_jobs`
runs jobs in worker processes; :func:`warm_start_folder` writes a seed's warm start
(through the stage helper, :func:`bioreason.stage.run_stage`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioreason.run_layout import MODEL_DIR, judged_probability

__all__ = [
    "METHODS",
    "RUN_COLUMNS",
    "SUMMARY_METRICS",
    "job_config",
    "markdown_table",
    "prepare_job_folder",
    "read_job_row",
    "run_job",
    "run_jobs",
    "summarize_methods",
    "warm_start_folder",
]

METHODS = (
    "grpo",
    "grpo_no_std",
    "grpo_batch_std",
    "rloo",
    "reinforce",
    "ppo",
    "seed_grpo",
    "seed_grpo:base=grpo",
    "h_target:log",
)
#: columns of ``runs.csv`` besides the metrics of ``bioreason.calibration.summarize``
RUN_COLUMNS = (
    "method",
    "critic",
    "seed",
    "steps",
    "n_test",
    "q_source",
    "invalid_rate",
    "drift_grpo_predicted_start",
    "drift_method_predicted_start",
    "drift_measured_start",
    "drift_grpo_predicted",
    "drift_method_predicted",
    "drift_measured",
    "reward_mean_last",
    "train_seconds",
    "seconds_per_step",
)
#: headline metrics of ``summary.csv`` (each with ``_low`` / ``_high`` and ``_seed_sd``)
SUMMARY_METRICS = (
    "ece",
    "adaptive_ece",
    "brier",
    "log_loss",
    "mae_p_star",
    "mae_p_true",
    "overconfidence",
    "overconfidence_p_true",
)


def job_config(job: dict[str, Any]) -> Any:
    """The :class:`~bioreason.rl.lm.FinetuneConfig` of a job dict: its ``config`` (a
    FinetuneConfig, or a mapping of its fields).

    Returns
    -------
    FinetuneConfig
    """
    from bioreason.rl.lm import FinetuneConfig

    config = job["config"]
    return config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (:func:`bioreason.rl.lm.run_finetune`) into its folder.

    Parameters
    ----------
    job : dict
        ``task``, ``folder``, ``config`` (see :func:`job_config`), and optionally
        ``force`` (replace files the job did not write) and ``progress``.

    Returns
    -------
    dict
        The job's ``metrics.json`` (one row of ``runs.csv``).
    """
    from bioreason.rl.lm import run_finetune

    return run_finetune(
        job["task"],
        job["folder"],
        job_config(job),
        force=job.get("force", False),
        progress=job.get("progress", False),
        log=None,
    )


def prepare_job_folder(folder: Path, job: dict[str, Any], force: bool) -> bool:
    """True when the job is finished and up to date in ``folder`` (skip it); otherwise
    False, and the job (``job["force"]``, set here) replaces files it did not write only
    when ``force``.

    Returns
    -------
    bool

    Raises
    ------
    FileExistsError
        ``folder`` holds files but no manifest (bioreason did not write them), and
        ``force`` is false: refused before any job runs.
    """
    from bioreason.rl.lm import completed_finetune
    from bioreason.stage import preflight_stage

    if completed_finetune(job["task"], folder, job_config(job)) is not None:
        return True
    preflight_stage(folder, force=force)
    job["force"] = force
    return False


# ----------------------------------------------------------------------------- summary


def _metric_functions(n_bins: int = 10) -> dict[str, tuple[Callable, str]]:
    """Summary metric -> (function of (q, y, reference), reference column)."""
    from bioreason.calibration import (
        adaptive_calibration_error,
        brier_loss,
        expected_calibration_error,
        log_loss,
        mean_absolute_error_to_reference,
        overconfidence,
    )

    return {
        "ece": (lambda q, y, r: expected_calibration_error(y, q, n_bins=n_bins), "outcome"),
        "adaptive_ece": (
            lambda q, y, r: adaptive_calibration_error(y, q, n_bins=n_bins),
            "outcome",
        ),
        "brier": (lambda q, y, r: brier_loss(y, q), "outcome"),
        "log_loss": (lambda q, y, r: log_loss(y, q), "outcome"),
        "mae_p_star": (lambda q, y, r: mean_absolute_error_to_reference(q, r), "p_star"),
        "mae_p_true": (lambda q, y, r: mean_absolute_error_to_reference(q, r), "p_true"),
        "overconfidence": (lambda q, y, r: overconfidence(q, r), "p_star"),
        "overconfidence_p_true": (lambda q, y, r: overconfidence(q, r), "p_true"),
    }


def summarize_methods(
    predictions: pd.DataFrame, runs: pd.DataFrame, *, n_boot: int, seed: int = 0
) -> pd.DataFrame:
    """One row per method: metrics averaged over seeds with 95 % bootstrap intervals.

    A replicate resamples the test questions once and averages the metric over the
    method's seeds on that resample, so the interval is over questions with seeds
    pooled; ``<metric>_seed_sd`` is the spread across seeds.

    Parameters
    ----------
    predictions : pandas.DataFrame
        Every run's test predictions (``method``, ``seed``, ``question_id``,
        ``q_exact`` / ``q_sampled``, ``outcome``, ``p_star``, ``p_true``).
    runs : pandas.DataFrame
        ``runs.csv`` (for the drift columns and timings).
    n_boot : int
        Bootstrap replicates (0: no intervals).

    Returns
    -------
    pandas.DataFrame
        ``method``, ``n_seeds``, ``n_test`` and for each of :data:`SUMMARY_METRICS`
        the value, ``_low``, ``_high``, ``_seed_sd`` (NaN when its reference is
        unknown); the seed means of the drift columns and ``seconds_per_step``.
    """
    from bioreason.calibration import bootstrap_ci

    functions = _metric_functions()
    rows = []
    for method in dict.fromkeys(runs["method"]):
        frame = pd.concat(
            [
                part.assign(q=judged_probability(part)[0])
                for _, part in predictions[predictions["method"] == method].groupby("seed")
            ]
        )
        wide = frame.pivot(index="question_id", columns="seed", values="q")
        first = frame.drop_duplicates("question_id").set_index("question_id").loc[wide.index]
        wide = wide.dropna()
        first = first.loc[wide.index]
        outcome = first["outcome"].to_numpy(dtype=float)
        keep = np.isin(outcome, (0.0, 1.0))
        q = wide.to_numpy(dtype=float)[keep]
        row: dict[str, Any] = {"method": method, "n_seeds": q.shape[1], "n_test": int(keep.sum())}
        for name, (fn, column) in functions.items():
            reference = (
                outcome[keep] if column == "outcome" else first[column].to_numpy(dtype=float)[keep]
            )
            if len(q) == 0 or not np.isfinite(reference).all():
                row.update(dict.fromkeys((name, f"{name}_low", f"{name}_high"), math.nan))
                row[f"{name}_seed_sd"] = math.nan
                continue
            y = outcome[keep]

            def pooled(q_, y_, r_, fn=fn):
                return float(np.mean([fn(q_[:, s], y_, r_) for s in range(q_.shape[1])]))

            per_seed = [fn(q[:, s], y, reference) for s in range(q.shape[1])]
            if n_boot:
                value, low, high = bootstrap_ci(pooled, q, y, reference, n_boot=n_boot, seed=seed)
            else:
                value, low, high = float(np.mean(per_seed)), math.nan, math.nan
            row.update({name: value, f"{name}_low": low, f"{name}_high": high})
            row[f"{name}_seed_sd"] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
        mine = runs[runs["method"] == method]
        for column in (
            "drift_grpo_predicted_start",
            "drift_method_predicted",
            "drift_grpo_predicted",
            "drift_measured",
            "invalid_rate",
            "seconds_per_step",
        ):
            row[column] = float(mine[column].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(row: pd.Series, name: str) -> str:
    value = row[name]
    if not np.isfinite(value):
        return "n/a"
    low, high = row.get(f"{name}_low", math.nan), row.get(f"{name}_high", math.nan)
    if np.isfinite(low) and np.isfinite(high):
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return f"{value:.3f}"


def _number(value: float, digits: int = 3) -> str:
    return f"{value:+.{digits}f}" if np.isfinite(value) else "n/a"


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a markdown table (method, seeds, metrics [95 % CI], drift).

    Returns
    -------
    str
        One header, one separator and one line per method.
    """
    header = [
        "method",
        "seeds",
        "ECE vs y [CI]",
        "mean \\|q - p*\\| [CI]",
        "mean \\|q - p_true\\| [CI]",
        "overconfidence vs p* [CI]",
        "Brier [CI]",
        "log loss [CI]",
        "outward drift at the end: predicted GRPO / predicted method / measured",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for _, row in summary.iterrows():
        oc = "overconfidence" if np.isfinite(row["overconfidence"]) else "overconfidence_p_true"
        drift = " / ".join(
            _number(row[column])
            for column in ("drift_grpo_predicted", "drift_method_predicted", "drift_measured")
        )
        cells = [
            str(row["method"]),
            str(int(row["n_seeds"])),
            _cell(row, "ece"),
            _cell(row, "mae_p_star"),
            _cell(row, "mae_p_true"),
            _cell(row, oc)
            + ("" if oc == "overconfidence" or not np.isfinite(row[oc]) else " (vs p_true)"),
            _cell(row, "brier"),
            _cell(row, "log_loss"),
            drift,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_job_row(path: Path) -> dict[str, Any]:
    """A finished job's ``metrics.json`` as a row (``None`` read back as NaN).

    Returns
    -------
    dict of str to Any
    """
    row = json.loads(path.read_text())
    return {k: (math.nan if v is None else v) for k, v in row.items()}


# ----------------------------------------------------------------------------- jobs


def warm_start_folder(
    task_path: str | Path,
    folder: str | Path,
    seed: int,
    *,
    model: str = "tiny",
    steps: int = 30,
    lr: float = 1e-3,
    device: str = "cpu",
    force: bool = False,
    trainable: str = "answer_rows",
    open_answer: bool = False,
) -> Path:
    """Warm-start a predictor on the task's train prompts and save it to
    ``folder/model``, through the stage helper (:func:`bioreason.stage.run_stage`:
    skipped when ``folder``'s manifest matches these settings and the task).

    ``model="tiny"`` builds the default small LM with a word-level tokenizer over every
    prompt of the task; any other value is loaded with :func:`bioreason.lm.load_predictor`
    (both by :func:`bioreason.rl.lm.job.prepare_predictor`, as a fine-tuning job's own
    warm start). The warm start (:func:`bioreason.lm.warm_start`) teaches the answer
    format with uniform answers, ``steps`` supervised steps at ``lr`` (0: none), training
    ``trainable`` (``"answer_rows"``: the rows of the tokens the model writes), on prompts
    that end with ``<answer>`` when ``open_answer``. The folder's ``result.json`` records
    the prompt spread at the answer position before and after it.

    Returns
    -------
    Path
        The saved predictor folder (``load_predictor`` reads it).
    """
    from bioreason.stage import run_stage

    folder = Path(folder)

    def compute(stage_dir: Path) -> dict[str, Any]:
        from bioreason.data.tasks import load_task
        from bioreason.rl.lm.job import prepare_predictor

        task = load_task(task_path)
        report: dict[str, float] = {}
        predictor = prepare_predictor(
            model,
            task,
            device=device,
            seed=seed,
            warm_start_steps=steps,
            warm_start_lr=lr,
            warm_start_trainable=trainable,
            open_answer=open_answer,
            progress=False,
            report=report,
        )
        predictor.save(stage_dir / MODEL_DIR, overwrite=True)
        return {"model": MODEL_DIR, "steps": steps, **report}

    run_stage(
        folder,
        {
            "model": model,
            "steps": steps,
            "lr": lr,
            "trainable": trainable,
            "open_answer": open_answer,
        },
        {"task": Path(task_path)},
        compute,
        seed=seed,
        force=force,
        outputs=[MODEL_DIR],
        log=None,
    )
    return folder / MODEL_DIR


def run_jobs(
    jobs: Sequence[dict[str, Any]],
    *,
    workers: int = 1,
    finished: Callable[[dict[str, Any]], Any] | None = None,
) -> list[dict[str, Any]]:
    """Run jobs (:func:`run_job`), in ``workers`` spawned processes when above 1.

    Parameters
    ----------
    jobs : sequence of dict
        Each job (module docstring); each runs alone in its folder.
    workers : int, default 1
        Parallel processes on this machine. Give each job's config ``threads`` so that
        ``workers * threads`` does not exceed the cores.
    finished : callable, optional
        Called with each job's row as it finishes (in completion order).

    Returns
    -------
    list of dict
        The jobs' rows, in the order of ``jobs``.
    """
    rows: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            futures = {pool.submit(run_job, dict(job)): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                row = future.result()
                rows[futures[future]] = row
                if finished is not None:
                    finished(row)
    else:
        for i, job in enumerate(jobs):
            rows[i] = run_job(dict(job))
            if finished is not None:
                finished(rows[i])
    return [row for row in rows if row is not None]
