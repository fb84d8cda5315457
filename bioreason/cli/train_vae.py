"""``bioreason train-vae``: fit a perturbation VAE on an AnnData and save it."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bioreason.cli._base import (
    add_force,
    config_group,
    non_negative_int,
    one_line,
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
# fields, with their defaults
_TRAIN_VAE_KEYS = {
    "model": "sams_vae",
    "test_fraction": 0.1,
    "validation_fraction": 0.1,
    "iwelbo_particles": 20,
}
# the files train-vae writes into --out (model.save's four, then its own)
_TRAIN_VAE_OUTPUTS = ("config.yaml", "attributes.json", "model.pt", "history.csv", "result.json")
_TRAIN_VAE_CHECKPOINTS = "checkpoint"


def _train_vae_settings(args: argparse.Namespace):
    """(setup, VAEConfig, TrainConfig, extra keys) from --config and the flags."""
    from bioreason.config import read_yaml
    from bioreason.data import PerturbationSetup
    from bioreason.models import TrainConfig, VAEConfig

    classes = (PerturbationSetup, VAEConfig, TrainConfig)
    names = [{f.name for f in dataclasses.fields(c)} for c in classes]
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
        valid = set().union(*names, _TRAIN_VAE_KEYS)
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")
    extra = {key: values.get(key, default) for key, default in _TRAIN_VAE_KEYS.items()}
    extra.update({k: getattr(args, k) for k in _TRAIN_VAE_KEYS if getattr(args, k) is not None})
    if extra["model"] not in VAE_MODELS:
        raise ValueError(f"{where}.model must be one of {list(VAE_MODELS)}, got {extra['model']!r}")
    for key in ("test_fraction", "validation_fraction"):
        value = extra[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ValueError(f"{where}.{key} must be a number in [0, 1), got {value!r}")
    particles = extra["iwelbo_particles"]
    if isinstance(particles, bool) or not isinstance(particles, int) or particles < 1:
        raise ValueError(f"{where}.iwelbo_particles must be a positive integer, got {particles!r}")
    configs = [
        build_config(
            cls,
            {k: v for k, v in values.items() if k in fields},
            config_overrides(args, cls),
            where=where,
        )
        for cls, fields in zip(classes, names)
    ]
    return (*configs, extra)


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
    import json
    import shutil
    import time

    from bioreason._io import atomic_write_text, check_output_folder, json_safe
    from bioreason.stage import MANIFEST, file_sha256, manifest_matches, write_manifest

    adata_path, out = Path(args.adata), Path(args.out)
    if not adata_path.exists():
        raise FileNotFoundError(f"--adata {adata_path} does not exist")
    check_output_folder(out)
    setup, vae, train, extra = _train_vae_settings(args)
    record = {
        "model": extra["model"],
        "adata": str(adata_path),
        "setup": setup.to_dict(),
        "vae": vae.to_dict(),
        "train": {k: v for k, v in train.to_dict().items() if k != "progress"},
        **{k: extra[k] for k in ("test_fraction", "validation_fraction", "iwelbo_particles")},
    }
    record = json.loads(json.dumps(record, default=str))
    inputs = {"adata": adata_path}
    checkpoints = out / _TRAIN_VAE_CHECKPOINTS
    resume = False
    if out.exists() and any(out.iterdir()):
        if manifest_matches(out, config=record, seed=train.seed, inputs=inputs):
            print(f"{out} is up to date (same settings and AnnData); nothing to do")
            return 0
        try:
            saved = json.loads((out / MANIFEST).read_text())
        except (OSError, ValueError):
            saved = None
        interrupted = (
            isinstance(saved, dict)
            and saved.get("config") == record
            and saved.get("inputs") == {"adata": file_sha256(adata_path)}
            and None in dict(saved.get("outputs") or {}).values()
        )
        if args.force:
            for name in (*_TRAIN_VAE_OUTPUTS, MANIFEST):
                if (out / name).exists():
                    (out / name).unlink()
            shutil.rmtree(checkpoints, ignore_errors=True)
        elif interrupted:  # the same run, stopped: go on from its checkpoint
            resume = checkpoints.is_dir()
        else:
            why = (
                "was not written by 'bioreason train-vae'"
                if not isinstance(saved, dict)
                else "holds a model trained with other settings or data"
            )
            raise FileExistsError(
                f"{out} {why}; choose another --out or pass --force to replace it"
            )
    out.mkdir(parents=True, exist_ok=True)
    outputs = [out / name for name in _TRAIN_VAE_OUTPUTS]
    write_manifest(
        out, config=record, seed=train.seed, inputs=inputs, outputs=outputs, complete=False
    )

    import numpy as np

    from bioreason.data import PerturbationData
    from bioreason.models import MODELS

    adata = read_h5ad(adata_path, backed=False)
    cls = MODELS.get(extra["model"])
    cls.setup_anndata(adata, setup)
    names = PerturbationData.from_anndata(adata, setup).perturbation_names
    order = np.random.default_rng(train.seed).permutation(adata.n_obs)
    n_test = int(round(extra["test_fraction"] * adata.n_obs))
    test_cells, train_cells = np.sort(order[:n_test]), np.sort(order[n_test:])
    train_adata = adata[train_cells].copy()
    model = cls(train_adata, seed=train.seed, perturbation_names=names, **vae.to_dict())
    start = time.perf_counter()
    if resume:
        print(f"resuming from the checkpoint in {checkpoints}")
    history = model.train(
        validation_fraction=extra["validation_fraction"],
        checkpoint_dir=checkpoints,
        resume=resume,
        **train.to_dict(),
    )
    seconds = time.perf_counter() - start

    def last(column: str) -> float | None:
        values = history[column].dropna() if column in history else []
        return float(values.iloc[-1]) if len(values) else None

    test_iwelbo, note = None, None
    if n_test:
        try:
            test_iwelbo = model.iwelbo(
                adata[test_cells].copy(), n_particles=extra["iwelbo_particles"], seed=train.seed
            )
        except ValueError as err:  # e.g. SVAE+ and a condition whose cells are all held out
            note = f"no held-out IWELBO: {one_line(err)}"
            print(f"warning: {note}", file=sys.stderr)
    model.save(out, overwrite=True)
    steps = int(history["step"].max()) if len(history) else 0
    result = {
        "model": extra["model"],
        "model_class": cls.__name__,
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_perturbations": len(names),
        "n_train_cells": int(train_cells.size),
        "n_test_cells": int(test_cells.size),
        "steps": steps,
        "train_seconds": seconds,
        "final_train_loss": last("train_loss"),
        "final_validation_loss": last("validation_loss"),
        "test_iwelbo": test_iwelbo,
        "iwelbo_particles": extra["iwelbo_particles"],
        "note": note,
    }
    atomic_write_text(out / "result.json", json.dumps(json_safe(result), indent=2) + "\n")
    shutil.rmtree(checkpoints, ignore_errors=True)
    write_manifest(out, config=record, seed=train.seed, inputs=inputs, outputs=outputs)
    if test_iwelbo is not None:
        score = f"held-out IWELBO (K={extra['iwelbo_particles']}) {test_iwelbo:.2f} nats/cell"
        score += f" over {test_cells.size} cells"
    else:
        loss = result["final_train_loss"]
        score = "training loss " + ("n/a" if loss is None else f"{loss:.2f} nats/cell")
    print(f"wrote {out}: {cls.__name__}, {steps} steps in {seconds:.0f} s; {score}")
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
