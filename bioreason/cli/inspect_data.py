"""``bioreason inspect``: parse a perturbation ``.h5ad`` and print a summary."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "inspect"


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="parse a perturbation .h5ad and print a summary")
    parser.add_argument("path")
    # defaults (None here) are those of bioreason.data.PerturbationSetup
    parser.add_argument(
        "--perturbation-key", dest="perturbation_key", help="obs column of labels (perturbation)"
    )
    parser.add_argument("--control", help="control label(s), comma-separated (control)")
    parser.add_argument("--delimiter", help="joins the parts of a combination (+)")
    parser.add_argument("--layer", help="raw-count layer; 'X' for adata.X (counts)")
    parser.add_argument("--dosage-key", dest="dosage_key", help="obs column of doses (none)")
    parser.add_argument("--backed", action="store_true", help="open the file backed (on disk)")
    parser.add_argument(
        "--recover-counts",
        dest="recover_counts",
        action="store_true",
        help="adata.X holds log-normalized values (log1p, log2 or log10 of normalized "
        "counts): rebuild integer counts into the counts layer first "
        "(bioreason.data.recover_counts; obs['ncounts'] is read as the library size when "
        "present)",
    )
    return parser


def main(args: argparse.Namespace) -> int:
    from bioreason.data import PerturbationData, PerturbationSetup, read_h5ad

    path = Path(args.path)
    # options left out keep the PerturbationSetup defaults
    fields = {
        name: getattr(args, name)
        for name in ("perturbation_key", "control", "layer", "delimiter", "dosage_key")
        if getattr(args, name) is not None
    }
    if "layer" in fields and fields["layer"] in ("X", "none", ""):
        fields["layer"] = None
    if "control" in fields and "," in fields["control"]:
        fields["control"] = fields["control"].split(",")
    setup = PerturbationSetup.resolve(where="bioreason inspect", **fields)
    if args.recover_counts and args.backed:
        raise ValueError("--recover-counts reads the whole file into memory: leave out --backed")
    adata = read_h5ad(path, args.backed)
    report = None
    if args.recover_counts:
        from bioreason.data.recover import recover_into_setup

        adata, report = recover_into_setup(adata, setup, "--recover-counts")
    data = PerturbationData.from_anndata(adata, setup)
    if report is not None:
        print(report.summary())
    print(data.summary())
    return 0
