"""The ``bioreason run`` and ``bioreason report`` subcommands (added to the main parser by
:func:`add_parsers`)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = ["add_parsers", "default_workers", "print_headline"]


def default_workers() -> int:
    """Parallel fine-tuning jobs by default: the machine's cores, at most 4.

    Returns
    -------
    int
    """
    return max(1, min(4, os.cpu_count() or 1))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def print_headline(result: dict[str, Any]) -> None:
    """Print the calibration stage's headline table and its verdict.

    Parameters
    ----------
    result : dict
        ``calibration/result.json`` (``headline`` rows and ``finding``).
    """
    import math

    def cell(row: dict[str, Any], name: str) -> str:
        value = row.get(name)
        if value is None or not math.isfinite(value):
            return "n/a"
        low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return f"{value:.3f}"
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"

    header = (
        "method",
        "ECE vs outcomes",
        "|q - p*|",
        "overconfidence vs p*",
        "sd of q",
        "invalid",
    )
    rows = [
        (
            str(row["method"]),
            cell(row, "ece"),
            cell(row, "mae_p_star"),
            cell(row, "overconfidence"),
            "n/a" if row.get("q_spread") is None else f"{row['q_spread']:.3f}",
            "n/a" if row.get("invalid_rate") is None else f"{row['invalid_rate']:.3f}",
        )
        for row in result.get("headline", [])
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for line in [header, *rows]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip())
    print("(95 % bootstrap intervals over held-out questions)")
    finding = result.get("finding") or {}
    if finding.get("text"):
        print(finding["text"])


def _run(args: argparse.Namespace) -> int:
    from bioreason.pipelines.run import load_pipeline_config, run_pipeline

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
        report = out / "report.html"
        if report.exists():
            print(f"report: {report}")
    print(f"run folder: {out} (stages: {', '.join(results)})")
    return 0


def _report(args: argparse.Namespace) -> int:
    from bioreason.report import write_report

    files = write_report(Path(args.run), force=args.force)
    print(f"wrote {files.html} and {files.markdown} ({files.n_figures} figures)")
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``run`` and ``report`` to the ``bioreason`` subcommand parsers ``sub``."""
    from bioreason.pipelines._names import STAGES

    run = sub.add_parser(
        "run",
        help="run a pipeline from a YAML config: data -> VAE -> task -> LM -> RL -> report",
        description="Run (or resume) the pipeline a YAML config describes (see "
        "pipelines/configs/ and docs/pipelines.md) into runs/<name>/: a stage whose "
        "manifest matches is skipped, an interrupted run resumes, and nothing a previous "
        "run wrote is replaced without --force.",
    )
    run.add_argument("config", help="pipeline config (.yaml), e.g. pipelines/configs/demo.yaml")
    run.add_argument("--out", help="run folder (default runs/<name from the config>)")
    run.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override a config field, e.g. finetune.steps=200 (YAML value); repeatable",
    )
    stage = run.add_mutually_exclusive_group()
    stage.add_argument("--only", choices=STAGES, metavar="STAGE", help="run this stage alone")
    stage.add_argument(
        "--from", dest="from_", choices=STAGES, metavar="STAGE", help="run from this stage on"
    )
    run.add_argument(
        "--workers",
        type=_positive,
        default=default_workers(),
        help="parallel fine-tuning jobs (default: the cores, at most 4)",
    )
    run.add_argument("--no-report", action="store_true", help="skip report.html / report.md")
    run.add_argument(
        "--force",
        "--overwrite",
        action="store_true",
        help="replace files in the run folder that bioreason did not write",
    )
    run.set_defaults(func=_run)

    report = sub.add_parser(
        "report",
        help="write report.html and report.md of a pipeline run folder",
        description="Write RUN/report.html (self-contained: figures embedded, no network) "
        "and RUN/report.md from a run folder of 'bioreason run' or 'bioreason demo'.",
    )
    report.add_argument("run", help="run folder, e.g. runs/demo")
    report.add_argument(
        "--force",
        "--overwrite",
        action="store_true",
        help="replace a report.html / report.md that bioreason did not write",
    )
    report.set_defaults(func=_report)
