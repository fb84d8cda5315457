"""Generalised advantage estimation over tokens (Schulman et al. 2016)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bioreason.rl._checks import real_tensor, require_finite


def gae(
    rewards: Tensor,
    values: Tensor,
    mask: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over tokens (Schulman et al. 2016).

    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, with
    the value after the last valid token taken as 0 (the episode ends).

    Parameters
    ----------
    rewards, values : Tensor, shape (batch, n_tokens)
        Per-token rewards (an outcome reward sits on the last valid token) and values.
    mask : Tensor of bool, shape (batch, n_tokens), optional
        Valid tokens (a right-padded completion). Padding gets advantage 0.

    Returns
    -------
    advantages, returns : Tensor, shape (batch, n_tokens)
        ``returns = advantages + values`` (the value targets).

    Raises
    ------
    ValueError
        Shapes other than (batch, n_tokens) or that differ, NaN/inf rewards or values
        (naming the sequence), ``gamma``/``lam`` outside [0, 1].
    """
    rewards = real_tensor(rewards, "rewards", "gae")
    values = real_tensor(values, "values", "gae")
    if rewards.ndim != 2:
        raise ValueError(
            f"gae: rewards must have shape (batch, n_tokens), got {tuple(rewards.shape)}"
        )
    if rewards.shape != values.shape:
        raise ValueError(
            f"gae: rewards {tuple(rewards.shape)} and values {tuple(values.shape)} must match"
        )
    for name, value in (("gamma", gamma), ("lam", lam)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TypeError(f"gae: {name} must be a number in [0, 1], got {value!r}")
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):  # False for NaN
        raise ValueError(f"gae: gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    if rewards.numel():
        require_finite(rewards, "rewards", "gae", "sequence")
        require_finite(values, "values", "gae", "sequence")
    if mask is not None:
        mask = torch.as_tensor(mask)
        if mask.shape != rewards.shape:
            raise ValueError(
                f"gae: mask must have shape {tuple(rewards.shape)} like rewards, "
                f"got {tuple(mask.shape)}"
            )
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("gae: mask must be 0/1 (or bool): 1 marks a valid token")
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    maskf = mask.to(rewards.dtype)
    n_tokens = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    # a loop over tokens (not samples): each step is vectorised over the batch
    for t in range(n_tokens - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        current = (delta + gamma * lam * next_advantage) * maskf[:, t]
        advantages[:, t] = current
        next_value = torch.where(mask[:, t], values[:, t], next_value)
        next_advantage = torch.where(mask[:, t], current, next_advantage)
    return advantages, (advantages + values) * maskf
