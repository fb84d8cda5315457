"""PPO's critic for an LM policy, and the per-token advantages it gives.

When an estimator asks for values (``requires_values``, e.g. ``ppo``), a critic predicts
the return at every completion token; :class:`bioreason.rl.LMTrainer` trains it on the
rollouts toward the GAE returns (:func:`bioreason.rl.advantages.gae`, with ``gae_gamma``
and ``gae_lambda``), and the estimator receives, for each token, the baseline that GAE
implies (``R - A_t``; with the default ``gamma = lambda = 1`` that is the critic's
``V_t``), so the registered ``ppo`` estimator ``R - V`` gives GAE's per-token advantages
(:func:`token_advantages`).

Critics are registered in :data:`CRITICS` (``LMRLConfig.critic`` names one):

* ``"separate"`` (the default; PPO as usually run for LMs, with a value model of its
  own): :class:`SeparateCritic`, a copy of the initial policy's trunk (embeddings,
  decoder layers, final norm; its vocabulary head replaced by a one-wide stand-in, so no
  vocabulary logits are computed) with a :class:`ValueHead` on its final hidden state.
  It runs its own forward over prompt + completion, and the value loss's gradient never
  reaches the policy's parameters.
* ``"shared"``: :class:`SharedCritic`, a :class:`ValueHead` on the policy's own final
  hidden state (a shared trunk): no second network, and the value loss back-propagates
  into the policy's weights.

Every critic has one interface: ``values(prompts, tokens, policy_hidden, **forward)``
-> ``V_t`` of shape ``(n_rollouts, n_tokens)``, ``reads_policy_hidden`` (whether the
policy's forward must return its hidden states) and ``owns_trunk`` (whether its
parameters are a network apart from the policy's, clipped as a group of their own).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bioreason.registry import Registry
from bioreason.rl.advantages import gae
from bioreason.rl.lm.rollout import PromptBatch, completion_forward

__all__ = [
    "CRITICS",
    "SeparateCritic",
    "SharedCritic",
    "ValueHead",
    "build_critic",
    "hidden_size",
    "token_advantages",
]


class ValueHead(torch.nn.Module):
    """``V_t = w . h_t + b`` on a final hidden state, zero at initialisation.

    Parameters
    ----------
    hidden_size : int
        Width of the hidden state it reads (:func:`hidden_size`).
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


class SharedCritic(torch.nn.Module):
    """A value head on the policy's own final hidden state (a shared trunk): the value
    loss's gradient flows through the hidden state into the policy's weights.

    Parameters
    ----------
    model : causal LM
        The policy (only its hidden size is read).
    """

    reads_policy_hidden = True
    owns_trunk = False

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.head = ValueHead(hidden_size(model))

    def values(
        self,
        prompts: PromptBatch,
        tokens: Tensor,
        policy_hidden: Tensor | None,
        **forward: Any,
    ) -> Tensor:
        """``V_t`` from the policy's hidden states.

        Parameters
        ----------
        prompts : PromptBatch
            Unused (the policy's forward has read them).
        tokens : Tensor of int64, shape (n_rollouts, n_tokens)
            Unused.
        policy_hidden : Tensor, shape (n_rollouts, n_tokens, hidden_size)
            The policy's final hidden state at the position that predicts each token.
        **forward
            Unused (the options of :func:`~bioreason.rl.lm.rollout.completion_forward`).

        Returns
        -------
        Tensor of float32, shape (n_rollouts, n_tokens)
        """
        if policy_hidden is None:
            raise ValueError(
                "the shared critic reads the policy's hidden states; the policy's forward "
                "was run without hidden=True"
            )
        return self.head(policy_hidden)


class SeparateCritic(torch.nn.Module):
    """A value network of its own: a copy of the initial policy's trunk with a value
    head (the module docstring).

    Parameters
    ----------
    model : causal LM
        The initial policy; copied (not shared), so its later updates do not reach the
        critic and the critic's do not reach it. Its output embeddings (the vocabulary
        head) are replaced in the copy by a frozen one-wide zero layer: the critic
        computes no vocabulary logits and holds no second vocabulary matrix (a tied
        input embedding stays, as the trunk's own).
    """

    reads_policy_hidden = False
    owns_trunk = True

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        width = hidden_size(model)
        trunk = copy.deepcopy(model)
        if hasattr(trunk, "set_output_embeddings"):
            stand_in = torch.nn.Linear(width, 1, bias=False)
            torch.nn.init.zeros_(stand_in.weight)
            stand_in.requires_grad_(False)
            old = trunk.get_output_embeddings()
            if old is not None:
                stand_in.to(device=old.weight.device, dtype=old.weight.dtype)
            trunk.set_output_embeddings(stand_in)
        self.trunk = trunk.eval()
        self.head = ValueHead(width)

    def values(
        self,
        prompts: PromptBatch,
        tokens: Tensor,
        policy_hidden: Tensor | None = None,
        **forward: Any,
    ) -> Tensor:
        """``V_t`` from the critic's own forward over prompt + completion.

        Parameters
        ----------
        prompts : PromptBatch
            n_questions prompts.
        tokens : Tensor of int64, shape (n_rollouts, n_tokens)
            Completions, question by question (``n_rollouts = n_questions * G``).
        policy_hidden : Tensor or None
            Unused (the policy's states are not read).
        **forward
            ``autocast``, ``fast``, ``compile``, ``shared_prefix`` of
            :func:`~bioreason.rl.lm.rollout.completion_forward`.

        Returns
        -------
        Tensor of float32, shape (n_rollouts, n_tokens)
            The value at the position that predicts each token (the state before it).
        """
        _, states = completion_forward(self.trunk, prompts, tokens, hidden=True, **forward)
        return self.head(states)


#: Critics of PPO-style estimators: ``name -> class(model)``; each has ``values(prompts,
#: tokens, policy_hidden, **forward)`` and the flags ``reads_policy_hidden`` and
#: ``owns_trunk`` (module docstring).
CRITICS: Registry[Callable[[torch.nn.Module], torch.nn.Module]] = Registry("critic")
CRITICS.register("separate", SeparateCritic)
CRITICS.register("shared", SharedCritic)


def build_critic(name: str, model: torch.nn.Module) -> torch.nn.Module:
    """The critic ``name`` of :data:`CRITICS` for the policy ``model``.

    Parameters
    ----------
    name : str
        ``"separate"`` or ``"shared"`` (or another registered name).
    model : causal LM
        The initial policy.

    Returns
    -------
    torch.nn.Module
        On ``model``'s device.
    """
    critic = CRITICS.get(name)(model)
    parameter = next(model.parameters(), None)
    return critic if parameter is None else critic.to(parameter.device)


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
        The critic's ``V_t`` of each completion token (``n_rollouts = n_questions *
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
        The critic's targets.
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
