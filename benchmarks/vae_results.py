"""Held-out results of the perturbation VAEs: one model per invocation, a JSON per run
in ``runs/vae_results/``; ``--table`` prints the Markdown tables of every run there.
The logic lives in :mod:`bioreason.pipelines.vae_results`.

    python benchmarks/vae_results.py --dataset norman --split reference --model sams_vae \
        --lr 3e-4
    python benchmarks/vae_results.py --table

A result file in ``--out`` that this script did not write (no ``NAME.manifest.json``
records it with its current hash, e.g. one from before manifests were kept) is refused
before training starts; ``--force`` replaces it. Exit status 1 with one line then.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bioreason.models import MODELS
from bioreason.pipelines.vae_results import (
    VAEResultsConfig,
    add_option_arguments,
    check_result_path,
    parse_field_values,
    run_vae_results,
    save_result,
    write_results_table,
)

OUT = Path(__file__).resolve().parents[1] / "runs" / "vae_results"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["synthetic", "norman"], default="synthetic")
    parser.add_argument("--model", choices=sorted(MODELS), default="sams_vae")
    parser.add_argument("--split", choices=["composable", "reference"], default="composable")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--early-stopping", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    add_option_arguments(parser)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="print the tables of --out")
    parser.add_argument(
        "--force",
        "--overwrite",
        dest="force",
        action="store_true",
        help="replace a result in --out that this script did not write",
    )
    args = parser.parse_args(argv)
    if args.table:
        print(write_results_table(args.out))
        return 0
    options = parse_field_values(args.option)
    train_options = parse_field_values(args.train_option)
    config = VAEResultsConfig(
        dataset=args.dataset,
        model=args.model,
        split=args.split,
        steps=args.steps,
        lr=args.lr,
        early_stopping=args.early_stopping,
        seed=args.seed,
        model_options=options,
        train_options=train_options,
    )
    try:  # before training: a run of minutes must not end in a refusal
        check_result_path(args.out, config.name, overwrite=args.force)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    result = run_vae_results(config)
    try:
        path = save_result(result, args.out, config.name, overwrite=args.force)
    except FileExistsError as err:  # written meanwhile; the error names NAME.json.new
        print(f"error: {err}", file=sys.stderr)
        return 1
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key}: {value:.4g}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
