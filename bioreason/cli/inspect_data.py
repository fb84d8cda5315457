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
    adata = read_h5ad(path, args.backed)
    data = PerturbationData.from_anndata(adata, setup)
    print(data.summary())
    return 0
