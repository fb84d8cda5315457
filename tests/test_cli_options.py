"""Options generated from config dataclasses (``bioreason.cli._options``), the documented
fields they need, and ``bioreason --help`` listing every subcommand on one line."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from bioreason.cli import main
from bioreason.cli._options import (
    add_config_options,
    build_config,
    config_overrides,
    field_docs,
    undocumented_fields,
)
from bioreason.cli.train_vae import VAE_MODELS
from bioreason.config import Config


def _config_classes():
    from bioreason.data.setup import PerturbationSetup
    from bioreason.data.simulate import ScreenConfig
    from bioreason.models._module import VAEConfig
    from bioreason.models.training import TrainConfig
    from bioreason.pipelines.synthetic_calibration import SyntheticCalibrationConfig
    from bioreason.rl.lm import FinetuneConfig, LMRLConfig
    from bioreason.rl.loop import RLConfig
    from bioreason.rl.tabular import TabularRLConfig
    from bioreason.sim.budget import SimulationBudget
    from bioreason.sim.task_config import TaskConfig

    return [
        ScreenConfig,
        VAEConfig,
        TrainConfig,
        TaskConfig,
        SimulationBudget,
        RLConfig,
        LMRLConfig,
        FinetuneConfig,
        TabularRLConfig,
        SyntheticCalibrationConfig,
        PerturbationSetup,
    ]


@pytest.mark.parametrize("config_class", _config_classes(), ids=lambda c: c.__name__)
def test_every_field_of_the_cli_configs_is_documented(config_class):
    assert undocumented_fields(config_class) == [], (
        f"document these fields in the 'Attributes'/'Parameters' section of "
        f"{config_class.__name__}'s docstring: their options' help comes from there"
    )


@dataclass
class _Inner(Config):
    """Nested settings.

    Attributes
    ----------
    depth : int
        How deep.
    """

    depth: int = 1


@dataclass
class _Example(Config):
    """Settings of an example.

    Attributes
    ----------
    count : int, default 3
        How many things (e.g. cells). A second sentence that the help leaves out.
    rate : float or None
        A rate in 1/s, ``None`` for no limit.
    kind : {"a", "b"}
        Which kind, see :func:`~bioreason.config.read_yaml`.
    flag : bool
        Whether to do it.
    names : list of str
        Some names.
    pair, other : tuple of int
        Two integers each.
    options : dict
        Free options.
    inner : _Inner
        Nested (no options).
    """

    count: int = 3
    rate: float | None = None
    kind: Literal["a", "b"] = "a"
    flag: bool = True
    names: list[str] = field(default_factory=list)
    pair: tuple[int, int] = (1, 2)
    other: tuple[int, int] = (3, 4)
    options: dict = field(default_factory=dict)
    inner: _Inner = field(default_factory=_Inner)
    secret: int = 0


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="example", exit_on_error=False)
    add_config_options(parser, _Example, **kwargs)
    return parser


def test_types_come_from_the_annotations():
    parser = _parser()
    args = parser.parse_args(
        [*"--count 5 --rate none --kind b --no-flag --names x y --pair 7 8".split()]
        + ["--options", "{a: 1}"]
    )
    given = config_overrides(args, _Example)
    assert given == {
        "count": 5,
        "kind": "b",
        "flag": False,
        "names": ["x", "y"],
        "pair": [7, 8],
        "options": {"a": 1},
    }  # rate none -> None: the same as not given
    config = build_config(_Example, {}, given)
    assert config.pair == (7, 8) and config.count == 5 and config.inner.depth == 1
    args = parser.parse_args(["--rate", "0.5", "--flag"])
    assert config_overrides(args, _Example) == {"rate": 0.5, "flag": True}
    assert config_overrides(parser.parse_args([]), _Example) == {}
    assert not any("inner" in a.dest for a in parser._actions)


def test_help_is_the_documented_first_sentence_and_the_default():
    text = " ".join(_parser().format_help().split())
    assert "--count N How many things (e.g. cells). (default 3)" in text
    assert "second sentence" not in text
    assert "Which kind, see read_yaml. (default a)" in text
    assert "--flag, --no-flag Whether to do it. (default true)" in text
    assert "--pair N N Two integers each. (default 1 2)" in text
    assert "A rate in 1/s, None for no limit." in text and "(default none)" not in text
    assert field_docs(_Example)["other"] == "Two integers each."
    assert undocumented_fields(_Example) == ["secret"]


def test_only_exclude_prefix_and_extra():
    parser = argparse.ArgumentParser(prog="example")
    added = add_config_options(
        parser,
        _Example,
        only=["count", "kind", "flag"],
        exclude=["flag"],
        prefix="ex-",
        extra={"count": {"aliases": ["-n"], "help": "mine"}},
    )
    assert added == ["count", "kind"]
    args = parser.parse_args(["-n", "4", "--ex-kind", "a"])
    assert config_overrides(args, _Example, only=["count", "kind"], prefix="ex-") == {
        "count": 4,
        "kind": "a",
    }
    with pytest.raises(ValueError, match="no field"):
        add_config_options(parser, _Example, only=["nope"])


def test_bad_values_name_the_option_and_the_choices(capsys):
    parser = _parser()
    with pytest.raises(argparse.ArgumentError, match=r"--kind.*'c'.*'a', 'b'"):
        parser.parse_args(["--kind", "c"])
    with pytest.raises(argparse.ArgumentError, match=r"--count.*must be an integer"):
        parser.parse_args(["--count", "many"])
    with pytest.raises(argparse.ArgumentError, match=r"--options.*mapping"):
        parser.parse_args(["--options", "[1, 2]"])
    with pytest.raises(TypeError, match=r"_Example\.count.*\(given as --count\)"):
        build_config(_Example, {}, {"count": "x"})


def test_cli_errors_name_the_option(tmp_path, capsys):
    out = tmp_path / "t.parquet"
    with pytest.raises(SystemExit) as exit_info:
        main(["build-task", "--model", "m", "--out", str(out), "--split", "by_gene"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--split" in err and "heldout_conditions" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--out", str(tmp_path / "x.h5ad"), "--ensure-effect", "yes"])
    assert exit_info.value.code == 2
    assert main(["simulate", "--out", str(tmp_path / "x.h5ad"), "--decoder-scale", "inf"]) == 1
    err = capsys.readouterr().err
    assert "decoder_scale must be finite" in err and "--decoder-scale" in err


def test_simulate_takes_every_screen_field(tmp_path, capsys):
    import anndata as ad

    out = tmp_path / "x.h5ad"
    argv = ["simulate", "--out", str(out), "--n-genes", "12", "--n-perturbations", "2"]
    argv += ["--n-combinations", "0", "--n-cells-per-condition", "3", "--n-control-cells", "5"]
    assert main([*argv, "--no-ensure-effect", "--decoder-hidden", "4"]) == 0
    assert ad.read_h5ad(out).n_obs == 5 + 2 * 3


def test_train_vae_model_choices_are_the_registry():
    from bioreason.models import MODELS

    assert sorted(VAE_MODELS) == sorted(MODELS)


# the commands issue 12 lists
COMMANDS = [
    "demo",
    "run",
    "simulate",
    "inspect",
    "train-vae",
    "build-task",
    "finetune",
    "synthetic-calibration",
    "calibration",
    "report",
]


@pytest.fixture(scope="module")
def top_help():
    import contextlib
    import io
    import os

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
            main(["--help"])
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return buffer.getvalue()


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_each_subcommand_on_one_line(top_help, command):
    lines = [
        line for line in top_help.splitlines() if re.match(rf"^\s+{re.escape(command)}(\s|$)", line)
    ]
    assert len(lines) == 1, top_help
    assert re.match(rf"^\s+{re.escape(command)}\s{{2,}}\S", lines[0]), lines[0]
