"""``bioreason report RUN``: report.html and report.md of a pipeline run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioreason.cli._base import add_force

NAME = "report"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        NAME,
        help="write report.html and report.md of a pipeline run folder",
        description="Write RUN/report.html (self-contained: figures embedded, no network) "
        "and RUN/report.md from a run folder of 'bioreason run' or 'bioreason demo'.",
    )
    parser.add_argument("run", help="run folder, e.g. runs/demo")
    add_force(parser, "a report.html / report.md that bioreason did not write")
    return parser


def main(args: argparse.Namespace) -> int:
    from bioreason.report import write_report

    files = write_report(Path(args.run), force=args.force)
    print(f"wrote {files.html} and {files.markdown} ({files.n_figures} figures)")
    return 0
