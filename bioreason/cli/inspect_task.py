"""``bioreason inspect-task``: summarize a task table (splits, p*, outcomes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioreason.cli._base import positive_float

NAME = "inspect-task"


def main(args: argparse.Namespace) -> int:
    import json

    from bioreason.data.tasks import (
        describe_task,
        format_task_description,
        read_task,
        saved_task_summary,
    )

    path = Path(args.path)
    table = read_task(path)
    target_se = args.target_se
    if target_se is None:
        target_se = saved_task_summary(path).get("target_se")
    facts = describe_task(table, target_se)
    if args.json:
        print(json.dumps(facts, indent=1))
    else:
        print(format_task_description(facts, path))
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        NAME,
        help="summarize a task table (splits, p*, outcomes)",
    )
    parser.add_argument("path", help="task .parquet file, or a Replogle task folder")
    parser.add_argument(
        "--target-se",
        dest="target_se",
        type=positive_float,
        help="SE above which p* counts as unconverged (default: the task's target, else 0.01)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser
