"""The ``bioreason`` command.

Exit status: 0 on success, 1 when the command failed (the one-line message says what
and where), 2 for a command-line usage error (argparse's convention), 130 when
interrupted (Ctrl-C). ``--debug`` or ``BIOREASON_DEBUG=1`` shows the full traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from bioreason import __version__

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_EPILOG = (
    "exit status: 0 success, 1 failure (one line 'error: ...' names the file or option), "
    "2 usage error, 130 interrupted. --debug or BIOREASON_DEBUG=1 shows the traceback."
)


class UsageError(Exception):
    """A bad command line found after parsing (an option's value): exit status 2."""


# the failures a user can cause (bad files, bad values); anything else is a bug and
# keeps its traceback
_EXPECTED_ERRORS = (ValueError, TypeError, OSError, yaml.YAMLError)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``error: <what>; see '<prog> --help'``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message}; see '{self.prog} --help'\n")


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def _add_force(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--force",
        "--overwrite",
        dest="force",
        action="store_true",
        help=f"replace {what} (--overwrite is the same flag)",
    )


def _simulate(args: argparse.Namespace) -> int:
    from bioreason._io import atomic_write
    from bioreason.data import ScreenConfig, simulate_screen

    out = Path(args.out)
    if out.suffix != ".h5ad":
        raise UsageError(f"--out must end in .h5ad, got {out}")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file path ending in .h5ad")
    if out.exists() and not args.force:
        raise FileExistsError(
            f"{out} already exists; choose another --out or pass --force to replace it"
        )
    config = ScreenConfig.from_yaml(args.config) if args.config else ScreenConfig()
    overrides = {
        name: getattr(args, name)
        for name in (
            "n_cells_per_condition",
            "n_genes",
            "n_latent",
            "n_perturbations",
            "n_combinations",
            "mask_probability",
            "seed",
        )
        if getattr(args, name) is not None
    }
    config = ScreenConfig.from_dict({**config.to_dict(), **overrides})
    adata = simulate_screen(config)
    atomic_write(out, lambda tmp: adata.write_h5ad(tmp), overwrite=args.force)
    print(f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} genes")
    return 0


def _read_h5ad(path: Path, backed: bool):
    """``anndata.read_h5ad`` whose errors name the file and say what is wrong with it."""
    import anndata as ad

    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the path of one .h5ad file")
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except OSError as err:  # h5py: its messages do not name the file
        text = _one_line(err)
        if "file signature not found" in text:
            raise OSError(f"{path} is not an HDF5 (.h5ad) file") from None
        if "truncated file" in text:
            raise OSError(
                f"{path} is truncated (an interrupted download or copy?): {text}"
            ) from None
        raise OSError(f"cannot read {path}: {text}") from None
    except (KeyError, TypeError, ValueError) as err:  # HDF5, but not AnnData's layout
        raise ValueError(
            f"{path} is an HDF5 file but not an AnnData .h5ad one ({_one_line(err)})"
        ) from None


def _inspect(args: argparse.Namespace) -> int:
    from bioreason.data import PerturbationData, PerturbationSetup

    path = Path(args.path)
    # options left out keep the PerturbationSetup defaults
    fields = {
        name: getattr(args, name)
        for name in ("perturbation_key", "control", "layer", "delimiter", "dosage_key")
        if getattr(args, name) is not None
    }
    if "layer" in fields and fields["layer"] in ("X", "none", ""):
        fields["layer"] = None
    if "control" in fields and "," in fields["control"]:
        fields["control"] = fields["control"].split(",")
    setup = PerturbationSetup.resolve(where="bioreason inspect", **fields)
    adata = _read_h5ad(path, args.backed)
    data = PerturbationData.from_anndata(adata, setup)
    print(data.summary())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bioreason.pipelines.demo import run_demo

    run_demo(Path(args.out), seed=args.seed, force=args.force)
    return 0


def _check_methods(methods: list[str]) -> None:
    from bioreason.rl import get_advantage

    for method in methods:
        try:
            get_advantage(method)
        except (ValueError, TypeError) as err:
            raise UsageError(f"--methods {method}: {_one_line(err)}") from None
    repeated = sorted({m for m in methods if methods.count(m) > 1})
    if repeated:
        raise UsageError(f"--methods lists {', '.join(repeated)} more than once")


def _synthetic_calibration(args: argparse.Namespace) -> int:
    from bioreason._io import check_output_folder
    from bioreason.pipelines.synthetic_calibration import (
        SyntheticCalibrationConfig,
        run_synthetic_calibration,
    )

    if args.methods is not None:
        _check_methods(args.methods)
    check_output_folder(args.out)
    config = (
        SyntheticCalibrationConfig.from_yaml(args.config)
        if args.config
        else SyntheticCalibrationConfig()
    )
    overrides = {
        name: getattr(args, name)
        for name in ("methods", "seed", "n_questions")
        if getattr(args, name) is not None
    }
    if args.offline:
        overrides["offline"] = True
    rl_overrides = {"steps": args.steps} if args.steps is not None else {}
    if args.seed is not None:  # one seed for the questions and the training
        rl_overrides["seed"] = args.seed
    values = {**config.to_dict(), **overrides}
    values["rl"] = {**values["rl"], **rl_overrides}
    config = SyntheticCalibrationConfig.from_dict(values)
    run_synthetic_calibration(
        Path(args.out), config, overwrite=args.force, progress=not args.no_progress
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bioreason",
        description="Perturbation VAEs, outcome simulators and calibrated RL predictors.",
        epilog=_EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"bioreason {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sim = sub.add_parser("simulate", help="write a synthetic perturbation screen to .h5ad")
    sim.add_argument("--out", required=True, help="output .h5ad path")
    sim.add_argument("--config", help="YAML file of ScreenConfig fields")
    sim.add_argument("--n-cells-per-condition", type=_positive_int, dest="n_cells_per_condition")
    sim.add_argument("--n-genes", type=_positive_int, dest="n_genes")
    sim.add_argument("--n-latent", type=_positive_int, dest="n_latent")
    sim.add_argument("--n-perturbations", type=_positive_int, dest="n_perturbations")
    sim.add_argument("--n-combinations", type=_non_negative_int, dest="n_combinations")
    sim.add_argument("--mask-probability", type=_probability, dest="mask_probability")
    sim.add_argument("--seed", type=_non_negative_int)
    _add_force(sim, "an existing file")
    sim.set_defaults(func=_simulate)

    ins = sub.add_parser("inspect", help="parse a perturbation .h5ad and print a summary")
    ins.add_argument("path")
    # defaults (None here) are those of bioreason.data.PerturbationSetup
    ins.add_argument(
        "--perturbation-key", dest="perturbation_key", help="obs column of labels (perturbation)"
    )
    ins.add_argument("--control", help="control label(s), comma-separated (control)")
    ins.add_argument("--delimiter", help="joins the parts of a combination (+)")
    ins.add_argument("--layer", help="raw-count layer; 'X' for adata.X (counts)")
    ins.add_argument("--dosage-key", dest="dosage_key", help="obs column of doses (none)")
    ins.add_argument("--backed", action="store_true", help="open the file backed (on disk)")
    ins.set_defaults(func=_inspect)

    cal = sub.add_parser(
        "synthetic-calibration",
        help="train a tabular policy with each RL estimator on stochastic outcomes; "
        "write calibration metrics and figures",
    )
    cal.add_argument("--out", required=True, help="output folder (new, empty, or a previous run)")
    cal.add_argument("--config", help="YAML file of SyntheticCalibrationConfig fields")
    cal.add_argument(
        "--methods",
        nargs="+",
        help="advantage estimators (registry names with options, e.g. grpo rloo h_target:log "
        "seed_grpo:base=grpo); default: grpo grpo_no_std rloo reinforce ppo",
    )
    cal.add_argument(
        "--offline",
        action="store_true",
        help="also run each method with 10 updates per rollout, clip 0.2 and 0.001",
    )
    cal.add_argument("--steps", type=_positive_int, help="optimizer steps per run (default 50000)")
    cal.add_argument("--n-questions", type=_positive_int, dest="n_questions", help="default 10000")
    cal.add_argument(
        "--seed", type=_non_negative_int, help="seed of the questions and the training"
    )
    _add_force(cal, "runs of this folder written with other settings")
    cal.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cal.set_defaults(func=_synthetic_calibration)

    demo = sub.add_parser("demo", help="run the end-to-end demo on built-in synthetic data")
    demo.add_argument("--out", default="runs/demo", help="run folder")
    demo.add_argument("--seed", type=_non_negative_int, default=0)
    _add_force(demo, "files in the run folder that the demo did not write")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    debug = args.debug or os.environ.get("BIOREASON_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except UsageError as err:
        if debug:
            raise
        print(f"error: {err}; see 'bioreason {args.command} --help'", file=sys.stderr)
        return EXIT_USAGE
    except _EXPECTED_ERRORS as err:
        if debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
