"""How far SVI's p* is from a NumPyro NUTS reference (and NUTS's from p_true) on a small
SAMS model where exact inference is feasible.

The reference screen (:func:`bioreason.sim.simulate_reference_screen`, seed 0: 10
perturbations, 3 disjoint pairs, 50 genes, 4 latent dimensions, 30 cells per condition,
a linear decoder and Poisson counts) is fitted by NUTS (the masks and embeddings summed
out exactly, the decoder fixed at its true value) and by SAMS-VAE with both guides
(``n_layers=0, likelihood="poisson"``, the same decoder fixed, or learned with
``--decoder learned``). The questions are every non-control condition x the 5 genes
whose observed condition means vary most, ``screen_hit`` with 20-cell replicates and
per-gene thresholds at the median of the NUTS reference's expected |effect|. Prints one
``name: value unit`` line per figure, among them each method's 90 % interval (the 5 % and
95 % quantiles of its per-draw probabilities): its mean width, the share of questions
whose p_true it contains and, for SVI, the share whose NUTS p* it contains.

    python benchmarks/simulator_reference.py [--svi-steps 5000] [--num-samples 500]
        [--seed 0] [--decoder fixed|learned] [--svi-options JSON]
"""

from __future__ import annotations

import argparse
import time

from bioreason.cli._base import json_fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-warmup", type=int, default=500)
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--num-chains", type=int, default=2)
    parser.add_argument("--svi-steps", type=int, default=5000)
    parser.add_argument("--decoder", choices=("fixed", "learned"), default="fixed")
    parser.add_argument("--n-readouts", type=int, default=5)
    parser.add_argument("--replicate-cells", type=int, default=20)
    parser.add_argument("--target-se", type=float, default=0.01)
    parser.add_argument(
        "--svi-options",
        type=json_fields,
        default={},
        metavar="JSON",
        help="SAMS-VAE (VAEConfig) fields over the reference's settings, e.g. "
        '\'{"basal_guide": "direct"}\'',
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from bioreason.sim import (
        SimulationBudget,
        compare_with_svi,
        reference_questions,
        simulate_reference_screen,
    )

    start = time.perf_counter()
    adata = simulate_reference_screen(seed=args.seed)
    questions = reference_questions(adata, n_readouts=args.n_readouts)
    table = compare_with_svi(
        adata,
        questions,
        "screen_hit",
        decoder=args.decoder,
        svi_steps=args.svi_steps,
        svi_options=args.svi_options,
        nuts_options={
            "num_warmup": args.num_warmup,
            "num_samples": args.num_samples,
            "num_chains": args.num_chains,
        },
        budget=SimulationBudget(target_se=args.target_se, max_draws=4000),
        seed=args.seed,
        threshold=None,
        n_cells=args.replicate_cells,
    )
    summary = table.attrs["summary"]
    probability = [
        key for key in summary if key.startswith(("mean_abs", "mean_pstar", "mean_interval"))
    ]
    print(f"n_questions: {int(summary['n_questions'])} questions")
    print(f"svi_decoder: {args.decoder}")
    for key, value in args.svi_options.items():
        print(f"svi_option: {key}={value}")
    for key in probability:
        print(f"{key}: {summary[key]:.4f} probability")
    for guide in ("correlated", "mean_field"):
        column = table[f"p_star_svi_{guide}"] - table["p_star_nuts"]
        print(f"max_abs_pstar_svi_{guide}_vs_nuts: {column.abs().max():.4f} probability")
    print(
        f"max_abs_pstar_nuts_vs_true: {(table['p_star_nuts'] - table['p_true']).abs().max():.4f} "
        "probability"
    )
    for key in summary:
        if "in_90pct_interval" in key:
            print(f"{key}: {summary[key]:.4f} fraction")
    print(f"mean_pstar_se_nuts: {table['p_star_nuts_se'].mean():.4f} probability")
    print(f"nuts_r_hat_max: {summary['r_hat_max']:.3f} ratio")
    print(f"nuts_n_eff_min: {summary['n_eff_min']:.0f} draws")
    print(f"nuts_divergences: {int(summary['divergences'])} transitions")
    print(f"nuts_seconds: {summary['nuts_seconds']:.1f} s")
    for guide in ("correlated", "mean_field"):
        print(f"svi_seconds_{guide}: {summary[f'svi_seconds_{guide}']:.1f} s")
    print(f"total_seconds: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
