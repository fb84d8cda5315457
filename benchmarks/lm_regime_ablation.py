"""Which change lets the default LM answer question by question? One RL run per variant,
each adding one change to the one before, on a finished pipeline run's task.

It reads a run folder's task (default ``runs/demo``: ``bioreason demo`` writes it), builds
the default small LM from the seed, warm-starts it and fine-tunes it with RLOO on live
Bernoulli(p*) outcomes, 8 questions x 8 completions, then scores the held-out (test)
questions. The variants, cumulative:

- ``before``: the warm start trains every weight on prompts as written; RL trains every
  weight, no KL (the project before issue 22);
- ``answer_rows``: the warm start trains only the rows of the tokens the model writes;
- ``open_answer``: prompts end with ``<answer>`` (warm start and RL);
- ``kl``: a KL term to the warm start, ``--kl`` with the k2 estimator (the gradient of
  KL(pi || warm start));
- ``embeddings``: RL trains only the token embeddings (the blocks frozen): the regime
  of ``pipelines/configs/demo.yaml``;
- ``embeddings_k3``: the same with the k3 estimator (the gradient of KL(warm start ||
  pi): mass-covering).

For each variant, one ``name: value unit`` line per figure: the prompt spread at the
answer position after the warm start and at the end of RL
(:func:`bioreason.lm.answer_position_spread`: near 0, the answer cannot depend on the
question), and on the held-out questions sd of q, corr(q, p*), mean |q - p*|, and the
seconds of the RL run.

    python benchmarks/lm_regime_ablation.py [--run runs/demo] [--steps 1000] [--lr 3e-3]
        [--kl 0.03] [--variants before embeddings] [--workers 2] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

VARIANTS = ("before", "answer_rows", "open_answer", "kl", "embeddings", "embeddings_k3")


def _settings(variant: str, args: argparse.Namespace) -> dict:
    """The warm start's and RL's settings of ``variant`` (each adds to the ones before)."""
    order = VARIANTS.index(variant)
    return {
        "warm_start_trainable": "answer_rows" if order >= 1 else "all",
        "open_answer": order >= 2,
        "kl_coef": args.kl if order >= 3 else 0.0,
        "trainable": "embeddings" if order >= 4 else "all",
        "kl_estimator": "k3" if variant == "embeddings_k3" else "k2",
        # the regime's learning rate suits the embeddings; the whole model had lr 5e-4
        "lr": args.lr if order >= 4 else 5e-4,
    }


def run_variant(variant: str, args: argparse.Namespace) -> dict[str, float]:
    """One warm start and RL run; the figures of the module docstring."""
    from bioreason.lm import answer_position_spread
    from bioreason.rl import LMRLConfig, LMTrainer
    from bioreason.rl.lm.job import prepare_predictor

    torch.set_num_threads(1)
    task = pd.read_parquet(Path(args.run) / "task" / "task.parquet")
    settings = _settings(variant, args)
    predictor = prepare_predictor(
        "tiny",
        task,
        device="cpu",
        seed=args.seed,
        warm_start_steps=30,
        warm_start_lr=1e-3,
        warm_start_trainable=settings["warm_start_trainable"],
        open_answer=settings["open_answer"],
        progress=False,
    )
    test = task["split"].astype(str) == "test"
    prompts = [
        predictor.format_prompt(p, open_answer=settings["open_answer"])
        for p in task.loc[test, "prompt"].astype(str)
    ]
    figures = {
        "spread_after_warm_start": answer_position_spread(
            predictor.model, predictor.tokenizer, prompts[:256]
        )
    }
    config = LMRLConfig(
        method="rloo",
        seed=args.seed,
        steps=args.steps,
        lr=settings["lr"],
        group_size=8,
        questions_per_step=8,
        outcomes="live",
        open_answer=settings["open_answer"],
        trainable=settings["trainable"],
        kl_coef=settings["kl_coef"],
        kl_estimator=settings["kl_estimator"],
        eval_split="test",
        eval_samples=4,
        device="cpu",
        tensorboard=False,
    )
    trainer = LMTrainer.from_predictor(predictor, task, config)
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    figures["seconds"] = time.perf_counter() - start
    figures["spread_end"] = answer_position_spread(
        predictor.model, predictor.tokenizer, prompts[:256]
    )
    frame = trainer.predict("test")
    q, p = frame["q_exact"].to_numpy(float), frame["p_star"].to_numpy(float)
    figures["sd_q"] = float(q.std())
    figures["corr_q_pstar"] = float(np.corrcoef(q, p)[0, 1]) if q.std() > 0 else float("nan")
    figures["mae_q_pstar"] = float(np.abs(q - p).mean())
    return figures


_UNITS = {"seconds": "s"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", default="runs/demo", help="a finished pipeline run folder")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--kl", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--workers", type=int, default=1, help="variants run at once")
    args = parser.parse_args(argv)
    if not (Path(args.run) / "task" / "task.parquet").is_file():
        print(
            f"error: {args.run}/task/task.parquet not found; run bioreason demo first",
            file=sys.stderr,
        )
        return 1
    if args.workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, mp_context=context) as pool:
            results = list(pool.map(run_variant, args.variants, [args] * len(args.variants)))
    else:
        results = [run_variant(v, args) for v in args.variants]
    for variant, figures in zip(args.variants, results):
        for name, value in figures.items():
            print(f"{variant}_{name}: {value:.4f} {_UNITS.get(name, '')}".rstrip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
