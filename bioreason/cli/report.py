"""``bioreason report RUN``: report.html and report.md of a pipeline run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bioreason.cli._base import EXIT_FAILURE, add_force

NAME = "report"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        NAME,
        help="write report.html and report.md of a pipeline run folder",
        description="Write RUN/report.html (self-contained: figures embedded, no network) "
        "and RUN/report.md from a run folder of 'bioreason run', 'bioreason demo' or "
        "'bioreason synthetic-calibration'. A file of the run that exists but cannot be "
        "read (or lacks its columns) is listed in the report, and the command then exits "
        "with status 1.",
    )
    parser.add_argument("run", help="run folder, e.g. runs/demo")
    add_force(
        parser,
        "a report.html / report.md / report_files/figure-*.png that bioreason did not write "
        "(or a figure changed since)",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    from bioreason.report import write_report

    files = write_report(Path(args.run), force=args.force)
    print(f"wrote {files.html} and {files.markdown} ({files.n_figures} figures)")
    if files.problems:
        shown = "; ".join(files.problems[:3])
        more = f" (and {len(files.problems) - 3} more)" if len(files.problems) > 3 else ""
        print(
            f"error: the report leaves out files of {args.run} that are malformed or "
            f"unreadable: {shown}{more}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return 0
