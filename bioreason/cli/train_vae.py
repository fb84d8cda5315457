"""``bioreason train-vae``: fit a perturbation VAE on an AnnData and save it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bioreason.cli._base import (
    add_force,
    config_group,
    non_negative_int,
    positive_float,
    positive_int,
    probability,
)
from bioreason.cli._options import build_config, config_overrides, read_config_mapping

NAME = "train-vae"

# the registry names of bioreason.models.MODELS (kept here: importing models is slow)
VAE_MODELS = ("sams_vae", "cpa_vae", "conditional_vae", "svae_plus")
# keys of a train-vae config file besides the PerturbationSetup, VAEConfig and TrainConfig
# fields (bioreason.models.TrainVAEConfig reads the flat form and holds the defaults)
_TRAIN_VAE_KEYS = ("model", "test_fraction", "validation_fraction", "iwelbo_particles")


def _settings(args: argparse.Namespace):
    """The command's settings from --config (flat or nested YAML) and the flags.

    Returns
    -------
    TrainVAEConfig
    """
    from bioreason.data import PerturbationSetup
    from bioreason.models import TrainConfig, TrainVAEConfig, VAEConfig

    values, where = {}, "train-vae"
    if args.config:
        values = read_config_mapping(
            args.config,
            "PerturbationSetup, VAEConfig and TrainConfig fields "
            f"(and {', '.join(_TRAIN_VAE_KEYS)})",
        )
        where = f"train-vae config ({args.config})"
    nested = TrainVAEConfig.nest(values, where=where)
    for section, cls in (("setup", PerturbationSetup), ("vae", VAEConfig), ("train", TrainConfig)):
        nested[section] = build_config(
            cls, nested[section], config_overrides(args, cls), where=where
        )
    for key in ("model", "test_fraction", "validation_fraction"):
        if getattr(args, key) is not None:
            nested[key] = getattr(args, key)
    if args.iwelbo_particles is not None:
        nested["evaluation"]["iwelbo_particles"] = args.iwelbo_particles
    return TrainVAEConfig.from_dict(nested, where=where)


def _options(parser: argparse.ArgumentParser) -> None:
    from bioreason.data import PerturbationSetup
    from bioreason.models import TrainConfig, VAEConfig

    config_group(
        parser,
        PerturbationSetup,
        "how the AnnData is written (PerturbationSetup fields)",
        extra={"control": {"metavar": "LABEL"}},
    )
    config_group(parser, VAEConfig, "model options (VAEConfig fields; they override --config)")
    positive = {"type": positive_int}
    config_group(
        parser,
        TrainConfig,
        "training options (TrainConfig fields; they override --config)",
        extra={
            "max_steps": positive,
            "max_epochs": positive,
            "batch_size": positive,
            "n_particles": positive,
            "seed": {"type": non_negative_int},
            "lr": {"type": positive_float},
        },
    )


def main(args: argparse.Namespace) -> int:
    """``bioreason train-vae``: fit a perturbation VAE on an AnnData and save it."""
    from bioreason.models.job import run_train_vae

    adata_path, out = Path(args.adata), Path(args.out)
    if not adata_path.exists():
        raise FileNotFoundError(f"--adata {adata_path} does not exist")
    config = _settings(args)
    done = run_train_vae(adata_path, out, config, force=args.force)
    if done.skipped:
        return 0
    result = done.result
    if result["note"] is not None:
        print(f"warning: {result['note']}", file=sys.stderr)
    if result["test_iwelbo"] is not None:
        score = f"held-out IWELBO (K={result['iwelbo_particles']}) "
        score += f"{result['test_iwelbo']:.2f} nats/cell over {result['n_test_cells']} cells"
    else:
        loss = result["final_train_loss"]
        score = "training loss " + ("n/a" if loss is None else f"{loss:.2f} nats/cell")
    print(
        f"wrote {out}: {result['model_class']}, {result['steps']} steps in "
        f"{result['train_seconds']:.0f} s; {score}"
    )
    print(f"build a task from it: bioreason build-task --model {out} --adata {adata_path} ...")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        NAME,
        help="fit a perturbation VAE on an AnnData",
        description="Fit a perturbation VAE (bioreason.models) on the cells of an .h5ad and "
        "save it into --out (a model folder that 'bioreason build-task --model' reads), with "
        "result.json (held-out IWELBO, final losses). Flags override --config (a YAML "
        "mapping of PerturbationSetup, VAEConfig and TrainConfig fields plus model, "
        "test_fraction, validation_fraction, iwelbo_particles). Rerunning an interrupted "
        "run with the same settings resumes it from its checkpoint.",
        populate=_options,
    )
    parser.add_argument("--adata", required=True, metavar="FILE.h5ad", help="cells (raw counts)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output model folder")
    parser.add_argument("--model", choices=VAE_MODELS, help="model to fit (default sams_vae)")
    parser.add_argument("--config", help="YAML file of settings (see above)")
    parser.add_argument(
        "--test-fraction",
        dest="test_fraction",
        type=probability,
        help="share of the cells held out for the IWELBO; 0 for none (default 0.1)",
    )
    parser.add_argument(
        "--validation-fraction",
        dest="validation_fraction",
        type=probability,
        help="share of the other cells validated on during training (default 0.1)",
    )
    parser.add_argument(
        "--iwelbo-particles",
        dest="iwelbo_particles",
        type=positive_int,
        help="importance samples of the held-out IWELBO (default 20)",
    )
    add_force(parser, "a --out folder holding other files or another model")
    return parser
