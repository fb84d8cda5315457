"""Can the default LM learn question-level answers at all? A check without RL's noise.

RL fine-tuning of the small default LM on the demo's synthetic task ends with one answer
for every question (docs/results_lm.md). This script asks whether that is a limit of the
model or of the RL signal: it starts from the same warm-started model and maximises the
*exact* expected log score of the answer distribution at the answer position,

    J(theta) = mean over questions i of  sum_a pi_theta(a | prompt_i) * s(a, t_i),
    s(a, t) = t log a + (1 - t) log(1 - a),

with ``t_i = p*_i`` (``--target p_star``: no outcome noise, no sampling of answers) or
``t_i ~ Bernoulli(p*_i)`` drawn anew at every visit (``--target outcome``: the outcome
noise RL sees, still without sampling answers). Its maximiser puts all mass on the grid
answer closest to ``t_i``, as RL's does, so the only differences from RL are the noise
of sampled answers (and, with ``p_star``, of outcomes).

It reads a finished pipeline run (default ``runs/demo``: ``bioreason demo`` writes it)
and trains on its train questions, then prints, for each learning rate, the held-out
questions' correlation of ``q`` (the mean of the answer distribution) with p*, the mean
``|q - p*|``, and the standard deviation of ``q`` across questions, beside two reference
predictors built from the train questions: the mean p* (one answer for all) and the
additive fit ``condition mean + program mean - overall mean``.

    python benchmarks/lm_question_fit.py [--run runs/demo] [--lrs 5e-4 1e-4]
        [--steps 1000] [--target p_star|outcome] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def _fit(run: Path, lr: float, steps: int, target: str, batch: int, seed: int) -> dict:
    from bioreason.lm import load_predictor
    from bioreason.rl import LMRLConfig, LMTrainer
    from bioreason.rl.lm.rollout import answer_distribution_at

    task = pd.read_parquet(run / "task" / "task.parquet")
    predictor = load_predictor(run / "warm_start" / "seed0" / "model")
    config = LMRLConfig(method="rloo", steps=1, eval_split=None, device="cpu", tensorboard=False)
    trainer = LMTrainer.from_predictor(predictor, task, config)
    if trainer.answer_token_ids is None:
        raise SystemExit("lm_question_fit: the answers are not single tokens")
    model, answer_ids = trainer.model, trainer.answer_token_ids
    grid = trainer._grid_probs.float()
    log_a, log_b = torch.log(grid), torch.log1p(-grid)
    split = task["split"].astype(str).to_numpy()
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    p_star = torch.as_tensor(task["p_star"].to_numpy(), dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)

    def answers(rows: np.ndarray, grad: bool) -> torch.Tensor:
        prompts = trainer._prompts(rows.tolist(), with_prefix=True)
        with torch.set_grad_enabled(grad):
            if not grad:
                d = answer_distribution_at(model, prompts, answer_ids).float()
                return d / d.sum(1, keepdim=True)
            logits = model(
                prompts.input_ids,
                attention_mask=prompts.attention_mask,
                position_ids=prompts.position_ids(),
            ).logits
            return torch.softmax(logits[:, -1, answer_ids], -1)

    start = time.perf_counter()
    for _ in range(steps):
        rows = train[torch.randint(len(train), (batch,), generator=generator).numpy()]
        t = p_star[rows]
        if target == "outcome":
            t = torch.bernoulli(t, generator=generator)
        pi = answers(rows, grad=True)
        score = t[:, None] * log_a[None] + (1 - t[:, None]) * log_b[None]
        loss = -(pi * score).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    q = answers(test, grad=False) @ grid
    p = p_star[test]
    return {
        "corr": float(np.corrcoef(q.numpy(), p.numpy())[0, 1]) if q.std() > 0 else float("nan"),
        "mae": float((q - p).abs().mean()),
        "sd_q": float(q.std()),
        "seconds": seconds,
    }


def additive_reference(task: pd.DataFrame) -> dict[str, float]:
    """The additive fit from the train questions' exact p*, scored on the test questions.

    ``condition mean + program mean - overall mean`` of the train questions' p*
    (clipped to [0.01, 0.99]; a condition or program with no train question takes the
    overall mean). It knows p* exactly where RL sees only Bernoulli outcomes, and it
    composes a condition with a program additively, the way the held-out questions of a
    random split must be answered; it is the ceiling a question-level LM is judged
    against.

    Parameters
    ----------
    task : pandas.DataFrame
        The task table (``split``, ``condition``, ``readout``, ``p_star``).

    Returns
    -------
    dict
        ``mae``: mean |additive - p*| over the test questions; ``corr``: their Pearson
        correlation; ``sd_q``: the sd of the additive answers across test questions.
    """
    train, test = task[task["split"] == "train"], task[task["split"] == "test"]
    mean = train["p_star"].mean()
    by_condition = test["condition"].map(train.groupby("condition")["p_star"].mean())
    by_program = test["readout"].map(train.groupby("readout")["p_star"].mean())
    additive = (by_condition.fillna(mean) + by_program.fillna(mean) - mean).clip(0.01, 0.99)
    p_star = test["p_star"].to_numpy(dtype=float)
    answers = additive.to_numpy(dtype=float)
    spread = float(answers.std(ddof=1)) if len(answers) > 1 else 0.0
    return {
        "mae": float(np.abs(p_star - answers).mean()),
        "corr": float(np.corrcoef(answers, p_star)[0, 1]) if spread > 0 else float("nan"),
        "sd_q": spread,
    }


def _references(run: Path) -> dict:
    task = pd.read_parquet(run / "task" / "task.parquet")
    train, test = task[task["split"] == "train"], task[task["split"] == "test"]
    additive = additive_reference(task)
    return {
        "constant": float((test["p_star"] - train["p_star"].mean()).abs().mean()),
        "additive": additive["mae"],
        "additive_corr": additive["corr"],
        "additive_sd": additive["sd_q"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished run")
    parser.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-4])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32, help="questions per step")
    parser.add_argument("--target", choices=("p_star", "outcome"), default="p_star")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for needed in ("task/task.parquet", "warm_start/seed0/model/config.json"):
        if not (args.run / needed).exists():
            print(
                f"lm_question_fit: {args.run / needed} is missing; run `bioreason demo "
                f"--out {args.run}` first (or pass --run with a finished run folder)",
                file=sys.stderr,
            )
            return 2
    torch.set_num_threads(args.threads)
    references = _references(args.run)
    print(f"reference_constant_mae_p_star: {references['constant']:.3f}")
    print(f"reference_additive_mae_p_star: {references['additive']:.3f}")
    print(f"reference_additive_corr_p_star: {references['additive_corr']:.3f}")
    print(f"reference_additive_sd_q: {references['additive_sd']:.3f}")
    for lr in args.lrs:
        result = _fit(args.run, lr, args.steps, args.target, args.batch, args.seed)
        name = f"fit_{args.target}_lr{lr:g}"
        print(f"{name}_corr_p_star: {result['corr']:.3f}")
        print(f"{name}_mae_p_star: {result['mae']:.3f}")
        print(f"{name}_sd_q: {result['sd_q']:.3f}")
        print(f"{name}_time: {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
