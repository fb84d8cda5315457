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

**KL estimators: their values and their gradients.** A KL term of the loss is an
estimator ``k(log pi(x), log ref(x))`` of the sampled tokens ``x ~ pi``, aggregated,
and differentiated with the samples held fixed (through ``log pi`` of the sampled
tokens only). What its *value* estimates and what its *gradient* follows differ
(Schulman, "Approximating KL divergence", 2020, http://joschu.net/blog/kl-approx.html,
for the values; Tang & Munos, "On a few pitfalls in KL divergence gradient estimation
for RL", arXiv 2506.09477, 2025, for the gradients). With ``d = log pi - log ref`` and
``r = ref / pi``, the expectations over ``x ~ pi``:

| name | per token | E[value] | E[gradient] |
| --- | --- | --- | --- |
| k1 | ``d`` | KL(pi || ref) | 0 (``E[grad log pi] = 0``) |
| k2 | ``d^2 / 2`` | an f-divergence, KL to 2nd order | ``E[d grad log pi]`` = grad KL(pi || ref) |
| k3 | ``r - 1 - log r`` | KL(pi || ref) | ``E[(1 - r) grad log pi]`` = grad KL(ref || pi) |

So ``k1`` as a loss regularizes nothing (:func:`policy_loss` refuses it; it stays
registered as an estimate of the value), ``k2`` follows the gradient of the penalty
the configs name, KL(pi || ref) (the same gradient as ``k1`` put into the reward, and
the one the tabular trainer computes exactly), and ``k3``, although its value is an
unbiased estimate of KL(pi || ref), follows the gradient of the *forward* divergence
KL(ref || pi) (mass-covering: it pulls pi up wherever ref has mass). Both regularize
toward ``ref``; they agree to first order near it. ``tests/test_rl_losses.py`` checks
every entry of the table against closed forms on a small categorical policy (exact
expectations by enumerating the categories, gradients by autograd).

Two more facts about the KL term of :func:`policy_loss`:

* **Later updates of a rollout.** The per-token estimator is multiplied by the
  detached importance ratio ``pi / pi_old`` of the token (1 on the first update of a
  rollout), so that under samples of the behaviour policy its expected value and
  gradient are still those under ``pi`` in the table.
* **Sequences.** Per token, the table holds for the distribution at each sampled
  prefix: the summed per-token gradient is the gradient of the sum over positions of
  KL(pi(. | prefix) || ref(. | prefix)) with the prefixes' distribution held fixed.
  The gradient of the whole sequence's KL has one more term, through the earlier
  tokens' probabilities (Tang & Munos: the later tokens' KL acts as a return of the
  earlier ones); for one-token answers the two are equal.

**Validation.** :func:`policy_loss` (for every registered loss) and
:func:`clipped_surrogate_loss` check their inputs in one place: ``log_probs`` and
``old_log_probs`` of one shape ``(batch, n_tokens)``, ``advantages`` of that shape or
``(batch, 1)`` (a 1-d ``(batch,)`` would broadcast along the tokens), a ``mask`` of
that shape with 0/1 entries, every entry finite (padding included: fill it with 0),
and a finite loss (a huge log-ratio overflows ``exp``). A violation raises a
ValueError naming the function, the argument and the first offending sequence (row).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from bioreason.registry import Registry

__all__ = [
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "aggregate",
    "check_kl_loss_estimator",
    "clipped_policy_loss",
    "clipped_surrogate_loss",
    "clipped_surrogate_weights",
    "entropy_from_logits",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_loss_estimators",
    "policy_loss",
]


def _mask(like: Tensor, mask: Tensor | None) -> Tensor:
    return torch.ones_like(like) if mask is None else mask.to(like.dtype)


# ----- the shared input checks -----------------------------------------------------


def _tensor(value: Any, name: str, where: str) -> Tensor:
    if not isinstance(value, Tensor):
        try:
            value = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"{where}: {name} must be a tensor of real numbers, got "
                f"{type(value).__name__} ({err})"
            ) from None
    if value.is_complex():
        raise TypeError(f"{where}: {name} must be a tensor of real numbers, got {value.dtype}")
    return value


def _require_finite(tensor: Tensor, name: str, where: str) -> None:
    # one sum decides for finite input (a sum of finite numbers is never NaN and is
    # finite unless it overflows); the offending row is located only on failure
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor.detach().sum())):
        return
    finite = torch.isfinite(tensor.detach())
    if bool(finite.all()):
        return
    rows = (~finite).reshape(finite.shape[0], -1).any(1).nonzero()[:, 0] if finite.ndim else None
    if rows is None:
        raise ValueError(f"{where}: {name} is not finite ({tensor.item()})")
    row = int(rows[0])
    raise ValueError(
        f"{where}: {name} of sequence {row} (row {row}) are not finite ({rows.numel()} of "
        f"{finite.shape[0]} sequences have NaN or inf); padding positions count too: "
        "fill them with 0 and leave them out with mask"
    )


def _check_mask(mask: Any, shape: torch.Size, where: str) -> Tensor | None:
    if mask is None:
        return None
    mask = _tensor(mask, "mask", where)
    if mask.shape != shape:
        raise ValueError(
            f"{where}: mask must have shape {tuple(shape)} like log_probs, got {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool and int(torch.count_nonzero(mask * (1 - mask))):
        raise ValueError(f"{where}: mask must be 0/1 (or bool): 1 marks a valid token")
    return mask


def _check_number(value: Any, name: str, where: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= minimum):
        raise ValueError(f"{where}: {name} must be a finite number >= {minimum}, got {value}")
    return float(value)


def _check_clip_eps(clip_eps: Any, where: str) -> float | None:
    if clip_eps is None:
        return None
    if isinstance(clip_eps, bool) or not isinstance(clip_eps, (int, float)):
        raise TypeError(f"{where}: clip_eps must be a number > 0 or None, got {clip_eps!r}")
    if not (math.isfinite(clip_eps) and clip_eps > 0):
        raise ValueError(f"{where}: clip_eps must be a finite number > 0 or None, got {clip_eps}")
    return float(clip_eps)


def _check_advantages_shape(advantages: Tensor, shape: torch.Size, where: str) -> None:
    batch = shape[0]
    if tuple(advantages.shape) not in (tuple(shape), (batch, 1)):
        raise ValueError(
            f"{where}: advantages must have shape {tuple(shape)} or ({batch}, 1) (one per "
            f"sequence), got {tuple(advantages.shape)}; a 1-d advantages would broadcast "
            "along the tokens, use advantages[:, None]"
        )


def _check_loss_inputs(
    log_probs: Any, old_log_probs: Any, advantages: Any, mask: Any, where: str
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The shared check of every policy loss's inputs (module docstring)."""
    log_probs = _tensor(log_probs, "log_probs", where)
    old_log_probs = _tensor(old_log_probs, "old_log_probs", where)
    advantages = _tensor(advantages, "advantages", where)
    if log_probs.ndim != 2:
        raise ValueError(
            f"{where}: log_probs must have shape (batch, n_tokens), got "
            f"{tuple(log_probs.shape)}; one token per sequence is shape (batch, 1)"
        )
    if old_log_probs.shape != log_probs.shape:
        raise ValueError(
            f"{where}: old_log_probs must have the shape of log_probs "
            f"{tuple(log_probs.shape)}, got {tuple(old_log_probs.shape)}"
        )
    _check_advantages_shape(advantages, log_probs.shape, where)
    mask = _check_mask(mask, log_probs.shape, where)
    for name, tensor in (
        ("log_probs", log_probs),
        ("old_log_probs", old_log_probs),
        ("advantages", advantages),
    ):
        _require_finite(tensor, name, where)
    return log_probs, old_log_probs, advantages, mask


def _require_finite_loss(loss: Tensor, log_probs: Tensor, old_log_probs: Tensor, where: str):
    if not bool(torch.isfinite(loss.detach())):
        log_ratio = (log_probs.detach() - old_log_probs.detach()).abs().max()
        raise ValueError(
            f"{where}: the loss is not finite ({loss.item()}) although every input is: the "
            f"largest |log_probs - old_log_probs| is {float(log_ratio):.3g}, and exp of it "
            "overflows the importance ratio; old_log_probs must come from the policy that "
            "sampled the tokens"
        )


def _token_mean(values: Tensor, mask: Tensor, constant: float | None) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _sequence_mean(values: Tensor, mask: Tensor, constant: float | None) -> Tensor:
    per_sequence = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_sequence.mean()


def _sequence_sum(values: Tensor, mask: Tensor, constant: float | None) -> Tensor:
    # Dr. GRPO: sum over tokens divided by a fixed constant (e.g. the maximum length),
    # so that long and short completions are not re-weighted by their own length.
    if constant is None or not (math.isfinite(constant) and constant > 0):
        raise ValueError(
            "aggregation 'sequence_sum' needs a positive, finite constant (e.g. max tokens), "
            f"got {constant!r}"
        )
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
    ``(batch, n_tokens)``, valid tokens (0/1 or bool). Values must be finite; a batch
    without valid tokens aggregates to 0.
    """
    fn = AGGREGATIONS.get(mode)  # an unknown mode raises, listing the choices
    values = _tensor(values, "values", "aggregate")
    if values.ndim != 2:
        raise ValueError(
            f"aggregate: values must have shape (batch, n_tokens), got {tuple(values.shape)}"
        )
    mask = _check_mask(mask, values.shape, "aggregate")
    _require_finite(values, "values", "aggregate")
    return fn(values, _mask(values, mask), constant)


def clipped_surrogate_weights(ratio: Tensor, advantages: Tensor, clip_eps: float | None) -> Tensor:
    """``d(-loss)/d log pi`` of the clipped surrogate, per sample (no autograd needed).

    The surrogate ``min(ratio A, clip(ratio, 1 - eps, 1 + eps) A)`` has gradient
    ``ratio A grad log pi`` where the unclipped term is the minimum, and zero where the
    clipped (constant) term is strictly smaller: ratio > 1 + eps with A > 0, or
    ratio < 1 - eps with A < 0. ``clip_eps=None`` disables clipping, else a finite
    number > 0. ``advantages`` has the shape of ``ratio`` or ``(batch, 1)``. (Shapes
    only: this runs every step of the tabular trainer, on advantages the estimators
    have already checked.)
    """
    clip_eps = _check_clip_eps(clip_eps, "clipped_surrogate_weights")
    ratio = _tensor(ratio, "ratio", "clipped_surrogate_weights")
    advantages = _tensor(advantages, "advantages", "clipped_surrogate_weights")
    if ratio.ndim:
        _check_advantages_shape(advantages, ratio.shape, "clipped_surrogate_weights")
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

    Raises
    ------
    ValueError
        As the module docstring's validation; ``clip_eps`` not None or > 0.
    """
    where = "clipped_surrogate_loss"
    clip_eps = _check_clip_eps(clip_eps, where)
    log_probs, old_log_probs, advantages, mask = _check_loss_inputs(
        log_probs, old_log_probs, advantages, mask, where
    )
    loss, clip_fraction = _clipped_surrogate(
        log_probs, old_log_probs, advantages, clip_eps, mask, aggregation, constant
    )
    _require_finite_loss(loss, log_probs, old_log_probs, where)
    return loss, clip_fraction


def _clipped_surrogate(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    clip_eps: float | None,
    mask: Tensor | None,
    aggregation: str,
    constant: float | None,
) -> tuple[Tensor, Tensor]:
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
    aggregate_fn = AGGREGATIONS.get(aggregation)  # an unknown mode raises, listing them
    return aggregate_fn(-surrogate, m, constant), clip_fraction


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


def _check_same_shape(log_probs: Tensor, ref_log_probs: Tensor, where: str) -> None:
    if ref_log_probs.shape != log_probs.shape:
        raise ValueError(
            f"{where}: ref_log_probs must have the shape of log_probs "
            f"{tuple(log_probs.shape)}, got {tuple(ref_log_probs.shape)}"
        )


def _log_ratio(log_probs: Any, ref_log_probs: Any, where: str) -> Tensor:
    """``log pi - log ref`` of two tensors of one shape (no broadcasting)."""
    log_probs = _tensor(log_probs, "log_probs", where)
    ref_log_probs = _tensor(ref_log_probs, "ref_log_probs", where)
    _check_same_shape(log_probs, ref_log_probs, where)
    return log_probs - ref_log_probs


def kl_k1(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """k1 estimator of KL(pi || ref) per sampled token: ``log pi - log ref``.

    Its value is unbiased for samples of pi, but as a loss term it is useless: its
    gradient with the samples held fixed is ``grad log pi``, whose expectation under
    pi is 0, so :func:`policy_loss` refuses it (module docstring).

    Parameters
    ----------
    log_probs, ref_log_probs : Tensor, shape (batch, n_tokens)
        Log-probabilities of the sampled tokens under pi and under the reference; one
        shape (no broadcasting). Elementwise, so NaN in gives NaN out
        (:func:`policy_loss` checks finiteness).

    Returns
    -------
    Tensor, shape (batch, n_tokens)
    """
    return _log_ratio(log_probs, ref_log_probs, "kl_k1")


def kl_k2(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """k2 estimator per sampled token: ``(log pi - log ref)^2 / 2`` (Schulman 2020).

    Its value is an f-divergence that equals KL(pi || ref) to second order near ref
    (biased, low variance, always >= 0). Its gradient with the samples held fixed is
    ``(log pi - log ref) grad log pi``, whose expectation under pi is the gradient of
    KL(pi || ref): the loss term that follows the penalty's own gradient.

    Parameters
    ----------
    log_probs, ref_log_probs : Tensor, shape (batch, n_tokens)
        As :func:`kl_k1`.

    Returns
    -------
    Tensor, shape (batch, n_tokens)
    """
    return 0.5 * _log_ratio(log_probs, ref_log_probs, "kl_k2") ** 2


def kl_k3(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """k3 estimator per sampled token: ``r - 1 - log r`` with ``r = ref / pi`` (Schulman
    2020).

    Its value is unbiased for KL(pi || ref) under samples of pi, always >= 0, and of
    lower variance than k1. Its gradient with the samples held fixed is
    ``(1 - ref / pi) grad log pi``, whose expectation under pi is the gradient of the
    *other* direction, KL(ref || pi) (module docstring).

    Parameters
    ----------
    log_probs, ref_log_probs : Tensor, shape (batch, n_tokens)
        As :func:`kl_k1`.

    Returns
    -------
    Tensor, shape (batch, n_tokens)
    """
    log_ratio = -_log_ratio(log_probs, ref_log_probs, "kl_k3")
    return torch.expm1(log_ratio) - log_ratio


#: Per-token estimators of KL(pi || ref) from samples of pi:
#: ``fn(log_probs, ref_log_probs) -> per-token values``, shape (batch, n_tokens); metadata
#: ``gradient``: the divergence whose gradient the estimator's expected gradient is,
#: under on-policy samples (``None``: zero expected gradient, not usable as a loss).
KL_ESTIMATORS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("KL estimator")
KL_ESTIMATORS.register("k1", kl_k1, gradient=None)
KL_ESTIMATORS.register("k2", kl_k2, gradient="KL(pi || ref)")
KL_ESTIMATORS.register("k3", kl_k3, gradient="KL(ref || pi)")


def kl_loss_estimators() -> list[str]:
    """Names of :data:`KL_ESTIMATORS` usable as a loss term (a nonzero expected
    gradient), in registration order.

    Returns
    -------
    list of str
    """
    return KL_ESTIMATORS.where(lambda meta: meta.get("gradient") is not None)


def check_kl_loss_estimator(name: Any, where: str = "policy_loss") -> Callable[..., Tensor]:
    """The estimator ``name`` of :data:`KL_ESTIMATORS` if it can be a loss term.

    Parameters
    ----------
    name : str
        A registered estimator.
    where : str
        What the error message starts with (the function or the config field).

    Returns
    -------
    callable
        The estimator.

    Raises
    ------
    ValueError
        An unknown name (listing the choices), or one whose expected gradient is 0
        (``k1``), naming why and what to use instead.
    """
    if name not in KL_ESTIMATORS:
        raise ValueError(
            f"{where}: unknown KL estimator {name!r}; choose one of {kl_loss_estimators()}"
        )
    if KL_ESTIMATORS.metadata(name).get("gradient") is None:
        usable = ", ".join(
            f"{other!r} (gradient of {KL_ESTIMATORS.metadata(other)['gradient']})"
            for other in kl_loss_estimators()
        )
        raise ValueError(
            f"{where}: KL estimator {name!r} cannot be a loss term: with the sampled tokens "
            "held fixed its gradient is grad log pi, whose expectation under pi is zero, so "
            f"kl_coef > 0 would regularize nothing; use {usable}"
        )
    return KL_ESTIMATORS[name]


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of each categorical distribution, shape ``logits.shape[:-1]``.

    ``logits``: shape ``(..., n_classes)``; ``-inf`` marks an impossible class (a masked
    vocabulary) and contributes 0, with a finite gradient. NaN, ``+inf`` or a row whose
    logits are all ``-inf`` raise a ValueError.
    """
    logits = _tensor(logits, "logits", "entropy_from_logits")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(
            "entropy_from_logits: logits must have shape (..., n_classes) with n_classes "
            f">= 1, got {tuple(logits.shape)}"
        )
    detached = logits.detach()
    if bool(torch.isnan(detached).any()) or bool((detached == math.inf).any()):
        raise ValueError("entropy_from_logits: logits contain NaN or +inf")
    if bool((detached == -math.inf).all(-1).any()):
        raise ValueError(
            "entropy_from_logits: logits of some distribution are all -inf (no possible class)"
        )
    log_p = torch.log_softmax(logits, -1)
    # 0 log 0 = 0 for masked classes; torch.where keeps the gradient finite there
    safe_log_p = torch.where(log_p > -math.inf, log_p, torch.zeros_like(log_p))
    return -(log_p.exp() * safe_log_p).sum(-1)


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
    kl_estimator: str = "k2",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    aggregation: str = "token_mean",
    constant: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """A registered policy loss + ``kl_coef`` x a KL term to ``ref`` - ``entropy_coef``
    x entropy.

    Parameters
    ----------
    log_probs, old_log_probs, ref_log_probs : Tensor, shape (batch, n_tokens)
        Log-probabilities of the sampled tokens under the current policy (with grad),
        the sampling policy and the reference policy.
    advantages : Tensor, shape (batch, n_tokens) or (batch, 1)
    loss : str
        A name of :data:`POLICY_LOSSES`.
    kl_coef : float
        Weight of the KL term (>= 0; 0 leaves it out).
    kl_estimator : str, default "k2"
        The KL term's per-token estimator, a name of :data:`KL_ESTIMATORS` with a
        nonzero expected gradient (:func:`kl_loss_estimators`): ``"k2"`` follows the
        gradient of KL(pi || ref), ``"k3"`` that of KL(ref || pi); ``"k1"`` is refused
        (module docstring). Each token's estimate is weighted by its detached importance
        ratio ``pi / pi_old`` (1 on a rollout's first update).
    entropy : Tensor, shape (batch, n_tokens), optional
        Per-token entropy of the current policy.

    Returns
    -------
    loss : Tensor, scalar
    stats : dict of str to Tensor
        Detached diagnostics: the policy loss's own, ``kl`` (with ``kl_coef > 0``: the
        ratio-weighted k3 estimate of KL(pi || ref), unbiased whichever estimator the
        loss uses) and ``entropy``.

    Raises
    ------
    ValueError
        As the module docstring's validation; an unknown or zero-gradient
        ``kl_estimator``; ``kl_coef > 0`` without ``ref_log_probs``.
    """
    loss_fn = POLICY_LOSSES.get(loss)  # an unknown name raises, listing the choices
    where = "policy_loss"
    kl_fn = check_kl_loss_estimator(kl_estimator, where)
    kl_coef = _check_number(kl_coef, "kl_coef", where)
    entropy_coef = _check_number(entropy_coef, "entropy_coef", where, -math.inf)
    clip_eps = _check_clip_eps(clip_eps, where)
    # the shared check, whichever registered loss runs
    log_probs, old_log_probs, advantages, mask = _check_loss_inputs(
        log_probs, old_log_probs, advantages, mask, where
    )
    if kl_coef and ref_log_probs is not None:
        ref_log_probs = _tensor(ref_log_probs, "ref_log_probs", where)
        _check_same_shape(log_probs, ref_log_probs, where)
        _require_finite(ref_log_probs, "ref_log_probs", where)
    if entropy_coef and entropy is not None:
        entropy = _tensor(entropy, "entropy", where)
        if entropy.shape != log_probs.shape:
            raise ValueError(
                f"{where}: entropy must have the shape of log_probs {tuple(log_probs.shape)}, "
                f"got {tuple(entropy.shape)}"
            )
    try:
        total, stats = loss_fn(
            log_probs,
            old_log_probs,
            advantages,
            clip_eps=clip_eps,
            mask=mask,
            aggregation=aggregation,
            constant=constant,
        )
    except ValueError as err:  # name the caller's function and the registered loss
        raise ValueError(f"{where} (loss {loss!r}): {err}") from None
    if kl_coef:
        if ref_log_probs is None:
            raise ValueError("kl_coef > 0 needs ref_log_probs (the reference policy's log-probs)")
        # the detached importance ratio keeps the term's expectation (value and gradient)
        # that under pi when the tokens come from the behaviour policy
        # (aggregated directly: an overflowing ratio is reported by the loss's check)
        ratio = torch.exp(log_probs.detach() - old_log_probs.detach())
        aggregate_fn = AGGREGATIONS.get(aggregation)
        m = _mask(log_probs, mask)
        kl_term = aggregate_fn(ratio * kl_fn(log_probs, ref_log_probs), m, constant)
        total = total + kl_coef * kl_term
        estimate = ratio * kl_k3(log_probs.detach(), ref_log_probs)
        stats["kl"] = aggregate_fn(estimate, m, constant)
    if entropy_coef:
        if entropy is None:
            raise ValueError("entropy_coef > 0 needs the per-token entropy (entropy=...)")
        mean_entropy = aggregate(entropy, mask, aggregation, constant)
        total = total - entropy_coef * mean_entropy
        stats["entropy"] = mean_entropy.detach()
    _require_finite_loss(total, log_probs, old_log_probs, where)
    return total, stats
