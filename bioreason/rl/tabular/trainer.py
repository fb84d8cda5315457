"""Trainer for the tabular policy (the synthetic calibration experiment).

Each step samples ``group_size`` answers per question, scores them against the
question's fixed outcome, turns rewards into advantages with a registered estimator
(:data:`bioreason.rl.advantages.ADVANTAGES`), and takes an AdamW step on the exact
policy gradient of a registered policy loss (:data:`bioreason.rl.losses.POLICY_LOSSES`,
through its closed-form weights). With ``updates_per_rollout > 1`` a rollout is reused
for several steps under the importance ratio (the "offline" setting). The loop,
checkpoints, CSV log and resume are :func:`bioreason.rl.loop.run_training_loop`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bioreason.rl.advantages import get_advantage
from bioreason.rl.loop import RLConfig, run_training_loop
from bioreason.rl.losses import POLICY_LOSSES
from bioreason.rl.outcomes import OutcomeSource
from bioreason.rl.rewards import SCORING_RULES
from bioreason.rl.tabular.policy import TabularPolicy
from bioreason.stage import describe_differences, digest

__all__ = ["TabularRLConfig", "TabularTrainer"]


@dataclasses.dataclass
class TabularRLConfig(RLConfig):
    """Settings of one tabular RL run: :class:`bioreason.rl.loop.RLConfig` plus the
    tabular policy's value baseline.

    The entropy bonus and KL penalty of :class:`RLConfig` are exact for a tabular policy:
    the KL term's gradient is that of KL(pi || ref) in closed form
    (:meth:`TabularPolicy.kl_gradient`), the one the LM trainer's default estimator
    ``k2`` follows in expectation (:mod:`bioreason.rl.losses`); there is no estimator to
    choose.

    Parameters
    ----------
    value_lr : float, default 1e-5
        Adam learning rate of the per-category value baseline (estimators registered
        with ``requires_values``, e.g. ``ppo``).
    """

    value_lr: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.value_lr < 0:
            raise ValueError(f"value_lr must be >= 0, got {self.value_lr}")


class TabularTrainer:
    """Train a :class:`TabularPolicy` on questions with fixed binary outcomes.

    Parameters
    ----------
    policy : TabularPolicy
    categories : Tensor of int, shape (n_questions,)
        Category of each question (the policy's context).
    outcomes : Tensor, shape (n_questions,)
        Each question's outcome, drawn once (see :meth:`from_source`).
    config : TabularRLConfig
    """

    def __init__(
        self,
        policy: TabularPolicy,
        categories: Tensor,
        outcomes: Tensor,
        config: TabularRLConfig,
    ) -> None:
        self.policy = policy
        self.config = config
        self.categories = torch.as_tensor(categories, dtype=torch.long)
        outcomes = torch.as_tensor(outcomes)
        if outcomes.shape != self.categories.shape:
            raise ValueError(
                f"outcomes {tuple(outcomes.shape)} and categories "
                f"{tuple(self.categories.shape)} must have one entry per question"
            )
        if not bool(((outcomes == 0) | (outcomes == 1)).all()):
            raise ValueError("outcomes must be 0/1")
        self.outcomes = outcomes.to(torch.long)
        answers = policy.answers
        score = SCORING_RULES[config.reward]
        # reward of answer k under outcome y, flattened: index y * K + k
        self.reward_table = torch.stack(
            [score(answers, torch.zeros_like(answers)), score(answers, torch.ones_like(answers))]
        ).reshape(-1)
        options = dict(config.advantage_options)
        estimator = get_advantage(config.method, **options)
        if "reward_range" in estimator.accepted_options and "reward_range" not in options:
            # estimators defined for bounded rewards learn the scoring rule's range on the grid
            options["reward_range"] = (
                float(self.reward_table.min()),
                float(self.reward_table.max()),
            )
            estimator = get_advantage(config.method, **options)
        self.estimator = estimator
        self.surrogate_weights = POLICY_LOSSES.metadata(config.policy_loss)["weights"]
        self.optimizer = torch.optim.AdamW(
            [policy.logits], lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.values = torch.nn.Parameter(torch.zeros(policy.n_categories, dtype=torch.float64))
        self.value_optimizer = torch.optim.Adam([self.values], lr=max(config.value_lr, 1e-12))
        self.reference_logits = policy.logits.detach().clone()
        self.category_weight = (
            torch.bincount(self.categories, minlength=policy.n_categories).to(torch.float64)
            / self.categories.numel()
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self._rollout: dict[str, Tensor] | None = None
        #: what a checkpoint must share with this trainer besides its config
        self.data_fingerprint = {
            "n_questions": int(self.categories.numel()),
            "n_categories": int(policy.n_categories),
            "n_answers": int(policy.n_answers),
            "categories": _digest(self.categories),
            "outcomes": _digest(self.outcomes),
            "answers": _digest(policy.answers),
        }

    @classmethod
    def from_source(
        cls,
        policy: TabularPolicy,
        categories: Tensor,
        source: OutcomeSource,
        config: TabularRLConfig,
        outcome_seed: int = 0,
    ) -> TabularTrainer:
        """Draw each question's outcome once from ``source`` and build a trainer."""
        questions = torch.arange(len(categories))
        outcomes = source.sample(questions, 1, outcome_seed)
        if tuple(outcomes.shape) != (len(categories), 1):
            raise ValueError(
                f"outcome source returned shape {tuple(outcomes.shape)}, "
                f"expected ({len(categories)}, 1)"
            )
        return cls(policy, categories, outcomes[:, 0], config)

    # ----- one step ---------------------------------------------------------------

    def _new_rollout(self) -> dict[str, Tensor]:
        config = self.config
        cats = self.categories
        answers = self.policy.sample(cats, config.group_size, self.generator)
        cells = (self.outcomes[:, None] * self.policy.n_answers + answers).reshape(-1)
        rewards = self.reward_table.index_select(0, cells).view(answers.shape)
        kwargs: dict[str, Tensor] = {}
        if self.estimator.requires_values:
            kwargs["values"] = self.values.detach()[cats][:, None]
            self._update_values(rewards)
        if self.estimator.requires_answers:
            kwargs["answers"] = self.policy.answers[answers]
        old_log_probs = None
        if self.estimator.requires_log_probs or config.updates_per_rollout > 1:
            old_log_probs = self.policy.log_prob(cats, answers)
        if self.estimator.requires_log_probs:
            kwargs["log_probs"] = old_log_probs
        advantages = self.estimator(rewards, **kwargs)
        rollout = {"answers": answers, "rewards": rewards, "advantages": advantages}
        if config.updates_per_rollout > 1:
            rollout["old_log_probs"] = old_log_probs
        return rollout

    def _update_values(self, rewards: Tensor) -> None:
        # value loss: mean over rollouts of (V_c - r)^2
        residual = self.values.detach()[self.categories][:, None] - rewards
        grad = 2 * torch.bincount(
            self.categories, weights=residual.sum(1), minlength=self.values.numel()
        )
        self.values.grad = grad / rewards.numel()
        self.value_optimizer.step()

    def train_step(self) -> None:
        """One optimizer step (a new rollout first when the previous one is used up)."""
        config = self.config
        first_update = self.step % config.updates_per_rollout == 0
        if first_update or self._rollout is None:
            self._rollout = self._new_rollout()
        rollout = self._rollout
        advantages = rollout["advantages"]
        if first_update or "old_log_probs" not in rollout:
            ratio = torch.ones_like(advantages)  # the sampling policy is the current one
        else:
            log_probs = self.policy.log_prob(self.categories, rollout["answers"])
            ratio = torch.exp(log_probs - rollout["old_log_probs"])
        weights = self.surrogate_weights(ratio, advantages, config.clip_eps)
        # loss = -(1 / n_rollouts) sum_i w_i log pi(a_i | c_i)  (sequence mean)
        grad = -self.policy.policy_gradient(self.categories, rollout["answers"], weights)
        grad /= advantages.numel()
        if config.entropy_coef:
            _, entropy_grad = self.policy.entropy_gradient()
            grad -= config.entropy_coef * self.category_weight[:, None] * entropy_grad
        if config.kl_coef:
            _, kl_grad = self.policy.kl_gradient(self.reference_logits)
            grad += config.kl_coef * self.category_weight[:, None] * kl_grad
        self.policy.logits.grad = grad
        self.optimizer.step()
        self.step += 1

    # ----- loop, logging, checkpoints ----------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "logits": self.policy.logits.detach().clone(),
            "optimizer": self.optimizer.state_dict(),
            "values": self.values.detach().clone(),
            "value_optimizer": self.value_optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "config": self.config.to_dict(),
            "data": dict(self.data_fingerprint),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; one of another config or other questions /
        outcomes / answer grid raises a ``ValueError`` naming what differs."""
        config = self.config.to_dict()
        if state.get("config") != config:
            raise ValueError(
                "checkpoint was written with a different config "
                f"({'; '.join(describe_differences(state.get('config') or {}, config))}); "
                "start a new run"
            )
        if "data" in state and state["data"] != self.data_fingerprint:
            raise ValueError(
                "checkpoint was written for other questions "
                f"({'; '.join(describe_differences(state['data'], self.data_fingerprint))}); "
                "start a new run"
            )
        with torch.no_grad():
            self.policy.logits.copy_(state["logits"])
            self.values.copy_(state["values"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self._rollout = None

    def diagnostics(self) -> dict[str, float]:
        """Cheap summaries of the current policy for the training log."""
        probs = self.policy.probs()
        entropy = -(torch.xlogy(probs, probs)).sum(1)
        mean_answer = self.policy.mean_answer()
        return {
            "step": self.step,
            "policy_entropy": float(entropy.mean()),
            "mean_extremity": float((mean_answer - 0.5).abs().mean()),
            "value_mean": float(self.values.detach().mean()),
        }

    def train(
        self,
        *,
        checkpoint_path: Path | None = None,
        log_path: Path | None = None,
        extra_log: Callable[[TabularPolicy], dict[str, float]] | None = None,
        progress: bool = True,
        description: str | None = None,
        resume: bool | str = "auto",
    ) -> dict[str, float]:
        """Run until ``config.steps``, resuming from ``checkpoint_path``.

        Writes a CSV row every ``log_every`` steps to ``log_path`` and a checkpoint every
        ``checkpoint_every`` steps (both atomically). ``resume="auto"`` continues from the
        checkpoint when it exists, ``True`` requires it, ``False`` refuses to overwrite
        one (see :func:`bioreason.rl.loop.run_training_loop`). ``extra_log(policy)`` adds
        columns to each log row. Returns timing figures.
        """
        return run_training_loop(
            self,
            checkpoint_path=checkpoint_path,
            log_path=log_path,
            extra_log=None if extra_log is None else lambda: extra_log(self.policy),
            progress=progress,
            description=description,
            resume=resume,
        )


def _digest(tensor: Tensor) -> str:
    """Short SHA-256 of a tensor's dtype, shape and values (:func:`bioreason.stage.digest`)."""
    return digest(tensor.detach().cpu().numpy())
