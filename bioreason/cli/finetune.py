"""``bioreason finetune``: RL fine-tune a causal LM on a task table (one fine-tuning job,
:func:`bioreason.rl.lm.run_finetune`)."""

from __future__ import annotations

import argparse
import os

from bioreason.cli._base import (
    UsageError,
    add_force,
    config_group,
    non_negative_int,
    positive_int,
)
from bioreason.cli._options import (
    build_config,
    config_overrides,
    option_name,
    read_config_mapping,
)

NAME = "finetune"


def _settings(args: argparse.Namespace):
    """The job's :class:`~bioreason.rl.lm.FinetuneConfig` from ``--config`` and the flags
    (a flag replaces the file's value, flat or under ``rl:``, wherever the file gives it).
    """
    from bioreason.rl.lm import FinetuneConfig, LMRLConfig

    values, where = {}, "finetune"
    if args.config:
        values = read_config_mapping(
            args.config,
            "FinetuneConfig fields (model, warm_start_steps, ..., rl: {LMRLConfig fields})",
        )
        where = f"finetune config ({args.config})"
    values = dict(values)
    job = config_overrides(args, FinetuneConfig)
    training = config_overrides(args, LMRLConfig)
    if "model" not in values and "model" not in job:
        raise UsageError("give the model (--model tiny|PATH) or 'model:' in --config")
    section = values.get("rl")
    nested = section is None or isinstance(section, dict)  # else from_dict names the error
    for name, value in training.items():
        if name in values or not nested:  # the file gives it flat
            values[name] = value
        else:
            section = values["rl"] = {**(section or {}), name: value}
    options = {name: option_name(name) for name in (*job, *training)}
    return build_config(FinetuneConfig, values, job, where=where, options=options)


def _options(parser: argparse.ArgumentParser) -> None:
    from bioreason.rl.lm import FinetuneConfig, LMRLConfig

    config_group(
        parser,
        FinetuneConfig,
        "job options (FinetuneConfig fields; they override --config)",
        extra={
            "model": {
                "metavar": "tiny|PATH|NAME",
                "help": "the LM: tiny (a new small LM over the task's prompts), a model "
                "folder or a Hugging Face hub name (required: here or model: in --config)",
            },
            "warm_start_steps": {"type": non_negative_int},
            "n_boot": {"type": non_negative_int},
            "threads": {"type": positive_int},
        },
    )
    config_group(
        parser,
        LMRLConfig,
        "training options (rl: LMRLConfig fields; they override --config)",
        extra={
            "method": {"metavar": "METHOD"},
            "steps": {"type": positive_int},
            "seed": {"type": non_negative_int},
            "group_size": {"type": positive_int},
            "eval_split": {"shown_default": "test"},
        },
    )


def main(args: argparse.Namespace) -> int:
    """``bioreason finetune``: build the job's settings and run it. Under ``accelerate
    launch`` every process trains its share of each batch; the main one alone prepares
    and writes the output folder, and prints."""
    from bioreason.rl.lm import run_finetune

    config = _settings(args)
    main_process = os.environ.get("RANK", "0") == "0"
    metrics = run_finetune(
        args.task,
        args.out,
        config,
        force=args.force,
        progress=not args.no_progress,
        log=print if main_process else None,
    )
    if main_process:
        print(
            f"{args.out}: {metrics['steps']} steps of {metrics['method']}; "
            f"{config.rl.eval_split} ece {metrics['ece']:.4f} over {metrics['n_scored']} "
            "questions"
        )
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        NAME,
        help="RL fine-tune a causal LM on a task table",
        populate=_options,
        description="Train an LM (LMTrainer) on the task's train split and score it on its "
        "test split: one fine-tuning job (bioreason.rl.lm.run_finetune, the same as a "
        "pipeline job). Flags override --config (a YAML mapping of FinetuneConfig fields: "
        "model, warm_start_steps, ..., and rl: LMRLConfig fields; see docs/finetune.md). "
        "Rerunning an interrupted run with the same settings resumes it from its "
        "checkpoint.",
    )
    parser.add_argument("--task", required=True, help="task table (.parquet, see build-task)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--config", help="YAML file of FinetuneConfig fields (rl: LMRLConfig)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_force(parser, "files in --out that bioreason did not write")
    return parser
