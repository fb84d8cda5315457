"""``bioreason build-task``: questions, p* and outcomes from a saved model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from bioreason.cli._base import (
    UsageError,
    add_force,
    check_out_file,
    non_negative_int,
    one_line,
    positive_float,
    positive_int,
    probability,
)
from bioreason.cli._options import (
    add_config_tree,
    build_config,
    merge_values,
    read_config_file,
    tree_overrides,
)
from bioreason.config import yaml_loads

# the split names of bioreason.data.tasks.SPLITS (kept here: importing data is slow)
TASK_SPLITS = ("random", "heldout_conditions", "heldout_combinations")

NAME = "build-task"

# TaskConfig fields that build-task sets by hand-made options (--option, --programs-file)
_TASK_HAND_MADE = ("outcome_options", "programs")


def _option_value(text: str):
    """``--option`` values: integers, numbers (``1e-3`` too), ``null``/``none``, else YAML."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("none", "null", "~"):
        return None
    return yaml_loads(text) if text.strip() else text


def _outcome_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--option expects KEY=VALUE (e.g. threshold=0.1), got {pair!r}")
        try:
            options[key.strip()] = _option_value(value.strip())
        except yaml.YAMLError:
            raise UsageError(f"--option {pair}: cannot read the value {value!r}") from None
    return options


def _task_config(args: argparse.Namespace):
    """The TaskConfig of ``--config`` (if any) with the flags given on top."""
    from bioreason.sim import TaskConfig

    if not args.config and args.model is None:
        raise UsageError("give the saved model folder (--model DIR) or a config file (--config)")
    where = f"TaskConfig ({args.config})" if args.config else "build-task"
    values = read_config_file(args.config, TaskConfig, "TaskConfig")
    overrides, options = tree_overrides(args, TaskConfig, exclude=_TASK_HAND_MADE)
    options.update(outcome_options="--option", programs="--programs-file")
    if args.programs_file is not None:
        overrides["programs"] = args.programs_file
    if "outcome" in overrides and overrides["outcome"] != values.get("outcome", "screen_hit"):
        values.pop("outcome_options", None)  # the file's options belong to its own outcome
    if args.option:
        base = values.get("outcome_options") or {}
        if not isinstance(base, dict):
            raise ValueError(f"{where}.outcome_options must be a mapping, got {base!r}")
        overrides["outcome_options"] = {**base, **_outcome_options(args.option)}
    return build_config(
        TaskConfig, merge_values(values, overrides), {}, where=where, options=options
    )


def _options(parser: argparse.ArgumentParser) -> None:
    from bioreason.sim import TaskConfig

    positive = {"type": positive_int}
    add_config_tree(
        parser,
        TaskConfig,
        titles={
            "": "task options (TaskConfig fields; they override --config)",
            "budget": "simulation budget of p* (TaskConfig.budget, SimulationBudget fields; "
            "they override --config's budget)",
        },
        exclude=_TASK_HAND_MADE,
        extra={
            "model": {"metavar": "DIR"},
            "adata": {"metavar": "FILE.h5ad"},
            "readouts": {"metavar": "NAME"},
            "n_programs": {"aliases": ["--programs"], **positive},
            "n_markers": positive,
            "conditions": {
                "metavar": "LABEL",
                "help": "condition labels (A, A+B) and/or sets: singles, measured, "
                "measured_singles, measured_combinations, pairs, unseen_pairs (default: "
                "measured with --adata, else singles)",
            },
            "n_outcomes": positive,
            "split": {"choices": TASK_SPLITS},
            "test_fraction": {"type": probability},
            "val_fraction": {"type": probability},
            "seed": {"type": non_negative_int},
            "threshold_quantile": {"type": probability},
            "budget.target_se": {"type": positive_float},
            "budget.max_draws": positive,
            "budget.min_draws": positive,
            "budget.draws_per_round": positive,
            "budget.cells_per_draw": positive,
            "budget.replicates_per_draw": positive,
        },
    )


def main(args: argparse.Namespace) -> int:
    import warnings

    from bioreason.data.tasks import ordered_splits
    from bioreason.sim.task_config import build_task_from_config

    out = Path(args.out)
    check_out_file(out, (".parquet", ".pq"), args.force)
    config = _task_config(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        table = build_task_from_config(config, out, overwrite=args.force)
    for warning in caught:
        print(f"warning: {one_line(warning.message)}", file=sys.stderr)
    summary = table.attrs["summary"]
    splits = ", ".join(f"{k} {v}" for k, v in ordered_splits(summary["questions_per_split"]))
    print(
        f"wrote {out}: {len(table)} questions ({table['condition'].nunique()} conditions x "
        f"{table['readout'].nunique()} readouts; {splits}); mean p* {summary['mean_p_star']:.3f}, "
        f"outcome rate {summary['outcome_rate']:.3f}"
    )
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        NAME,
        help="questions, p* and outcomes from a saved model",
        description="Build a task table (questions, p*, sampled outcomes, splits) from a "
        "saved model folder. Flags override the fields of --config (a YAML file of "
        "TaskConfig fields, see docs/tasks.md).",
        populate=_options,
    )
    parser.add_argument("--out", required=True, help="output .parquet path")
    parser.add_argument("--config", help="YAML file of TaskConfig fields")
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="an outcome option, e.g. threshold=0.1, n_cells=100, test=welch, threshold=null "
        "(per-readout thresholds from the model's effects); repeatable",
    )
    parser.add_argument(
        "--programs-file",
        dest="programs_file",
        metavar="FILE",
        help="YAML mapping of user programs, name: [gene, ...]",
    )
    add_force(parser, "an existing --out")
    return parser
