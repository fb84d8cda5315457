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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
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


# ---------------------------------------------------------------- task tables
# flags of build-task that set the TaskConfig field of the same name
_TASK_FIELDS = (
    "model",
    "model_class",
    "adata",
    "device",
    "outcome",
    "readouts",
    "n_programs",
    "n_markers",
    "conditions",
    "ground_truth",
    "template",
    "n_outcomes",
    "split",
    "test_fraction",
    "val_fraction",
    "seed",
    "target_se",
    "max_draws",
    "threshold_quantile",
    "cells_per_draw",
)


def _option_value(text: str):
    """``--option`` values: integers, numbers (``1e-3`` too), ``null``/``none``, else YAML."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.lower() in ("none", "null", "~"):
        return None
    return yaml.safe_load(text) if text.strip() else text


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
    overrides = {
        name: getattr(args, name) for name in _TASK_FIELDS if getattr(args, name) is not None
    }
    if args.programs_file is not None:
        overrides["programs"] = args.programs_file
    if "outcome" in overrides and overrides["outcome"] != values.get("outcome", "screen_hit"):
        values.pop("outcome_options", None)  # the file's options belong to its own outcome
    if args.option:
        base = values.get("outcome_options") or {}
        if not isinstance(base, dict):
            raise ValueError(f"{where}.outcome_options must be a mapping, got {base!r}")
        overrides["outcome_options"] = {**base, **_outcome_options(args.option)}
    return TaskConfig.from_dict({**values, **overrides}, where=where)


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
# flags of finetune that set the LMRLConfig field of the same name
_FINETUNE_FIELDS = ("method", "steps", "seed", "group_size", "device")
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
    values.update(
        {name: getattr(args, name) for name in _FINETUNE_FIELDS if getattr(args, name) is not None}
    )
    config = LMRLConfig.from_dict(values, where=where)
    return config, str(extra["model"]), steps, float(extra["warm_start_lr"])


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

    score = sub.add_parser(
        "calibration",
        help="print (and write) the calibration table of any predictions file (.csv/.parquet)",
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
        help="build a task table (questions, p*, sampled outcomes, splits) from a saved model",
        description="Build a task table from a saved model folder. Flags override the "
        "fields of --config (a YAML file of TaskConfig fields, see docs/tasks.md).",
    )
    task.add_argument("--out", required=True, help="output .parquet path")
    task.add_argument("--config", help="YAML file of TaskConfig fields")
    task.add_argument("--model", help="folder written by model.save")
    task.add_argument(
        "--model-class", dest="model_class", help="e.g. sams_vae (default: recorded in the folder)"
    )
    task.add_argument("--adata", help="observed cells (.h5ad): measured conditions, programs")
    task.add_argument("--device", help="cpu (default), cuda or auto")
    task.add_argument("--outcome", help="registered outcome (default screen_hit)")
    task.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="an outcome option, e.g. threshold=0.1, n_cells=100, test=welch, threshold=null "
        "(per-readout thresholds from the model's effects); repeatable",
    )
    task.add_argument("--readouts", nargs="+", metavar="NAME", help="genes or program names")
    task.add_argument(
        "--n-programs",
        "--programs",
        dest="n_programs",
        type=_positive_int,
        metavar="N",
        help="learn N programs by NMF on --adata (program0, ...)",
    )
    task.add_argument("--n-markers", dest="n_markers", type=_positive_int, help="default 15")
    task.add_argument(
        "--programs-file",
        dest="programs_file",
        metavar="FILE",
        help="YAML mapping of user programs, name: [gene, ...]",
    )
    task.add_argument(
        "--conditions",
        nargs="+",
        metavar="LABEL",
        help="condition labels (A, A+B) and/or sets: singles, measured, measured_singles, "
        "measured_combinations, pairs, unseen_pairs (default: measured with --adata, "
        "else singles)",
    )
    task.add_argument(
        "--ground-truth",
        dest="ground_truth",
        action="store_true",
        default=None,
        help="fill p_true from --adata's simulated ground truth (simulate_screen)",
    )
    task.add_argument("--template", help="prompt format string (see docs/tasks.md)")
    task.add_argument("--n-outcomes", dest="n_outcomes", type=_positive_int, help="default 1")
    task.add_argument("--split", choices=TASK_SPLITS, help="default random")
    task.add_argument("--test-fraction", dest="test_fraction", type=_probability)
    task.add_argument("--val-fraction", dest="val_fraction", type=_probability)
    task.add_argument("--seed", type=_non_negative_int)
    task.add_argument("--target-se", dest="target_se", type=_positive_float, help="default 0.01")
    task.add_argument("--max-draws", dest="max_draws", type=_positive_int, help="default 2000")
    task.add_argument("--threshold-quantile", dest="threshold_quantile", type=_probability)
    task.add_argument("--cells-per-draw", dest="cells_per_draw", type=_positive_int)
    _add_force(task, "an existing --out")
    task.set_defaults(func=_build_task)

    itask = sub.add_parser(
        "inspect-task",
        help="print a task table's summary (questions per split, p*, outcome rate, SE)",
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
        help="RL fine-tune a causal LM on a task table; write predictions, logs, the model",
        description="Train an LM (LMTrainer) on the task's train split and evaluate it on its "
        "test split. Flags override --config (a YAML mapping of LMRLConfig fields plus model, "
        "warm_start_steps, warm_start_lr; see docs/finetune.md). Rerunning an interrupted run "
        "with the same settings resumes it from its checkpoint.",
    )
    fine.add_argument("--task", required=True, help="task table (.parquet, see build-task)")
    fine.add_argument("--method", help="advantage estimator (grpo, rloo, ...; default grpo)")
    fine.add_argument("--model", help="'tiny' (a new small LM) or a model folder / hub name")
    fine.add_argument("--steps", type=_positive_int, help="optimizer steps (default 200)")
    fine.add_argument("--out", required=True, help="output folder")
    fine.add_argument("--config", help="YAML file of LMRLConfig fields (and model, ...)")
    fine.add_argument("--seed", type=_non_negative_int)
    fine.add_argument(
        "--group-size", dest="group_size", type=_positive_int, help="completions per question"
    )
    fine.add_argument(
        "--warm-start-steps",
        dest="warm_start_steps",
        type=_non_negative_int,
        help="supervised steps teaching the answer format first (default 0)",
    )
    fine.add_argument("--device", help="auto (default), cpu or cuda[:N]")
    fine.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_force(fine, "a --out folder holding other files or another run")
    fine.set_defaults(func=_finetune)

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
