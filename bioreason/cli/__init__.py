"""The ``bioreason`` command: one module per subcommand, each with ``add_parser(sub)``
(its options, most generated from the config dataclasses it fills) and ``main(args)``
(builds the config and calls the library).

Exit status: 0 on success, 1 when the command failed (the one-line message says what
and where), 2 for a command-line usage error (argparse's convention), 130 when
interrupted (Ctrl-C). ``--debug`` or ``BIOREASON_DEBUG=1`` shows the full traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bioreason import __version__
from bioreason.cli import (
    build_task,
    calibration,
    demo,
    finetune,
    inspect_data,
    inspect_task,
    report,
    run,
    simulate,
    synthetic_calibration,
    train_vae,
)
from bioreason.cli._base import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    EXPECTED_ERRORS,
    CommandListFormatter,
    Parser,
    UsageError,
    one_line,
)

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

#: the subcommands, in the order ``bioreason --help`` lists them
COMMANDS = (
    simulate,
    inspect_data,
    synthetic_calibration,
    calibration,
    build_task,
    inspect_task,
    finetune,
    train_vae,
    demo,
    run,
    report,
)

_EPILOG = (
    "exit status: 0 success, 1 failure (one line 'error: ...' names the file or option), "
    "2 usage error, 130 interrupted. --debug or BIOREASON_DEBUG=1 shows the traceback."
)


def build_parser() -> argparse.ArgumentParser:
    """The ``bioreason`` parser with every subcommand of :data:`COMMANDS`.

    Returns
    -------
    argparse.ArgumentParser
    """
    parser = Parser(
        prog="bioreason",
        description="Perturbation VAEs, outcome simulators and calibrated RL predictors.",
        epilog=_EPILOG,
        formatter_class=CommandListFormatter,
    )
    parser.add_argument("--version", action="version", version=f"bioreason {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(func=command.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bioreason`` with ``argv`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status (see the module docstring).
    """
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
    except EXPECTED_ERRORS as err:
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_FAILURE
