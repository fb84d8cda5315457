"""The pipeline config nests the library configs whole: every field of ``LMRLConfig``,
``VAEConfig``, ``TrainConfig``, ``TaskConfig`` (and the others) is reachable from a
pipeline YAML through ``--set``, fields the pipeline sets itself are refused with what to
set instead, and configs written before the nesting keep loading with a warning."""

from __future__ import annotations

import dataclasses
import json
import typing
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from bioreason.cli import build_parser
from bioreason.config import Config
from bioreason.models import EvaluationConfig, TrainConfig, VAEConfig
from bioreason.pipelines.config import PIPELINE_SET, PipelineConfig, load_pipeline_config
from bioreason.rl import LMRLConfig
from bioreason.sim.task_config import TaskConfig

from helpers import TINY_PIPELINE as TINY


def _leaves(cls: type[Config], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted path, annotation) of every leaf field of ``cls``, nested configs walked."""
    hints = typing.get_type_hints(cls)
    leaves = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        hint = hints[field.name]
        if isinstance(hint, type) and issubclass(hint, Config):
            leaves += _leaves(hint, f"{prefix}{field.name}.")
        else:
            leaves.append((f"{prefix}{field.name}", hint))
    return leaves


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _candidates(value: Any, hint: Any) -> list[Any]:
    """Values other than ``value`` that a field of this type may take (tried in turn)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Literal:
        return [a for a in args if a != value]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2, max(value - 1, 0)]
    if isinstance(value, float):
        return [value * 0.5, value * 2, 0.5, 0.25]
    return []  # strings, lists, mappings and None: the round trip above is the check


def _set(tmp_path: Path, assignments: list[str]) -> PipelineConfig:
    path = tmp_path / "base.yaml"
    if not path.exists():
        path.write_text(yaml.safe_dump(TINY))
    argv = ["run", str(path)]
    for item in assignments:
        argv += ["--set", item]
    args = build_parser().parse_args(argv)
    return load_pipeline_config(args.config, args.set or ())


def test_every_field_of_every_nested_config_is_reachable_through_set(tmp_path):
    base = _set(tmp_path, [])
    leaves = [(path, hint) for path, hint in _leaves(PipelineConfig) if path not in PIPELINE_SET]
    paths = {path for path, _ in leaves}
    # the library configs arrive whole (less what the pipeline sets, named in PIPELINE_SET)
    for section, cls in (
        ("finetune.rl", LMRLConfig),
        ("vae.options", VAEConfig),
        ("vae.train", TrainConfig),
        ("task.options", TaskConfig),
        ("vae.evaluation", EvaluationConfig),
    ):
        for field in dataclasses.fields(cls):
            dotted = f"{section}.{field.name}"
            nested = any(path.startswith(f"{dotted}.") for path in paths)
            assert dotted in paths or nested or dotted in PIPELINE_SET, dotted
    changed = 0
    for path, hint in leaves:
        default = _get(base, path)
        text = yaml.safe_dump(_plain(default), default_flow_style=True).strip()
        text = text.removesuffix("\n...").strip()
        # the value the config has, written back through --set, arrives unchanged
        assert _plain(_get(_set(tmp_path, [f"{path}={text}"]), path)) == _plain(default), path
        for value in _candidates(default, hint):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    config = _set(tmp_path, [f"{path}={json.dumps(value)}"])
            except (TypeError, ValueError):
                continue  # not a valid value of this field: try the next one
            assert _plain(_get(config, path)) == _plain(value), path
            changed += 1
            break
    # most numeric and boolean fields take another value than their default
    assert changed >= 0.6 * len(leaves), (changed, len(leaves))


@pytest.mark.parametrize("dotted, instead", sorted(PIPELINE_SET.items()))
def test_a_field_the_pipeline_sets_is_refused_naming_what_to_set(tmp_path, dotted, instead):
    with pytest.raises(ValueError, match=rf"{dotted} is set by the pipeline"):
        _set(tmp_path, [f"{dotted}=1"])


def test_a_config_written_before_the_nesting_loads_the_same_with_warnings(tmp_path):
    old = json.loads(json.dumps(TINY))
    old["vae"] = {"options": {"n_latent": 4, "n_hidden": 32}, "steps": 30, "lr": 0.002}
    old["vae"]["ate_cells"] = TINY["vae"]["evaluation"]["ate_cells"]
    rl = old["finetune"].pop("rl")
    old["finetune"].update(steps=rl["steps"], lr=rl["lr"], group_size=rl["group_size"])
    moved = ("steps", "lr", "group_size", "device")
    old["finetune"]["rl"] = {k: v for k, v in rl.items() if k not in moved}
    old["lm"]["device"] = "cpu"
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(old))
    with pytest.warns(FutureWarning) as caught:
        config = load_pipeline_config(path)
    moved = " ".join(str(w.message) for w in caught)
    for name in ("'steps' has moved to 'train.max_steps'", "'lm.device' has moved"):
        assert name in moved
    assert config.vae.train.max_steps == 30 and config.vae.train.lr == 0.002
    assert config.finetune.rl.steps == TINY["finetune"]["rl"]["steps"]
    assert config.finetune.rl.device == "cpu"
    new = json.loads(json.dumps(TINY))
    new["vae"]["train"] = {"max_steps": 30, "lr": 0.002}
    assert config == PipelineConfig.from_dict(new)
