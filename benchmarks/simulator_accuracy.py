"""Accuracy of the outcome simulator's p* against the ground truth p_true (issue 10).

The demo screen (``demo_config().data.screen``: 20 perturbations, 12 two-gene
combinations, 500 genes, 100 cells per condition) is split as the results runs split it:
25 % of the combinations, drawn among those whose parts are measured alone
(``composable_combinations``), are held out with all their cells; the rest (train, and
val for the validation loss) trains each of SAMS-VAE, CPA-VAE and the conditional VAE
(the demo's sizes ``demo_config().vae.options``, built with every perturbation name,
``--steps`` Adam steps, the demo's by default, batch 512, 5 particles, no early stopping).

Questions: every seen condition (the single perturbations and the training
combinations) and every held-out combination x the readouts (``--n-programs`` NMF
programs learned on the training cells, 15 markers each, plus optionally ``--n-genes``
gene readouts: the genes whose condition means vary most across the training cells),
outcome ``screen_hit`` with 100 perturbed and 100 control cells per replicate: does
|mean score(perturbed) - mean score(control)| exceed the readout's threshold?

Thresholds come from the ground truth, not from a model: per readout, the
``--quantile`` (default the median) over all question conditions of the true expected
|effect| (``GroundTruthSimulator.suggest_thresholds``), so p_true spreads over (0, 1).
The same thresholds are given to the truth and to every model, so every p* and p_true
refer to the same event.

p_true comes from ``GroundTruthSimulator`` (the true parameters behind the simulator
API), p* from ``OutcomeSimulator`` over each fitted model, both to Monte Carlo standard
error ``--target-se`` (or ``--max-draws``). Three baselines give the numbers a scale: a
constant predictor (the mean p_true of the seen group), the model-free plug-in estimate
of each seen condition from its training cells, and the additive estimate of each
held-out combination from its parts' training cells
(:func:`bioreason.sim.baselines.observed_probability`). Prints one ``name: value unit`` line per
figure, per model and per group (seen / heldout): mean |p* - p_true| (with a bootstrap
interval over conditions), the ECE of p* against p_true (``ece_to_reference``: bins of
p*, mean p* against mean p_true per bin), overconfidence (mean |p* - 1/2| - mean
|p_true - 1/2|), the bias (mean p* - mean p_true), the share of questions whose p_true
lies in the central 90 % interval of the per-draw probabilities, the mean across-draw
spread of p* (epistemic), the fraction of questions with |p* - p_true| > 0.1, the error
that Monte Carlo noise alone would give (noise floor), and the seconds spent; plus the
truth's own Monte Carlo SE.

    python benchmarks/simulator_accuracy.py [--threads 2] [--steps 800] [--n-programs 10]
        [--n-genes 0] [--target-se 0.01] [--seed 0] [--screen JSON] [--fits 1]
        [--out accuracy.parquet]

``--screen`` overrides fields of the demo's ``ScreenConfig``, e.g.
``--screen '{"n_cells_per_condition": 200}'`` for another screen size. ``--fits 3`` fits
each model three times (seeds ``--seed``, ``--seed`` + 1,000, ``--seed`` + 2,000) and
also prints the fits pooled (``<model>_pooled_*``: :func:`bioreason.sim.pool_fits`) and
the sd of p* across the fits against each fit's own spread.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bioreason.cli._base import add_fields_option

MODEL_NAMES = ("sams_vae", "cpa_vae", "conditional_vae")
TOLERANCE = 0.1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (default: the demo config's, 4,000)"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--embedding-lr", type=float, default=None, help="TrainConfig.embedding_lr (None: lr)"
    )
    parser.add_argument(
        "--basal-guide",
        choices=("direct", "residual"),
        default=None,
        help="VAEConfig.basal_guide (default: the demo config's)",
    )
    add_fields_option(parser, "--vae-options", "VAEConfig", '{"mask_prior_probability": 0.1}')
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES), metavar="MODEL")
    parser.add_argument("--n-programs", type=int, default=10, help="NMF program readouts")
    parser.add_argument("--n-markers", type=int, default=15, help="marker genes per program")
    parser.add_argument("--n-genes", type=int, default=0, help="gene readouts (0: none)")
    parser.add_argument("--heldout-fraction", type=float, default=0.25)
    parser.add_argument("--n-cells", type=int, default=100, help="cells per replicate group")
    parser.add_argument("--quantile", type=float, default=0.5, help="threshold quantile")
    parser.add_argument("--target-se", type=float, default=0.01)
    parser.add_argument("--max-draws", type=int, default=2000)
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap over conditions")
    add_fields_option(parser, "--screen", "ScreenConfig", '{"mask_probability": 0.1}')
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fits",
        type=int,
        default=1,
        help="fits per model from other seeds (--seed, --seed + 1000, ...), on the same "
        "cells; with 2 or more their p* are also pooled (bioreason.sim.pool_fits)",
    )
    parser.add_argument("--out", type=Path, default=None, help="parquet of every question")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    return parser


def _line(name: str, value: float, unit: str, digits: int = 4) -> None:
    print(f"{name}: {value:.{digits}f} {unit}", flush=True)


def _responsive_genes(adata, n_genes: int) -> list[str]:
    """The genes whose mean log-normalized expression varies most across conditions."""
    import scipy.sparse as sp

    from bioreason.sim import log_normalize

    counts = adata.layers["counts"]
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    normalized = pd.DataFrame(log_normalize(counts), columns=list(map(str, adata.var_names)))
    means = normalized.groupby(adata.obs["perturbation"].astype(str).to_numpy()).mean()
    return means.var(axis=0).sort_values(ascending=False).index[:n_genes].tolist()


def _print_metrics(prefix: str, table: pd.DataFrame) -> None:
    for group, row in table.iterrows():
        name = f"{prefix}_{group}"
        _line(f"{name}_mean_abs_error_pstar_vs_ptrue", row["mean_abs_error"], "probability")
        if "mean_abs_error_low" in row:
            _line(f"{name}_mean_abs_error_ci95_low", row["mean_abs_error_low"], "probability")
            _line(f"{name}_mean_abs_error_ci95_high", row["mean_abs_error_high"], "probability")
        _line(f"{name}_ece_pstar_vs_ptrue", row["ece_to_reference"], "probability")
        _line(f"{name}_overconfidence", row["overconfidence"], "probability")
        _line(f"{name}_fraction_abs_error_gt_{TOLERANCE:g}", row["fraction_off"], "fraction")
        _line(f"{name}_bias_mean_pstar_minus_ptrue", row["bias"], "probability")
        if not np.isnan(row["interval_coverage"]):
            _line(f"{name}_ptrue_in_90pct_interval", row["interval_coverage"], "fraction")
        if not np.isnan(row["mean_spread"]):
            _line(f"{name}_mean_pstar_spread", row["mean_spread"], "probability")
        if not np.isnan(row["noise_floor"]):
            _line(f"{name}_mc_noise_floor_abs_error", row["noise_floor"], "probability")
        _line(f"{name}_mean_pstar", row["mean_p_star"], "probability")


def _fit_and_ask(
    name: str, label: str, args, asked: pd.DataFrame, screen: dict, *, fit_seed: int
) -> pd.DataFrame:
    """Fit model ``name`` on the training cells (seeded by ``fit_seed``) and compute p* of
    the questions ``asked`` (with the per-draw probabilities when ``--fits`` > 1); prints
    its timings and training figures under ``label``. ``screen``: the screen's ``data``,
    ``train_adata``, ``n_train``, ``steps``, ``demo`` config, ``thresholds``, ``budget``
    and outcome ``options``, the same for every fit."""
    from bioreason.models import MODELS
    from bioreason.sim import OutcomeSimulator

    cls = MODELS[name]
    model_adata = screen["train_adata"].copy()
    n_train = screen["n_train"]
    cls.setup_anndata(model_adata)
    vae_options = screen["demo"].vae.options.to_dict()
    if args.basal_guide is not None and name != "conditional_vae":
        vae_options["basal_guide"] = args.basal_guide
    vae_options.update(args.vae_options)
    names = screen["data"].perturbation_names
    model = cls(model_adata, perturbation_names=names, seed=fit_seed, **vae_options)
    start = time.perf_counter()
    model.train(
        max_steps=screen["steps"],
        batch_size=512,
        n_particles=5,
        lr=args.lr,
        embedding_lr=args.embedding_lr,
        seed=fit_seed,
        device="cpu",
        train_indices=np.arange(n_train),
        validation_indices=np.arange(n_train, model_adata.n_obs),
        early_stopping=False,
        progress=False,
    )
    train_seconds = time.perf_counter() - start
    simulator = OutcomeSimulator(
        model,
        "screen_hit",
        threshold=screen["thresholds"],
        budget=screen["budget"],
        **screen["options"],
    )
    start = time.perf_counter()
    frame = simulator.probability(
        asked[["condition", "readout"]], seed=args.seed, keep_draws=args.fits > 1
    )
    pstar_seconds = time.perf_counter() - start
    frame["condition"] = asked["condition"].to_numpy()
    frame["group"] = asked["group"].to_numpy()
    _line(f"{label}_train_seconds", train_seconds, "s", 1)
    _line(f"{label}_pstar_seconds", pstar_seconds, "s", 1)
    _line(f"{label}_final_train_loss", model.history["train_loss"].iloc[-50:].mean(), "nats", 1)
    if hasattr(model, "get_mask_prior_probability"):
        _line(f"{label}_mask_prior_probability", model.get_mask_prior_probability(), "probability")
    _line(f"{label}_pstar_converged", frame["converged"].mean(), "fraction")
    _line(f"{label}_pstar_mean_draws", frame["n_draws"].mean(), "draws", 0)
    return frame


def _print_pooled(name: str, fitted: list[pd.DataFrame], truth_frame, n_boot: int) -> pd.DataFrame:
    """The fits pooled (:func:`bioreason.sim.pool_fits`): prints their metrics, and per
    group how far the fits' p* lie apart against each fit's own spread; returns the pooled
    frame (with ``group``)."""
    from bioreason.sim import fit_spreads, pool_fits
    from bioreason.sim.accuracy import compare_to_truth

    pooled = pool_fits(fitted)
    pooled["group"] = fitted[0]["group"].to_numpy()
    _print_metrics(f"{name}_pooled", compare_to_truth(pooled, truth_frame, n_boot=n_boot))
    for group, row in fit_spreads(pooled).iterrows():
        _line(f"{name}_{group}_pstar_sd_between_fits", row["between_fits"], "probability")
        _line(f"{name}_{group}_pstar_spread_within_fit", row["within_fit"], "probability")
    return pooled


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    from bioreason._io import atomic_write
    from bioreason.data import (
        PerturbationData,
        composable_combinations,
        simulate_screen,
        split_heldout_combinations,
    )
    from bioreason.models import MODELS
    from bioreason.pipelines.demo import demo_config, demo_screen
    from bioreason.sim import (
        GroundTruthSimulator,
        SimulationBudget,
        gene_readout,
        learn_programs,
    )
    from bioreason.sim.accuracy import compare_to_truth
    from bioreason.sim.baselines import observed_probability

    demo = demo_config()  # the demo's screen and SAMS-VAE sizes

    steps = demo.vae.train.max_steps if args.steps is None else args.steps
    for name in args.models:
        MODELS.get(name)  # raises listing the models
    if args.out is not None and args.out.exists() and not args.force:
        print(f"error: {args.out} exists; pass --force to replace it", file=sys.stderr)
        return 1
    start_all = time.perf_counter()

    # ---------------------------------------------------------------- screen and split
    adata = simulate_screen(demo_screen(args.screen), seed=args.seed)
    data = PerturbationData.from_anndata(adata)
    heldout = composable_combinations(data, fraction=args.heldout_fraction, seed=args.seed)
    split = split_heldout_combinations(data, heldout=heldout, val_fraction=0.1, seed=args.seed)
    train_adata = adata[np.concatenate([split.train, split.val])].copy()
    n_train = split.train.size
    table = data.condition_table()
    perturbed = table.index[table["n_perturbations"] >= 1].tolist()
    seen = [c for c in perturbed if c not in set(heldout)]
    groups = {c: "seen" for c in seen} | {c: "heldout" for c in heldout}
    print(f"heldout_combinations: {', '.join(heldout)}")

    # ---------------------------------------------------------------- readouts, questions
    start = time.perf_counter()
    readouts = learn_programs(
        train_adata, n_programs=args.n_programs, n_markers=args.n_markers, seed=args.seed
    )
    if args.n_genes > 0:
        readouts += [gene_readout(g) for g in _responsive_genes(train_adata, args.n_genes)]
    names = [r.name for r in readouts]
    questions = pd.DataFrame(
        [(c, r) for c in groups for r in names], columns=["condition", "readout"]
    )
    questions["group"] = questions["condition"].map(groups)
    _line("readouts_seconds", time.perf_counter() - start, "s", 1)
    _line("readouts", len(names), "readouts", 0)
    for group in ("seen", "heldout"):
        n_conditions = sum(g == group for g in groups.values())
        _line(f"{group}_conditions", n_conditions, "conditions", 0)
        _line(f"{group}_questions", int((questions["group"] == group).sum()), "questions", 0)

    # ---------------------------------------------------------------- ground truth
    start = time.perf_counter()
    options = {"readouts": readouts, "n_cells": args.n_cells}
    budget = SimulationBudget(target_se=args.target_se, max_draws=args.max_draws)
    thresholds = GroundTruthSimulator(
        adata, "screen_hit", threshold=None, **options
    ).suggest_thresholds(list(groups), names, quantile=args.quantile, seed=args.seed)
    truth = GroundTruthSimulator(
        adata, "screen_hit", threshold=thresholds, budget=budget, **options
    )
    truth_frame = truth.probability(questions[["condition", "readout"]], seed=args.seed + 1)
    truth_frame["condition"] = questions["condition"].to_numpy()  # labels as asked
    truth_seconds = time.perf_counter() - start
    _line("threshold_median", float(np.median(list(thresholds.values()))), "score")
    _line("truth_seconds", truth_seconds, "s", 1)
    _line("truth_mean_mc_se", truth_frame["p_star_se"].mean(), "probability")
    _line("truth_max_mc_se", truth_frame["p_star_se"].max(), "probability")
    _line("truth_converged", truth_frame["converged"].mean(), "fraction")
    for group in ("seen", "heldout"):
        p_true = truth_frame.loc[questions["group"].to_numpy() == group, "p_star"]
        _line(f"{group}_ptrue_mean", p_true.mean(), "probability")
        _line(f"{group}_ptrue_sd", p_true.std(), "probability")
        inside = ((p_true > 0.05) & (p_true < 0.95)).mean()
        _line(f"{group}_ptrue_in_0.05_0.95", inside, "fraction")

    # ---------------------------------------------------------------- baseline
    constant = float(truth_frame.loc[questions["group"].to_numpy() == "seen", "p_star"].mean())
    frames = []
    baseline = questions.assign(p_star=constant)
    _line("constant_value", constant, "probability")
    _print_metrics("constant", compare_to_truth(baseline, truth_frame, n_boot=args.n_boot))
    frames.append(baseline.assign(model="constant"))

    # model-free baselines from the training cells: the plug-in estimate of each seen
    # condition, the sum of the parts' observed effects for each held-out combination
    outcome = truth.outcome
    plugin = observed_probability(outcome, train_adata, readouts, seen)
    additive = observed_probability(outcome, train_adata, readouts, heldout, method="additive")
    for label, frame in (("plugin", plugin), ("additive", additive)):
        frame["group"] = frame["condition"].map(groups)
        _print_metrics(label, compare_to_truth(frame, truth_frame, n_boot=args.n_boot))
        frames.append(frame.assign(model=label))

    # ---------------------------------------------------------------- models
    screen = {
        "demo": demo,
        "data": data,
        "train_adata": train_adata,
        "n_train": n_train,
        "steps": steps,
        "thresholds": thresholds,
        "budget": budget,
        "options": options,
    }
    for name in args.models:
        cls = MODELS[name]
        asked = questions if cls.composes else questions[questions["group"] == "seen"]
        fitted = []
        for fit in range(args.fits):
            # fit 0 is the single fit's (seed --seed); the others start elsewhere
            label = name if fit == 0 else f"{name}_fit{fit}"
            frame = _fit_and_ask(name, label, args, asked, screen, fit_seed=args.seed + 1000 * fit)
            if not cls.composes:
                print(f"{label}_heldout: skipped (the model cannot compose unseen combinations)")
            _print_metrics(label, compare_to_truth(frame, truth_frame, n_boot=args.n_boot))
            kept = frame.drop(columns="p_star_per_draw", errors="ignore")
            frames.append(kept.assign(model=label))
            fitted.append(frame)
        if args.fits > 1:
            pooled = _print_pooled(name, fitted, truth_frame, args.n_boot)
            frames.append(pooled.drop(columns="p_star_per_draw").assign(model=f"{name}_pooled"))

    _line("total_seconds", time.perf_counter() - start_all, "s", 1)
    if args.out is not None:
        truth_columns = truth_frame[["condition", "readout", "p_star", "p_star_se"]].rename(
            columns={"p_star": "p_true", "p_star_se": "p_true_se"}
        )
        every = pd.concat(frames, ignore_index=True).merge(
            truth_columns, on=["condition", "readout"], how="left"
        )
        every["threshold"] = every["readout"].map(thresholds)
        atomic_write(args.out, lambda tmp: every.to_parquet(tmp, index=False))
        print(f"wrote {len(every)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
