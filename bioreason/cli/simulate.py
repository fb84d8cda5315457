"""``bioreason simulate``: write a synthetic screen with known ground truth to ``.h5ad``."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioreason.cli._base import (
    add_force,
    check_out_file,
    config_group,
    non_negative_int,
    positive_int,
    probability,
)
from bioreason.cli._options import build_config, read_config_file, tree_overrides

NAME = "simulate"


def _options(parser: argparse.ArgumentParser) -> None:
    from bioreason.data.simulate import ScreenConfig

    positive = {"type": positive_int}
    config_group(
        parser,
        ScreenConfig,
        "screen options (ScreenConfig fields; they override --config)",
        extra={
            "n_cells_per_condition": positive,
            "n_genes": positive,
            "n_latent": positive,
            "n_perturbations": positive,
            "n_combinations": {"type": non_negative_int},
            "mask_probability": {"type": probability},
            "seed": {"type": non_negative_int},
        },
    )


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(NAME, help="write a synthetic screen to .h5ad", populate=_options)
    parser.add_argument("--out", required=True, help="output .h5ad path")
    parser.add_argument("--config", help="YAML file of ScreenConfig fields")
    add_force(parser, "an existing file")
    return parser


def main(args: argparse.Namespace) -> int:
    from bioreason._io import atomic_write
    from bioreason.data import ScreenConfig, simulate_screen

    out = Path(args.out)
    check_out_file(out, (".h5ad",), args.force)
    values = read_config_file(args.config, ScreenConfig, "ScreenConfig")
    overrides, options = tree_overrides(args, ScreenConfig)
    where = f"ScreenConfig ({args.config})" if args.config else None
    config = build_config(ScreenConfig, values, overrides, where=where, options=options)
    adata = simulate_screen(config)
    atomic_write(out, lambda tmp: adata.write_h5ad(tmp), overwrite=args.force)
    print(f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} genes")
    return 0
