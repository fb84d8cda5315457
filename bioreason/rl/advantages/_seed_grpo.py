"""SEED-GRPO (Chen et al. 2025): a base advantage scaled down where the group's answers
disagree in meaning, and the semantic entropy that measures it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bioreason.rl._checks import check_int, real_tensor, require_finite, require_probabilities
from bioreason.rl.advantages._base import ADVANTAGES, as_group, register_advantage
from bioreason.rl.advantages._group import grpo, grpo_no_std

_SEED_BASES = ("grpo_no_std", "grpo")


def semantic_entropy(answers: Tensor, log_probs: Tensor | None = None, n_bins: int = 10) -> Tensor:
    """Semantic entropy of each group's answers, clustered by meaning.

    A probability answer q in [0, 1] falls in cluster ``floor(q * n_bins)``. With
    ``log_probs``, a cluster's probability is the policy mass of the distinct answers
    sampled in it, normalised over the group's clusters (Kuhn et al. 2023; SEED-GRPO):
    ``p(C) = sum_{distinct o in C} pi(o) / sum_{distinct o} pi(o)``. Two rollouts count
    as the same sequence when both their answer and their log-probability agree.
    Without ``log_probs``, a cluster's probability is its share of the rollouts.

    Parameters
    ----------
    answers : Tensor, shape (n_questions, group_size)
        Probabilities in [0, 1].
    log_probs : Tensor, shape (n_questions, group_size), optional
        Log-probability of each rollout under the policy that sampled it.
    n_bins : int
        Clusters on [0, 1].

    Returns
    -------
    Tensor, shape (n_questions, 1)
    """
    where = "semantic_entropy"
    n_bins = check_int(n_bins, "n_bins", where, 1)
    answers = real_tensor(answers, "answers", where, torch.float64)
    if answers.ndim != 2:
        raise ValueError(
            f"{where}: answers must have shape (n_questions, group_size), "
            f"got {tuple(answers.shape)}"
        )
    require_probabilities(answers, "answers", where)
    n_questions, group = answers.shape
    clusters = (answers * n_bins).floor().long().clamp(0, n_bins - 1)
    if log_probs is None:
        weight = torch.ones_like(answers)
    else:
        log_probs = real_tensor(log_probs, "log_probs", where, torch.float64)
        if log_probs.shape != answers.shape:
            raise ValueError(
                f"{where}: log_probs must have the shape of answers {tuple(answers.shape)}, "
                f"got {tuple(log_probs.shape)}"
            )
        require_finite(log_probs, "log_probs", where)
        same = (answers[:, :, None] == answers[:, None, :]) & (
            log_probs[:, :, None] == log_probs[:, None, :]
        )
        # each distinct sequence counts once: its copies share its probability
        weight = log_probs.exp() / same.sum(2).to(torch.float64)
    mass = torch.zeros(n_questions, n_bins, dtype=torch.float64)
    mass.scatter_add_(1, clusters, weight)
    mass = mass / mass.sum(1, keepdim=True).clamp(min=1e-300)
    return -torch.xlogy(mass, mass).sum(1, keepdim=True)


def _seed_theory(options: dict[str, Any]) -> str:
    # the entropy scale multiplies both outcomes' terms alike, so the base decides
    return ADVANTAGES.metadata(options.get("base", "grpo_no_std"))["theory"]


@register_advantage(
    "seed_grpo", requires_answers=True, requires_log_probs=True, theory=_seed_theory
)
def seed_grpo(
    rewards: Tensor,
    *,
    values: Tensor | None = None,
    answers: Tensor | None = None,
    log_probs: Tensor | None = None,
    base: str = "grpo_no_std",
    alpha: float = 1.0,
    n_bins: int = 10,
    ddof: int = 1,
    eps: float = 1e-6,
) -> Tensor:
    """SEED-GRPO (Chen et al. 2025): a base advantage scaled by ``1 - alpha SE / SE_max``.

    ``SE`` is the semantic entropy of the group's answers (:func:`semantic_entropy`,
    from the clusters' probability mass when ``log_probs`` are given) and
    ``SE_max = log(group_size)``, the entropy of a group whose rollouts all differ in
    meaning (the paper's normalisation). ``alpha`` in [0, 1]; 0 is the base estimator.

    Parameters
    ----------
    rewards : Tensor, shape (n_questions, group_size)
    answers : Tensor, shape (n_questions, group_size)
        Probabilities in [0, 1], clustered into ``n_bins`` equal-width bins.
    log_probs : Tensor, shape (n_questions, group_size), optional
        Each rollout's log-probability under the sampling policy.
    base : {"grpo_no_std", "grpo"}
        The advantage that is scaled: the published method's mean-centred
        ``R_i - mean R`` (default), or GRPO's std-normalised one.
    ddof, eps
        Passed to :func:`grpo` when ``base="grpo"``.

    Returns
    -------
    Tensor, shape (n_questions, group_size)
    """
    if answers is None:
        raise ValueError("seed_grpo needs each rollout's answer (answers=...) to cluster them")
    if base not in _SEED_BASES:
        raise ValueError(f"seed_grpo: base must be one of {list(_SEED_BASES)}, got {base!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.number)):
        raise TypeError(f"seed_grpo: alpha must be a number in [0, 1], got {alpha!r}")
    if not 0 <= alpha <= 1:  # False for NaN
        raise ValueError(f"seed_grpo: alpha must be in [0, 1], got {alpha}")
    n_bins = check_int(n_bins, "n_bins", "seed_grpo", 2)
    rewards = as_group(rewards)
    answers = torch.as_tensor(answers, dtype=torch.float64)
    if answers.shape != rewards.shape:
        raise ValueError(
            f"seed_grpo: answers must have the shape of rewards {tuple(rewards.shape)}, "
            f"got {tuple(answers.shape)}"
        )
    require_probabilities(answers, "answers", "seed_grpo")
    group = rewards.shape[1]
    entropy = semantic_entropy(answers, log_probs, n_bins)
    max_entropy = math.log(group)
    scale = 1 - alpha * entropy / max_entropy if max_entropy > 0 else torch.ones_like(entropy)
    if base == "grpo":
        advantages = grpo(rewards, ddof=ddof, eps=eps)
    else:
        advantages = grpo_no_std(rewards)
    return advantages * scale.to(rewards.dtype)
