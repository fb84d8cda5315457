"""``bioreason inspect-task``: summarize a task table (splits, p*, outcomes) and check
its values (repeated ids, probabilities outside [0, 1], missing p*, outcomes other than
0/1, empty prompts): exit status 1 when a value is wrong."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioreason.cli._base import positive_float

NAME = "inspect-task"


def main(args: argparse.Namespace) -> int:
    import json
    import sys

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
    if facts["problems"]:
        problems = [str(p) for p in facts["problems"]]
        more = f" (and {len(problems) - 1} more above)" if len(problems) > 1 else ""
        print(
            f"{path}: {len(problems)} problem(s) in the table's values: {problems[0]}{more}",
            file=sys.stderr,
        )
        return 1
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        NAME,
        help="summarize a task table (splits, p*, outcomes) and check its values",
        description="Summarize a task table and check its values: repeated question ids, "
        "p*/p_true outside [0, 1], p* missing for some questions, outcomes other than "
        "0/1/NaN, empty prompts are listed as 'problem:' lines and the exit status is 1.",
    )
    parser.add_argument("path", help="task .parquet file, or a Replogle task folder")
    parser.add_argument(
        "--target-se",
        dest="target_se",
        type=positive_float,
        help="SE above which p* counts as unconverged (default: the target the task was built "
        "with, from its .summary.json; else 0.01, said to be assumed)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser
