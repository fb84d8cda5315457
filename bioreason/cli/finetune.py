"""``bioreason finetune``: RL fine-tune a causal LM on a task table (one fine-tuning job,
:func:`bioreason.rl.lm.run_finetune`)."""

from __future__ import annotations

import argparse
import os

from bioreason.cli._base import (
    UsageError,
    add_force,
    non_negative_int,
    positive_int,
)
from bioreason.cli._options import (
    add_config_tree,
    build_config,
    merge_values,
    read_config_file,
    tree_overrides,
)

NAME = "finetune"


def _settings(args: argparse.Namespace):
    """The job's :class:`~bioreason.rl.lm.FinetuneConfig` from ``--config`` (nested, or the
    older flat form) with the flags on top.

    Returns
    -------
    FinetuneConfig
    """
    from bioreason.rl.lm import FinetuneConfig

    values = read_config_file(args.config, FinetuneConfig, "FinetuneConfig")
    overrides, options = tree_overrides(args, FinetuneConfig)
    if "model" not in values and "model" not in overrides:
        raise UsageError("give the model (--model tiny|PATH) or 'model:' in --config")
    where = f"finetune config ({args.config})" if args.config else "finetune"
    return build_config(
        FinetuneConfig, merge_values(values, overrides), {}, where=where, options=options
    )


class _ForeignFlag(argparse.Action):
    """A flag under TRL's name: refused naming the bioreason flag."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        parser.error(f"{option_string} is TRL's name: {self.help_text}")


def _trl_flags(parser: argparse.ArgumentParser) -> None:
    """TRL's names as hidden flags that fail naming the bioreason flag
    (``--learning-rate`` -> ``use --lr``), so that a TRL user is told, not just
    "unrecognized arguments"."""
    from bioreason.rl.lm import TRL_NAMES

    existing = {o for action in parser._actions for o in action.option_strings}
    for trl, (ours, note) in TRL_NAMES.items():
        flag = "--" + trl.replace("_", "-")
        if flag in existing:
            continue
        action = parser.add_argument(
            flag, action=_ForeignFlag, help=argparse.SUPPRESS, dest=f"_trl_{trl}", nargs="?"
        )
        action.help_text = f"use --{ours.replace('_', '-')} (rl.{ours}){note}"
    if "--output-dir" not in existing:
        action = parser.add_argument(
            "--output-dir",
            action=_ForeignFlag,
            help=argparse.SUPPRESS,
            dest="_trl_output_dir",
            nargs="?",
        )
        action.help_text = "use --out"


def _options(parser: argparse.ArgumentParser) -> None:
    from bioreason.rl.lm import FinetuneConfig

    add_config_tree(
        parser,
        FinetuneConfig,
        titles={
            "": "job options (FinetuneConfig fields; they override --config)",
            "rl": "training options (rl: LMRLConfig fields; they override --config)",
        },
        extra={
            "model": {
                "metavar": "tiny|PATH|NAME",
                "help": "the LM: tiny (a new small LM over the task's prompts), a model "
                "folder or a Hugging Face hub name (required: here or model: in --config)",
            },
            "warm_start_steps": {"type": non_negative_int},
            "n_boot": {"type": non_negative_int},
            "threads": {"type": positive_int},
            "rl.method": {"metavar": "METHOD"},
            "rl.steps": {"type": positive_int},
            "rl.seed": {"type": non_negative_int},
            "rl.group_size": {"type": positive_int},
        },
    )
    _trl_flags(parser)


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
        progress=False if args.no_progress else None,  # None: on a terminal only
        log=print if main_process else None,
    )
    if main_process:
        print(final_line(args.out, metrics, config.rl.eval_split))
    return 0


def final_line(out: object, metrics: dict, split: str | None) -> str:
    """The command's last line: the held-out ECE, which probability it scores, and the
    sampled invalid-answer rate beside it (a policy that stopped writing answers still
    has a q_exact to score, so the rate is what tells it apart).

    Parameters
    ----------
    out : path-like
        The output folder.
    metrics : dict
        The job's ``metrics.json`` (``steps``, ``method``, ``ece``, ``n_scored``,
        ``q_source``, ``invalid_rate``).
    split : str or None
        The evaluated split.

    Returns
    -------
    str
    """
    from bioreason.run_layout import INVALID_RATE_LIMIT

    rate = float(metrics.get("invalid_rate", float("nan")))
    line = (
        f"{out}: {metrics['steps']} steps of {metrics['method']}; {split} ece "
        f"{metrics['ece']:.4f} over {metrics['n_scored']} questions "
        f"(q_{metrics.get('q_source', 'exact')} scored); invalid answers {rate:.1%} of "
        "those sampled"
    )
    if rate > INVALID_RATE_LIMIT:
        line += (
            " - warning: the policy stopped writing valid answers, so the scores are those "
            "of its answer distribution after a forced <answer>, not of anything it writes"
        )
    return line


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
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (shown only when standard error is a terminal)",
    )
    add_force(parser, "files in --out that bioreason did not write")
    return parser
