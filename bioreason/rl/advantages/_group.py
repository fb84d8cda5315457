"""The estimators that need nothing but the group's rewards (and, for PPO, a learned
baseline): REINFORCE, RLOO, GRPO and its variants, PPO's one-step advantage, rejection
sampling."""

from __future__ import annotations

import torch
from torch import Tensor

from bioreason.rl._checks import all_finite, check_int, first_bad_row
from bioreason.rl.advantages._base import as_group, check_eps, register_advantage

# Every estimator below takes rewards of shape (n_questions, group_size) and returns
# advantages of the same shape; the keyword-only inputs it does not use are ignored.


@register_advantage("reinforce", theory="unbiased")
def reinforce(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
) -> Tensor:
    """REINFORCE without a baseline: ``A_i = R_i``."""
    return as_group(rewards).clone()


@register_advantage("rloo", theory="unbiased")
def rloo(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
) -> Tensor:
    """REINFORCE leave-one-out: ``A_i = R_i - mean_{j != i} R_j`` (Kool et al. 2019)."""
    rewards = as_group(rewards, 2, "rloo")
    group = rewards.shape[1]
    return (rewards - rewards.sum(1, keepdim=True) / group) * (group / (group - 1))


@register_advantage("grpo_no_std", theory="unbiased")
def grpo_no_std(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
) -> Tensor:
    """Mean-centred rewards without std normalisation (Dr. GRPO): ``A_i = R_i - mean R``."""
    rewards = as_group(rewards)
    return rewards - rewards.mean(1, keepdim=True)


def _group_std(rewards: Tensor, ddof: int, where: str = "grpo") -> tuple[Tensor, Tensor]:
    group = rewards.shape[1]
    ddof = check_int(ddof, "ddof", where, 0)
    if not ddof < group:
        raise ValueError(
            f"{where}: ddof must be in [0, group_size), got ddof={ddof}, group_size={group}; "
            "use group_size >= 2, or ddof=0 (a group of one then gets advantage 0)"
        )
    centred = rewards - rewards.mean(1, keepdim=True)
    std = ((centred * centred).sum(1, keepdim=True) / (group - ddof)).sqrt()
    if not all_finite(std):  # squares of huge rewards overflow to inf
        _raise_overflow(torch.isfinite(std), rewards, where)
    return centred, std


def _raise_overflow(ok: Tensor, rewards: Tensor, where: str) -> None:
    row, n_rows = first_bad_row(ok)
    raise ValueError(
        f"{where}: the standard deviation of the rewards of question {row} (row {row}) is "
        f"not finite ({n_rows} questions affected): rewards up to "
        f"|r| = {float(rewards.abs().max()):.3g} overflow; rescale the rewards"
    )


@register_advantage("grpo", theory="group_std")
def grpo(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
    ddof: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """GRPO (Shao et al. 2024): ``A_i = (R_i - mean R) / (std R + eps)``, per group.

    A group whose rewards are all equal gets zero advantages (never NaN), whatever ``eps``.
    ``ddof`` is an integer in [0, group_size); ``eps`` a finite number >= 0.
    """
    eps = check_eps(eps, "grpo")
    rewards = as_group(rewards)
    centred, std = _group_std(rewards, ddof, "grpo")
    constant = rewards.amax(1, keepdim=True) == rewards.amin(1, keepdim=True)
    safe = torch.where(constant, torch.ones_like(std), std + eps)
    return torch.where(constant, torch.zeros_like(centred), centred / safe)


@register_advantage("grpo_batch_std", theory="unbiased")
def grpo_batch_std(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
    ddof: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """Group-mean-centred rewards divided by the std of *all* rewards in the batch.

    ``A_qi = (R_qi - mean_j R_qj) / (std_{q', j} R_q'j + eps)``: TRL's
    ``scale_rewards="batch"``. Every question of the batch shares one scale, which does
    not depend on that question's outcome, so the update stays unbiased for a proper
    scoring rule (up to a positive factor), unlike GRPO's per-group scale. A batch
    whose rewards are all equal gets zero advantages.
    """
    eps = check_eps(eps, "grpo_batch_std")
    rewards = as_group(rewards)
    n = rewards.numel()
    ddof = check_int(ddof, "ddof", "grpo_batch_std", 0)
    if not ddof < n:
        raise ValueError(
            f"grpo_batch_std: ddof must be in [0, n_rewards), got ddof={ddof}, n_rewards={n}"
        )
    centred = rewards - rewards.mean(1, keepdim=True)
    batch_centred = rewards - rewards.mean()
    std = ((batch_centred * batch_centred).sum() / (n - ddof)).sqrt()
    if not bool(torch.isfinite(std)):
        raise ValueError(
            "grpo_batch_std: the standard deviation of the batch's rewards is not finite: "
            f"rewards up to |r| = {float(rewards.abs().max()):.3g} overflow; rescale the rewards"
        )
    if float(rewards.max() - rewards.min()) == 0.0:
        return torch.zeros_like(rewards)
    return centred / (std + eps)


@register_advantage("ppo", requires_values=True, theory="unbiased")
def ppo(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
) -> Tensor:
    """Learned-baseline advantage ``A_i = R_i - V`` (one-step PPO; see :func:`gae` for tokens).

    ``values``: shape ``(n_questions, 1)`` (one baseline per question),
    ``(n_questions, group_size)`` or a scalar (checked by the shared validation).
    """
    rewards = as_group(rewards)
    if values is None:
        raise ValueError(
            "the 'ppo' estimator needs values (a learned baseline), shape (n_questions, 1); "
            "pass values=..."
        )
    return rewards - torch.as_tensor(values, dtype=rewards.dtype)


@register_advantage("rejection_sampling", theory="none")
def rejection_sampling(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
) -> Tensor:
    """Rejection-sampling fine-tuning: the accepted (reward 1) rollouts share weight equally.

    ``A_i = M R_i / max(1, sum_j R_j)`` for 0/1 rewards, so a group with k successes puts
    weight M/k on each (an SFT loss averaged over accepted samples). Its objective tends
    to ``log p``. Rewards must be 0/1 (accepted or not); others raise a ValueError
    naming the question.
    """
    rewards = as_group(rewards)
    if int(torch.count_nonzero(rewards * (1 - rewards))):  # r (1 - r) = 0 only for 0/1
        row, n_rows = first_bad_row((rewards == 0) | (rewards == 1))
        raise ValueError(
            f"rejection_sampling: rewards of question {row} (row {row}) are not 0/1 "
            f"({rewards[row].tolist()[:8]}...); {n_rows} questions affected. Rejection "
            "sampling needs a 0/1 (accept/reject) reward such as correctness_reward; "
            "for scoring-rule rewards use grpo, rloo or reinforce"
        )
    group = rewards.shape[1]
    successes = rewards.sum(1, keepdim=True).clamp(min=1.0)
    return group * rewards / successes
