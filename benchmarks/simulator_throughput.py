"""Questions per second of the outcome simulator's p* (SE <= 0.01), fast path and brute force.

A SAMS-VAE of the demo's size (the demo screen: 20 perturbations, 12 combinations, 500
genes, 100 cells per condition; n_latent 10, hidden 128) is fitted once; the questions
are 50 conditions (the 20 single perturbations and 30 two-gene combinations, measured
or not) x 20 NMF programs, ``screen_hit`` with 100-cell replicates and per-program
thresholds at the median expected effect. Prints one ``name: value unit`` line per
figure: the fast path on all 1,000 questions, the fast path without counterfactual
(paired) cells on a subset, the brute-force path (replicates simulated and counted) on
a subset in the same run (run to SE 0.02; its time at SE 0.01 extrapolated by the 1 / SE^2
growth of the draws needed), and where the fast path's time goes.

    python benchmarks/simulator_throughput.py [--threads 2] [--train-steps 400]
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import torch

from bioreason.cli._base import add_fields_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    add_fields_option(parser, "--screen", "ScreenConfig", '{"mask_probability": 0.1}')
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--n-conditions", type=int, default=50)
    parser.add_argument("--n-readouts", type=int, default=20)
    parser.add_argument("--brute-conditions", type=int, default=2)
    parser.add_argument("--unpaired-conditions", type=int, default=5)
    parser.add_argument("--target-se", type=float, default=0.01)
    parser.add_argument("--cells-per-draw", type=int, default=None, help="default: the simulator's")
    parser.add_argument("--fast-only", action="store_true", help="skip the comparisons")
    parser.add_argument(
        "--brute-target-se",
        type=float,
        default=0.02,
        help="brute force is run to this SE; its time at --target-se is extrapolated by "
        "(brute SE / target SE)^2 (draws needed grow as 1 / SE^2)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bioreason.data import simulate_screen
    from bioreason.models import SAMSVAE
    from bioreason.pipelines.demo import demo_config, demo_screen
    from bioreason.sim import OutcomeSimulator, SimulationBudget, learn_programs

    demo = demo_config()  # the demo's screen and SAMS-VAE sizes

    adata = simulate_screen(demo_screen(args.screen), seed=0)
    SAMSVAE.setup_anndata(adata)
    model = SAMSVAE(adata, **demo.vae.options.to_dict())
    model.train(max_steps=args.train_steps, batch_size=512, progress=False, device="cpu")
    programs = learn_programs(adata, n_programs=args.n_readouts, n_markers=15, seed=0)
    names = list(model.perturbation_names)
    pairs = ["+".join(p) for p in itertools.combinations(names, 2)]
    rng = np.random.default_rng(0)
    n_pairs = args.n_conditions - len(names)
    conditions = names + [pairs[i] for i in rng.choice(len(pairs), n_pairs, replace=False)]
    readouts = [p.name for p in programs]
    questions = [(c, r) for c in conditions for r in readouts]

    simulator = OutcomeSimulator(
        model, "screen_hit", readouts=programs, threshold=None, n_cells=100
    )
    thresholds = simulator.suggest_thresholds(conditions, readouts)
    simulator = OutcomeSimulator(
        model,
        "screen_hit",
        readouts=programs,
        threshold=thresholds,
        n_cells=100,
        budget=SimulationBudget(target_se=args.target_se, cells_per_draw=args.cells_per_draw),
    )
    simulator.probability(questions[:20], target_se=0.2, max_draws=16)  # warm-up

    # time spent generating cells vs the rest (scores, moments, bookkeeping)
    generate = {"seconds": 0.0}
    original = model.posterior_predictive

    def timed(*a, **k):
        start = time.perf_counter()
        out = original(*a, **k)
        generate["seconds"] += time.perf_counter() - start
        return out

    model.posterior_predictive = timed
    start = time.perf_counter()
    fast = simulator.probability(questions, method="fast")
    fast_seconds = time.perf_counter() - start
    model.posterior_predictive = original
    if args.fast_only:
        print(f"pstar_questions: {len(questions)} questions")
        print(f"pstar_seconds: {fast_seconds:.1f} s")
        print(f"pstar_throughput: {len(questions) / fast_seconds:.1f} questions/s")
        print(f"pstar_mean_draws: {fast['n_draws'].mean():.0f} draws")
        return

    # the fast path without counterfactual (paired) cells, on a subset
    unpaired_questions = [(c, r) for c in conditions[: args.unpaired_conditions] for r in readouts]
    unpaired_simulator = OutcomeSimulator(
        model,
        "screen_hit",
        readouts=programs,
        threshold=thresholds,
        n_cells=100,
        counterfactual=False,
        budget=SimulationBudget(target_se=args.target_se),
    )
    start = time.perf_counter()
    unpaired = unpaired_simulator.probability(unpaired_questions, method="fast")
    unpaired_seconds = time.perf_counter() - start
    paired_subset = fast.set_index(["condition", "readout"]).loc[unpaired_questions]

    brute_questions = [(c, r) for c in conditions[-args.brute_conditions :] for r in readouts]
    start = time.perf_counter()
    brute = simulator.probability(
        brute_questions, target_se=args.brute_target_se, method="brute", max_draws=4000
    )
    brute_seconds = (time.perf_counter() - start) * (args.brute_target_se / args.target_se) ** 2
    fast_subset = fast.set_index(["condition", "readout"]).loc[
        list(map(tuple, brute[["condition", "readout"]].to_numpy()))
    ]
    gap = np.abs(fast_subset["p_star"].to_numpy() - brute["p_star"].to_numpy())
    bound = np.hypot(fast_subset["p_star_se"].to_numpy(), brute["p_star_se"].to_numpy())

    print(f"pstar_questions: {len(questions)} questions")
    print(f"pstar_seconds: {fast_seconds:.1f} s")
    print(f"pstar_throughput: {len(questions) / fast_seconds:.1f} questions/s")
    print(f"pstar_converged: {int(fast['converged'].sum())} questions")
    print(f"pstar_mean_draws: {fast['n_draws'].mean():.0f} draws")
    print(f"pstar_generation_share: {100 * generate['seconds'] / fast_seconds:.0f} %")
    print(f"pstar_mean: {fast['p_star'].mean():.3f} probability")
    print(f"pstar_mean_spread: {fast['p_star_spread'].mean():.3f} probability")
    print(
        f"pstar_unpaired_throughput: {len(unpaired_questions) / unpaired_seconds:.1f} questions/s"
    )
    print(f"pstar_unpaired_mean_draws: {unpaired['n_draws'].mean():.0f} draws")
    print(f"pstar_paired_mean_draws_same_questions: {paired_subset['n_draws'].mean():.0f} draws")
    print(
        "pstar_brute_force_throughput_extrapolated: "
        f"{len(brute_questions) / brute_seconds:.2f} questions/s"
    )
    speedup = (brute_seconds / len(brute_questions)) / (fast_seconds / len(questions))
    print(f"speedup_fast_vs_brute_force: {speedup:.1f} x")
    print(f"fast_vs_brute_mean_abs_difference: {gap.mean():.4f} probability")
    print(f"fast_vs_brute_within_3se: {100 * np.mean(gap < 3 * bound):.0f} %")


if __name__ == "__main__":
    main()
