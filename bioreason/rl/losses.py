"""Policy losses: clipped importance-ratio surrogate, KL to a reference, entropy bonus,
and loss aggregation over tokens and sequences.

All functions take per-token tensors of shape ``(batch, n_tokens)`` with a ``mask`` of
valid tokens; a one-token "sequence" is the tabular case. Policy losses, aggregations
and KL estimators are registries (:data:`POLICY_LOSSES`, :data:`AGGREGATIONS`,
:data:`KL_ESTIMATORS`). Every policy loss has one signature::

    loss_fn(log_probs, old_log_probs, advantages, *, clip_eps, mask, aggregation, constant)
        -> (loss, stats)

and registers ``weights``, its gradient in closed form: ``weights(ratio, advantages,
clip_eps)`` is ``d(-loss)/d log pi`` per sample, which a trainer with an exact policy
gradient (the tabular one) uses without autograd.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from bioreason.registry import Registry

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "aggregate",
    "clipped_policy_loss",
    "clipped_surrogate_loss",
    "clipped_surrogate_weights",
    "entropy_from_logits",
    "kl_k1",
    "kl_k3",
    "policy_loss",
]


def _mask(like: Tensor, mask: Tensor | None) -> Tensor:
    return torch.ones_like(like) if mask is None else mask.to(like.dtype)


def _token_mean(values: Tensor, mask: Tensor, constant: float | None) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _sequence_mean(values: Tensor, mask: Tensor, constant: float | None) -> Tensor:
    per_sequence = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_sequence.mean()


def _sequence_sum(values: Tensor, mask: Tensor, constant: float | None) -> Tensor:
    # Dr. GRPO: sum over tokens divided by a fixed constant (e.g. the maximum length),
    # so that long and short completions are not re-weighted by their own length.
    if constant is None or constant <= 0:
        raise ValueError("aggregation 'sequence_sum' needs a positive constant (e.g. max tokens)")
    return (values * mask).sum(-1).mean() / constant


#: How per-token losses of shape (batch, n_tokens) become one scalar:
#: ``fn(values, mask, constant) -> scalar``.
AGGREGATIONS: Registry[Callable[[Tensor, Tensor, float | None], Tensor]] = Registry("aggregation")
AGGREGATIONS.register("token_mean", _token_mean)
AGGREGATIONS.register("sequence_mean", _sequence_mean)
AGGREGATIONS.register("sequence_sum", _sequence_sum)


def aggregate(
    values: Tensor,
    mask: Tensor | None = None,
    mode: str = "token_mean",
    constant: float | None = None,
) -> Tensor:
    """Aggregate per-token values, shape ``(batch, n_tokens)``, into a scalar.

    ``token_mean``: mean over all valid tokens of the batch; ``sequence_mean``: mean over
    each sequence's tokens, then over sequences; ``sequence_sum``: sum over each
    sequence's tokens / ``constant``, then mean over sequences. ``mask``: shape
    ``(batch, n_tokens)``, valid tokens.
    """
    fn = AGGREGATIONS.get(mode)  # an unknown mode raises, listing the choices
    return fn(values, _mask(values, mask), constant)


def clipped_surrogate_weights(ratio: Tensor, advantages: Tensor, clip_eps: float | None) -> Tensor:
    """``d(-loss)/d log pi`` of the clipped surrogate, per sample (no autograd needed).

    The surrogate ``min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)`` has gradient
    ``ratio A grad log pi`` where the unclipped term is the minimum, and zero where the
    clipped (constant) term is strictly smaller: ratio > 1 + eps with A > 0, or
    ratio < 1 - eps with A < 0. ``clip_eps=None`` disables clipping.
    """
    weights = ratio * advantages
    if clip_eps is None:
        return weights
    clipped = ((advantages > 0) & (ratio > 1 + clip_eps)) | (
        (advantages < 0) & (ratio < 1 - clip_eps)
    )
    return torch.where(clipped, torch.zeros_like(weights), weights)


def clipped_surrogate_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    clip_eps: float | None = 0.2,
    mask: Tensor | None = None,
    aggregation: str = "token_mean",
    constant: float | None = None,
) -> tuple[Tensor, Tensor]:
    """PPO clipped surrogate loss ``-min(ratio A, clip(ratio) A)``, aggregated.

    Parameters
    ----------
    log_probs : Tensor, shape (batch, n_tokens)
        Current policy's log-probabilities of the sampled tokens (with grad).
    old_log_probs : Tensor, shape (batch, n_tokens)
        Log-probabilities under the policy that sampled them.
    advantages : Tensor, shape (batch, n_tokens) or (batch, 1)

    Returns
    -------
    loss : Tensor, scalar
    clip_fraction : Tensor, scalar
        Fraction of valid tokens whose gradient was clipped away.
    """
    ratio = torch.exp(log_probs - old_log_probs.detach())
    advantages = advantages.detach().expand_as(ratio)
    surrogate = ratio * advantages
    if clip_eps is not None:
        clipped_ratio = ratio.clamp(1 - clip_eps, 1 + clip_eps)
        surrogate = torch.minimum(surrogate, clipped_ratio * advantages)
        weights = clipped_surrogate_weights(ratio.detach(), advantages, clip_eps)
        was_clipped = (weights == 0) & (advantages != 0)
    else:
        was_clipped = torch.zeros_like(ratio, dtype=torch.bool)
    m = _mask(ratio, mask)
    clip_fraction = (was_clipped.to(m.dtype) * m).sum() / m.sum().clamp(min=1)
    return aggregate(-surrogate, mask, aggregation, constant), clip_fraction


def clipped_policy_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    *,
    clip_eps: float | None = 0.2,
    mask: Tensor | None = None,
    aggregation: str = "token_mean",
    constant: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The ``"clipped"`` policy loss: :func:`clipped_surrogate_loss` in the registry's
    signature. Shapes as there; returns the scalar loss and ``{"clip_fraction": ...}``.
    """
    loss, clip_fraction = clipped_surrogate_loss(
        log_probs, old_log_probs, advantages, clip_eps, mask, aggregation, constant
    )
    return loss, {"clip_fraction": clip_fraction.detach()}


#: Policy losses of (log_probs, old_log_probs, advantages), each with its closed-form
#: per-sample gradient weights as metadata ``weights`` (see the module docstring).
POLICY_LOSSES: Registry[Callable[..., tuple[Tensor, dict[str, Tensor]]]] = Registry("policy loss")
POLICY_LOSSES.register("clipped", clipped_policy_loss, weights=clipped_surrogate_weights)


def kl_k1(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """k1 estimator of KL(pi || ref) per sampled token: ``log pi - log ref`` (unbiased)."""
    return log_probs - ref_log_probs


def kl_k3(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """k3 estimator of KL(pi || ref): ``r - 1 - log r`` with ``r = ref / pi`` (Schulman 2020).

    Unbiased for samples from pi, always >= 0, and of lower variance than k1.
    """
    log_ratio = ref_log_probs - log_probs
    return torch.expm1(log_ratio) - log_ratio


#: Per-token estimators of KL(pi || ref) from samples of pi:
#: ``fn(log_probs, ref_log_probs) -> per-token KL``, shape (batch, n_tokens).
KL_ESTIMATORS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("KL estimator")
KL_ESTIMATORS.register("k1", kl_k1)
KL_ESTIMATORS.register("k3", kl_k3)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of each categorical distribution, shape ``logits.shape[:-1]``."""
    log_p = torch.log_softmax(logits, -1)
    return -(log_p.exp() * log_p).sum(-1)


def policy_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    *,
    loss: str = "clipped",
    mask: Tensor | None = None,
    clip_eps: float | None = 0.2,
    ref_log_probs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    aggregation: str = "token_mean",
    constant: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """A registered policy loss + ``kl_coef`` x KL(pi || ref) - ``entropy_coef`` x entropy.

    Parameters
    ----------
    log_probs, old_log_probs, ref_log_probs : Tensor, shape (batch, n_tokens)
        Log-probabilities of the sampled tokens under the current policy (with grad),
        the sampling policy and the reference policy.
    advantages : Tensor, shape (batch, n_tokens) or (batch, 1)
    loss : str
        A name of :data:`POLICY_LOSSES`.
    entropy : Tensor, shape (batch, n_tokens), optional
        Per-token entropy of the current policy.

    Returns
    -------
    loss : Tensor, scalar
    stats : dict of str to Tensor
        Detached diagnostics (the policy loss's own, plus ``kl`` and ``entropy``).
    """
    loss_fn = POLICY_LOSSES.get(loss)  # an unknown name raises, listing the choices
    kl_fn = KL_ESTIMATORS.get(kl_estimator)
    total, stats = loss_fn(
        log_probs,
        old_log_probs,
        advantages,
        clip_eps=clip_eps,
        mask=mask,
        aggregation=aggregation,
        constant=constant,
    )
    if kl_coef:
        if ref_log_probs is None:
            raise ValueError("kl_coef > 0 needs ref_log_probs (the reference policy's log-probs)")
        kl = aggregate(kl_fn(log_probs, ref_log_probs), mask, aggregation, constant)
        total = total + kl_coef * kl
        stats["kl"] = kl.detach()
    if entropy_coef:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the per-token entropy (entropy=...)")
        mean_entropy = aggregate(entropy, mask, aggregation, constant)
        total = total - entropy_coef * mean_entropy
        stats["entropy"] = mean_entropy.detach()
    return total, stats
