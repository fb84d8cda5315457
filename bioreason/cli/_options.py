"""Command-line options generated from the documented fields of a :class:`Config`.

One ``--field-name`` option per dataclass field, its type taken from the annotation
and its help from the field's entry in the class's numpy-style docstring (the
"Attributes" or "Parameters" section, first sentence) plus the dataclass default. The
options default to ``None`` so that "not given" is told apart from a value: the config
file, then the dataclass default, applies to what is not given.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

from bioreason.config import Config

__all__ = [
    "add_config_options",
    "build_config",
    "config_overrides",
    "field_docs",
    "option_name",
    "undocumented_fields",
]

_SECTIONS = ("Attributes", "Parameters")
_NONE_WORDS = ("none", "null", "~")
# abbreviations whose period does not end a sentence
_ABBREVIATIONS = ("e.g", "i.e", "etc", "cf", "vs", "resp")


# ---------------------------------------------------------------- docstrings
def _doc_entries(doc: str | None) -> dict[str, str]:
    """Field name -> description of the Attributes/Parameters sections of ``doc``."""
    if not doc:
        return {}
    lines = inspect.cleandoc(doc).splitlines()
    entries: dict[str, str] = {}
    in_section, index = False, 0
    while index < len(lines):
        line = lines[index]
        following = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if line.strip() and not line[0].isspace() and re.fullmatch(r"-{3,}", following):
            in_section = line.strip() in _SECTIONS
            index += 2
            continue
        if not (in_section and line.strip() and not line[0].isspace()):
            index += 1
            continue
        names = line.split(" : ", 1)[0] if " : " in line else line.rstrip(":")
        description = []
        index += 1
        while index < len(lines) and (not lines[index].strip() or lines[index][0].isspace()):
            following = lines[index + 1].strip() if index + 1 < len(lines) else ""
            if not lines[index].strip() and re.fullmatch(r"-{3,}", following):
                break
            description.append(lines[index].strip())
            index += 1
        text = " ".join(part for part in description if part)
        for name in names.split(","):
            name = name.strip().strip("`*")
            if name.isidentifier():
                entries[name] = text
    return entries


def field_docs(config_class: type[Config]) -> dict[str, str]:
    """The documentation of each field of ``config_class``, from its docstring.

    A subclass documents its own and changed fields; fields it inherits keep the entry
    of the nearest base class that documents them.

    Parameters
    ----------
    config_class : type
        A :class:`~bioreason.config.Config` dataclass.

    Returns
    -------
    dict of str to str
        Field name -> the description text (reST markup kept); a field without a
        (non-empty) entry is left out.
    """
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__):
        for name, text in _doc_entries(klass.__dict__.get("__doc__")).items():
            if text:
                docs[name] = text
    return docs


def undocumented_fields(config_class: type[Config]) -> list[str]:
    """The init fields of ``config_class`` that its docstrings do not describe.

    Returns
    -------
    list of str
        Field names, in declaration order (empty when every field is documented).
    """
    docs = field_docs(config_class)
    return [f.name for f in dataclasses.fields(config_class) if f.init and f.name not in docs]


def _plain_text(text: str) -> str:
    """reST markup -> plain text: ``:role:`~a.b``` -> ``b``, ````x```` -> ``x``."""

    def role(match: re.Match) -> str:
        target = match.group(1)
        if "<" in target and target.endswith(">"):
            return target.split("<")[0].strip()
        return target[1:].split(".")[-1] if target.startswith("~") else target

    text = re.sub(r":[\w:]+:`([^`]+)`", role, text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(r"`([^`]*)`", r"\1", text)
    return " ".join(text.split())


def _first_sentence(text: str) -> str:
    for match in re.finditer(r"\.(?=\s|$)", text):
        before = text[: match.start()]
        if before.lower().endswith(_ABBREVIATIONS) or before.endswith("."):
            continue
        return text[: match.end()]
    return text


# ---------------------------------------------------------------- types
def _is_none(text: str) -> bool:
    return text.strip().lower() in _NONE_WORDS


def _converter(kind: type, nullable: bool) -> Callable[[str], Any]:
    """``str -> kind`` for argparse, accepting none/null when ``nullable``."""
    words = {int: "an integer", float: "a number", str: "a string"}
    orelse = " or none" if nullable else ""

    def convert(text: str) -> Any:
        if nullable and _is_none(text):
            return None
        if kind is str:
            return text
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {words.get(kind, kind.__name__)}{orelse}, got {text!r}"
            ) from None

    convert.__name__ = kind.__name__
    return convert


def _yaml_value(text: str) -> Any:
    """A YAML scalar, list or mapping (``1e-3`` is a number, ``none`` is None)."""
    import yaml

    from bioreason.config import yaml_loads

    if _is_none(text):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    try:
        return yaml_loads(text) if text.strip() else text
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"cannot read {text!r} as YAML") from None


def _yaml_mapping(text: str) -> Any:
    value = _yaml_value(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"must be a YAML mapping such as '{{key: value}}', got {text!r}"
        )
    return value


def _metavar(kind: Any) -> str | None:
    return {int: "N", float: "X"}.get(kind)


def _argument_kwargs(annotation: Any) -> dict[str, Any] | None:
    """argparse keywords for a field of this annotation; None for a nested Config."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    nullable = False
    if origin in (Union, types.UnionType):
        nullable = type(None) in args
        args = tuple(a for a in args if a is not type(None))
        listed = [a for a in args if typing.get_origin(a) in (list, tuple)]
        if len(args) == 1:
            annotation = args[0]
        elif listed:  # e.g. list[str] | str: the list form takes one word as well
            annotation = listed[0]
        else:
            return {"type": _yaml_value, "metavar": "VALUE"}
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return None
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is typing.Literal:
        kind = type(args[0])
        choices = [*args, None] if nullable else list(args)
        return {"type": _converter(kind, nullable), "choices": choices}
    if origin in (list, tuple):
        fixed = origin is tuple and args and args[-1] is not Ellipsis
        item = args[0] if args else str
        item_kwargs = _argument_kwargs(item) or {}
        if "type" not in item_kwargs or "action" in item_kwargs:
            item_kwargs = {"type": _yaml_value, "metavar": "VALUE"}
        item_kwargs.pop("choices", None)
        return {**item_kwargs, "nargs": len(args) if fixed else "+"}
    if origin is dict or annotation is dict:
        return {"type": _yaml_mapping, "metavar": "YAML"}
    if annotation in (int, float, str):
        kwargs: dict[str, Any] = {"type": _converter(annotation, nullable)}
        if _metavar(annotation):
            kwargs["metavar"] = _metavar(annotation)
        return kwargs
    return {"type": _yaml_value, "metavar": "VALUE"}


def _show_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " ".join(_show_default(v) for v in value) if value else "empty"
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    text = str(value)
    if len(text) > 40:  # e.g. a prompt template: the docs show it
        return ""
    return repr(text) if not text or " " in text else text


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


# ---------------------------------------------------------------- options
def option_name(name: str, prefix: str = "") -> str:
    """``--prefix-field-name`` of the field ``name``.

    Returns
    -------
    str
    """
    return "--" + prefix + name.replace("_", "-")


def _dest(name: str, prefix: str) -> str:
    return prefix.replace("-", "_") + name


def _selected(
    config_class: type[Config], only: Iterable[str] | None, exclude: Iterable[str]
) -> list[dataclasses.Field]:
    fields = [f for f in dataclasses.fields(config_class) if f.init]
    names = {f.name for f in fields}
    wanted = set(names) if only is None else set(only)
    unknown = sorted((wanted | set(exclude)) - names)
    if unknown:
        raise ValueError(
            f"{config_class.__name__} has no field(s) {unknown}; its fields are {sorted(names)}"
        )
    return [f for f in fields if f.name in wanted and f.name not in set(exclude)]


def add_config_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    config_class: type[Config],
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    prefix: str = "",
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Add one ``--field-name`` option per field of ``config_class`` to ``parser``.

    Types come from the annotations: ``int``, ``float``, ``str``; ``bool`` as
    ``--x/--no-x``; ``Literal`` as choices; lists and tuples as one or more values;
    dicts as a YAML mapping (``'{ddof: 0}'``); an optional field also takes ``none``.
    Nested :class:`Config` fields are skipped (add them with their own ``prefix``).
    Every option defaults to ``None``: read the given ones with :func:`config_overrides`.

    Parameters
    ----------
    parser : ArgumentParser or argument group
    config_class : type
        A :class:`~bioreason.config.Config` dataclass whose docstring documents its
        fields (see :func:`field_docs`).
    only, exclude : iterable of str, optional
        Fields to add (default: all) and fields to leave out (e.g. those the command
        sets by hand-made options).
    prefix : str, default ""
        Put before each option name (``"rl-"``: ``--rl-steps``, dest ``rl_steps``).
    extra : mapping of str to mapping, optional
        Per field, keywords for ``add_argument`` that replace the generated ones
        (``type``, ``choices``, ``metavar``, ``help`` ...), plus ``aliases`` (more option
        strings) and ``shown_default`` (the default the help states, when the command's
        differs from the dataclass's).

    Returns
    -------
    list of str
        The names of the fields that got an option.
    """
    extra = dict(extra or {})
    unknown = sorted(set(extra) - {f.name for f in dataclasses.fields(config_class)})
    if unknown:
        raise ValueError(f"extra names no field of {config_class.__name__}: {unknown}")
    hints = typing.get_type_hints(config_class)
    docs = field_docs(config_class)
    added = []
    for field in _selected(config_class, only, exclude):
        kwargs = _argument_kwargs(hints[field.name])
        if kwargs is None:  # a nested config
            continue
        settings = dict(extra.get(field.name, {}))
        aliases = list(settings.pop("aliases", ()))
        default = settings.pop("shown_default", _default(field))
        help_text = _plain_text(_first_sentence(docs.get(field.name, "")))
        shown = "" if default is dataclasses.MISSING else _show_default(default)
        if default is None and re.search(r"default|None", help_text, re.IGNORECASE):
            shown = ""  # the text says what None means
        if shown:
            help_text = f"{help_text} (default {shown})".strip()
        kwargs["help"] = help_text.replace("%", "%%")
        kwargs.update(settings)
        parser.add_argument(
            option_name(field.name, prefix),
            *aliases,
            dest=_dest(field.name, prefix),
            default=None,
            **kwargs,
        )
        added.append(field.name)
    return added


def config_overrides(
    args: argparse.Namespace,
    config_class: type[Config],
    *,
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    prefix: str = "",
) -> dict[str, Any]:
    """The values given on the command line for the options of :func:`add_config_options`.

    Parameters
    ----------
    args : Namespace
        What ``parse_args`` returned.
    config_class, only, exclude, prefix
        As given to :func:`add_config_options`.

    Returns
    -------
    dict of str to object
        Field name -> value, for the options that were given (not None).
    """
    values = {}
    for field in _selected(config_class, only, exclude):
        value = getattr(args, _dest(field.name, prefix), None)
        if value is not None:
            values[field.name] = value
    return values


def build_config(
    config_class: type[Config],
    values: Mapping[str, Any],
    overrides: Mapping[str, Any],
    *,
    where: str | None = None,
    options: Mapping[str, str] | None = None,
) -> Config:
    """``config_class.from_dict({**values, **overrides})`` whose errors also name the
    command-line options that set the fields they mention.

    Parameters
    ----------
    config_class : type
    values : mapping
        The fields from a config file (or ``config.to_dict()``).
    overrides : mapping
        The fields given as options (:func:`config_overrides`).
    where : str, optional
        Named in error messages (default: the class name).
    options : mapping of str to str, optional
        Field name -> option string of the fields set on the command line (default:
        ``--field-name`` for each key of ``overrides``).

    Returns
    -------
    Config
        An instance of ``config_class``.

    Raises
    ------
    TypeError, ValueError
        A bad field, with ``(given as --option)`` when an option set it.
    """
    options = dict(options) if options is not None else {n: option_name(n) for n in overrides}
    try:
        return config_class.from_dict({**values, **overrides}, where=where)
    except (TypeError, ValueError) as err:
        text = str(err)
        named = [
            option for name, option in options.items() if re.search(rf"\b{re.escape(name)}\b", text)
        ]
        if not named:
            raise
        raise type(err)(f"{text} (given as {', '.join(named)})") from None


# ---------------------------------------------------------------- nested configs
def _sections(config_class: type[Config]) -> dict[str, type[Config]]:
    """The fields of ``config_class`` that are configs themselves, by name."""
    hints = typing.get_type_hints(config_class)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(config_class)
        if f.init and isinstance(hints[f.name], type) and issubclass(hints[f.name], Config)
    }


def _split_extra(
    extra: Mapping[str, Mapping[str, Any]] | None, config_class: type[Config], section: str
) -> dict[str, Mapping[str, Any]]:
    """The ``extra`` entries that belong to ``section`` (``""``: the top level): keyed by
    ``"section.field"``, or by a bare field name that ``section``'s config has."""
    names = {f.name for f in dataclasses.fields(config_class)}
    chosen = {}
    for key, value in (extra or {}).items():
        owner, _, name = key.rpartition(".")
        if owner == section and name in names:
            chosen[name] = value
    return chosen


def add_config_tree(
    parser: argparse.ArgumentParser,
    config_class: type[Config],
    *,
    titles: Mapping[str, str],
    prefixes: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Options for the fields of ``config_class`` and of each config nested in it, one
    argument group each (see :func:`add_config_options`).

    Parameters
    ----------
    parser : ArgumentParser
    config_class : type
        A :class:`~bioreason.config.Config` whose fields may be configs themselves (one
        level deep).
    titles : mapping of str to str
        Group title per section: ``""`` for the top-level fields, else the field name.
    prefixes : mapping of str to str, optional
        Option prefix per section (default none: ``--max-steps``, not ``--train-max-steps``;
        the nested configs' field names must then differ).
    exclude : iterable of str
        Dotted fields without an option (``"rl.method"``, or ``"model"`` at the top).
    extra : mapping, optional
        Per dotted field (``"train.lr"``; a top-level field by its name), the keywords of
        :func:`add_config_options`'s ``extra``.
    """
    prefixes = dict(prefixes or {})
    exclude = set(exclude)
    sections = _sections(config_class)
    for section, cls in {"": config_class, **sections}.items():
        own = [name.rpartition(".")[2] for name in exclude if name.rpartition(".")[0] == section]
        if section == "":
            own += list(sections)
        config_group_ = parser.add_argument_group(titles.get(section, section))
        add_config_options(
            config_group_,
            cls,
            exclude=own,
            prefix=prefixes.get(section, ""),
            extra=_split_extra(extra, cls, section),
        )


def tree_overrides(
    args: argparse.Namespace,
    config_class: type[Config],
    *,
    prefixes: Mapping[str, str] | None = None,
    exclude: Iterable[str] = (),
) -> tuple[dict[str, Any], dict[str, str]]:
    """The values given on the command line for the options of :func:`add_config_tree`.

    Returns
    -------
    values : dict
        Nested like the config: ``{"lr": 0.1, "train": {"max_steps": 5}}``.
    options : dict of str to str
        Field name -> the option string that set it (for error messages).
    """
    prefixes = dict(prefixes or {})
    exclude = set(exclude)
    sections = _sections(config_class)
    values: dict[str, Any] = {}
    options: dict[str, str] = {}
    for section, cls in {"": config_class, **sections}.items():
        own = [name.rpartition(".")[2] for name in exclude if name.rpartition(".")[0] == section]
        if section == "":
            own += list(sections)
        prefix = prefixes.get(section, "")
        given = config_overrides(args, cls, exclude=own, prefix=prefix)
        if section == "":
            values.update(given)
        elif given:
            values[section] = given
        options.update({name: option_name(name, prefix) for name in given})
    return values, options


def read_config_mapping(path: str, holds: str) -> dict[str, Any]:
    """The mapping a ``--config`` YAML file holds (an empty file is an empty mapping);
    anything else is a ValueError saying that the file ``must hold a mapping of <holds>``.

    Returns
    -------
    dict
    """
    from bioreason.config import read_yaml

    values = read_yaml(path, what="config file")
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ValueError(
            f"config file {path} must hold a mapping of {holds}, got {type(values).__name__}"
        )
    return values


def read_config_file(path: str | None, config_class: type[Config], what: str) -> dict[str, Any]:
    """The mapping of a command's ``--config`` YAML file (empty without one) in the
    config's nested form (:meth:`~bioreason.config.Config.nested_form`: moved fields at
    their new places, with a ``FutureWarning``; a flat form nested), ready for the flags
    of :func:`tree_overrides` to be merged on top (:func:`merge_values`).

    Returns
    -------
    dict
    """
    if not path:
        return {}
    values = read_config_mapping(path, f"{what} fields")
    return config_class.nested_form(values, where=f"{what} ({path})")


def merge_values(base: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``given`` on top, nested mappings merged key by key.

    Returns
    -------
    dict
    """
    merged = dict(base)
    for key, value in given.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_values(merged[key], value)
        else:
            merged[key] = value
    return merged
