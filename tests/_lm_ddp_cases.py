"""Training cases run by one process and by two (tests/test_lm_distributed.py): the
same global batch must give the same gradient and weights."""

from __future__ import annotations

import torch
from test_lm_trainer import _GradientRecorder, flat, make_model, make_task, make_tokenizer

from bioreason.rl import BernoulliOutcomes, LMRLConfig, LMTrainer

BASE = {
    "steps": 2,
    "group_size": 4,
    "questions_per_step": 4,
    "lr": 1e-3,
    "answer_format": "first_integer",
    "answer_prefix": "",
    "max_new_tokens": 3,
    "sampling_noise": "question",
    "device": "cpu",
    "log_every": 1,
    "eval_split": "val",  # make_task holds out "val"
    "tensorboard": False,
}

#: name -> config options: the fused on-policy step with a batch-level estimator, the
#: teacher-forced path (several updates, micro-batches, KL, live outcomes), and PPO with a
#: separate critic (micro-batches)
CASES = {
    "fused_batch_std": {"method": "grpo_batch_std"},
    "unfused_live_kl": {
        "method": "grpo",
        "updates_per_rollout": 2,
        "grad_accumulation": 2,
        "kl_coef": 0.05,
        "aggregation": "sequence_mean",
        "outcomes": "live",
    },
    # PPO's separate critic: its gradients are summed over processes like the policy's
    "ppo_separate_critic": {"method": "ppo", "critic": "separate", "grad_accumulation": 2},
}


def make_trainer(name: str) -> LMTrainer:
    tokenizer = make_tokenizer()
    task = make_task()
    options = {"outcome_source": BernoulliOutcomes(torch.full((len(task),), 0.4))}
    if CASES[name].get("outcomes") != "live":
        options = {}
    config = LMRLConfig(**{**BASE, **CASES[name]})
    return LMTrainer(make_model(tokenizer), tokenizer, task, config, **options)


def _weights(trainer: LMTrainer) -> torch.Tensor:
    """The policy's weights, then the critic's (when there is one)."""
    critic = [] if trainer.critic is None else [flat(trainer.critic)]
    return torch.cat([flat(trainer.model), *critic])


def run_case(name: str) -> dict[str, list[float]]:
    """The first step's summed gradient (the policy's, then the critic's), then the
    weights after ``steps`` AdamW steps."""
    trainer = make_trainer(name)
    optimizer = trainer.optimizer
    trainer.optimizer = _GradientRecorder(
        [*trainer.model.parameters(), *trainer._critic_parameters]
    )
    trainer.train_step()
    gradient = trainer.optimizer.gradient
    first = trainer.diagnostics()
    trainer = make_trainer(name)
    for _ in range(trainer.config.steps):
        trainer.train_step()
    del optimizer
    return {
        "gradient": gradient.tolist(),
        "weights": _weights(trainer).tolist(),
        "reward_mean": first["reward_mean"],
    }
