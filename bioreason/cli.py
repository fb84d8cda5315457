"""The ``bioreason`` command.

Exit status: 0 on success, 1 when the command failed (the one-line message says what
and where), 2 for a command-line usage error (argparse's convention), 130 when
interrupted (Ctrl-C). ``--debug`` or ``BIOREASON_DEBUG=1`` shows the full traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from bioreason import __version__
from bioreason._cli_options import (
    add_config_options,
    build_config,
    config_overrides,
    option_name,
)
from bioreason.config import yaml_loads

# the split names of bioreason.data.tasks.SPLITS (kept here: importing data is slow)
TASK_SPLITS = ("random", "heldout_conditions", "heldout_combinations")

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
    """argparse with one-line usage errors: ``error: <what>; see '<prog> --help'``.

    ``populate`` (a subcommand's parser) adds the options generated from config
    dataclasses the first time the parser parses or prints its help, so that
    ``bioreason --help`` and the other subcommands do not import every config's module.
    """

    def __init__(self, *args, populate=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._populate = populate

    def _ensure_populated(self) -> None:
        populate, self._populate = self._populate, None
        if populate is not None:
            populate(self)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._ensure_populated()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._ensure_populated()
        return super().format_help()

    def format_usage(self) -> str:
        self._ensure_populated()
        return super().format_usage()

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"error: {message}; see '{self.prog} --help'\n")


class _CommandListFormatter(argparse.HelpFormatter):
    """The top-level help: each subcommand on one line, its help beside it (unwrapped)."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):  # argparse forgets their indent
            longest = max((len(name) for name in action.choices), default=0)
            indent = self._current_indent + self._indent_increment
            self._action_max_length = max(self._action_max_length, longest + indent)

    def _split_lines(self, text: str, width: int) -> list[str]:
        return [" ".join(text.split())]


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _config_group(
    parser: argparse.ArgumentParser, config_class: type, title: str, **kwargs
) -> list[str]:
    """An argument group of the options generated from ``config_class``'s fields."""
    return add_config_options(parser.add_argument_group(title), config_class, **kwargs)


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
    config = build_config(ScreenConfig, config.to_dict(), config_overrides(args, ScreenConfig))
    adata = simulate_screen(config)
    atomic_write(out, lambda tmp: adata.write_h5ad(tmp), overwrite=args.force)
    print(f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} genes")
    return 0


def _simulate_options(parser: argparse.ArgumentParser) -> None:
    from bioreason.data.simulate import ScreenConfig

    positive = {"type": _positive_int}
    _config_group(
        parser,
        ScreenConfig,
        "screen options (ScreenConfig fields; they override --config)",
        extra={
            "n_cells_per_condition": positive,
            "n_genes": positive,
            "n_latent": positive,
            "n_perturbations": positive,
            "n_combinations": {"type": _non_negative_int},
            "mask_probability": {"type": _probability},
            "seed": {"type": _non_negative_int},
        },
    )


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

    run_demo(Path(args.out), seed=args.seed, force=args.force, workers=args.workers)
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
    from bioreason.rl.trainer import TabularRLConfig

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


def _synthetic_calibration_options(parser: argparse.ArgumentParser) -> None:
    from bioreason.pipelines.synthetic_calibration import SyntheticCalibrationConfig
    from bioreason.rl.trainer import TabularRLConfig

    _config_group(
        parser,
        SyntheticCalibrationConfig,
        "experiment options (SyntheticCalibrationConfig fields; they override --config)",
        extra={
            "methods": {"metavar": "METHOD"},
            "n_questions": {"type": _positive_int},
            "seed": {
                "type": _non_negative_int,
                "help": "seeds the questions, the outcomes, the evaluation draws and the "
                "training (rl.seed, unless --rl-seed is given) (default 0)",
            },
        },
    )
    _config_group(
        parser,
        TabularRLConfig,
        "trainer options (rl: TabularRLConfig fields; rl.method is each of --methods)",
        prefix="rl-",
        exclude=("method",),
        extra={"steps": {"aliases": ["--steps"], "type": _positive_int}},
    )


# ---------------------------------------------------------------- VAE training
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


def _train_vae_options(parser: argparse.ArgumentParser) -> None:
    from bioreason.data import PerturbationSetup
    from bioreason.models import TrainConfig, VAEConfig

    _config_group(
        parser,
        PerturbationSetup,
        "how the AnnData is written (PerturbationSetup fields)",
        extra={"control": {"metavar": "LABEL"}},
    )
    _config_group(parser, VAEConfig, "model options (VAEConfig fields; they override --config)")
    positive = {"type": _positive_int}
    _config_group(
        parser,
        TrainConfig,
        "training options (TrainConfig fields; they override --config)",
        extra={
            "max_steps": positive,
            "max_epochs": positive,
            "batch_size": positive,
            "n_particles": positive,
            "seed": {"type": _non_negative_int},
            "lr": {"type": _positive_float},
        },
    )


def _train_vae(args: argparse.Namespace) -> int:
    """``bioreason train-vae``: fit a perturbation VAE on an AnnData and save it."""
    import json
    import shutil
    import time

    from bioreason._io import (
        MANIFEST,
        atomic_write_text,
        check_output_folder,
        file_sha256,
        json_safe,
        manifest_matches,
        write_manifest,
    )

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

    adata = _read_h5ad(adata_path, backed=False)
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
            note = f"no held-out IWELBO: {_one_line(err)}"
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


# ---------------------------------------------------------------- task tables
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
    from bioreason.config import read_yaml
    from bioreason.sim.task_config import TaskConfig

    values, where = {}, "build-task"
    if args.config:
        values = read_yaml(args.config, what="config file")
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ValueError(
                f"config file {args.config} must hold a mapping of TaskConfig fields, got "
                f"{type(values).__name__}"
            )
        where = f"TaskConfig ({args.config})"
    elif args.model is None:
        raise UsageError("give the saved model folder (--model DIR) or a config file (--config)")
    overrides = config_overrides(args, TaskConfig, exclude=_TASK_HAND_MADE)
    options = {name: option_name(name) for name in overrides}
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
    return build_config(TaskConfig, values, overrides, where=where, options=options)


def _build_task_options(parser: argparse.ArgumentParser) -> None:
    from bioreason.sim.task_config import TaskConfig

    positive = {"type": _positive_int}
    _config_group(
        parser,
        TaskConfig,
        "task options (TaskConfig fields; they override --config)",
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
            "test_fraction": {"type": _probability},
            "val_fraction": {"type": _probability},
            "seed": {"type": _non_negative_int},
            "target_se": {"type": _positive_float},
            "max_draws": positive,
            "threshold_quantile": {"type": _probability},
            "cells_per_draw": positive,
            "replicates_per_draw": positive,
        },
    )


def _build_task(args: argparse.Namespace) -> int:
    import warnings

    from bioreason.sim.task_config import build_task_from_config

    out = Path(args.out)
    if out.suffix not in (".parquet", ".pq"):
        raise UsageError(f"--out must end in .parquet (or .pq), got {out}")
    if out.is_dir():
        raise IsADirectoryError(f"--out {out} is a folder; give a file path ending in .parquet")
    if out.exists() and not args.force:
        raise FileExistsError(
            f"{out} already exists; choose another --out or pass --force to replace it"
        )
    config = _task_config(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        table = build_task_from_config(config, out, overwrite=args.force)
    for warning in caught:
        print(f"warning: {_one_line(warning.message)}", file=sys.stderr)
    summary = table.attrs["summary"]
    splits = ", ".join(f"{k} {v}" for k, v in _ordered_splits(summary["questions_per_split"]))
    print(
        f"wrote {out}: {len(table)} questions ({table['condition'].nunique()} conditions x "
        f"{table['readout'].nunique()} readouts; {splits}); mean p* {summary['mean_p_star']:.3f}, "
        f"outcome rate {summary['outcome_rate']:.3f}"
    )
    return 0


def _ordered_splits(counts: dict) -> list:
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(counts.items(), key=lambda item: (order.get(item[0], 3), item[0]))


def _read_task(path: Path):
    """A task table from a parquet file (``save_task``) or a Replogle task folder."""
    from bioreason.data.tasks import load_replogle_task, load_task

    if path.is_dir():
        if (path / "train.pq").exists():
            return load_replogle_task(path)
        raise IsADirectoryError(
            f"{path} is a folder; give a task .parquet file (bioreason build-task --out) or "
            "a Replogle task folder (train.pq, val.pq, test.pq)"
        )
    if not path.exists():
        raise FileNotFoundError(f"task table {path} does not exist")
    try:
        return load_task(path)
    except ValueError as err:
        text = _one_line(err)
        if "not a readable parquet" in text:
            raise ValueError(f"{path} is not a parquet file (not a task table)") from None
        if "lacks column" in text:
            raise ValueError(f"{path} is a parquet file but not a task table: {text}") from None
        raise


def _task_facts(table, path: Path, target_se: float | None) -> dict:
    """The summary of a task table, plus what inspect-task prints beyond it."""
    import json

    import numpy as np

    from bioreason.data.tasks import task_summary

    facts = task_summary(table)
    sidecar = path.with_suffix(path.suffix + ".summary.json")
    if target_se is None and path.is_file() and sidecar.exists():
        try:
            target_se = json.loads(sidecar.read_text()).get("target_se")
        except (OSError, ValueError, AttributeError):
            target_se = None
    target_se = 0.01 if target_se is None else float(target_se)
    p_star = table["p_star"].to_numpy(dtype=float)
    known = np.isfinite(p_star)
    facts["questions_per_split"] = dict(_ordered_splits(facts["questions_per_split"]))
    facts["outcome_rate_per_split"] = {
        split: float(table.loc[table["split"] == split, "outcome"].mean())
        for split in facts["questions_per_split"]
    }
    facts["n_conditions"] = int(table["condition"].nunique())
    facts["n_readouts"] = int(table["readout"].nunique())
    facts["n_with_p_star"] = int(known.sum())
    facts["target_se"] = target_se
    facts["n_unconverged"] = int(
        (table["p_star_se"].to_numpy(dtype=float)[known] > target_se).sum()
    )
    for column, key in (("p_true", "mean_p_true"), ("reference_probability", "mean_reference")):
        values = table[column].to_numpy(dtype=float)
        facts[key] = float(np.nanmean(values)) if np.isfinite(values).any() else None
    both = known & np.isfinite(table["p_true"].to_numpy(dtype=float))
    facts["mean_abs_p_star_minus_p_true"] = (
        float(np.abs(p_star[both] - table["p_true"].to_numpy(dtype=float)[both]).mean())
        if both.any()
        else None
    )
    reference = table["reference_probability"].to_numpy(dtype=float)
    reference = reference[np.isfinite(reference)]
    facts["reference_histogram"] = (
        np.histogram(reference, bins=10, range=(0, 1))[0].tolist() if reference.size else []
    )
    facts["outcome_definitions"] = list(dict.fromkeys(table["outcome_definition"].astype(str)))
    facts["columns"] = [str(c) for c in table.columns]
    return facts


def _describe_outcome(text: str) -> str:
    import json

    try:
        definition = json.loads(text)
    except ValueError:
        return text[:200]
    if not isinstance(definition, dict):
        return text[:200]
    name = definition.pop("name", "?")
    parts = []
    for key, value in definition.items():
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(v, (int, float)) for v in value.values())
        ):
            low, high = min(value.values()), max(value.values())
            parts.append(f"{key} per readout ({len(value)} values, {low:.3g}-{high:.3g})")
        else:
            parts.append(f"{key}={value}")
    return f"{name} ({', '.join(parts)})" if parts else str(name)


def _histogram_lines(counts: list[int], width: int = 40) -> list[str]:
    top = max(max(counts), 1)
    return [
        f"  {k / 10:.1f}-{(k + 1) / 10:.1f} | {'#' * round(width * n / top):<{width}} {n}"
        for k, n in enumerate(counts)
    ]


def _task_report(facts: dict, path: Path) -> str:
    def number(value) -> str:
        return "n/a" if value is None or value != value else f"{value:.3f}"

    splits = ", ".join(f"{k} {v}" for k, v in facts["questions_per_split"].items())
    rates = ", ".join(f"{k} {number(v)}" for k, v in facts["outcome_rate_per_split"].items())
    lines = [
        f"{path}: {facts['n_questions']} questions, {facts['n_conditions']} conditions, "
        f"{facts['n_readouts']} readouts",
    ]
    for text in facts["outcome_definitions"][:3]:
        lines.append(f"outcome: {_describe_outcome(text)}")
    if len(facts["outcome_definitions"]) > 3:
        lines.append(f"  ... {len(facts['outcome_definitions'])} outcome definitions in all")
    lines += [
        f"questions per split: {splits}",
        f"outcome rate: {number(facts['outcome_rate'])} ({rates})",
    ]
    if facts["n_with_p_star"]:
        lines.append(
            f"p*: mean {number(facts['mean_p_star'])}, mean SE {facts['mean_p_star_se']:.4f}, "
            f"unconverged (SE > {facts['target_se']:g}) {facts['n_unconverged']} of "
            f"{facts['n_with_p_star']}; within 0.05 of 0 or 1: "
            f"{facts['p_star_extreme_fraction']:.0%}"
        )
        lines.append("p* histogram:")
        lines += _histogram_lines(facts["p_star_histogram"])
    else:
        lines.append("p*: none (no model behind this task: p_star is empty)")
    if facts["mean_p_true"] is not None:
        gap = facts["mean_abs_p_star_minus_p_true"]
        lines.append(
            f"p_true: mean {number(facts['mean_p_true'])}"
            + (f", mean |p* - p_true| {gap:.3f}" if gap is not None else "")
        )
    if facts["mean_reference"] is not None:
        lines.append(f"reference probability: mean {number(facts['mean_reference'])}")
        if not facts["n_with_p_star"]:
            lines.append("reference probability histogram:")
            lines += _histogram_lines(facts["reference_histogram"])
    lines.append(f"columns: {', '.join(facts['columns'])}")
    return "\n".join(lines)


def _inspect_task(args: argparse.Namespace) -> int:
    import json

    path = Path(args.path)
    table = _read_task(path)
    facts = _task_facts(table, path, args.target_se)
    if args.json:
        print(json.dumps(facts, indent=1))
    else:
        print(_task_report(facts, path))
    return 0


# ---------------------------------------------------------------- LM fine-tuning
# keys of a finetune config file besides the LMRLConfig fields
_FINETUNE_KEYS = {"model": None, "warm_start_steps": 0, "warm_start_lr": 1e-3}
# the files finetune writes into --out
_FINETUNE_OUTPUTS = (
    "predictions.parquet",
    "log.csv",
    "eval.csv",
    "checkpoint.pt",
    "model",
    "metrics.json",
)


def _finetune_settings(args: argparse.Namespace):
    """(LMRLConfig, model name, warm-start steps, warm-start lr) from --config and flags."""
    from bioreason.config import read_yaml
    from bioreason.rl import LMRLConfig

    values, where = {}, "finetune"
    if args.config:
        values = read_yaml(args.config, what="config file")
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ValueError(
                f"config file {args.config} must hold a mapping of LMRLConfig fields (and "
                f"{', '.join(_FINETUNE_KEYS)}), got {type(values).__name__}"
            )
        where = f"finetune config ({args.config})"
        valid = {f.name for f in dataclasses.fields(LMRLConfig)} | set(_FINETUNE_KEYS)
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(valid)}")
    values = dict(values)
    extra = {key: values.pop(key, default) for key, default in _FINETUNE_KEYS.items()}
    if args.model is not None:
        extra["model"] = args.model
    if args.warm_start_steps is not None:
        extra["warm_start_steps"] = args.warm_start_steps
    if extra["model"] is None:
        raise UsageError("give the model (--model tiny|PATH) or 'model:' in --config")
    steps = extra["warm_start_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"{where}.warm_start_steps must be an integer >= 0, got {steps!r}")
    values.setdefault("eval_split", "test")
    config = build_config(LMRLConfig, values, config_overrides(args, LMRLConfig), where=where)
    return config, str(extra["model"]), steps, float(extra["warm_start_lr"])


def _finetune_options(parser: argparse.ArgumentParser) -> None:
    from bioreason.rl.lm_trainer import LMRLConfig

    _config_group(
        parser,
        LMRLConfig,
        "training options (LMRLConfig fields; they override --config)",
        extra={
            "method": {"metavar": "METHOD"},
            "steps": {"type": _positive_int},
            "seed": {"type": _non_negative_int},
            "group_size": {"type": _positive_int},
            "eval_split": {"shown_default": "test"},
        },
    )


def _finetune(args: argparse.Namespace) -> int:
    """``bioreason finetune``; under ``accelerate launch`` every process trains its share
    of each batch, and the main one alone prepares and writes the output folder."""
    import torch.distributed as dist

    from bioreason._device import resolve_device
    from bioreason.rl.lm_distributed import ProcessGroup, current_process_group

    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or (
        dist.is_available() and dist.is_initialized()
    )
    if not launched:
        return _finetune_run(args, ProcessGroup())
    processes = current_process_group(resolve_device(_finetune_settings(args)[0].device))

    # the main process checks and prepares the folder first; the others learn the outcome
    outcome: list = [None]
    if processes.is_main:
        try:
            outcome[0] = ("ok", _finetune_prepare(args))
        except Exception as err:
            outcome[0] = ("error", f"{type(err).__name__}: {err}")
            dist.broadcast_object_list(outcome, src=0)
            raise
    dist.broadcast_object_list(outcome, src=0)
    status, value = outcome[0]
    if status == "error":
        raise RuntimeError(f"the main process stopped: {value}")
    if value is None:  # up to date
        return 0
    return _finetune_run(args, processes, prepared=value)


def _finetune_prepare(args: argparse.Namespace):
    """Check the output folder and write the incomplete manifest; None when the folder
    is up to date, else (config, model name, warm-start steps, warm-start lr, record,
    inputs)."""
    import json
    import shutil

    from bioreason._io import (
        MANIFEST,
        check_output_folder,
        manifest_matches,
        write_manifest,
    )

    out = Path(args.out)
    check_output_folder(out)
    task_path = Path(args.task)
    config, model_name, warm_steps, warm_lr = _finetune_settings(args)
    record = {
        "rl": config.to_dict(),
        "task": str(task_path),
        "model": model_name,
        "warm_start_steps": warm_steps,
        "warm_start_lr": warm_lr,
    }
    record = json.loads(json.dumps(record, default=str))
    inputs = {"task": task_path} if task_path.is_file() else {}
    if not task_path.exists():
        raise FileNotFoundError(f"task table {task_path} does not exist")
    manifest = out / MANIFEST
    if out.exists() and any(out.iterdir()):
        if manifest_matches(out, config=record, seed=config.seed, inputs=inputs):
            print(f"{out} is up to date (same settings and task); nothing to do")
            return None
        saved = None
        try:
            saved = json.loads(manifest.read_text())
        except (OSError, ValueError):
            pass
        same = isinstance(saved, dict) and saved.get("config") == record
        if not same:
            if not args.force:
                why = (
                    "was not written by 'bioreason finetune'"
                    if not isinstance(saved, dict)
                    else "holds a run with other settings"
                )
                raise FileExistsError(
                    f"{out} {why}; choose another --out or pass --force to replace it"
                )
            for name in (*_FINETUNE_OUTPUTS, "tb", MANIFEST):  # tb: TensorBoard events
                path = out / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    outputs = [out / name for name in _FINETUNE_OUTPUTS]
    write_manifest(
        out, config=record, seed=config.seed, inputs=inputs, outputs=outputs, complete=False
    )
    return config, model_name, warm_steps, warm_lr, record, inputs


def _finetune_run(args: argparse.Namespace, processes, prepared=None) -> int:
    """Train, evaluate and write the outputs (the main process writes)."""
    import json

    import pandas as pd

    from bioreason._io import atomic_write_text, json_safe, write_manifest
    from bioreason.rl.lm_trainer import save_predictions
    from bioreason.rl.loop import save_checkpoint, write_csv_log

    if prepared is None:
        prepared = _finetune_prepare(args)
        if prepared is None:
            return 0
    config, model_name, warm_steps, warm_lr, record, inputs = prepared
    out = Path(args.out)
    task_path = Path(args.task)
    outputs = [out / name for name in _FINETUNE_OUTPUTS]

    from bioreason.data.tasks import load_task
    from bioreason.lm import load_predictor, warm_start
    from bioreason.rl import LMTrainer

    task = load_task(task_path)
    if "split" in task and not (task["split"].astype(str) == config.train_split).any():
        raise ValueError(f"task table {task_path} has no rows with split == {config.train_split!r}")
    predictor = load_predictor(
        model_name,
        device=config.device,
        texts=task["prompt"].astype(str),
        grid=config.grid,
        seed=config.seed,
    )
    if warm_steps:  # deterministic: a resumed run redoes it, then loads its checkpoint
        train_prompts = task.loc[task["split"].astype(str) == config.train_split, "prompt"]
        warm_start(
            predictor,
            None,
            [predictor.format_prompt(str(p)) for p in train_prompts],
            grid=config.grid,
            steps=warm_steps,
            lr=warm_lr,
            seed=config.seed,
        )
    trainer = LMTrainer.from_predictor(predictor, task, config)
    predictions_path = out / "predictions.parquet"
    timing = trainer.train(
        checkpoint_path=out / "checkpoint.pt",
        log_path=out / "log.csv",
        eval_log_path=out / "eval.csv",
        predictions_path=predictions_path,
        progress=not args.no_progress,
        description="finetune",
    )
    if not processes.is_main:
        return 0
    if trainer.eval_rows_log and trainer.eval_rows_log[-1]["step"] == trainer.step:
        final = trainer.eval_rows_log[-1]  # evaluated at the last step already
    else:
        final = trainer.evaluate()
        frame = trainer.predict()
        if predictions_path.exists():
            earlier = pd.read_parquet(predictions_path)
            frame = pd.concat([earlier[earlier["step"] < trainer.step], frame], ignore_index=True)
        save_predictions(frame, predictions_path)
    # the checkpoint of the last step (the loop keeps only earlier ones), so that a rerun
    # after a later failure resumes at the end
    log_path = out / "log.csv"
    log_rows = pd.read_csv(log_path).to_dict("records") if log_path.exists() else []
    save_checkpoint(trainer, out / "checkpoint.pt", log_rows)
    write_csv_log(out / "eval.csv", trainer.eval_rows_log)
    predictor.save(out / "model", overwrite=True)
    metrics = {"step": trainer.step, "final": final, "timing": timing}
    atomic_write_text(
        out / "metrics.json", json.dumps(json_safe(metrics), indent=2, default=str) + "\n"
    )
    write_manifest(out, config=record, seed=config.seed, inputs=inputs, outputs=outputs)
    score = final.get("ece", float("nan"))
    print(
        f"wrote {out}: {trainer.step} steps of {config.method}; "
        f"test ece {score:.4f} over {final.get('n_scored', 0)} questions"
    )
    return 0


_TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
_CALIBRATION_OUT_SUFFIXES = (".csv", ".parquet", ".pq", ".json", ".md")


def _read_predictions(path: Path):
    """A predictions table from a .csv, .tsv or .parquet file."""
    import pandas as pd

    if path.suffix.lower() not in _TABLE_SUFFIXES:
        raise ValueError(f"{path}: give a predictions table ending in {', '.join(_TABLE_SUFFIXES)}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a predictions .csv or .parquet file")
    if not path.exists():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    except (ValueError, OSError) as err:
        kind = "parquet" if path.suffix.lower() in (".parquet", ".pq") else "csv"
        raise ValueError(f"could not read {path} as {kind}: {_one_line(err)}") from None


class _AnswerParser:
    """``texts -> (probabilities, valid)`` by the registered LM answer parser ``name``;
    imports ``bioreason.rl`` (torch, seconds) only when a file's answers are text."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.used = False

    def __call__(self, texts):
        from bioreason.rl.answer_formats import ANSWER_PARSERS
        from bioreason.rl.rewards import AnswerGrid

        self.used = True
        parsed = ANSWER_PARSERS.get(self.name)(texts, AnswerGrid())
        return parsed.probabilities.numpy(), parsed.valid.numpy()


def _calibration(args: argparse.Namespace) -> int:
    import json

    from bioreason._io import atomic_write, atomic_write_text, json_safe
    from bioreason.calibration.table import (
        BOOTSTRAP_METRICS,
        calibration_table,
        format_calibration_table,
    )

    path = Path(args.predictions)
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.suffix.lower() not in _CALIBRATION_OUT_SUFFIXES:
            raise UsageError(f"--out must end in {', '.join(_CALIBRATION_OUT_SUFFIXES)}, got {out}")
        if out.is_dir():
            raise IsADirectoryError(f"--out {out} is a folder; give a file path")
        if out.exists() and not args.force:
            raise FileExistsError(
                f"{out} already exists; choose another --out or pass --force to replace it"
            )
    frame = _read_predictions(path)
    options = {
        "--prob-col": args.prob_col,
        "--outcome-col": args.outcome_col,
        "--ref-col": args.ref_col,
        "--group-col": args.group_col,
    }
    for option, column in options.items():
        if column is not None and column not in frame.columns:
            existing = ", ".join(str(c) for c in frame.columns)
            raise ValueError(
                f"{path} has no column {column!r} ({option}); its columns are: {existing}"
            )
    parser = _AnswerParser(args.answer_format)
    try:
        table = calibration_table(
            frame,
            prob_col=args.prob_col,
            outcome_col=args.outcome_col,
            ref_col=args.ref_col,
            group_col=args.group_col,
            n_bins=args.bins,
            right=args.right,
            n_boot=args.n_boot,
            seed=args.seed,
            parser=parser,
        )
    except ValueError as err:
        raise ValueError(f"{path}: {_one_line(err)}") from None

    edges = "(a, b]" if args.right else "[a, b)"
    lines = [
        f"calibration of {args.prob_col!r} against {args.outcome_col!r}"
        + (f" and {args.ref_col!r}" if args.ref_col else "")
        + f" in {path} ({len(frame)} rows); ECE: {args.bins} equal-width bins {edges}, "
        f"adaptive ECE: {args.bins} equal-mass bins",
        "",
        format_calibration_table(table, args.ref_col),
        "",
    ]
    if args.n_boot:
        shown = [m for m in BOOTSTRAP_METRICS if f"{m}_low" in table.columns]
        lines.append(
            f"[low, high]: 95% bootstrap intervals ({args.n_boot} resamples of the rows, "
            f"seed {args.seed}) of {', '.join(shown)}."
        )
    n_invalid = int(table["n_invalid"].sum())
    if n_invalid:
        reason = "missing, unparseable or off the answer grid" if parser.used else "missing"
        lines.append(
            f"{n_invalid} of {len(frame)} answers are invalid ({reason}); the metrics score "
            "only the valid rows."
        )
    text = "\n".join(lines).rstrip() + "\n"
    print(text, end="")
    if out is not None:
        suffix = out.suffix.lower()
        if suffix == ".md":
            atomic_write_text(out, text, overwrite=args.force)
        elif suffix == ".json":
            records = [{k: json_safe(v) for k, v in r.items()} for r in table.to_dict("records")]
            atomic_write_text(out, json.dumps(records, indent=2) + "\n", overwrite=args.force)
        elif suffix == ".csv":
            atomic_write(out, lambda tmp: table.to_csv(tmp, index=False), overwrite=args.force)
        else:
            atomic_write(out, lambda tmp: table.to_parquet(tmp, index=False), overwrite=args.force)
        print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bioreason",
        description="Perturbation VAEs, outcome simulators and calibrated RL predictors.",
        epilog=_EPILOG,
        formatter_class=_CommandListFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bioreason {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sim = sub.add_parser(
        "simulate", help="write a synthetic screen to .h5ad", populate=_simulate_options
    )
    sim.add_argument("--out", required=True, help="output .h5ad path")
    sim.add_argument("--config", help="YAML file of ScreenConfig fields")
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
        help="RL estimators on a tabular toy task: calibration",
        description="Train a tabular policy with each RL estimator on stochastic outcomes; "
        "write calibration metrics and figures. Flags override --config.",
        populate=_synthetic_calibration_options,
    )
    cal.add_argument("--out", required=True, help="output folder (new, empty, or a previous run)")
    cal.add_argument("--config", help="YAML file of SyntheticCalibrationConfig fields")
    _add_force(cal, "runs of this folder written with other settings")
    cal.add_argument("--no-progress", action="store_true", help="hide progress bars")
    cal.set_defaults(func=_synthetic_calibration)

    score = sub.add_parser(
        "calibration",
        help="score any predictions file (.csv/.parquet)",
        description="Score predictions made anywhere: ECE (equal-width and equal-mass "
        "bins), Brier, log loss, AUROC against 0/1 outcomes and, with --ref-col, the error "
        "and overconfidence against reference probabilities, one row per --group-col value. "
        "Answers are probabilities in [0, 1] or text such as '<answer>37</answer>' (0.37); "
        "unreadable answers are counted as invalid and left out of the metrics.",
    )
    score.add_argument("predictions", help="predictions table (.csv, .tsv, .parquet)")
    score.add_argument(
        "--prob-col", dest="prob_col", required=True, help="answers: probabilities or text"
    )
    score.add_argument("--outcome-col", dest="outcome_col", required=True, help="0/1 outcomes")
    score.add_argument(
        "--ref-col", dest="ref_col", help="reference probabilities, e.g. p_star or p_true"
    )
    score.add_argument("--group-col", dest="group_col", help="one row per value, e.g. method")
    score.add_argument(
        "--bins", type=_positive_int, default=10, help="bins of ECE and adaptive ECE (10)"
    )
    score.add_argument(
        "--right",
        action="store_true",
        help="equal-width bins (a, b] as pandas.cut (default [a, b))",
    )
    score.add_argument(
        "--n-boot",
        dest="n_boot",
        type=_non_negative_int,
        default=1000,
        help="bootstrap resamples of the intervals; 0 for none (1000)",
    )
    score.add_argument("--seed", type=_non_negative_int, default=0, help="bootstrap seed (0)")
    score.add_argument(
        "--answer-format",
        dest="answer_format",
        default="tagged",
        help="parser of text answers: tagged (<answer>N</answer>, q = N/100) or "
        "first_integer (default tagged)",
    )
    score.add_argument("--out", help="also write the table: .csv, .parquet, .json or .md")
    _add_force(score, "an existing --out")
    score.set_defaults(func=_calibration)

    task = sub.add_parser(
        "build-task",
        help="questions, p* and outcomes from a saved model",
        description="Build a task table (questions, p*, sampled outcomes, splits) from a "
        "saved model folder. Flags override the fields of --config (a YAML file of "
        "TaskConfig fields, see docs/tasks.md).",
        populate=_build_task_options,
    )
    task.add_argument("--out", required=True, help="output .parquet path")
    task.add_argument("--config", help="YAML file of TaskConfig fields")
    task.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="an outcome option, e.g. threshold=0.1, n_cells=100, test=welch, threshold=null "
        "(per-readout thresholds from the model's effects); repeatable",
    )
    task.add_argument(
        "--programs-file",
        dest="programs_file",
        metavar="FILE",
        help="YAML mapping of user programs, name: [gene, ...]",
    )
    _add_force(task, "an existing --out")
    task.set_defaults(func=_build_task)

    itask = sub.add_parser(
        "inspect-task",
        help="summarize a task table (splits, p*, outcomes)",
    )
    itask.add_argument("path", help="task .parquet file, or a Replogle task folder")
    itask.add_argument(
        "--target-se",
        dest="target_se",
        type=_positive_float,
        help="SE above which p* counts as unconverged (default: the task's target, else 0.01)",
    )
    itask.add_argument("--json", action="store_true", help="print the summary as JSON")
    itask.set_defaults(func=_inspect_task)

    fine = sub.add_parser(
        "finetune",
        help="RL fine-tune a causal LM on a task table",
        populate=_finetune_options,
        description="Train an LM (LMTrainer) on the task's train split and evaluate it on its "
        "test split. Flags override --config (a YAML mapping of LMRLConfig fields plus model, "
        "warm_start_steps, warm_start_lr; see docs/finetune.md). Rerunning an interrupted run "
        "with the same settings resumes it from its checkpoint.",
    )
    fine.add_argument("--task", required=True, help="task table (.parquet, see build-task)")
    fine.add_argument("--model", help="'tiny' (a new small LM) or a model folder / hub name")
    fine.add_argument("--out", required=True, help="output folder")
    fine.add_argument("--config", help="YAML file of LMRLConfig fields (and model, ...)")
    fine.add_argument(
        "--warm-start-steps",
        dest="warm_start_steps",
        type=_non_negative_int,
        help="supervised steps teaching the answer format first (default 0)",
    )
    fine.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_force(fine, "a --out folder holding other files or another run")
    fine.set_defaults(func=_finetune)

    vae = sub.add_parser(
        "train-vae",
        help="fit a perturbation VAE on an AnnData",
        description="Fit a perturbation VAE (bioreason.models) on the cells of an .h5ad and "
        "save it into --out (a model folder that 'bioreason build-task --model' reads), with "
        "result.json (held-out IWELBO, final losses). Flags override --config (a YAML "
        "mapping of PerturbationSetup, VAEConfig and TrainConfig fields plus model, "
        "test_fraction, validation_fraction, iwelbo_particles). Rerunning an interrupted "
        "run with the same settings resumes it from its checkpoint.",
        populate=_train_vae_options,
    )
    vae.add_argument("--adata", required=True, metavar="FILE.h5ad", help="cells (raw counts)")
    vae.add_argument("--out", required=True, metavar="DIR", help="output model folder")
    vae.add_argument("--model", choices=VAE_MODELS, help="model to fit (default sams_vae)")
    vae.add_argument("--config", help="YAML file of settings (see above)")
    vae.add_argument(
        "--test-fraction",
        dest="test_fraction",
        type=_probability,
        help="share of the cells held out for the IWELBO; 0 for none (default 0.1)",
    )
    vae.add_argument(
        "--validation-fraction",
        dest="validation_fraction",
        type=_probability,
        help="share of the other cells validated on during training (default 0.1)",
    )
    vae.add_argument(
        "--iwelbo-particles",
        dest="iwelbo_particles",
        type=_positive_int,
        help="importance samples of the held-out IWELBO (default 20)",
    )
    _add_force(vae, "a --out folder holding other files or another model")
    vae.set_defaults(func=_train_vae)

    demo = sub.add_parser("demo", help="run the end-to-end demo on built-in synthetic data")
    demo.add_argument("--out", default="runs/demo", help="run folder")
    demo.add_argument("--seed", type=_non_negative_int, default=0)
    demo.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        help="parallel fine-tuning jobs (default: the cores, at most 4)",
    )
    _add_force(demo, "files in the run folder that the demo did not write")
    demo.set_defaults(func=_demo)

    from bioreason.pipelines.cli_run import add_parsers as add_pipeline_parsers

    add_pipeline_parsers(sub)  # run, report
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
