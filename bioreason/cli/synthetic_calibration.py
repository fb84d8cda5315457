"""``bioreason synthetic-calibration``: RL estimators on a tabular toy task, calibration."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioreason.cli._base import (
    UsageError,
    add_force,
    config_group,
    non_negative_int,
    one_line,
    positive_int,
)
from bioreason.cli._options import build_config, config_overrides, option_name

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


def _options(parser: argparse.ArgumentParser) -> None:
    from bioreason.pipelines.synthetic_calibration import SyntheticCalibrationConfig
    from bioreason.rl.tabular import TabularRLConfig

    config_group(
        parser,
        SyntheticCalibrationConfig,
        "experiment options (SyntheticCalibrationConfig fields; they override --config)",
        extra={
            "methods": {"metavar": "METHOD"},
            "n_questions": {"type": positive_int},
            "seed": {
                "type": non_negative_int,
                "help": "seeds the questions, the outcomes, the evaluation draws and the "
                "training (rl.seed, unless --rl-seed is given) (default 0)",
            },
        },
    )
    config_group(
        parser,
        TabularRLConfig,
        "trainer options (rl: TabularRLConfig fields; rl.method is each of --methods)",
        prefix="rl-",
        exclude=("method",),
        extra={"steps": {"aliases": ["--steps"], "type": positive_int}},
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
    from bioreason.rl.tabular import TabularRLConfig

    if args.methods is not None:
        _check_methods(args.methods)
    check_output_folder(args.out)
    config = (
        SyntheticCalibrationConfig.from_yaml(args.config)
        if args.config
        else SyntheticCalibrationConfig()
    )
    overrides = config_overrides(args, SyntheticCalibrationConfig)
    rl_overrides = config_overrides(args, TabularRLConfig, prefix="rl-", exclude=("method",))
    options = {name: option_name(name) for name in overrides}
    options.update({name: option_name(name, "rl-") for name in rl_overrides})
    if args.seed is not None and "seed" not in rl_overrides:
        rl_overrides["seed"] = args.seed  # one seed for the questions and the training
    values = config.to_dict()
    values["rl"] = {**values["rl"], **rl_overrides}
    config = build_config(SyntheticCalibrationConfig, values, overrides, options=options)
    run_synthetic_calibration(
        Path(args.out), config, overwrite=args.force, progress=not args.no_progress
    )
    return 0
