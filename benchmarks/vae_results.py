"""Results tables of the perturbation VAEs (issue 3): held-out combinations.

For each data set and model: test IWELBO (nats per cell, K = 100), Pearson r of data vs
model ATE on the held-out combinations (all genes and the top 20 genes by |data ATE|),
mask recovery AUROC (synthetic screen), and the model ATE against the exact
ground-truth ATE (synthetic screen). One model per invocation (each takes minutes), the
result is written to ``runs/vae_results/<dataset>_<model>.json``; ``--table`` collects
them into ``docs/results_vae.md``.

    flock /tmp/bioreason-cpu.lock python benchmarks/vae_results.py --dataset synthetic \
        --model sams_vae
    flock /tmp/bioreason-cpu.lock python benchmarks/vae_results.py --dataset norman --model sams_vae
    python benchmarks/vae_results.py --table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bioreason.data import (
    PerturbationData,
    ScreenGroundTruth,
    recover_counts,
    simulate_screen,
    split_heldout_combinations,
)
from bioreason.models import MODELS
from bioreason.models import evaluation as ev

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "perturbench_devel.h5ad"
OUT = ROOT / "runs" / "vae_results"

DATASETS = {
    # name: (steps, model settings)
    "synthetic": dict(steps=3000, n_latent=20, n_hidden=256),
    "norman": dict(steps=3000, n_latent=200, n_hidden=400),
}


def load_synthetic():
    adata = simulate_screen(
        n_cells_per_condition=200,
        n_genes=500,
        n_latent=10,
        n_perturbations=20,
        n_combinations=20,
        mask_probability=0.1,
        seed=0,
    )
    return adata, ScreenGroundTruth.from_uns(adata.uns["ground_truth"])


def load_norman():
    import anndata as ad

    if not SHARED.exists():
        raise SystemExit(f"{SHARED} not found: the Norman 2019 subset lives in ../shared/data")
    full = ad.read_h5ad(SHARED)
    adata = full[full.obs["dataset"] == "norman19"].copy()
    adata, report = recover_counts(adata)
    print(f"count recovery: max deviation {report.max_deviation:.3g}")
    adata.obs["perturbation"] = adata.obs["condition"].astype(str)
    return adata, None


def composable_heldout(data: PerturbationData, fraction: float, seed: int) -> list[str]:
    """``fraction`` of all combinations (rounded), drawn among those whose every part is
    also measured alone: a combination of never-seen perturbations cannot be predicted
    by any of the models (in the Norman subset 5 of the 15 combinations qualify)."""
    table = data.condition_table()
    combos = [c for c in table.index if table.loc[c, "n_perturbations"] >= 2]
    singles = {c for c in table.index if table.loc[c, "n_perturbations"] == 1}
    eligible = sorted(c for c in combos if all(p in singles for p in c.split("+")))
    n = max(1, round(fraction * len(combos)))
    if len(eligible) < n:
        raise SystemExit(f"only {len(eligible)} composable combinations, need {n}")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(eligible, n, replace=False).tolist())


def run(dataset: str, model_name: str, steps: int | None, seed: int) -> dict:
    torch.set_num_threads(2)
    settings = dict(DATASETS[dataset])
    steps = steps or settings.pop("steps")
    settings.pop("steps", None)
    adata, truth = load_synthetic() if dataset == "synthetic" else load_norman()
    data = PerturbationData.from_anndata(adata)
    split = split_heldout_combinations(
        data, heldout=composable_heldout(data, 0.25, seed), val_fraction=0.1, seed=seed
    )
    heldout = list(split.heldout_conditions)
    train_adata = adata[np.concatenate([split.train, split.val])].copy()
    test_adata = adata[split.test].copy()
    cls = MODELS[model_name]
    cls.setup_anndata(train_adata)
    model = cls(train_adata, guide="correlated", seed=seed, **settings)
    n_train = len(split.train)
    start = time.perf_counter()
    model.train(
        max_steps=steps,
        batch_size=512,
        n_particles=5,
        lr=1e-3,
        seed=seed,
        device="cpu",
        train_indices=np.arange(n_train),
        validation_indices=np.arange(n_train, train_adata.n_obs),
        early_stopping=False,
        eval_every=500,
        progress=False,
    )
    seconds = time.perf_counter() - start
    result = {
        "dataset": dataset,
        "model": model_name,
        "steps": steps,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "heldout": heldout,
        "n_train": n_train,
        "n_test": int(test_adata.n_obs),
        **settings,
        "final_train_loss": float(model.history["train_loss"].iloc[-50:].mean()),
        "final_validation_loss": float(model.history["validation_loss"].dropna().iloc[-1]),
    }
    control = "control"
    data_ate = ev.average_treatment_effect(
        # data ATE: held-out combination cells against all control cells
        adata[np.concatenate([np.flatnonzero(data.is_control), split.test])].copy(),
        control=control,
        conditions=heldout,
    )
    try:
        result["test_iwelbo"] = model.iwelbo(test_adata, n_particles=100)
        model_ate = model.average_treatment_effect(heldout, n_cells=2500)
        table = ev.ate_agreement(data_ate, model_ate, top_k=20)
        result["ate_pearson_all"] = float(table["pearson_all"].mean())
        result["ate_pearson_top20"] = float(table["pearson_top"].mean())
        result["ate_r2_all"] = float(table["r2_all"].mean())
        result["ate_r2_top20"] = float(table["r2_top"].mean())
        if truth is not None:
            exact = ev.ground_truth_ate(truth, heldout, list(adata.var_names), n_cells=10_000)
            vs_truth = ev.ate_agreement(exact, model_ate, top_k=20)
            result["ate_vs_truth_pearson_all"] = float(vs_truth["pearson_all"].mean())
            result["ate_vs_truth_pearson_top20"] = float(vs_truth["pearson_top"].mean())
    except ValueError as err:  # SVAE+ cannot compose unseen combinations
        result["cannot_predict_heldout"] = str(err).split(":")[0]
        result["train_val_iwelbo"] = model.iwelbo(train_adata[n_train:].copy(), n_particles=100)
    if truth is not None and model_name in ("sams_vae", "svae_plus"):
        effects = model.get_perturbation_effects()
        probability, effect = effects["mask_probability"], effects["effect"]
        if model_name == "svae_plus":  # categories: keep the single perturbations
            singles = [p for p in truth.perturbation_names if p in probability.index]
            probability, effect = probability.loc[singles], effect.loc[singles]
        rows = [truth.perturbation_names.index(p) for p in probability.index]
        recovery = ev.mask_recovery(
            truth.masks[rows], truth.effects[rows], probability.to_numpy(), effect.to_numpy()
        )
        result["mask_auroc"] = recovery["auroc"]
    return result


def fmt(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_table() -> None:
    rows = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))]
    lines = [
        "# Perturbation VAE results (held-out combinations)",
        "",
        "Produced by `benchmarks/vae_results.py` (one model per run, under the CPU lock):",
        "",
        "```",
        "flock /tmp/bioreason-cpu.lock \\",
        "    python benchmarks/vae_results.py --dataset DATASET --model MODEL",
        "python benchmarks/vae_results.py --table",
        "```",
        "",
        "Setup: 25 % of the two-gene combinations held out as the test set (all their cells),",
        "drawn among combinations whose parts are also measured alone (5 of 15 in Norman);",
        "the other cells split 90/10 into train/validation; correlated guide, batch 512, 5",
        "particles, Adam lr 1e-3, negative binomial likelihood, seed 0. Test IWELBO: K = 100",
        "importance samples, nats per cell on the held-out cells. ATE: log2(1 + counts",
        "normalized to 10,000), held-out combination cells (data) or 2,500 generated cells",
        "(model) minus control cells; Pearson r averaged over held-out combinations.",
        "Mask AUROC: inferred mask probabilities vs true masks after Hungarian matching of",
        "latent dimensions on |correlation| of effects (synthetic screen only).",
        "",
    ]
    for dataset in DATASETS:
        subset = [r for r in rows if r["dataset"] == dataset]
        if not subset:
            continue
        first = subset[0]
        lines += [
            f"## {dataset}",
            "",
            f"{first['n_train']} training cells, {first['n_test']} test cells; held out: "
            f"{', '.join(first['heldout'])}; {first['steps']} steps, n_latent "
            f"{first['n_latent']}, hidden {first['n_hidden']}.",
            "",
            "| model | test IWELBO | ATE r (all) | ATE r (top 20) | ATE R^2 (top 20) | "
            "ATE r vs truth (all / top 20) | mask AUROC | train s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in subset:
            cannot = "cannot compose" if "cannot_predict_heldout" in r else None
            truth = "n/a"
            if "ate_vs_truth_pearson_all" in r:
                truth = (
                    f"{fmt(r['ate_vs_truth_pearson_all'])} / {fmt(r['ate_vs_truth_pearson_top20'])}"
                )
            cells = [
                fmt(r.get("test_iwelbo"), 1),
                fmt(r.get("ate_pearson_all")),
                fmt(r.get("ate_pearson_top20")),
                fmt(r.get("ate_r2_top20")),
                truth,
            ]
            cells = [cannot or c for c in cells]
            mask = fmt(r.get("mask_auroc"))
            lines.append(f"| {r['model']} | {' | '.join(cells)} | {mask} | {r['train_seconds']} |")
        lines.append("")
    path = ROOT / "docs" / "results_vae.md"
    path.parent.mkdir(exist_ok=True)
    existing = path.read_text() if path.exists() else ""
    marker = "<!-- notes -->"
    notes = existing[existing.index(marker) :] if marker in existing else marker + "\n"
    path.write_text("\n".join(lines) + "\n" + notes)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS))
    parser.add_argument("--model", choices=sorted(MODELS))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.table:
        write_table()
        return
    if not (args.dataset and args.model):
        parser.error("pass --dataset and --model, or --table")
    result = run(args.dataset, args.model, args.steps, args.seed)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{args.dataset}_{args.model}.json"
    path.write_text(json.dumps(result, indent=1))
    for key, value in result.items():
        if isinstance(value, float):
            print(f"{key}: {value:.4g}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
