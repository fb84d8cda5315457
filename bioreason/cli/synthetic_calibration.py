"""``bioreason synthetic-calibration``: RL estimators on a tabular toy task, calibration."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioreason.cli._base import (
    UsageError,
    add_force,
    non_negative_int,
    one_line,
    positive_int,
)
from bioreason.cli._options import (
    add_config_tree,
    build_config,
    merge_values,
    read_config_file,
    tree_overrides,
)

NAME = "synthetic-calibration"


def _check_methods(methods: list[str]) -> None:
    from bioreason.rl import get_advantage

    for method in methods:
        try:
            get_advantage(method)
        except (ValueError, TypeError) as err:
            raise UsageError(f"--methods {method}: {one_line(err)}") from None
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise UsageError(f"--methods lists {', '.join(repeated)} more than once")


_PREFIXES = {"rl": "rl-"}
_EXCLUDE = ("rl.method",)  # each entry of --methods


def _options(parser: argparse.ArgumentParser) -> None:
    from bioreason.pipelines.synthetic_calibration import SyntheticCalibrationConfig

    add_config_tree(
        parser,
        SyntheticCalibrationConfig,
        titles={
            "": "experiment options (SyntheticCalibrationConfig fields; they override --config)",
            "rl": "trainer options (rl: TabularRLConfig fields; rl.method is each of --methods)",
        },
        prefixes=_PREFIXES,
        exclude=_EXCLUDE,
        extra={
            "methods": {"metavar": "METHOD"},
            "n_questions": {"type": positive_int},
            "seed": {
                "type": non_negative_int,
                "help": "seeds the questions, the outcomes, the evaluation draws and the "
                "training (rl.seed, unless --rl-seed is given) (default 0)",
            },
            "rl.steps": {"aliases": ["--steps"], "type": positive_int},
        },
    )


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        NAME,
        help="RL estimators on a tabular toy task: calibration",
        description="Train a tabular policy with each RL estimator on stochastic outcomes; "
        "write calibration metrics and figures. Flags override --config.",
        populate=_options,
    )
    parser.add_argument(
        "--out", required=True, help="output folder (new, empty, or a previous run)"
    )
    parser.add_argument("--config", help="YAML file of SyntheticCalibrationConfig fields")
    add_force(parser, "runs of this folder written with other settings")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(args: argparse.Namespace) -> int:
    from bioreason._io import check_output_folder
    from bioreason.pipelines.synthetic_calibration import (
        SyntheticCalibrationConfig,
        run_synthetic_calibration,
    )

    if args.methods is not None:
        _check_methods(args.methods)
    check_output_folder(args.out)
    values = read_config_file(args.config, SyntheticCalibrationConfig, "SyntheticCalibrationConfig")
    overrides, options = tree_overrides(
        args, SyntheticCalibrationConfig, prefixes=_PREFIXES, exclude=_EXCLUDE
    )
    if args.seed is not None and args.rl_seed is None:
        # one seed for the questions and the training
        overrides.setdefault("rl", {})["seed"] = args.seed
    where = f"SyntheticCalibrationConfig ({args.config})" if args.config else None
    config = build_config(
        SyntheticCalibrationConfig,
        merge_values(values, overrides),
        {},
        where=where,
        options=options,
    )
    run_synthetic_calibration(
        Path(args.out), config, overwrite=args.force, progress=not args.no_progress
    )
    return 0
