"""What every ``bioreason`` subcommand shares: the parser class, exit codes, one-line
errors, argument types and a few common options."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import yaml

from bioreason.cli._options import add_config_options

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "EXPECTED_ERRORS",
    "CommandListFormatter",
    "Parser",
    "UsageError",
    "add_fields_option",
    "add_force",
    "check_out_file",
    "config_group",
    "json_fields",
    "non_negative_int",
    "one_line",
    "positive_float",
    "positive_int",
    "probability",
]

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A bad command line found after parsing (an option's value): exit status 2."""


#: the failures a user can cause (bad files, bad values); anything else is a bug and
#: keeps its traceback
EXPECTED_ERRORS = (ValueError, TypeError, OSError, yaml.YAMLError)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


class Parser(argparse.ArgumentParser):
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


class CommandListFormatter(argparse.HelpFormatter):
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


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _float(text: str, rule: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}") from None


def probability(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    value = _float(text, "a number in [0, 1]")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = _float(text, "a positive number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def config_group(
    parser: argparse.ArgumentParser, config_class: type, title: str, **kwargs: Any
) -> list[str]:
    """An argument group of the options generated from ``config_class``'s fields."""
    return add_config_options(parser.add_argument_group(title), config_class, **kwargs)


def add_force(parser: argparse.ArgumentParser, what: str) -> None:
    """``--force`` (alias ``--overwrite``): replace ``what``."""
    parser.add_argument(
        "--force",
        "--overwrite",
        dest="force",
        action="store_true",
        help=f"replace {what} (--overwrite is the same flag)",
    )


def json_fields(text: str) -> dict[str, Any]:
    """An argument type: a JSON object of config fields, e.g. ``'{"n_genes": 50}'``.
    Anything else (bad JSON, a list, a number) is an ``argparse`` error naming it."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object of fields, e.g. '{{\"field\": 1}}', got {text!r}"
        )
    return value


def add_fields_option(
    parser: argparse.ArgumentParser, flag: str, config: str, example: str
) -> None:
    """``flag JSON``: fields of ``config`` (a class name) over the defaults the script
    starts from; parsed by :func:`json_fields`, ``{}`` when absent."""
    parser.add_argument(
        flag,
        type=json_fields,
        default={},
        metavar="JSON",
        help=f"{config} fields over the demo's, e.g. '{example}'",
    )


def _either(suffixes: tuple[str, ...]) -> str:
    return suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"


def check_out_file(
    out: Path, suffixes: tuple[str, ...], force: bool, option: str = "--out"
) -> None:
    """Refuse an ``--out`` (``option``) file path that does not end in one of
    ``suffixes`` (a usage error), that is a folder, or that exists when ``--force`` is
    not given."""
    if out.suffix.lower() not in suffixes:
        raise UsageError(f"{option} must end in {_either(suffixes)}, got {out}")
    if out.is_dir():
        raise IsADirectoryError(
            f"{option} {out} is a folder; give a file path ending in {_either(suffixes)}"
        )
    if out.exists() and not force:
        raise FileExistsError(
            f"{out} already exists; choose another {option} or pass --force to replace it"
        )
