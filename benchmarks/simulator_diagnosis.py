"""Why p* misses p_true on a finished pipeline run, term by term (issue 21).

Reads a run folder of a simulated screen (``bioreason run`` / ``bioreason demo``: its
``data/``, ``vae/`` and ``task/`` stages) and compares, question by question, what the
fitted model and the true parameters say about the replicate's score difference D of
each (condition, readout):

* the effect E[D] (model against truth: the regression slope through 0 and the
  correlation over questions), and the observed plug-in effect of the training cells
  against the truth (is the effect in the data?);
* the noise sd(D) (ratio model / truth) and the control cells' mean score;
* the attribution: the event's probability under the normal approximation
  (``P(|D| > t)``, the task's thresholds) with the model's effects and the truth's noise,
  and with the truth's effects and the model's noise -- which of the two moves p*;
* the leak of effects into the basal state: the mean distance between a condition's
  encoded basal states and the control cells' (``get_latent_representation("basal")``)
  against the mean latent effect the model assigns to the condition.

With ``--retrain NAME=JSON ...`` the run's VAE is trained again with the given
``TrainConfig`` / ``VAEConfig`` fields changed (``{"max_steps": 6000}``,
``{"embedding_lr": 0.01}``, ``{"mask_prior_probability": 0.1}``) and the same figures
are printed for each, with the training time.

    python benchmarks/simulator_diagnosis.py --run runs/demo [--threads 2]
        [--draws 24] [--cells 400] [--retrain steps6000='{"max_steps": 6000}' ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished run folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draws", type=int, default=24, help="posterior draws")
    parser.add_argument("--cells", type=int, default=400, help="cells per condition per draw")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--retrain",
        nargs="*",
        default=[],
        metavar="NAME=JSON",
        help="train the run's VAE again with these config fields changed",
    )
    return parser


def _line(name: str, value: float, unit: str) -> None:
    print(f"{name}: {value:.4f} {unit}", flush=True)


def _scores(simulator, conditions, readouts, draws, cells, seed):
    perturbed, control = simulator._simulate_scores(conditions, readouts, draws, cells, seed)
    mean_d = perturbed.mean(2) - control.mean(2)  # (draws, C, R)
    sd_d = np.sqrt(perturbed.var(2) / 100 + control.var(2) / 100)
    return mean_d, sd_d, control.mean(2)


def _hit_probability(mean_d, sd_d, thresholds):
    from scipy import stats

    return stats.norm.sf((thresholds - mean_d) / sd_d) + stats.norm.sf((thresholds + mean_d) / sd_d)


def _slope(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / (b * b).sum())


def _leak(model) -> tuple[float, float]:
    basal = model.get_latent_representation(kind="basal")
    shifted = model.get_latent_representation(kind="perturbed")
    labels = model.adata.obs[model.setup.perturbation_key].astype(str).to_numpy()
    control = basal[labels == model.control_label].mean(0)
    conditions = [c for c in np.unique(labels) if c != model.control_label]
    leak = np.mean([np.linalg.norm(basal[labels == c].mean(0) - control) for c in conditions])
    effect = np.mean([np.linalg.norm((shifted - basal)[labels == c].mean(0)) for c in conditions])
    return float(leak), float(effect)


def _diagnose(prefix, model, adata, programs, thresholds, conditions, truth_stats, args):
    from bioreason.sim import OutcomeSimulator

    readouts = [r.name for r in programs]
    simulator = OutcomeSimulator(
        model, "screen_hit", threshold=thresholds, readouts=programs, observed=adata
    )
    mean_d, sd_d, control = _scores(
        simulator, conditions, readouts, args.draws, args.cells, args.seed
    )
    true_mean, true_sd, true_control, observed, held = truth_stats
    t = np.array([thresholds[r] for r in readouts])
    effect, true_effect = mean_d.mean(0), true_mean.mean(0)
    for group, rows in (("seen", ~held), ("heldout", held)):
        if rows.any():
            a, b = effect[rows].ravel(), true_effect[rows].ravel()
            _line(f"{prefix}_{group}_effect_slope_vs_truth", _slope(a, b), "ratio")
            _line(f"{prefix}_{group}_effect_corr_vs_truth", np.corrcoef(a, b)[0, 1], "corr")
    _line(f"{prefix}_noise_sd_ratio_vs_truth", np.median(sd_d.mean(0) / true_sd.mean(0)), "ratio")
    _line(
        f"{prefix}_control_mean_score_abs_error",
        np.abs(control.mean((0, 1)) - true_control.mean((0, 1))).mean(),
        "score",
    )
    p_model = _hit_probability(mean_d, sd_d, t).mean(0)
    p_true = _hit_probability(true_mean, true_sd, t).mean(0)
    _line(f"{prefix}_mean_p_normal_approx", p_model.mean(), "probability")
    _line("truth_mean_p_normal_approx", p_true.mean(), "probability")
    swap_noise = _hit_probability(mean_d, true_sd.mean(0), t).mean(0)
    swap_effect = _hit_probability(true_mean.mean(0), sd_d, t).mean(0)
    _line(f"{prefix}_mean_p_with_true_noise", swap_noise.mean(), "probability")
    _line(f"{prefix}_mean_p_with_true_effects", swap_effect.mean(), "probability")
    leak, latent = _leak(model)
    _line(f"{prefix}_basal_shift_of_perturbed_cells", leak, "latent_units")
    _line(f"{prefix}_latent_effect", latent, "latent_units")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    import anndata as ad
    import pandas as pd

    from bioreason.data import ScreenGroundTruth, Split
    from bioreason.models import EvaluationConfig, TrainConfig, VAEConfig, fit_vae
    from bioreason.sim import GroundTruthSimulator
    from bioreason.sim.baselines import observed_probability
    from bioreason.sim.task_config import TaskConfig, _programs, load_model

    run = args.run
    config = json.loads((run / "pipeline.json").read_text())
    config = config.get("config", config)
    task = pd.read_parquet(run / "task" / "task.parquet")
    thresholds = json.loads(task["outcome_definition"].iloc[0])["threshold"]
    if not isinstance(thresholds, dict):
        print("error: the task's screen_hit thresholds are not per readout", file=sys.stderr)
        return 1
    adata = ad.read_h5ad(run / "data" / "data.h5ad")
    if "ground_truth" not in adata.uns:
        print(f"error: {run}/data/data.h5ad is not a simulated screen", file=sys.stderr)
        return 1
    options = config["task"]["options"]
    task_config = TaskConfig(
        model=str(run / "vae" / "model"),
        adata=str(run / "data" / "data.h5ad"),
        n_programs=options["n_programs"],
        n_markers=options["n_markers"],
        programs=options.get("programs"),
        seed=config.get("seed", 0),
    )
    model = load_model(task_config.model, None, adata=adata, device="cpu")
    programs = _programs(task_config, model, adata)
    readouts = [r.name for r in programs]
    conditions = list(dict.fromkeys(task["condition"]))
    split_arrays = np.load(run / "data" / "split.npz")
    data_result = json.loads((run / "data" / "result.json").read_text())
    heldout = tuple(data_result.get("heldout_conditions", ()))
    held = np.array([c in heldout for c in conditions])

    truth = GroundTruthSimulator(
        adata, "screen_hit", threshold=thresholds, readouts=programs, observed=adata
    )
    true_mean, true_sd, true_control = _scores(
        truth, conditions, readouts, args.draws, args.cells, args.seed
    )
    train_cells = adata[np.concatenate([split_arrays["train"], split_arrays["val"]])]
    seen = [c for c, h in zip(conditions, held, strict=True) if not h]
    plugin = observed_probability(truth.outcome, train_cells, programs, seen)
    observed = plugin.pivot(index="condition", columns="readout", values="effect")
    observed = observed.loc[seen, readouts].to_numpy()
    true_seen = true_mean.mean(0)[~held]
    _line(
        "observed_seen_effect_slope_vs_truth", _slope(observed.ravel(), true_seen.ravel()), "ratio"
    )
    _line(
        "observed_seen_effect_corr_vs_truth",
        np.corrcoef(observed.ravel(), true_seen.ravel())[0, 1],
        "corr",
    )
    stats = (true_mean, true_sd, true_control, observed, held)
    _diagnose("run_model", model, adata, programs, thresholds, conditions, stats, args)

    vae = config["vae"]
    split = Split(split_arrays["train"], split_arrays["val"], split_arrays["test"], heldout)
    ground = ScreenGroundTruth.from_uns(adata.uns["ground_truth"])
    for item in args.retrain:
        name, _, text = item.partition("=")
        changes = json.loads(text or "{}")
        train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        train = TrainConfig(
            **{
                **vae["train"],
                "progress": False,
                **{k: v for k, v in changes.items() if k in train_fields},
            }
        )
        options_vae = VAEConfig(
            **{**vae["options"], **{k: v for k, v in changes.items() if k not in train_fields}}
        )
        start = time.perf_counter()
        refit, _ = fit_vae(
            adata,
            split,
            vae["model"],
            options_vae,
            train,
            EvaluationConfig(evaluations=()),
            truth=ground,
        )
        _line(f"{name}_train_seconds", time.perf_counter() - start, "s")
        _diagnose(name, refit, adata, programs, thresholds, conditions, stats, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
