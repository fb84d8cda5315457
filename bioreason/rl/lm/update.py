"""The gradient step of :class:`bioreason.rl.LMTrainer`: from a rollout to an AdamW step.

A :class:`Rollout` holds one step's completions, their rewards and advantages; the
update splits it into micro-batches of whole question groups (``grad_accumulation``;
one part, the sampling pass itself, when the step is fused), computes the registered
policy loss (:func:`bioreason.rl.losses.policy_loss`) and the critic's value loss, sums
the gradients over processes (:mod:`bioreason.rl.lm.distributed`), clips them and steps
the optimizer. The weights of the micro-batches make the sum of their losses the full
batch's loss for any aggregation that is linear in the values.

Clipping: the policy's parameters are one group (with a shared critic's value head); a
separate critic's parameters are clipped as a group of their own, so that the value
loss's gradient never scales the policy's step.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from bioreason.rl.lm import distributed as lm_distributed
from bioreason.rl.lm.rollout import GroupRollout, PromptBatch, teacher_forced
from bioreason.rl.losses import aggregate, kl_k3, policy_loss

__all__ = ["Rollout"]


@dataclasses.dataclass
class Rollout:
    """One rollout of a step: ``B`` questions, ``G`` completions each (``N = B * G``
    rows, grouped by question), ``T`` completion tokens. Tensors are on the trainer's
    device unless said.

    Attributes
    ----------
    questions : Tensor of int64, shape (B,)
        Row positions in the task table (CPU).
    prompts : PromptBatch
        The questions' prompts.
    tokens : Tensor of int64, shape (N, T)
    mask : Tensor of bool, shape (N, T)
        Valid completion tokens.
    old_log_probs : Tensor, shape (N, T)
        Behaviour log-probabilities, detached.
    advantages : Tensor of float32, shape (N, T) or (N, 1)
        Per token (with a value head) or per completion.
    rewards, answers, outcomes : Tensor of float64, shape (B, G)
        On the CPU; an invalid answer is NaN.
    entropy : Tensor, shape (N, T)
        Of the sampling policy, detached.
    returns : Tensor, shape (N, T), or None
        The critic's targets.
    ref_log_probs : Tensor, shape (N, T), or None
        Under the frozen initial policy (KL penalty).
    graph : GroupRollout or None
        The sampling pass with gradients (a fused step's first update).
    value_graph : Tensor, shape (N, T), or None
        The critic's values with gradients, from the same pass (a fused step).
    """

    questions: Tensor
    prompts: PromptBatch
    tokens: Tensor
    mask: Tensor
    old_log_probs: Tensor
    advantages: Tensor
    rewards: Tensor
    answers: Tensor
    outcomes: Tensor
    entropy: Tensor
    returns: Tensor | None = None
    ref_log_probs: Tensor | None = None
    graph: GroupRollout | None = None
    value_graph: Tensor | None = None


class _UpdateMixin:
    """The update of :class:`bioreason.rl.LMTrainer` (which provides ``config``,
    ``model``, ``critic``, ``optimizer``, ``device``, ``processes`` and the helpers
    ``_training_mode`` and ``_autocast``)."""

    @property
    def _reads_policy_hidden(self) -> bool:
        """Whether the policy's forward must return its hidden states (a shared critic)."""
        return self.critic is not None and self.critic.reads_policy_hidden

    def _values(self, prompts: PromptBatch, completions: GroupRollout) -> Tensor:
        """The critic's ``V_t`` of the completions, shape (N, T) (gradients follow the
        grad mode): from the policy's hidden states (shared) or the critic's own forward
        over prompt + completion (separate)."""
        return self.critic.values(
            prompts,
            completions.tokens,
            completions.hidden,
            autocast=self._autocast(),
            fast=self.config.fast_forward,
            compile=self.config.torch_compile,
        )

    def _micro_batches(
        self, rollout: Rollout
    ) -> list[tuple[Tensor, PromptBatch, GroupRollout, float, float]]:
        """(rows, their prompts, completions with the current policy's log-probs, policy
        weight, value weight) per micro-batch; the weights make the sum of the
        micro-batches' losses the full batch's loss for any aggregation that is linear in
        the values."""
        config = self.config
        group = config.group_size
        n_questions = rollout.prompts.n_questions
        full_mask = rollout.mask
        if rollout.graph is not None:
            rows = torch.arange(len(full_mask), device=self.device)
            return [(rows, rollout.prompts, rollout.graph, 1.0, 1.0)]
        parts = []
        constant = self._constant()
        total_tokens = float(full_mask.sum())
        for chunk in torch.arange(n_questions).tensor_split(config.grad_accumulation):
            if len(chunk) == 0:
                continue
            rows = (chunk[:, None] * group + torch.arange(group)[None, :]).reshape(-1)
            rows = rows.to(self.device)
            prompts = PromptBatch(
                rollout.prompts.input_ids[chunk.to(self.device)],
                None
                if rollout.prompts.attention_mask is None
                else rollout.prompts.attention_mask[chunk.to(self.device)],
                rollout.prompts.lengths[chunk.to(self.device)],
            )
            with self._training_mode():
                current = teacher_forced(
                    self.model,
                    prompts,
                    rollout.tokens[rows],
                    rollout.mask[rows],
                    temperature=config.temperature,
                    shared_prefix=not config.gradient_checkpointing,
                    hidden=self._reads_policy_hidden,
                    autocast=self._autocast(),
                    fast=self.config.fast_forward,
                    compile=self.config.torch_compile,
                )
            if config.grad_accumulation == 1:
                weight = 1.0
            else:
                indicator = torch.zeros(full_mask.shape, device=self.device)
                indicator[rows] = 1.0
                part_mask = full_mask[rows]
                weight = float(
                    aggregate(indicator, full_mask, config.aggregation, constant)
                    / aggregate(
                        torch.ones(part_mask.shape, device=self.device),
                        part_mask,
                        config.aggregation,
                        constant,
                    )
                )
            value_weight = float(full_mask[rows].sum()) / total_tokens
            parts.append((rows, prompts, current, weight, value_weight))
        return parts

    def _constant(self) -> float | None:
        config = self.config
        return (
            config.aggregation_constant
            if config.aggregation_constant is not None
            else float(config.max_new_tokens)
        )

    def _update(self, rollout: Rollout, first_update: bool) -> dict[str, float]:
        config = self.config
        totals = {"clip_fraction": 0.0, "kl": 0.0, "kl_behaviour": 0.0, "value_loss": 0.0}
        reference = rollout.ref_log_probs
        for rows, prompts, current, weight, value_weight in self._micro_batches(rollout):
            mask = rollout.mask[rows]
            log_probs = current.log_probs
            old = log_probs.detach() if rollout.graph is not None else rollout.old_log_probs[rows]
            advantages = rollout.advantages[rows]
            loss, stats = policy_loss(
                log_probs,
                old,
                advantages,
                loss=config.policy_loss,
                mask=mask,
                clip_eps=config.clip_eps,
                ref_log_probs=None if reference is None else reference[rows],
                kl_coef=self._coefficients["kl_coef"],
                kl_estimator=config.kl_estimator,
                entropy=current.entropy if self._coefficients["entropy_coef"] else None,
                entropy_coef=self._coefficients["entropy_coef"],
                aggregation=config.aggregation,
                constant=self._constant(),
            )
            loss = loss * (weight * self._shard_weights[0])
            if self.critic is not None:
                values = (
                    rollout.value_graph
                    if rollout.graph is not None
                    else self._values(prompts, current)
                )
                errors = 0.5 * (values - rollout.returns[rows]) ** 2
                value_loss = aggregate(errors, mask, "token_mean")
                value_weight = value_weight * self._shard_weights[1]
                loss = loss + config.value_coef * value_weight * value_loss
                totals["value_loss"] += value_weight * float(value_loss.detach())
            loss.backward()
            totals["clip_fraction"] += weight * float(stats.get("clip_fraction", math.nan))
            totals["kl"] += weight * float(stats.get("kl", math.nan))
            # KL(behaviour || current) from the behaviour's samples
            behaviour = aggregate(kl_k3(old, log_probs.detach()), mask, "token_mean")
            totals["kl_behaviour"] += (
                float(mask.sum()) / float(rollout.mask.sum()) * float(behaviour)
            )
        rollout.value_graph = None  # used once, like the sampling graph
        groups = self._clip_groups()
        lm_distributed.sum_gradients([p for group in groups for p in group], self.processes)
        norm, *_ = [
            torch.nn.utils.clip_grad_norm_(
                group, config.max_grad_norm if config.max_grad_norm else math.inf
            )
            for group in groups
        ]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.critic is None:
            totals["value_loss"] = math.nan
        if rollout.ref_log_probs is None:
            totals["kl"] = math.nan
        totals["grad_norm"] = float(norm)
        return totals

    def _clip_groups(self) -> list[list[torch.nn.Parameter]]:
        """Parameter groups clipped apart, the policy's first (module docstring)."""
        if self.critic is not None and self.critic.owns_trunk:
            return [self._policy_parameters, self._critic_parameters]
        return [self._policy_parameters + self._critic_parameters]
