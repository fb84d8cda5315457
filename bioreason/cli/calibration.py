"""``bioreason calibration``: score any predictions file (``.csv`` / ``.parquet``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioreason.cli._base import (
    add_force,
    check_out_file,
    non_negative_int,
    one_line,
    positive_int,
)

NAME = "calibration"


class _AnswerParser:
    """``texts -> (probabilities, valid)`` by the registered LM answer parser ``name``;
    imports the answer protocol (torch, seconds) only when a file's answers are text."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.used = False

    def __call__(self, texts):
        from bioreason.lm.answer_protocol import ANSWER_PARSERS, AnswerGrid

        self.used = True
        parsed = ANSWER_PARSERS.get(self.name)(texts, AnswerGrid())
        return parsed.probabilities.numpy(), parsed.valid.numpy()


def main(args: argparse.Namespace) -> int:
    from bioreason.calibration.table import (
        BOOTSTRAP_METRICS,
        TABLE_SUFFIXES,
        calibration_table,
        format_calibration_table,
        read_predictions,
        write_calibration_table,
    )

    path = Path(args.predictions)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_out_file(out, TABLE_SUFFIXES, args.force)
    frame = read_predictions(path)
    options = {
        "--prob-col": args.prob_col,
        "--outcome-col": args.outcome_col,
        "--ref-col": args.ref_col,
        "--group-col": args.group_col,
    }
    for option, column in options.items():
        if column is not None and column not in frame.columns:
            existing = ", ".join(str(c) for c in frame.columns)
            raise ValueError(
                f"{path} has no column {column!r} ({option}); its columns are: {existing}"
            )
    parser = _AnswerParser(args.answer_format)
    try:
        table = calibration_table(
            frame,
            prob_col=args.prob_col,
            outcome_col=args.outcome_col,
            ref_col=args.ref_col,
            group_col=args.group_col,
            n_bins=args.bins,
            right=args.right,
            n_boot=args.n_boot,
            seed=args.seed,
            parser=parser,
        )
    except ValueError as err:
        raise ValueError(f"{path}: {one_line(err)}") from None

    edges = "(a, b]" if args.right else "[a, b)"
    lines = [
        f"calibration of {args.prob_col!r} against {args.outcome_col!r}"
        + (f" and {args.ref_col!r}" if args.ref_col else "")
        + f" in {path} ({len(frame)} rows); ECE: {args.bins} equal-width bins {edges}, "
        f"adaptive ECE: {args.bins} equal-mass bins",
        "",
        format_calibration_table(table, args.ref_col),
        "",
    ]
    if args.n_boot:
        shown = [m for m in BOOTSTRAP_METRICS if f"{m}_low" in table.columns]
        lines.append(
            f"[low, high]: 95% bootstrap intervals ({args.n_boot} resamples of the rows, "
            f"seed {args.seed}) of {', '.join(shown)}."
        )
    n_invalid = int(table["n_invalid"].sum())
    if n_invalid:
        reason = "missing, unparseable or off the answer grid" if parser.used else "missing"
        lines.append(
            f"{n_invalid} of {len(frame)} answers are invalid ({reason}); the metrics score "
            "only the valid rows."
        )
    text = "\n".join(lines).rstrip() + "\n"
    print(text, end="")
    if out is not None:
        write_calibration_table(table, out, text=text, overwrite=args.force)
        print(f"wrote {out}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        NAME,
        help="score any predictions file (.csv/.parquet)",
        description="Score predictions made anywhere: ECE (equal-width and equal-mass "
        "bins), Brier, log loss, AUROC against 0/1 outcomes and, with --ref-col, the error "
        "and overconfidence against reference probabilities, one row per --group-col value. "
        "Answers are probabilities in [0, 1] or text such as '<answer>37</answer>' (0.37); "
        "unreadable answers are counted as invalid and left out of the metrics.",
    )
    parser.add_argument("predictions", help="predictions table (.csv, .tsv, .parquet)")
    parser.add_argument(
        "--prob-col", dest="prob_col", required=True, help="answers: probabilities or text"
    )
    parser.add_argument("--outcome-col", dest="outcome_col", required=True, help="0/1 outcomes")
    parser.add_argument(
        "--ref-col", dest="ref_col", help="reference probabilities, e.g. p_star or p_true"
    )
    parser.add_argument("--group-col", dest="group_col", help="one row per value, e.g. method")
    parser.add_argument(
        "--bins", type=positive_int, default=10, help="bins of ECE and adaptive ECE (10)"
    )
    parser.add_argument(
        "--right",
        action="store_true",
        help="equal-width bins (a, b] as pandas.cut (default [a, b))",
    )
    parser.add_argument(
        "--n-boot",
        dest="n_boot",
        type=non_negative_int,
        default=1000,
        help="bootstrap resamples of the intervals; 0 for none (1000)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, help="bootstrap seed (0)")
    parser.add_argument(
        "--answer-format",
        dest="answer_format",
        default="tagged",
        help="parser of text answers: tagged (<answer>N</answer>, q = N/100) or "
        "first_integer (default tagged)",
    )
    parser.add_argument("--out", help="also write the table: .csv, .parquet, .json or .md")
    add_force(parser, "an existing --out")
    return parser
