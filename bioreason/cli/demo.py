"""``bioreason demo``: the end-to-end demo on built-in synthetic data."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioreason.cli._base import add_force, non_negative_int, positive_int

NAME = "demo"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="run the end-to-end demo on built-in synthetic data")
    parser.add_argument("--out", default="runs/demo", help="run folder")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="parallel fine-tuning jobs (default: the cores, at most 4)",
    )
    add_force(parser, "files in the run folder that the demo did not write")
    return parser


def main(args: argparse.Namespace) -> int:
    from bioreason.pipelines.demo import run_demo

    run_demo(Path(args.out), seed=args.seed, force=args.force, workers=args.workers)
    return 0
