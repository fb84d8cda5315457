"""The value head of an LM policy (PPO) and the per-token advantages it gives.

When an estimator asks for values (``requires_values``, e.g. ``ppo``), a value head (a
linear layer on the policy's final hidden state) predicts the return at every completion
token; :class:`bioreason.rl.LMTrainer` trains it on the rollouts toward the GAE returns
(:func:`bioreason.rl.advantages.gae`, with ``gae_gamma`` and ``gae_lambda``), and the
estimator receives, for each token, the baseline that GAE implies (``R - A_t``; with the
default ``gamma = lambda = 1`` that is the value head's ``V_t``), so the registered
``ppo`` estimator ``R - V`` gives GAE's per-token advantages (:func:`token_advantages`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bioreason.rl.advantages import gae

__all__ = ["ValueHead", "hidden_size", "token_advantages"]


class ValueHead(torch.nn.Module):
    """``V_t = w . h_t + b`` on the policy's final hidden state, zero at initialisation.

    Parameters
    ----------
    hidden_size : int
        Width of the policy's final hidden state (:func:`hidden_size`).
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden`` shape (..., hidden_size) -> values of shape (...), float32."""
        return self.linear(hidden.float())[..., 0]


def hidden_size(model: torch.nn.Module) -> int:
    """Width of a causal LM's final hidden state (the input of its LM head).

    Returns
    -------
    int
    """
    embeddings = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return int(embeddings.weight.shape[1])
    return int(model.config.hidden_size)


def token_advantages(
    estimator: Callable[..., Tensor],
    rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    options: dict[str, Tensor],
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-token advantages of an estimator that takes values, and the GAE returns.

    The reward sits on each completion's last token; GAE gives ``A_t`` and the returns;
    the estimator gets, for token t, the baseline ``R - A_t`` (``V_t`` when
    gamma = lambda = 1).

    Parameters
    ----------
    estimator : callable
        ``estimator(rewards, values=..., **options)`` -> advantages of shape
        (n_questions, group_size) (a registered estimator that requires values).
    rewards : Tensor, shape (n_questions, group_size)
    values : Tensor, shape (n_rollouts, n_tokens)
        The value head's ``V_t`` of each completion token (``n_rollouts = n_questions *
        group_size``, rows grouped by question).
    mask : Tensor of bool, shape (n_rollouts, n_tokens)
        Valid completion tokens.
    options : dict of str to Tensor
        More inputs of the estimator (``answers``, ``log_probs``).
    gamma, lam : float, default 1.0
        Discount and GAE parameter.

    Returns
    -------
    advantages : Tensor, shape (n_rollouts, n_tokens), on ``values``' device
        Zero at padding.
    returns : Tensor of float32, shape (n_rollouts, n_tokens)
        The value head's targets.
    """
    n_questions, group = rewards.shape
    rewards_flat = rewards.reshape(-1).to(values.device, torch.float64)
    last = mask.sum(1) - 1
    token_rewards = torch.zeros(values.shape, dtype=torch.float64, device=values.device)
    token_rewards[torch.arange(len(last), device=values.device), last] = rewards_flat
    gae_advantages, returns = gae(token_rewards, values.double(), mask, gamma=gamma, lam=lam)
    baselines = (rewards_flat[:, None] - gae_advantages).cpu()
    columns = [
        estimator(rewards, values=baselines[:, t].view(n_questions, group), **options).reshape(-1)
        for t in range(values.shape[1])
    ]
    advantages = torch.stack(columns, 1).to(values.device) * mask
    return advantages, returns.float()
