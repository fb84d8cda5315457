"""Language-model calibration runs: one RL fine-tuning job per method x seed from a shared
warm start, scored on held-out questions, and the per-method summary with bootstrap
intervals. Used by the pipeline's ``warm_start`` / ``finetune`` / ``calibration`` stages
(:mod:`bioreason.pipelines.run`) and by ``benchmarks/lm_calibration.py``.

A job is a plain dict (so it crosses process boundaries): ``method``, ``seed``, ``steps``,
``group_size``, ``questions_per_step``, ``lr``, ``kl_coef``, ``entropy_coef``,
``eval_samples``, ``n_boot``, ``device``, ``threads``, ``torch_compile`` (optional,
speed only), ``progress``, ``outcomes``
(``"live"``: a new Bernoulli(p*) outcome at every rollout; ``"table"``, the default:
the task's recorded outcome every time), ``task`` (parquet
path), ``warm`` (predictor folder), ``folder`` (the job's folder). :func:`run_job` writes
``predictions.parquet``, ``log.csv``, ``eval.csv``, ``metrics.json`` and a manifest into
the folder; :func:`prepare_job_folder` says whether a finished job can be skipped.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bioreason.run_layout import judged_probability

__all__ = [
    "METHODS",
    "RUN_COLUMNS",
    "SUMMARY_METRICS",
    "markdown_table",
    "prepare_job_folder",
    "read_job_row",
    "run_job",
    "run_jobs",
    "score_predictions",
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


def _quiet_transformers() -> None:
    """No tqdm bars from transformers' save/load (the pipeline prints its own progress)."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


def _run_record(job: dict[str, Any]) -> dict[str, Any]:
    """The settings that define a run (its manifest's config)."""
    keys = ("method", "steps", "group_size", "questions_per_step", "lr", "eval_samples", "n_boot")
    record = {key: job[key] for key in keys}
    # regularisers enter the record only when used (runs without them keep their manifest)
    record.update({key: job[key] for key in ("kl_coef", "entropy_coef") if job.get(key)})
    # live outcomes (the default of the pipeline) enter the record; older runs had none
    if job.get("outcomes", "table") != "table":
        record["outcomes"] = job["outcomes"]
    return record


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one method x seed from the seed's warm start and score it on the test split.

    Parameters
    ----------
    job : dict
        ``method``, ``seed``, ``steps``, ``group_size``, ``questions_per_step``, ``lr``,
        ``eval_samples``, ``n_boot``, ``device``, ``threads``, ``progress``, ``task``
        (parquet path), ``warm`` (predictor folder), ``folder`` (the run folder).

    Returns
    -------
    dict
        One row of ``runs.csv`` (also written to ``folder/metrics.json``).
    """
    from bioreason._io import atomic_write_text, json_safe
    from bioreason.data.tasks import load_task
    from bioreason.lm import load_predictor
    from bioreason.rl import LMRLConfig, LMTrainer
    from bioreason.stage import write_manifest

    torch.set_num_threads(job["threads"])
    if not job.get("progress"):
        _quiet_transformers()
    folder = Path(job["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    inputs = {"task": job["task"], "warm": job["warm"]}
    outputs = [folder / name for name in ("predictions.parquet", "log.csv", "eval.csv")]
    outputs.append(folder / "metrics.json")
    record = _run_record(job)
    write_manifest(
        folder, config=record, seed=job["seed"], inputs=inputs, outputs=outputs, complete=False
    )
    task = load_task(job["task"])
    predictor = load_predictor(job["warm"], device=job["device"])
    config = LMRLConfig(
        method=job["method"],
        seed=job["seed"],
        steps=job["steps"],
        group_size=job["group_size"],
        questions_per_step=job["questions_per_step"],
        lr=job["lr"],
        kl_coef=job.get("kl_coef", 0.0),
        entropy_coef=job.get("entropy_coef", 0.0),
        outcomes=job.get("outcomes", "table"),
        train_split="train",
        eval_split="test",
        eval_every=job["steps"],  # evaluate once, at the last step
        eval_samples=job["eval_samples"],
        log_every=max(1, job["steps"] // 20),
        checkpoint_every=job["steps"],
        device=job["device"],
        torch_compile=job.get("torch_compile", False),
    )
    trainer = LMTrainer.from_predictor(predictor, task, config)
    start_row = trainer.evaluate()  # the warm start: drift predicted before RL
    start = time.perf_counter()
    trainer.train(
        log_path=folder / "log.csv",
        eval_log_path=folder / "eval.csv",
        predictions_path=folder / "predictions.parquet",
        progress=job["progress"],
        description=job["method"],
    )
    seconds = time.perf_counter() - start
    final = trainer.eval_rows_log[-1]
    predictions = pd.read_parquet(folder / "predictions.parquet")
    log = pd.read_csv(folder / "log.csv")
    last = log["reward_mean"].dropna()
    row: dict[str, Any] = {
        "method": job["method"],
        "seed": job["seed"],
        "steps": trainer.step,
        "n_test": len(predictions),
        "q_source": final["q_source"],
        "invalid_rate": final["invalid_rate"],
        "drift_grpo_predicted_start": start_row["grpo_predicted_outward"],
        "drift_method_predicted_start": start_row["method_predicted_outward"],
        "drift_measured_start": start_row["measured_outward"],
        "drift_grpo_predicted": final["grpo_predicted_outward"],
        "drift_method_predicted": final["method_predicted_outward"],
        "drift_measured": final["measured_outward"],
        "reward_mean_last": float(last.iloc[-1]) if len(last) else math.nan,
        "train_seconds": seconds,
        # the logged steps' step_time (train_seconds also holds the final evaluation)
        "seconds_per_step": float(log["step_time"].dropna().mean()),
    }
    row.update(score_predictions(predictions, task, n_boot=job["n_boot"], seed=job["seed"]))
    atomic_write_text(folder / "metrics.json", json.dumps(json_safe(row), indent=2) + "\n")
    write_manifest(folder, config=record, seed=job["seed"], inputs=inputs, outputs=outputs)
    return row


def _published(predictions: pd.DataFrame, task: pd.DataFrame) -> np.ndarray:
    if "reference_probability" not in task:
        return np.full(len(predictions), np.nan)
    lookup = task.set_index(task["question_id"].astype(str))["reference_probability"]
    return predictions["question_id"].astype(str).map(lookup).to_numpy(dtype=float)


def score_predictions(
    predictions: pd.DataFrame, task: pd.DataFrame, *, n_boot: int, seed: int
) -> dict[str, float]:
    """Every calibration metric of one run's test predictions, with bootstrap bounds.

    Parameters
    ----------
    predictions : pandas.DataFrame
        :data:`bioreason.run_layout.PREDICTION_COLUMNS`, one row per test question.
    task : pandas.DataFrame
        The task table (its ``reference_probability``, when finite, is scored as the
        reference ``published``).
    n_boot, seed
        Bootstrap replicates over questions (0: no bounds) and their seed.

    Returns
    -------
    dict of str to float
        :func:`bioreason.calibration.summarize` against the outcomes, p* (no suffix),
        p_true (``_p_true``) and the published probability (``_published``) where known
        for every scored question; ``n_scored``.
    """
    from bioreason.calibration import summarize

    q = judged_probability(predictions)[0]
    outcome = predictions["outcome"].to_numpy(dtype=float)
    keep = np.isfinite(q) & np.isin(outcome, (0.0, 1.0))
    if not keep.any():
        raise ValueError("no test question has both a prediction and a 0/1 outcome")
    references = {
        "p_star": predictions["p_star"].to_numpy(dtype=float),
        "p_true": predictions["p_true"].to_numpy(dtype=float),
        "published": _published(predictions, task),
    }
    known = {k: v[keep] for k, v in references.items() if np.isfinite(v[keep]).all()}
    result = summarize(
        outcome[keep],
        q[keep],
        p_star=known.pop("p_star", None),
        references=known or None,
        n_boot=n_boot,
        seed=seed,
    )
    result["n_scored"] = int(keep.sum())
    return result


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


# ----------------------------------------------------------------------------- main


def prepare_job_folder(folder: Path, job: dict[str, Any], force: bool) -> bool:
    """True when the run is finished with these settings (skip it); otherwise make the
    folder ready for a new run (refusing files bioreason did not write)."""
    from bioreason.stage import MANIFEST, check_replaceable, manifest_matches

    inputs = {"task": job["task"], "warm": job["warm"]}
    if (folder / "metrics.json").exists() and manifest_matches(
        folder, config=_run_record(job), seed=job["seed"], inputs=inputs
    ):
        return True
    if (folder / "metrics.json").exists() and not force:
        raise FileExistsError(
            f"{folder} holds a finished run with other settings or inputs (task, warm "
            "start); choose another --out or pass --force to replace it"
        )
    if folder.exists() and any(folder.iterdir()):
        names = ("predictions.parquet", "log.csv", "eval.csv", "metrics.json")
        for name in names:
            check_replaceable(folder / name, force=force)
        # tb/: the training loop's TensorBoard events (when tensorboard is installed)
        strangers = sorted(
            p.name for p in folder.iterdir() if p.name not in (*names, MANIFEST, "tb")
        )
        if strangers and not force:
            raise FileExistsError(
                f"{folder} holds files bioreason did not write ({strangers}); choose "
                "another --out or pass --force"
            )
        shutil.rmtree(folder)
    return False


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
) -> Path:
    """Warm-start a predictor on the task's train prompts and save it to
    ``folder/model`` (skipped when ``folder``'s manifest matches these settings).

    ``model="tiny"`` builds the default small LM with a word-level tokenizer over every
    prompt of the task; any other value is loaded with :func:`bioreason.lm.load_predictor`.
    The warm start (:func:`bioreason.lm.warm_start`) teaches the answer format with
    uniform answers, ``steps`` supervised steps at ``lr`` (0: none).

    Returns
    -------
    Path
        The saved predictor folder (``load_predictor`` reads it).
    """
    from bioreason.data.tasks import load_task
    from bioreason.lm import load_predictor, warm_start
    from bioreason.stage import check_replaceable, manifest_matches, write_manifest

    folder = Path(folder)
    model_dir = folder / "model"
    config = {"model": model, "steps": steps, "lr": lr}
    inputs = {"task": Path(task_path)}
    if model_dir.exists() and manifest_matches(folder, config=config, seed=seed, inputs=inputs):
        return model_dir
    check_replaceable(model_dir, force=force)
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(
        folder, config=config, seed=seed, inputs=inputs, outputs=[model_dir], complete=False
    )
    _quiet_transformers()
    task = load_task(task_path)
    options = {"texts": task["prompt"].astype(str)} if model == "tiny" else {}
    predictor = load_predictor(model, device=device, seed=seed, **options)
    train_prompts = task.loc[task["split"].astype(str) == "train", "prompt"].astype(str)
    if steps:
        warm_start(
            predictor,
            None,
            [predictor.format_prompt(p) for p in train_prompts],
            steps=steps,
            lr=lr,
            seed=seed,
        )
    predictor.save(model_dir, overwrite=True)
    write_manifest(folder, config=config, seed=seed, inputs=inputs, outputs=[model_dir])
    return model_dir


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
        Each job's settings (module docstring); each runs alone in its folder.
    workers : int, default 1
        Parallel processes on this machine. Give each job ``threads`` so that
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
