"""Calibration of the default small LM after RL fine-tuning, per method (issue 11, Quality).

For each method x seed: the default LM (``bioreason.lm.load_predictor("tiny")``, a
word-level tokenizer over the task's prompts) is warm-started with uniform answers
(once per seed, saved under ``OUT/warm/seed<S>``; every method of a seed starts from
those same weights), trained ``--steps`` RL steps on the task's ``train`` split
(:class:`bioreason.rl.LMTrainer`, the method as its estimator), and scored on the
``test`` split with ``q_exact`` (the mean of the answer distribution at the answer
position; single-token answers, so no sampling noise).

Tasks (``--task``):

- ``synthetic`` (default): the demo screen (``bioreason.pipelines.demo.demo_config().data.screen``)
  with 25 % of the composable combinations held out of the VAE's training cells,
  SAMS-VAE fitted ``--vae-steps`` steps (3,000: p* error vs p_true about 0.24 seen /
  0.16 held out, docs/simulator.md), ``--n-programs`` NMF programs as readouts,
  ``screen_hit`` with 100-cell replicates and per-program thresholds from the ground
  truth (median true |effect|), then :func:`bioreason.sim.build_task` over every
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
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bioreason.cli._base import add_fields_option
from bioreason.pipelines.lm_runs import (  # noqa: E402  (the library half of this script)
    METHODS,
    RUN_COLUMNS,
    SUMMARY_METRICS,
    markdown_table,
    prepare_job_folder,
    read_job_row,
    run_job,
    run_jobs,
    summarize_methods,
    warm_start_folder,
)
from bioreason.rl.lm import FinetuneConfig, LMRLConfig  # noqa: E402
from bioreason.rl.lm.job import score_predictions  # noqa: E402

#: the methods of the issue's table (advantage registry names, options included)
from bioreason.run_layout import job_folder_name, method_slug  # noqa: E402

REPLOGLE_FOLDER = Path("/work/shared/data/replogle_k562_cnmf_task")
#: columns of ``runs.csv`` besides the metrics of ``bioreason.calibration.summarize``
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
    parser.add_argument(
        "--outcomes",
        choices=("live", "table"),
        default="table",
        help="live: a new Bernoulli(p*) outcome at every rollout; table: the task's one "
        "recorded outcome every time (default; the only choice without p*)",
    )
    parser.add_argument("--eval-samples", type=int, default=4, help="samples for q_sampled")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap over questions")
    parser.add_argument("--workers", type=int, default=1, help="parallel method x seed jobs")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per worker")
    parser.add_argument("--device", default="cpu")
    # the synthetic task
    add_fields_option(parser, "--screen", "ScreenConfig", '{"mask_probability": 0.1}')
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
    from bioreason.stage import manifest_matches

    return manifest_matches(stage, config=config, seed=seed, inputs=inputs)


def _write_task(stage: Path, config: dict[str, Any], seed: int, build: Callable, force: bool):
    """Build a task table into ``stage/task.parquet`` unless its manifest matches."""
    from bioreason.data.tasks import save_task
    from bioreason.stage import check_replaceable, write_manifest

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
        composable_combinations,
        simulate_screen,
        split_heldout_combinations,
    )
    from bioreason.models import SAMSVAE
    from bioreason.pipelines.demo import demo_config, demo_screen
    from bioreason.sim import (
        GroundTruthSimulator,
        OutcomeSimulator,
        SimulationBudget,
        build_task,
        learn_programs,
    )

    demo = demo_config()  # the demo's screen and SAMS-VAE sizes

    seed = args.screen_seed
    start = time.perf_counter()
    adata = simulate_screen(demo_screen(args.screen), seed=seed)
    data = PerturbationData.from_anndata(adata)
    heldout = composable_combinations(data, fraction=_SCREEN_OPTIONS["heldout_fraction"], seed=seed)
    split = split_heldout_combinations(data, heldout=heldout, val_fraction=0.1, seed=seed)
    train_adata = adata[np.concatenate([split.train, split.val])].copy()
    n_train = split.train.size
    SAMSVAE.setup_anndata(train_adata)
    model = SAMSVAE(
        train_adata,
        perturbation_names=data.perturbation_names,
        seed=seed,
        **demo.vae.options.to_dict(),
    )
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
        budget=SimulationBudget(target_se=args.target_se, max_draws=args.max_draws),
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
    """Warm-start the default LM for ``seed`` into ``folder`` (skipped when up to date).

    Returns
    -------
    Path
        The saved predictor folder (``load_predictor`` reads it).
    """
    start = time.perf_counter()
    path = warm_start_folder(
        task_path,
        folder,
        seed,
        steps=args.warm_start_steps,
        lr=args.warm_start_lr,
        device=args.device,
        force=args.force,
    )
    _line(f"warm_start_seed{seed}_seconds", time.perf_counter() - start, "s", 1)
    return path


#: the library's names under this script's former ones (tests and notebooks use them)
run_one = run_job
_read_row = read_job_row
_prepare_run_folder = prepare_job_folder
__all__ = [
    "METHODS",
    "RUN_COLUMNS",
    "SUMMARY_METRICS",
    "markdown_table",
    "run_one",
    "score_predictions",
    "summarize_methods",
]


# ----------------------------------------------------------------------------- main


def _write_table(path: Path, frame: pd.DataFrame, manifest: Path, force: bool) -> None:
    from bioreason._io import atomic_write
    from bioreason.stage import check_replaceable

    check_replaceable(path, manifest=manifest, force=force)
    if path.suffix == ".parquet":
        atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False))
    else:
        atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); returns the exit status."""
    from bioreason._io import atomic_write_text, check_output_folder
    from bioreason.stage import check_replaceable, write_manifest

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
            folder = out / "runs" / job_folder_name(method, seed)
            rl = LMRLConfig(
                method=method,
                seed=seed,
                steps=args.steps,
                group_size=args.group_size,
                questions_per_step=args.questions_per_step,
                lr=args.lr,
                kl_coef=args.kl_coef,
                entropy_coef=args.entropy_coef,
                outcomes=args.outcomes,
                eval_split="test",
                eval_samples=args.eval_samples,
                log_every=max(1, args.steps // 20),
                checkpoint_every=args.steps,
                device=args.device,
            )
            config = FinetuneConfig(
                model=str(warm[seed]), n_boot=args.n_boot, threads=args.threads, rl=rl
            )
            job = {
                "task": str(task_path),
                "folder": str(folder),
                "config": config,
                "progress": args.progress,
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

    run_jobs(jobs, workers=args.workers, finished=finished)

    order = [(m, s) for s in seeds for m in args.methods]
    runs = pd.DataFrame([rows[key] for key in order])
    runs = runs[[*RUN_COLUMNS, *[c for c in runs.columns if c not in RUN_COLUMNS]]]
    predictions = pd.concat(
        [
            pd.read_parquet(out / "runs" / job_folder_name(m, s) / "predictions.parquet")
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
        name = method_slug(row["method"])
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
