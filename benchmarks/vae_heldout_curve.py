"""Held-out IWELBO along training, term by term (the curve of issue 8).

On the Norman 2019 reference split by default (CBL+CNN1, MAP2K3+SLC38A2, MAPK1+TGFBR2,
SGK1+TBX3 held out; the other cells 90/10 train/validation), SAMS-VAE with the issue's
settings (correlated guide, n_latent 200, one hidden layer of 400, batch 512, 5
particles, Adam lr 3e-4, seed 0, early stopping off), IWELBO with 100 particles. Prints
one ``name: value unit`` line per figure and writes the rows to ``--out`` as JSON.

    python benchmarks/vae_heldout_curve.py
    python benchmarks/vae_heldout_curve.py --model cpa_vae --steps 500 1000 3000
    python benchmarks/vae_heldout_curve.py --option guide='"mean_field"'
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bioreason.models import MODELS
from bioreason.pipelines.vae_results import (
    VAEResultsConfig,
    add_option_arguments,
    parse_field_values,
    training_curve,
)

OUT = Path(__file__).resolve().parents[1] / "runs" / "vae_curves"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["synthetic", "norman"], default="norman")
    parser.add_argument("--split", choices=["composable", "reference"], default="reference")
    parser.add_argument("--model", choices=sorted(MODELS), default="sams_vae")
    parser.add_argument("--steps", type=int, nargs="+", default=[500, 1000, 3000])
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--particles", type=int, default=100, help="IWELBO particles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gap", action="store_true", help="also the amortization gap on validation cells"
    )
    add_option_arguments(parser)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    options = parse_field_values(args.option)
    train_options = parse_field_values(args.train_option)
    config = VAEResultsConfig(
        dataset=args.dataset,
        model=args.model,
        split=args.split,
        steps=max(args.steps),
        lr=args.lr,
        seed=args.seed,
        iwelbo_particles=args.particles,
        model_options=options,
        train_options=train_options,
    )
    rows = training_curve(config, tuple(args.steps), gap=args.gap)
    for row in rows:
        step = row["step"]
        for key in ("test_iwelbo", "validation_iwelbo", "train_iwelbo"):
            print(f"{key}_{step}: {row[key]:.2f} nats/cell")
        for condition, value in row["test_iwelbo_per_condition"].items():
            print(f"test_iwelbo_{condition}_{step}: {value:.2f} nats/cell")
        for part in ("test", "validation", "train"):
            print(f"{part}_reconstruction_{step}: {row[part + '_reconstruction']:.2f} nats/cell")
            print(f"{part}_local_kl_{step}: {row[part + '_local_kl']:.2f} nats/cell")
        print(f"global_kl_per_training_cell_{step}: {row['global_kl_per_training_cell']:.3f} nats")
        print(f"train_loss_{step}: {row['train_loss']:.2f} nats/cell")
        if "validation_amortization_gap" in row:
            print(
                f"validation_amortization_gap_{step}: "
                f"{row['validation_amortization_gap']:.2f} nats/cell"
            )
        if "mask_probability_quantiles" in row:
            print(f"median_mask_probability_{step}: {row['mask_probability_quantiles']['0.5']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{config.name}.json"
    path.write_text(json.dumps(rows, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
