"""``bioreason calibration``: score any predictions file (``.csv`` / ``.parquet``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioreason.cli._base import (
    UsageError,
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
    from bioreason.calibration.paired import format_paired_comparison, paired_comparison
    from bioreason.calibration.plots import plot_reliability_diagrams
    from bioreason.calibration.table import (
        BOOTSTRAP_METRICS,
        TABLE_SUFFIXES,
        calibration_table,
        format_calibration_table,
        read_predictions,
        reliability_groups,
        resolve_columns,
        write_calibration_table,
    )

    path = Path(args.predictions)
    out = Path(args.out) if args.out else None
    plot = Path(args.plot) if args.plot else None
    if args.paired_by is not None and args.group_col is None:
        raise UsageError("--paired-by compares the methods of --group-col; give --group-col")
    if args.baseline is not None and args.paired_by is None:
        raise UsageError("--baseline names the method --paired-by compares with; give --paired-by")
    if args.paired_by is not None and args.paired_interval == "bootstrap" and not args.n_boot:
        raise UsageError("--n-boot 0 leaves no bootstrap; use --paired-interval normal")
    if out is not None:
        check_out_file(out, TABLE_SUFFIXES, args.force)
    if plot is not None:
        check_out_file(plot, (".png",), args.force, option="--plot")
    frame = read_predictions(path)
    options = {
        "--prob-col": args.prob_col,
        "--outcome-col": args.outcome_col,
        "--ref-col": args.ref_col,
        "--group-col": args.group_col,
        "--paired-by": args.paired_by,
    }
    for option, column in options.items():
        if column is not None and column not in frame.columns:
            existing = ", ".join(str(c) for c in frame.columns)
            raise ValueError(
                f"{path} has no column {column!r} ({option}); its columns are: {existing}"
            )
    parser = _AnswerParser(args.answer_format)
    try:
        prob_col, outcome_col = resolve_columns(frame, args.prob_col, args.outcome_col)
        table = calibration_table(
            frame,
            prob_col=prob_col,
            outcome_col=outcome_col,
            ref_col=args.ref_col,
            group_col=args.group_col,
            n_bins=args.bins,
            right=args.right,
            n_boot=args.n_boot,
            seed=args.seed,
            parser=parser,
        )
        paired = None
        if args.paired_by is not None:
            paired = paired_comparison(
                frame,
                method_col=args.group_col,
                id_col=args.paired_by,
                prob_col=prob_col,
                outcome_col=outcome_col,
                baseline=args.baseline,
                interval=args.paired_interval,
                n_boot=args.n_boot,
                seed=args.seed,
                parser=parser,
            )
        groups = None
        if plot is not None:
            groups = reliability_groups(
                frame,
                prob_col=prob_col,
                outcome_col=outcome_col,
                group_col=args.group_col,
                parser=parser,
            )
            groups = {k: v for k, v in groups.items() if len(v[0])}
            if not groups:
                raise ValueError("--plot: no valid answers to draw")
    except ValueError as err:
        raise ValueError(f"{path}: {one_line(err)}") from None

    edges = "(a, b]" if args.right else "[a, b)"
    lines = [
        f"calibration of {prob_col!r} against {outcome_col!r}"
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
    if paired is not None:
        how = (
            f"95% paired bootstrap over questions ({args.n_boot} resamples, seed {args.seed})"
            if args.paired_interval == "bootstrap"
            else "95% paired-normal interval (mean +- 1.96 sd / sqrt(n))"
        )
        if lines[-1]:
            lines.append("")
        lines += [
            f"paired comparison by {args.paired_by!r}: mean loss of each {args.group_col!r} "
            f"against {paired.loc[0, 'baseline']!r} on the same questions; diff = method - "
            "baseline (negative: the method is better)",
            "",
            format_paired_comparison(paired),
            "",
            f"[low, high]: {how}; a question's rows (e.g. seeds) are averaged first.",
        ]
        left_out = int(paired["n_left_out"].sum())
        if left_out:
            lines.append(
                f"{left_out} question(s) left out of the pairs: an invalid answer on one side."
            )
    text = "\n".join(lines).rstrip() + "\n"
    print(text, end="")
    if out is not None:
        write_calibration_table(table, out, text=text, overwrite=args.force)
        print(f"wrote {out}")
    if plot is not None:
        title = path.name
        plot_reliability_diagrams(
            groups, plot, n_bins=args.bins, title=title, overwrite=args.force, right=args.right
        )
        print(f"wrote {plot}")
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
        "--prob-col",
        dest="prob_col",
        help="answers: probabilities or text (default: the one of q, prob, probability)",
    )
    parser.add_argument(
        "--outcome-col", dest="outcome_col", help="0/1 outcomes (default: y or outcome)"
    )
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
    parser.add_argument(
        "--paired-by",
        dest="paired_by",
        metavar="ID_COL",
        help="also compare the --group-col methods question by question, matched by this "
        "id column (e.g. question_id): Brier and log loss differences with an interval",
    )
    parser.add_argument(
        "--baseline", help="the method the others are compared with (default: the first)"
    )
    parser.add_argument(
        "--paired-interval",
        dest="paired_interval",
        choices=("bootstrap", "normal"),
        default="bootstrap",
        help="interval of the paired differences: bootstrap over questions (--n-boot "
        "resamples) or paired-normal (default bootstrap)",
    )
    parser.add_argument("--out", help="also write the table: .csv, .parquet, .json or .md")
    parser.add_argument("--plot", help="also write a reliability diagram (.png), a curve per group")
    add_force(parser, "an existing --out or --plot")
    return parser
