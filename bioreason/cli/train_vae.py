"""``bioreason train-vae``: fit a perturbation VAE on an AnnData and save it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bioreason.cli._base import (
    add_force,
    non_negative_int,
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

NAME = "train-vae"

# the registry names of bioreason.models.MODELS (kept here: importing models is slow)
VAE_MODELS = ("sams_vae", "cpa_vae", "conditional_vae", "svae_plus")


def _evaluation_without_options() -> list[str]:
    """The EvaluationConfig fields train-vae sets no option for (all but the particles)."""
    import dataclasses

    from bioreason.models import EvaluationConfig

    return [
        f"evaluation.{f.name}"
        for f in dataclasses.fields(EvaluationConfig)
        if f.name != "iwelbo_particles"
    ]


def _settings(args: argparse.Namespace):
    """The command's settings from --config (flat or nested YAML) with the flags on top.

    Returns
    -------
    TrainVAEConfig
    """
    from bioreason.models import TrainVAEConfig

    values = read_config_file(args.config, TrainVAEConfig, "train-vae config")
    overrides, options = tree_overrides(args, TrainVAEConfig, exclude=_evaluation_without_options())
    where = f"train-vae config ({args.config})" if args.config else "train-vae"
    return build_config(
        TrainVAEConfig, merge_values(values, overrides), {}, where=where, options=options
    )


def _options(parser: argparse.ArgumentParser) -> None:
    from bioreason.models import TrainVAEConfig

    positive = {"type": positive_int}
    add_config_tree(
        parser,
        TrainVAEConfig,
        titles={
            "": "what to fit (TrainVAEConfig fields; they override --config)",
            "setup": "how the AnnData is written (PerturbationSetup fields)",
            "vae": "model options (VAEConfig fields; they override --config)",
            "train": "training options (TrainConfig fields; they override --config)",
            "evaluation": "evaluation (EvaluationConfig fields; they override --config)",
        },
        exclude=_evaluation_without_options(),
        extra={
            "model": {"choices": VAE_MODELS},
            "test_fraction": {"type": probability},
            "validation_fraction": {"type": probability},
            "setup.control": {"metavar": "LABEL"},
            "train.max_steps": positive,
            "train.max_epochs": positive,
            "train.batch_size": positive,
            "train.n_particles": positive,
            "train.seed": {"type": non_negative_int},
            "train.lr": {"type": positive_float},
            "evaluation.iwelbo_particles": positive,
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
    parser.add_argument("--config", help="YAML file of settings (see above)")
    add_force(parser, "a --out folder holding other files or another model")
    return parser
