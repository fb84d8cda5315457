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
    read_h5ad,
)
from bioreason.cli._options import build_config, config_overrides

NAME = "train-vae"

# the registry names of bioreason.models.MODELS (kept here: importing models is slow)
VAE_MODELS = ("sams_vae", "cpa_vae", "conditional_vae", "svae_plus")
# keys of a train-vae config file besides the PerturbationSetup, VAEConfig and TrainConfig
# fields (bioreason.models.TrainVAEConfig reads the flat form and holds the defaults)
_TRAIN_VAE_KEYS = ("model", "test_fraction", "validation_fraction", "iwelbo_particles")
# the files model.save writes into --out (run_stage adds result.json)
_MODEL_FILES = ("config.yaml", "attributes.json", "model.pt", "history.csv")
_CHECKPOINTS = "checkpoint"


# fit_vae's keys that result.json writes under its own names (further evaluations asked
# for in the config's ``evaluation`` are written as fit_vae names them)
_FIT_KEYS_USED = (
    "model",
    "steps",
    "train_seconds",
    "final_train_loss",
    "final_validation_loss",
    "iwelbo_heldout",
)


def _settings(args: argparse.Namespace):
    """The command's settings from --config (flat or nested YAML) and the flags.

    Returns
    -------
    TrainVAEConfig
    """
    from bioreason.config import read_yaml
    from bioreason.data import PerturbationSetup
    from bioreason.models import TrainConfig, TrainVAEConfig, VAEConfig

    values, where = {}, "train-vae"
    if args.config:
        values = read_yaml(args.config, what="config file")
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ValueError(
                f"config file {args.config} must hold a mapping of PerturbationSetup, "
                f"VAEConfig and TrainConfig fields (and {', '.join(_TRAIN_VAE_KEYS)}), got "
                f"{type(values).__name__}"
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


def _record(config, adata_path: Path) -> dict:
    """The settings the manifest records (the keys of earlier versions, so that their
    folders stay up to date; ``evaluation`` only where it differs from the default).

    Returns
    -------
    dict
        Plain JSON data.
    """
    import json

    from bioreason.models import TrainVAEConfig

    default = TrainVAEConfig().evaluation.to_dict()
    evaluation = {
        key: value
        for key, value in config.evaluation.to_dict().items()
        if key != "iwelbo_particles" and value != default[key]
    }
    record = {
        "model": config.model,
        "adata": str(adata_path),
        "setup": config.setup.to_dict(),
        "vae": config.vae.to_dict(),
        "train": {k: v for k, v in config.train.to_dict().items() if k != "progress"},
        "test_fraction": config.test_fraction,
        "validation_fraction": config.validation_fraction,
        "iwelbo_particles": config.evaluation.iwelbo_particles,
        **({"evaluation": evaluation} if evaluation else {}),
    }
    return json.loads(json.dumps(record, default=str))


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
    from bioreason._io import check_output_folder, json_safe
    from bioreason.stage import run_stage

    adata_path, out = Path(args.adata), Path(args.out)
    if not adata_path.exists():
        raise FileNotFoundError(f"--adata {adata_path} does not exist")
    check_output_folder(out)
    config = _settings(args)
    record = _record(config, adata_path)
    seed = config.train.seed
    checkpoints = out / _CHECKPOINTS

    def compute(folder: Path) -> dict:
        from bioreason.models import fit_vae

        adata = read_h5ad(adata_path, backed=False)
        # the stage helper keeps the checkpoint of an interrupted run of these settings
        # only (it is scratch): finding one means resuming
        resume = checkpoints.is_dir()
        if resume:
            print(f"resuming from the checkpoint in {checkpoints}")
        model, fitted = fit_vae(
            adata,
            config.split(adata.n_obs),
            config.model,
            config.vae,
            config.train,
            config.evaluation,
            setup=config.setup,
            checkpoint_dir=checkpoints,
            resume=resume,
        )
        note = fitted.get("notes", {}).get("heldout_iwelbo")
        if note is not None:  # e.g. SVAE+ and a condition whose cells are all held out
            note = f"no held-out IWELBO: {note}"
            print(f"warning: {note}", file=sys.stderr)
        model.save(folder, overwrite=True)
        n_train = model.adata.n_obs
        return json_safe(
            {
                "model": config.model,
                "model_class": type(model).__name__,
                "n_cells": int(adata.n_obs),
                "n_genes": int(adata.n_vars),
                "n_perturbations": len(model.perturbation_names),
                "n_train_cells": int(n_train),
                "n_test_cells": int(adata.n_obs - n_train),
                "steps": fitted["steps"],
                "train_seconds": fitted["train_seconds"],
                "final_train_loss": fitted.get("final_train_loss"),
                "final_validation_loss": fitted.get("final_validation_loss"),
                "test_iwelbo": fitted.get("iwelbo_heldout"),
                "iwelbo_particles": config.evaluation.iwelbo_particles,
                "note": note,
                **{
                    key: value
                    for key, value in fitted.items()
                    if key not in _FIT_KEYS_USED and key != "notes"
                },
            }
        )

    done = run_stage(
        out,
        record,
        {"adata": adata_path},
        compute,
        seed=seed,
        force=args.force,
        outputs=_MODEL_FILES,
        log=lambda _: print(f"{out} is up to date (same settings and AnnData); nothing to do"),
        scratch=[_CHECKPOINTS],
        keep_finished=True,  # a model the user has is replaced only with --force
    )
    if done.skipped:
        return 0
    result = done.result
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
