"""Steps per second of the tabular RL trainer, per method, at the paper's size.

10,000 questions, 20 categories, 99 answers; group 10 (1 for REINFORCE and PPO).
Prints one ``name: value unit`` line per figure: steps/s of each method, the projected
time of the paper's online sweep (its 5 methods x 50,000 steps; target < 900 s on 2
cores), and
a baseline in the same run: the same GRPO step with torch.multinomial sampling and
autograd through log_softmax.

    python benchmarks/rl_steps.py [--steps 300] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bioreason.pipelines.synthetic_calibration import (
    SyntheticCalibrationConfig,
    _questions,
    plan_runs,
)
from bioreason.rl import AnswerGrid, TabularPolicy, TabularTrainer
from bioreason.rl.advantages import get_advantage

N_QUESTIONS, N_CATEGORIES = 10_000, 20


def _problem(seed: int = 0):
    # the pipeline's own question set (p_c and outcomes from independent streams)
    config = SyntheticCalibrationConfig(
        n_questions=N_QUESTIONS, n_categories=N_CATEGORIES, seed=seed
    )
    questions = _questions(config)
    categories = torch.as_tensor(questions["category"].to_numpy())
    outcomes = torch.as_tensor(questions["outcome"].to_numpy())
    return categories, outcomes


def _rate(step, steps: int, repeats: int) -> float:
    for _ in range(20):  # warm-up
        step()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps / (time.perf_counter() - start))
    return statistics.median(rates)


def _autograd_grpo_step(categories, outcomes, generator):
    grid = AnswerGrid().probabilities()
    logits = torch.zeros(N_CATEGORIES, 99, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.AdamW([logits], lr=3e-3)
    estimator = get_advantage("grpo")
    group = 10

    def step() -> None:
        probs = torch.softmax(logits.detach(), 1)
        answers = torch.multinomial(probs[categories], group, replacement=True, generator=generator)
        q = grid[answers]
        rewards = torch.where(outcomes[:, None] > 0.5, q.log(), torch.log1p(-q))
        advantages = estimator(rewards)
        log_pi = torch.log_softmax(logits, 1)[categories[:, None], answers]
        loss = -(advantages * log_pi).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    categories, outcomes = _problem()
    config = SyntheticCalibrationConfig(
        methods=[
            "grpo",
            "grpo_no_std",
            "rloo",
            "reinforce",
            "ppo",
            "grpo_batch_std",
            "h_target:log",
            "seed_grpo",
            "seed_grpo:base=grpo",
        ],
        offline=True,
        offline_clips=[0.2],
    )
    online = {"grpo", "grpo_no_std", "rloo", "reinforce", "ppo"}
    sweep_seconds = 0.0
    for name, rl_config in plan_runs(config):
        policy = TabularPolicy(N_CATEGORIES, AnswerGrid().probabilities())
        trainer = TabularTrainer(policy, categories, outcomes, rl_config)
        rate = _rate(trainer.train_step, args.steps, args.repeats)
        print(f"rl_steps_{name}: {rate:.1f} steps/s")
        if name in online:
            sweep_seconds += 50_000 / rate
    print(f"rl_online_sweep_projected: {sweep_seconds:.0f} s")
    baseline = _rate(
        _autograd_grpo_step(categories, outcomes, torch.Generator().manual_seed(0)),
        max(args.steps // 3, 20),
        args.repeats,
    )
    print(f"rl_steps_grpo_autograd_baseline: {baseline:.1f} steps/s")


if __name__ == "__main__":
    main()
