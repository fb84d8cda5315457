"""The ``bioreason`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bioreason import __version__


def _simulate(args: argparse.Namespace) -> int:
    from bioreason._io import atomic_write
    from bioreason.data import ScreenConfig, simulate_screen

    out = Path(args.out)
    if out.suffix != ".h5ad":
        raise SystemExit(f"error: --out must end in .h5ad, got {out}")
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} already exists; pass --overwrite to replace it")
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
    atomic_write(out, lambda tmp: adata.write_h5ad(tmp), overwrite=True)
    print(f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} genes")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import anndata as ad

    from bioreason.data import PerturbationData, PerturbationSetup

    path = Path(args.path)
    if not path.exists():
        raise SystemExit(f"error: {path} does not exist")
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
    adata = ad.read_h5ad(path, backed="r" if args.backed else None)
    data = PerturbationData.from_anndata(adata, setup)
    print(data.summary())
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bioreason.pipelines.demo import run_demo

    run_demo(Path(args.out), seed=args.seed)
    return 0


def _synthetic_calibration(args: argparse.Namespace) -> int:
    from bioreason.pipelines.synthetic_calibration import (
        SyntheticCalibrationConfig,
        run_synthetic_calibration,
    )

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
        Path(args.out), config, overwrite=args.overwrite, progress=not args.no_progress
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bioreason",
        description="Perturbation VAEs, outcome simulators and calibrated RL predictors.",
    )
    parser.add_argument("--version", action="version", version=f"bioreason {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sim = sub.add_parser("simulate", help="write a synthetic perturbation screen to .h5ad")
    sim.add_argument("--out", required=True, help="output .h5ad path")
    sim.add_argument("--config", help="YAML file of ScreenConfig fields")
    sim.add_argument("--n-cells-per-condition", type=int, dest="n_cells_per_condition")
    sim.add_argument("--n-genes", type=int, dest="n_genes")
    sim.add_argument("--n-latent", type=int, dest="n_latent")
    sim.add_argument("--n-perturbations", type=int, dest="n_perturbations")
    sim.add_argument("--n-combinations", type=int, dest="n_combinations")
    sim.add_argument("--mask-probability", type=float, dest="mask_probability")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--overwrite", action="store_true", help="replace an existing file")
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
    cal.add_argument("--steps", type=int, help="optimizer steps per run (default 50000)")
    cal.add_argument("--n-questions", type=int, dest="n_questions", help="default 10000")
    cal.add_argument("--seed", type=int, help="seed of the questions and the training")
    cal.add_argument(
        "--overwrite", action="store_true", help="replace runs written with other settings"
    )
    cal.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cal.set_defaults(func=_synthetic_calibration)

    demo = sub.add_parser("demo", help="run the end-to-end demo on built-in synthetic data")
    demo.add_argument("--out", default="runs/demo", help="run folder")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileExistsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
