"""Calibration of the default small LM after RL fine-tuning, per method (issue 11, Quality).

For each method x seed: the default LM (``bioreason.lm.load_predictor("tiny")``, a
word-level tokenizer over the task's prompts) is warm-started with uniform answers
(once per seed, saved under ``OUT/warm/seed<S>``; every method of a seed starts from
those same weights), trained ``--steps`` RL steps on the task's ``train`` split
(:class:`bioreason.rl.LMTrainer`, the method as its estimator), and scored on the
``test`` split with ``q_exact`` (the mean of the answer distribution at the answer
position; single-token answers, so no sampling noise).

Tasks (``--task``):

- ``synthetic`` (default): the demo screen (``bioreason.pipelines.demo.DEMO_SCREEN``)
  with 25 % of the composable combinations held out of the VAE's training cells,
  SAMS-VAE fitted ``--vae-steps`` steps (3,000: p* error vs p_true about 0.24 seen /
  0.16 held out, docs/simulator.md), ``--n-programs`` NMF programs as readouts,
  ``screen_hit`` with 100-cell replicates and per-program thresholds from the ground
  truth (median true |effect|), then :func:`bioreason.data.build_task` over every
  perturbed condition x program (p* from the SAMS-VAE simulator, p_true from
  :class:`bioreason.sim.GroundTruthSimulator`, a random train/test split of the
  questions). Cached in ``OUT/task/`` (skipped on rerun when its manifest matches).
- ``replogle``: :func:`bioreason.data.load_replogle_task` on
  ``--replogle-folder`` (default ``/work/shared/data/replogle_k562_cnmf_task``;
  splits as published, test = unseen genes; no p*, no p_true).
- ``PATH.parquet``: any task table (:mod:`bioreason.data.tasks`) with ``train`` and
  ``test`` rows.

Outputs in ``--out`` (default ``runs/lm_calibration/<task>``):

- ``runs/<method>_seed<S>/``: ``predictions.parquet`` (the trainer's prediction
  columns at the last step), ``log.csv``, ``eval.csv`` (step 0 and the last step),
  ``metrics.json`` and a manifest; a run whose manifest matches is skipped on rerun.
- ``runs.csv`` / ``runs.parquet``: one row per method x seed (:data:`RUN_COLUMNS` plus
  every metric of :func:`bioreason.calibration.summarize`, with ``_low`` / ``_high``
  bootstrap bounds over test questions).
- ``predictions.parquet``: every run's predictions.
- ``summary.csv`` / ``summary.md``: one row per method, metrics averaged over seeds,
  95 % bootstrap intervals over questions (the same resampled questions for every
  seed), and the drift figures.

Prints one ``name: value unit`` line per headline figure and the markdown table.
Files this script did not write are never replaced without ``--force``.

    python benchmarks/lm_calibration.py [--task synthetic|replogle|PATH.parquet]
        [--methods ...] [--seeds 3] [--steps 1000] [--lr 3e-4] [--warm-start-steps 30]
        [--workers 1] [--threads 2] [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

#: the methods of the issue's table (advantage registry names, options included)
METHODS = (
    "grpo",
    "grpo_no_std",
    "rloo",
    "reinforce",
    "ppo",
    "grpo_batch_std",
    "seed_grpo",
    "seed_grpo:base=grpo",
    "h_target:log",
)
REPLOGLE_FOLDER = Path("/work/shared/data/replogle_k562_cnmf_task")
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
_SCREEN_OPTIONS = {"n_cells": 100, "quantile": 0.5, "n_markers": 15, "heldout_fraction": 0.25}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="synthetic", help="synthetic, replogle or PATH.parquet")
    parser.add_argument("--out", type=Path, default=None, help="default runs/lm_calibration/TASK")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[3], help="N (seeds 0..N-1) or a list of seeds"
    )
    parser.add_argument("--steps", type=int, default=1000, help="RL steps per run")
    parser.add_argument("--warm-start-steps", type=int, default=30)
    parser.add_argument("--warm-start-lr", type=float, default=1e-3)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--questions-per-step", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument(
        "--kl-coef", type=float, default=0.0, help="KL to the warm start (LMRLConfig.kl_coef)"
    )
    parser.add_argument(
        "--entropy-coef", type=float, default=0.0, help="entropy bonus (LMRLConfig.entropy_coef)"
    )
    parser.add_argument("--eval-samples", type=int, default=4, help="samples for q_sampled")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap over questions")
    parser.add_argument("--workers", type=int, default=1, help="parallel method x seed jobs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    parser.add_argument("--device", default="cpu")
    # the synthetic task
    parser.add_argument("--screen-seed", type=int, default=0, help="screen, VAE and split seed")
    parser.add_argument("--vae-steps", type=int, default=3000, help="SAMS-VAE training steps")
    parser.add_argument("--n-programs", type=int, default=10, help="NMF program readouts")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--target-se", type=float, default=0.01, help="p* / p_true MC SE")
    parser.add_argument("--max-draws", type=int, default=2000)
    parser.add_argument("--replogle-folder", type=Path, default=REPLOGLE_FOLDER)
    parser.add_argument("--force", action="store_true", help="replace files it did not write")
    parser.add_argument("--progress", action="store_true", help="tqdm bars for each run")
    return parser


def _line(name: str, value: float, unit: str, digits: int = 4) -> None:
    print(f"{name}: {value:.{digits}f} {unit}", flush=True)


def _slug(method: str) -> str:
    """A folder name for a method (``seed_grpo:base=grpo`` -> ``seed_grpo-base-grpo``)."""
    return re.sub(r"[^A-Za-z0-9_]+", "-", method).strip("-")


def _seeds(values: Sequence[int]) -> list[int]:
    if any(v < 0 for v in values):
        raise ValueError(f"--seeds must be >= 0, got {list(values)}")
    if len(values) == 1:
        if values[0] < 1:
            raise ValueError("--seeds N must be >= 1 (or give a list of seeds)")
        return list(range(values[0]))
    if len(set(values)) != len(values):
        raise ValueError(f"--seeds lists a seed twice: {list(values)}")
    return list(values)


def _check_args(args: argparse.Namespace) -> None:
    from bioreason.rl.advantages import get_advantage

    for method in args.methods:
        get_advantage(method)  # an unknown name raises, listing the estimators
    if len(set(args.methods)) != len(args.methods):
        raise ValueError(f"--methods lists a method twice: {args.methods}")
    for name in ("steps", "group_size", "questions_per_step", "eval_samples", "workers"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("warm_start_steps", "n_boot"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")


# ----------------------------------------------------------------------------- tasks


def _stage_up_to_date(stage: Path, config: dict[str, Any], seed: int, inputs=None) -> bool:
    from bioreason._io import manifest_matches

    return manifest_matches(stage, config=config, seed=seed, inputs=inputs)


def _write_task(stage: Path, config: dict[str, Any], seed: int, build: Callable, force: bool):
    """Build a task table into ``stage/task.parquet`` unless its manifest matches."""
    from bioreason._io import check_replaceable, write_manifest
    from bioreason.data.tasks import save_task

    path = stage / "task.parquet"
    if path.exists() and _stage_up_to_date(stage, config, seed):
        print(f"[task] up to date: {path}", flush=True)
        return path
    check_replaceable(path, force=force)
    stage.mkdir(parents=True, exist_ok=True)
    write_manifest(stage, config=config, seed=seed, outputs=[path], complete=False)
    table = build()
    save_task(table, path, overwrite=True)
    write_manifest(stage, config=config, seed=seed, outputs=[path])
    print(f"[task] wrote {len(table)} questions to {path}", flush=True)
    return path


def build_synthetic_task(args: argparse.Namespace) -> pd.DataFrame:
    """The synthetic-screen task: SAMS-VAE p*, ground-truth p_true, random split.

    Parameters
    ----------
    args : argparse.Namespace
        The script's settings (``screen_seed``, ``vae_steps``, ``n_programs``,
        ``test_fraction``, ``target_se``, ``max_draws``).

    Returns
    -------
    pandas.DataFrame
        A task table (:data:`bioreason.data.TASK_COLUMNS`) with ``train`` and ``test``
        rows, one per perturbed condition x program.
    """
    from bioreason.data import (
        PerturbationData,
        build_task,
        composable_combinations,
        simulate_screen,
        split_heldout_combinations,
    )
    from bioreason.models import SAMSVAE
    from bioreason.pipelines.demo import DEMO_SCREEN, DEMO_VAE
    from bioreason.sim import GroundTruthSimulator, OutcomeSimulator, learn_programs

    seed = args.screen_seed
    start = time.perf_counter()
    adata = simulate_screen(**DEMO_SCREEN, seed=seed)
    data = PerturbationData.from_anndata(adata)
    heldout = composable_combinations(data, fraction=_SCREEN_OPTIONS["heldout_fraction"], seed=seed)
    split = split_heldout_combinations(data, heldout=heldout, val_fraction=0.1, seed=seed)
    train_adata = adata[np.concatenate([split.train, split.val])].copy()
    n_train = split.train.size
    SAMSVAE.setup_anndata(train_adata)
    model = SAMSVAE(train_adata, perturbation_names=data.perturbation_names, seed=seed, **DEMO_VAE)
    model.train(
        max_steps=args.vae_steps,
        batch_size=512,
        n_particles=5,
        seed=seed,
        device="cpu",
        train_indices=np.arange(n_train),
        validation_indices=np.arange(n_train, train_adata.n_obs),
        early_stopping=False,
        progress=False,
    )
    _line("vae_train_seconds", time.perf_counter() - start, "s", 1)
    readouts = learn_programs(
        train_adata,
        n_programs=args.n_programs,
        n_markers=_SCREEN_OPTIONS["n_markers"],
        seed=seed,
    )
    names = [r.name for r in readouts]
    table = data.condition_table()
    conditions = table.index[table["n_perturbations"] >= 1].tolist()
    options = {"readouts": readouts, "n_cells": _SCREEN_OPTIONS["n_cells"]}
    # thresholds from the truth (as benchmarks/simulator_accuracy.py): p_true spreads
    thresholds = GroundTruthSimulator(
        adata, "screen_hit", threshold=None, **options
    ).suggest_thresholds(conditions, names, quantile=_SCREEN_OPTIONS["quantile"], seed=seed)
    simulator = OutcomeSimulator(model, "screen_hit", threshold=thresholds, **options)
    truth = GroundTruthSimulator(adata, "screen_hit", threshold=thresholds, **options)
    start = time.perf_counter()
    task = build_task(
        simulator,
        conditions,
        names,
        split="random",
        test_fraction=args.test_fraction,
        val_fraction=0.0,
        seed=seed,
        target_se=args.target_se,
        max_draws=args.max_draws,
        truth=truth,
    )
    _line("task_pstar_seconds", time.perf_counter() - start, "s", 1)
    return task


def prepare_task(args: argparse.Namespace, out: Path) -> Path:
    """The task table's parquet path (built and cached under ``out/task`` when needed).

    Returns
    -------
    Path
        A parquet task table with ``train`` and ``test`` rows.
    """
    from bioreason.data.tasks import load_task

    kind = str(args.task)
    if kind == "synthetic":
        config = {
            "kind": "synthetic",
            "vae_steps": args.vae_steps,
            "n_programs": args.n_programs,
            "test_fraction": args.test_fraction,
            "target_se": args.target_se,
            "max_draws": args.max_draws,
            **_SCREEN_OPTIONS,
        }
        path = _write_task(
            out / "task", config, args.screen_seed, lambda: build_synthetic_task(args), args.force
        )
    elif kind == "replogle":
        from bioreason.data import load_replogle_task

        folder = Path(args.replogle_folder)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"the Replogle task folder {folder} does not exist; pass --replogle-folder "
                "(see /work/shared/data/README.md)"
            )
        config = {"kind": "replogle", "folder": str(folder.resolve())}
        path = _write_task(out / "task", config, 0, lambda: load_replogle_task(folder), args.force)
    else:
        path = Path(kind)
        if path.suffix != ".parquet":
            raise ValueError(f"--task must be synthetic, replogle or a .parquet file, got {kind!r}")
        if not path.is_file():
            raise FileNotFoundError(f"--task {path}: no such task table")
    task = load_task(path)
    splits = set(task["split"].astype(str)) if "split" in task else set()
    missing = {"train", "test"} - splits
    if missing:
        raise ValueError(
            f"task table {path} has no rows with split {sorted(missing)} (splits: "
            f"{sorted(splits)}); the benchmark trains on 'train' and scores 'test'"
        )
    return path


# ----------------------------------------------------------------------------- runs


def warm_start_seed(task_path: Path, folder: Path, seed: int, args: argparse.Namespace) -> Path:
    """Warm-start the default LM for ``seed`` and save it to ``folder`` (skipped when its
    manifest matches).

    Returns
    -------
    Path
        The saved predictor folder (``load_predictor`` reads it).
    """
    from bioreason._io import check_replaceable, write_manifest
    from bioreason.data.tasks import load_task
    from bioreason.lm import load_predictor, warm_start

    model_dir = folder / "model"
    config = {"model": "tiny", "steps": args.warm_start_steps, "lr": args.warm_start_lr}
    inputs = {"task": task_path}
    if model_dir.exists() and _stage_up_to_date(folder, config, seed, inputs):
        return model_dir
    check_replaceable(model_dir, force=args.force)
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(
        folder, config=config, seed=seed, inputs=inputs, outputs=[model_dir], complete=False
    )
    task = load_task(task_path)
    predictor = load_predictor(
        "tiny", device=args.device, texts=task["prompt"].astype(str), seed=seed
    )
    train_prompts = task.loc[task["split"].astype(str) == "train", "prompt"].astype(str)
    start = time.perf_counter()
    if args.warm_start_steps:
        warm_start(
            predictor,
            None,
            [predictor.format_prompt(p) for p in train_prompts],
            steps=args.warm_start_steps,
            lr=args.warm_start_lr,
            seed=seed,
        )
    predictor.save(model_dir, overwrite=True)
    write_manifest(folder, config=config, seed=seed, inputs=inputs, outputs=[model_dir])
    _line(f"warm_start_seed{seed}_seconds", time.perf_counter() - start, "s", 1)
    return model_dir


def _run_record(job: dict[str, Any]) -> dict[str, Any]:
    """The settings that define a run (its manifest's config)."""
    keys = ("method", "steps", "group_size", "questions_per_step", "lr", "eval_samples", "n_boot")
    record = {key: job[key] for key in keys}
    # regularisers enter the record only when used (runs without them keep their manifest)
    record.update({key: job[key] for key in ("kl_coef", "entropy_coef") if job.get(key)})
    return record


def run_one(job: dict[str, Any]) -> dict[str, Any]:
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
    from bioreason._io import atomic_write_text, json_safe, write_manifest
    from bioreason.data.tasks import load_task
    from bioreason.lm import load_predictor
    from bioreason.rl import LMRLConfig, LMTrainer

    torch.set_num_threads(job["threads"])
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
        train_split="train",
        eval_split="test",
        eval_every=job["steps"],  # evaluate once, at the last step
        eval_samples=job["eval_samples"],
        log_every=max(1, job["steps"] // 20),
        checkpoint_every=job["steps"],
        device=job["device"],
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


def _probabilities(predictions: pd.DataFrame) -> np.ndarray:
    """``q_exact`` where every question has one, else ``q_sampled``."""
    exact = predictions["q_exact"].to_numpy(dtype=float)
    return exact if np.isfinite(exact).all() else predictions["q_sampled"].to_numpy(dtype=float)


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
        :data:`bioreason.rl.lm_trainer.PREDICTION_COLUMNS`, one row per test question.
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

    q = _probabilities(predictions)
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
                part.assign(q=_probabilities(part))
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


def _read_row(path: Path) -> dict[str, Any]:
    row = json.loads(path.read_text())
    return {k: (math.nan if v is None else v) for k, v in row.items()}


# ----------------------------------------------------------------------------- main


def _prepare_run_folder(folder: Path, job: dict[str, Any], force: bool) -> bool:
    """True when the run is finished with these settings (skip it); otherwise make the
    folder ready for a new run (refusing files this script did not write)."""
    from bioreason._io import MANIFEST, check_replaceable

    inputs = {"task": job["task"], "warm": job["warm"]}
    if (folder / "metrics.json").exists() and _stage_up_to_date(
        folder, _run_record(job), job["seed"], inputs
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
                f"{folder} holds files this benchmark did not write ({strangers}); choose "
                "another --out or pass --force"
            )
        shutil.rmtree(folder)
    return False


def _write_table(path: Path, frame: pd.DataFrame, manifest: Path, force: bool) -> None:
    from bioreason._io import atomic_write, check_replaceable

    check_replaceable(path, manifest=manifest, force=force)
    if path.suffix == ".parquet":
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); returns the exit status."""
    from bioreason._io import (
        atomic_write_text,
        check_output_folder,
        check_replaceable,
        write_manifest,
    )

    args = _parser().parse_args(argv)
    try:
        _check_args(args)
        seeds = _seeds(args.seeds)
    except (TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    task_name = args.task if args.task in ("synthetic", "replogle") else Path(args.task).stem
    out = args.out if args.out is not None else Path("runs/lm_calibration") / task_name
    check_output_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    start_all = time.perf_counter()
    task_path = prepare_task(args, out)

    warm = {
        seed: warm_start_seed(task_path, out / "warm" / f"seed{seed}", seed, args) for seed in seeds
    }
    jobs, rows = [], {}
    for seed in seeds:
        for method in args.methods:
            folder = out / "runs" / f"{_slug(method)}_seed{seed}"
            job = {
                "method": method,
                "seed": seed,
                "steps": args.steps,
                "group_size": args.group_size,
                "questions_per_step": args.questions_per_step,
                "lr": args.lr,
                "kl_coef": args.kl_coef,
                "entropy_coef": args.entropy_coef,
                "eval_samples": args.eval_samples,
                "n_boot": args.n_boot,
                "device": args.device,
                "threads": args.threads,
                "progress": args.progress,
                "task": str(task_path),
                "warm": str(warm[seed]),
                "folder": str(folder),
            }
            if _prepare_run_folder(folder, job, args.force):
                print(f"[run] up to date: {method} seed {seed}", flush=True)
                rows[(method, seed)] = _read_row(folder / "metrics.json")
            else:
                jobs.append(job)

    def finished(row: dict[str, Any]) -> None:
        rows[(row["method"], row["seed"])] = row
        print(
            f"[run] {row['method']} seed {row['seed']}: ece {row['ece']:.4f}, "
            f"{row['seconds_per_step']:.3f} s/step",
            flush=True,
        )

    if args.workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(args.workers, len(jobs)), mp_context=context) as pool:
            for row in pool.map(run_one, jobs):
                finished(row)
    else:
        for job in jobs:
            finished(run_one(job))

    order = [(m, s) for s in seeds for m in args.methods]
    runs = pd.DataFrame([rows[key] for key in order])
    runs = runs[[*RUN_COLUMNS, *[c for c in runs.columns if c not in RUN_COLUMNS]]]
    predictions = pd.concat(
        [
            pd.read_parquet(out / "runs" / f"{_slug(m)}_seed{s}" / "predictions.parquet")
            for m, s in order
        ],
        ignore_index=True,
    )
    summary = summarize_methods(predictions, runs, n_boot=args.n_boot)
    table = markdown_table(summary)

    manifest = out / "manifest.json"
    outputs = [out / name for name in ("runs.csv", "runs.parquet", "predictions.parquet")]
    outputs += [out / "summary.csv", out / "summary.md"]
    record = {**{k: v for k, v in vars(args).items() if k not in ("force", "progress", "workers")}}
    record = json.loads(json.dumps(record, default=str))
    for path in outputs:
        check_replaceable(path, manifest=manifest, force=args.force)
    write_manifest(out, config=record, seed=None, outputs=outputs, complete=False)
    _write_table(out / "runs.csv", runs, manifest, True)
    _write_table(out / "runs.parquet", runs, manifest, True)
    _write_table(out / "predictions.parquet", predictions, manifest, True)
    _write_table(out / "summary.csv", summary, manifest, True)
    atomic_write_text(out / "summary.md", table + "\n")
    write_manifest(out, config=record, seed=None, outputs=outputs)

    for _, row in summary.iterrows():
        name = _slug(row["method"])
        for metric in SUMMARY_METRICS:
            if np.isfinite(row[metric]):
                unit = "nats" if metric == "log_loss" else "probability"
                _line(f"{name}_{metric}", row[metric], unit)
                if np.isfinite(row[f"{metric}_low"]):
                    _line(f"{name}_{metric}_ci95_low", row[f"{metric}_low"], unit)
                    _line(f"{name}_{metric}_ci95_high", row[f"{metric}_high"], unit)
        for column in ("drift_grpo_predicted", "drift_method_predicted", "drift_measured"):
            if np.isfinite(row[column]):
                _line(f"{name}_{column}_outward", row[column], "probability")
        _line(f"{name}_seconds_per_step", row["seconds_per_step"], "s/step", 3)
    _line("total_seconds", time.perf_counter() - start_all, "s", 1)
    print()
    print(table)
    print(f"\nwrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
