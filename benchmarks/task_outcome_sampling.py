"""Seconds of ``build_task`` on the demo task with shared and with independent outcomes.

A SAMS-VAE of the demo's size (the demo screen: 20 perturbations, 12 combinations, 500
genes, 100 cells per condition; n_latent 10, hidden 128) is fitted briefly; the task is
the demo's: its 32 conditions x 20 NMF programs = 640 questions, ``screen_hit`` in
100-cell replicates with per-program thresholds at the median expected effect, p* to
SE 0.02. ``build_task`` is timed whole (thresholds, p*, outcomes, prompts, split) with
``outcome_sampling="shared"`` and ``"independent"``, alternating, and the outcome
draws alone (``OutcomeSimulator.sample``) for both modes at ``n_outcomes`` 1 and
``--many`` outcomes per question. Prints one ``name: value unit`` line per figure.

    python benchmarks/task_outcome_sampling.py [--threads 2] [--train-steps 400]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bioreason.cli._base import add_fields_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    add_fields_option(parser, "--screen", "ScreenConfig", '{"mask_probability": 0.1}')
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2, help="timed builds per mode")
    parser.add_argument("--many", type=int, default=8, help="outcomes per question, 2nd size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bioreason.data import simulate_screen
    from bioreason.models import SAMSVAE
    from bioreason.pipelines.demo import demo_config, demo_screen
    from bioreason.sim import OutcomeSimulator, build_task, learn_programs

    demo = demo_config()  # the demo's screen, SAMS-VAE and task sizes
    options = demo.task.options
    adata = simulate_screen(demo_screen(args.screen), seed=0)
    SAMSVAE.setup_anndata(adata)
    model = SAMSVAE(adata, **demo.vae.options.to_dict())
    model.train(max_steps=args.train_steps, batch_size=512, progress=False, device="cpu")
    programs = learn_programs(adata, n_programs=options.n_programs, n_markers=15, seed=0)
    conditions = [c for c in adata.obs["perturbation"].astype(str).unique() if c != "control"]
    readouts = [p.name for p in programs]
    budget = options.budget

    def simulator() -> OutcomeSimulator:
        return OutcomeSimulator(
            model, options.outcome, readouts=programs, budget=budget, **options.outcome_options
        )

    seconds: dict[str, list[float]] = {"shared": [], "independent": []}
    tables = {}
    for _ in range(args.repeats):
        for mode in seconds:
            start = time.perf_counter()
            tables[mode] = build_task(
                simulator(), conditions, readouts, outcome_sampling=mode, seed=0
            )
            seconds[mode].append(time.perf_counter() - start)
    # the outcome draws alone, on a simulator whose thresholds build_task fixed
    fixed = simulator()
    definition = json.loads(tables["shared"]["outcome_definition"].iloc[0])
    fixed.outcome = fixed.outcome.with_thresholds(definition["threshold"])
    questions = tables["shared"][["condition", "readout"]]
    draws: dict[str, float] = {}
    for n in (1, args.many):
        for mode in ("shared", "independent"):
            start = time.perf_counter()
            fixed.sample(questions, n=n, seed=1, independent=mode == "independent")
            draws[f"{mode}_{n}"] = time.perf_counter() - start

    print(f"task_questions: {len(questions)} questions")
    print(f"task_conditions: {len(conditions)} conditions")
    for mode, values in seconds.items():
        print(f"build_task_seconds_{mode}: {np.median(values):.2f} s")
    for key, value in draws.items():
        mode, n = key.rsplit("_", 1)
        print(f"sample_seconds_{mode}_n{n}: {value:.2f} s")
    for mode, table in tables.items():
        print(f"outcome_rate_{mode}: {table['outcome'].mean():.3f} probability")
    print(f"mean_p_star: {tables['shared']['p_star'].mean():.3f} probability")


if __name__ == "__main__":
    main()
