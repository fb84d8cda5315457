"""Config dataclasses: load from dicts/YAML, validated with errors that name the field."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

import yaml

from bioreason._io import require_input_file

C = TypeVar("C", bound="Config")


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a (simple) type annotation and return it, coerced.

    Ints are accepted where floats are expected; lists where tuples are expected.
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for arg in args:
            try:
                return _check_type(value, arg, where)
            except TypeError as err:
                errors.append(str(err))
        names = " | ".join(getattr(a, "__name__", str(a)) for a in args)
        raise TypeError(f"{where} must be {names}, got {value!r}")
    if annotation is type(None):
        if value is None:
            return None
        raise TypeError(f"{where} must be None, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise TypeError(f"{where} must be one of {list(args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise TypeError(f"{where} must have {len(args)} items, got {len(value)}")
            return tuple(
                _check_type(v, a, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))
            )
        item = args[0] if args else Any
        checked = [_check_type(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(checked) if origin is tuple else checked
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where} must be a number, got {value!r}")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where} must be an integer, got {value!r}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where} must be true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise TypeError(f"{where} must be a string, got {value!r}")
        return value
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, dict) and issubclass(annotation, Config):
            return annotation.from_dict(value, where=where)
        raise TypeError(f"{where} must be a mapping for {annotation.__name__}, got {value!r}")
    return value


@dataclasses.dataclass
class Config:
    """Base class for configuration dataclasses.

    Subclasses are plain dataclasses; ``from_dict``/``from_yaml`` reject unknown
    fields and wrongly typed values with an error that names the field, then run the
    subclass's ``__post_init__`` checks.

    A field that moved keeps loading: :attr:`moved_fields` maps its old (dotted) place to
    its new dotted place in the same config (``{"steps": "train.max_steps"}``,
    ``{"lm.device": "finetune.rl.device"}``); ``from_dict``
    moves the value there and warns (``FutureWarning``) naming both, and a value given
    under both names is an error.
    """

    #: old field name -> its new dotted place in this config (see the class docstring)
    moved_fields: ClassVar[dict[str, str]] = {}
    #: another library's name of a setting -> the message that names this config's
    #: field instead (e.g. TRL's ``learning_rate`` -> ``"use lr (TRL's learning_rate)"``)
    foreign_names: ClassVar[dict[str, str]] = {}

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any], *, where: str | None = None) -> C:
        where = where or cls.__name__
        if not isinstance(values, dict):
            raise TypeError(f"{where}: expected a mapping of field names to values, got {values!r}")
        values = cls.nested_form(values, where=where)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - set(fields))
        foreign = [name for name in unknown if name in cls.foreign_names]
        if foreign:
            raise ValueError(
                f"{where}: unknown field(s) {foreign}: "
                + "; ".join(cls.foreign_names[name] for name in foreign)
            )
        if unknown:
            raise ValueError(
                f"{where}: unknown field(s) {unknown}; valid fields are {sorted(fields)}"
            )
        kwargs = {
            name: _check_type(value, hints[name], f"{where}.{name}")
            for name, value in values.items()
        }
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from None

    @classmethod
    def nested_form(cls, values: dict[str, Any], *, where: str | None = None) -> dict[str, Any]:
        """``values`` with every field at its place in this config: moved fields at their
        new names (:attr:`moved_fields`, with a warning); a subclass with a flat form of
        its own nests it here. What :meth:`from_dict` reads, and what a command merges
        its flags into.

        Returns
        -------
        dict
        """
        return move_fields(cls, values, where or cls.__name__)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        values = read_yaml(path, what="config file")
        values = {} if values is None else values
        return cls.from_dict(values, where=f"{cls.__name__} ({path})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        from bioreason._io import atomic_write_text

        atomic_write_text(Path(path), yaml.safe_dump(_plain(self.to_dict()), sort_keys=False))


def move_fields(cls: type[Config], values: dict[str, Any], where: str) -> dict[str, Any]:
    """``values`` (a mapping of ``cls``'s fields) with the fields of ``cls.moved_fields``
    under their new names, each with a ``FutureWarning`` (what ``from_dict`` does first).

    Returns
    -------
    dict
        A new mapping (``values`` itself when nothing moved).
    """
    moved = {old: new for old, new in cls.moved_fields.items() if _pop(values, old, dry=True)}
    if not moved:
        return values
    values = _copy_nested(values)
    for old, new in moved.items():
        value = _pop(values, old)
        *sections, name = new.split(".")
        target = values
        for section in sections:
            inner = target.get(section)
            if inner is None:
                inner = {}
            elif isinstance(inner, Config):
                inner = inner.to_dict()
            elif not isinstance(inner, dict):
                raise TypeError(f"{where}.{section} must be a mapping, got {inner!r}")
            target[section] = inner = dict(inner)
            target = inner
        if name in target:
            raise ValueError(
                f"{where}: {old} and {new} are the same setting ({old} is its old name); "
                f"give {new} only"
            )
        target[name] = value
        warnings.warn(
            f"{where}: {old!r} has moved to {new!r}; it was read as {new} (write it there: "
            "the old name will stop working in a later version)",
            FutureWarning,
            stacklevel=3,
        )
    return values


def _copy_nested(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy_nested(v) if isinstance(v, dict) else v for k, v in values.items()}


def _pop(values: dict[str, Any], dotted: str, dry: bool = False) -> Any:
    """Remove and return ``values[a][b]`` for ``dotted = "a.b"`` (with ``dry``: whether it
    is there, removing nothing)."""
    *sections, name = dotted.split(".")
    target = values
    for section in sections:
        target = target.get(section) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            return False if dry else None
    if dry:
        return name in target
    return target.pop(name)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-4`` and ``3E5`` are numbers
    (YAML 1.1, PyYAML's default, reads an exponent without a dot as a string)."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def yaml_loads(text: str) -> Any:
    """Parse YAML text safely, reading ``1e-4`` as a number (see :func:`read_yaml`).

    Returns
    -------
    Any
        The parsed document (None for an empty one).
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path, *, what: str = "YAML file") -> Any:
    """Parse a YAML file; every error names the file (and the line of a syntax error).

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError
        The file cannot be opened.
    ValueError
        It is not UTF-8 text or not valid YAML (with the line and column).
    """
    path = require_input_file(path, what, "a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except PermissionError:
        raise PermissionError(f"{what} {path} is not readable (permission denied)") from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{what} {path} is not UTF-8 text (byte {err.start}); is it a YAML file?"
        ) from None
    try:
        return yaml_loads(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        problem = getattr(err, "problem", None) or _first_line(err)
        context, start = getattr(err, "context", None), getattr(err, "context_mark", None)
        opened = (
            f" ({context} that starts at line {start.line + 1}, column {start.column + 1})"
            if context and start
            else ""
        )
        raise ValueError(f"{what} {path} is not valid YAML: {problem} at {where}{opened}") from None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so YAML stays readable."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
