"""Config dataclasses: moved fields keep loading, with a warning that names both places."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import pytest

from bioreason.config import Config


@dataclasses.dataclass
class _Inner(Config):
    max_steps: int = 10
    lr: float = 1e-3


@dataclasses.dataclass
class _Outer(Config):
    name: str = "x"
    train: _Inner = dataclasses.field(default_factory=_Inner)

    moved_fields: ClassVar[dict[str, str]] = {"steps": "train.max_steps", "lr": "train.lr"}


def test_a_moved_field_is_read_at_its_new_place_with_a_warning():
    with pytest.warns(FutureWarning, match=r"'steps' has moved to 'train.max_steps'"):
        config = _Outer.from_dict({"steps": 7, "train": {"lr": 0.5}}, where="outer")
    assert config.train.max_steps == 7
    assert config.train.lr == 0.5


def test_a_moved_field_given_twice_is_an_error():
    with pytest.raises(ValueError, match="steps and train.max_steps are the same setting"):
        _Outer.from_dict({"steps": 7, "train": {"max_steps": 8}}, where="outer")


def test_new_names_load_without_a_warning(recwarn):
    config = _Outer.from_dict({"train": {"max_steps": 3}})
    assert config.train.max_steps == 3
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_an_unknown_field_is_still_named():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['stepz'\]"):
        _Outer.from_dict({"stepz": 1})


@dataclasses.dataclass
class _Root(Config):
    outer: _Outer = dataclasses.field(default_factory=_Outer)
    lm: dict = dataclasses.field(default_factory=dict)

    moved_fields: ClassVar[dict[str, str]] = {"lm.device": "outer.name"}


def test_a_field_moved_from_one_section_to_another():
    with pytest.warns(FutureWarning, match="'lm.device' has moved to 'outer.name'"):
        config = _Root.from_dict({"lm": {"device": "cpu", "other": 1}})
    assert config.outer.name == "cpu"
    assert config.lm == {"other": 1}
