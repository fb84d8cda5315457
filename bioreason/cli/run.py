"""``bioreason run CONFIG.yaml``: the pipeline a YAML config describes, stage by stage."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioreason.cli._base import add_force, positive_int

NAME = "run"


def add_parser(sub) -> argparse.ArgumentParser:
    from bioreason.pipelines.headline import default_workers
    from bioreason.run_layout import STAGES

    parser = sub.add_parser(
        NAME,
        help="run a pipeline from a YAML config: data -> VAE -> task -> LM -> RL -> report",
        description="Run (or resume) the pipeline a YAML config describes (see "
        "pipelines/configs/ and docs/pipelines.md) into runs/<name>/: a stage whose "
        "manifest matches is skipped, an interrupted run resumes, and nothing a previous "
        "run wrote is replaced without --force.",
    )
    parser.add_argument("config", help="pipeline config (.yaml), e.g. pipelines/configs/demo.yaml")
    parser.add_argument("--out", help="run folder (default runs/<name from the config>)")
    parser.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override a config field, e.g. finetune.steps=200 (YAML value); repeatable",
    )
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument("--only", choices=STAGES, metavar="STAGE", help="run this stage alone")
    stage.add_argument(
        "--from", dest="from_", choices=STAGES, metavar="STAGE", help="run from this stage on"
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=default_workers(),
        help="parallel fine-tuning jobs (default: the cores, at most 4)",
    )
    parser.add_argument("--no-report", action="store_true", help="skip report.html / report.md")
    add_force(parser, "files in the run folder that bioreason did not write")
    return parser


def main(args: argparse.Namespace) -> int:
    from bioreason.pipelines.headline import print_headline
    from bioreason.pipelines.run import load_pipeline_config, run_pipeline
    from bioreason.run_layout import REPORT_HTML

    config = load_pipeline_config(args.config, args.set or ())
    out = Path(args.out) if args.out else Path("runs") / config.name
    results = run_pipeline(
        config,
        out,
        only=args.only,
        from_=args.from_,
        force=args.force,
        workers=args.workers,
        report=not args.no_report,
    )
    if "calibration" in results:
        print_headline(results["calibration"].result)
        report = out / REPORT_HTML
        if report.exists():
            print(f"report: {report}")
    print(f"run folder: {out} (stages: {', '.join(results)})")
    return 0
