"""``bioreason finetune``: RL fine-tune a causal LM on a task table."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from bioreason.cli._base import (
    UsageError,
    add_force,
    config_group,
    non_negative_int,
    positive_int,
)
from bioreason.cli._options import build_config, config_overrides

NAME = "finetune"

# ---------------------------------------------------------------- LM fine-tuning
# keys of a finetune config file besides the LMRLConfig fields
_FINETUNE_KEYS = {"model": None, "warm_start_steps": 0, "warm_start_lr": 1e-3}
# the files finetune writes into --out
_FINETUNE_OUTPUTS = (
    "predictions.parquet",
    "log.csv",
    "eval.csv",
    "checkpoint.pt",
    "model",
    "metrics.json",
)


def _finetune_settings(args: argparse.Namespace):
    """(LMRLConfig, model name, warm-start steps, warm-start lr) from --config and flags."""
    from bioreason.config import read_yaml
    from bioreason.rl import LMRLConfig

    values, where = {}, "finetune"
    if args.config:
        values = read_yaml(args.config, what="config file")
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ValueError(
                f"config file {args.config} must hold a mapping of LMRLConfig fields (and "
                f"{', '.join(_FINETUNE_KEYS)}), got {type(values).__name__}"
            )
        where = f"finetune config ({args.config})"
        valid = {f.name for f in dataclasses.fields(LMRLConfig)} | set(_FINETUNE_KEYS)
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")
    values = dict(values)
    extra = {key: values.pop(key, default) for key, default in _FINETUNE_KEYS.items()}
    if args.model is not None:
        extra["model"] = args.model
    if args.warm_start_steps is not None:
        extra["warm_start_steps"] = args.warm_start_steps
    if extra["model"] is None:
        raise UsageError("give the model (--model tiny|PATH) or 'model:' in --config")
    steps = extra["warm_start_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{where}.warm_start_steps must be an integer >= 0, got {steps!r}")
    values.setdefault("eval_split", "test")
    config = build_config(LMRLConfig, values, config_overrides(args, LMRLConfig), where=where)
    return config, str(extra["model"]), steps, float(extra["warm_start_lr"])


def _options(parser: argparse.ArgumentParser) -> None:
    from bioreason.rl.lm_trainer import LMRLConfig

    config_group(
        parser,
        LMRLConfig,
        "training options (LMRLConfig fields; they override --config)",
        extra={
            "method": {"metavar": "METHOD"},
            "steps": {"type": positive_int},
            "seed": {"type": non_negative_int},
            "group_size": {"type": positive_int},
            "eval_split": {"shown_default": "test"},
        },
    )


def main(args: argparse.Namespace) -> int:
    """``bioreason finetune``; under ``accelerate launch`` every process trains its share
    of each batch, and the main one alone prepares and writes the output folder."""
    import torch.distributed as dist

    from bioreason._device import resolve_device
    from bioreason.rl.lm_distributed import ProcessGroup, current_process_group

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or (
        dist.is_available() and dist.is_initialized()
    )
    if not launched:
        return _finetune_run(args, ProcessGroup())
    processes = current_process_group(resolve_device(_finetune_settings(args)[0].device))

    # the main process checks and prepares the folder first; the others learn the outcome
    outcome: list = [None]
    if processes.is_main:
        try:
            outcome[0] = ("ok", _finetune_prepare(args))
        except Exception as err:
            outcome[0] = ("error", f"{type(err).__name__}: {err}")
            dist.broadcast_object_list(outcome, src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    status, value = outcome[0]
    if status == "error":
        raise RuntimeError(f"the main process stopped: {value}")
    if value is None:  # up to date
        return 0
    return _finetune_run(args, processes, prepared=value)


def _finetune_prepare(args: argparse.Namespace):
    """Check the output folder and write the incomplete manifest; None when the folder
    is up to date, else (config, model name, warm-start steps, warm-start lr, record,
    inputs)."""
    import json
    import shutil

    from bioreason._io import check_output_folder
    from bioreason.stage import MANIFEST, manifest_matches, write_manifest

    out = Path(args.out)
    check_output_folder(out)
    task_path = Path(args.task)
    config, model_name, warm_steps, warm_lr = _finetune_settings(args)
    record = {
        "rl": config.to_dict(),
        "task": str(task_path),
        "model": model_name,
        "warm_start_steps": warm_steps,
        "warm_start_lr": warm_lr,
    }
    record = json.loads(json.dumps(record, default=str))
    inputs = {"task": task_path} if task_path.is_file() else {}
    if not task_path.exists():
        raise FileNotFoundError(f"task table {task_path} does not exist")
    manifest = out / MANIFEST
    if out.exists() and any(out.iterdir()):
        if manifest_matches(out, config=record, seed=config.seed, inputs=inputs):
            print(f"{out} is up to date (same settings and task); nothing to do")
            return None
        saved = None
        try:
            saved = json.loads(manifest.read_text())
        except (OSError, ValueError):
            pass
        same = isinstance(saved, dict) and saved.get("config") == record
        if not same:
            if not args.force:
                why = (
                    "was not written by 'bioreason finetune'"
                    if not isinstance(saved, dict)
                    else "holds a run with other settings"
                )
                raise FileExistsError(
                    f"{out} {why}; choose another --out or pass --force to replace it"
                )
            for name in (*_FINETUNE_OUTPUTS, "tb", MANIFEST):  # tb: TensorBoard events
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    outputs = [out / name for name in _FINETUNE_OUTPUTS]
    write_manifest(
        out, config=record, seed=config.seed, inputs=inputs, outputs=outputs, complete=False
    )
    return config, model_name, warm_steps, warm_lr, record, inputs


def _finetune_run(args: argparse.Namespace, processes, prepared=None) -> int:
    """Train, evaluate and write the outputs (the main process writes)."""
    import json

    import pandas as pd

    from bioreason._io import atomic_write_text, json_safe
    from bioreason.rl.lm_trainer import save_predictions
    from bioreason.rl.loop import save_checkpoint, write_csv_log
    from bioreason.stage import write_manifest

    if prepared is None:
        prepared = _finetune_prepare(args)
        if prepared is None:
            return 0
    config, model_name, warm_steps, warm_lr, record, inputs = prepared
    out = Path(args.out)
    task_path = Path(args.task)
    outputs = [out / name for name in _FINETUNE_OUTPUTS]

    from bioreason.data.tasks import load_task
    from bioreason.lm import load_predictor, warm_start
    from bioreason.rl import LMTrainer

    task = load_task(task_path)
    if "split" in task and not (task["split"].astype(str) == config.train_split).any():
        raise ValueError(f"task table {task_path} has no rows with split == {config.train_split!r}")
    predictor = load_predictor(
        model_name,
        device=config.device,
        texts=task["prompt"].astype(str),
        grid=config.grid,
        seed=config.seed,
    )
    if warm_steps:  # deterministic: a resumed run redoes it, then loads its checkpoint
        train_prompts = task.loc[task["split"].astype(str) == config.train_split, "prompt"]
        warm_start(
            predictor,
            None,
            [predictor.format_prompt(str(p)) for p in train_prompts],
            grid=config.grid,
            steps=warm_steps,
            lr=warm_lr,
            seed=config.seed,
        )
    trainer = LMTrainer.from_predictor(predictor, task, config)
    predictions_path = out / "predictions.parquet"
    timing = trainer.train(
        checkpoint_path=out / "checkpoint.pt",
        log_path=out / "log.csv",
        eval_log_path=out / "eval.csv",
        predictions_path=predictions_path,
        progress=not args.no_progress,
        description="finetune",
    )
    if not processes.is_main:
        return 0
    if trainer.eval_rows_log and trainer.eval_rows_log[-1]["step"] == trainer.step:
        final = trainer.eval_rows_log[-1]  # evaluated at the last step already
    else:
        final = trainer.evaluate()
        frame = trainer.predict()
        if predictions_path.exists():
            earlier = pd.read_parquet(predictions_path)
            frame = pd.concat([earlier[earlier["step"] < trainer.step], frame], ignore_index=True)
        save_predictions(frame, predictions_path)
    # the checkpoint of the last step (the loop keeps only earlier ones), so that a rerun
    # after a later failure resumes at the end
    log_path = out / "log.csv"
    log_rows = pd.read_csv(log_path).to_dict("records") if log_path.exists() else []
    save_checkpoint(trainer, out / "checkpoint.pt", log_rows)
    write_csv_log(out / "eval.csv", trainer.eval_rows_log)
    predictor.save(out / "model", overwrite=True)
    metrics = {"step": trainer.step, "final": final, "timing": timing}
    atomic_write_text(
        out / "metrics.json", json.dumps(json_safe(metrics), indent=2, default=str) + "\n"
    )
    write_manifest(out, config=record, seed=config.seed, inputs=inputs, outputs=outputs)
    score = final.get("ece", float("nan"))
    print(
        f"wrote {out}: {trainer.step} steps of {config.method}; "
        f"test ece {score:.4f} over {final.get('n_scored', 0)} questions"
    )
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        NAME,
        help="RL fine-tune a causal LM on a task table",
        populate=_options,
        description="Train an LM (LMTrainer) on the task's train split and evaluate it on its "
        "test split. Flags override --config (a YAML mapping of LMRLConfig fields plus model, "
        "warm_start_steps, warm_start_lr; see docs/finetune.md). Rerunning an interrupted run "
        "with the same settings resumes it from its checkpoint.",
    )
    parser.add_argument("--task", required=True, help="task table (.parquet, see build-task)")
    parser.add_argument("--model", help="'tiny' (a new small LM) or a model folder / hub name")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", help="YAML file of LMRLConfig fields (and model, ...)")
    parser.add_argument(
        "--warm-start-steps",
        dest="warm_start_steps",
        type=non_negative_int,
        help="supervised steps teaching the answer format first (default 0)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_force(parser, "a --out folder holding other files or another run")
    return parser
