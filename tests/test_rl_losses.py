import math

import pytest
import torch

from bioreason.rl.losses import (
    aggregate,
    clipped_surrogate_loss,
    clipped_surrogate_weights,
    entropy_from_logits,
    kl_k1,
    kl_k3,
    policy_loss,
)


def test_clipping_takes_effect():
    """Gradient vanishes where the clipped term is the minimum, and only there."""
    ratio = torch.tensor([[1.5, 1.5, 0.5, 0.5, 1.1, 0.9]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, -1.0, 1.0, -1.0, 1.0, -1.0]], dtype=torch.float64)
    old = torch.zeros_like(ratio)
    log_probs = ratio.log().requires_grad_(True)
    loss, clip_fraction = clipped_surrogate_loss(log_probs, old, advantages, clip_eps=0.2)
    loss.backward()
    grad = log_probs.grad[0]
    # ratio 1.5, A > 0: clipped; ratio 1.5, A < 0: not clipped; ratio 0.5, A > 0: not
    # clipped; ratio 0.5, A < 0: clipped; inside the trust region: not clipped
    assert grad[0] == 0 and grad[3] == 0
    assert grad[1] != 0 and grad[2] != 0 and grad[4] != 0 and grad[5] != 0
    assert clip_fraction.item() == pytest.approx(2 / 6)
    # the closed-form weights are exactly minus the autograd gradient (token mean of 6)
    weights = clipped_surrogate_weights(ratio, advantages, 0.2)
    assert torch.allclose(-grad * 6, weights[0])
    # without clipping every sample keeps its gradient ratio * A
    unclipped = log_probs.detach().clone().requires_grad_(True)
    loss, _ = clipped_surrogate_loss(unclipped, old, advantages, clip_eps=None)
    loss.backward()
    assert torch.allclose(-unclipped.grad[0] * 6, (ratio * advantages)[0])


def test_surrogate_value_at_ratio_one_is_minus_mean_advantage():
    adv = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    logp = torch.zeros(2, 2)
    loss, _ = clipped_surrogate_loss(logp, logp, adv, clip_eps=0.2)
    assert loss.item() == pytest.approx(-adv.mean().item())


def test_aggregation_modes():
    values = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(10 / 4)
    assert aggregate(values, mask, "sequence_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate(values, mask, "sequence_sum", constant=4).item() == pytest.approx(
        (6 + 4) / 2 / 4
    )
    with pytest.raises(ValueError, match="constant"):
        aggregate(values, mask, "sequence_sum")
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(values, mask, "median")


def test_kl_estimators_unbiased_and_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, generator=g, dtype=torch.float64)
    ref_logits = torch.randn(6, generator=g, dtype=torch.float64)
    log_pi = torch.log_softmax(logits, 0)
    log_ref = torch.log_softmax(ref_logits, 0)
    exact = (log_pi.exp() * (log_pi - log_ref)).sum().item()
    n = 200_000
    samples = torch.multinomial(log_pi.exp(), n, replacement=True, generator=g)
    k1 = kl_k1(log_pi[samples], log_ref[samples])
    k3 = kl_k3(log_pi[samples], log_ref[samples])
    assert (k3 >= 0).all()
    for estimate in (k1, k3):
        standard_error = estimate.std().item() / math.sqrt(n)
        assert abs(estimate.mean().item() - exact) < 5 * standard_error
    assert k3.var() < k1.var()  # the point of k3


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, -10.0, -10.0, -10.0]])
    entropy = entropy_from_logits(logits)
    assert entropy[0].item() == pytest.approx(math.log(4))
    assert entropy[1].item() < 1e-6


def test_policy_loss_adds_kl_and_entropy():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    adv = torch.tensor([[1.0, -1.0]])
    entropy = torch.tensor([[0.7, 0.9]])
    base, _ = policy_loss(logp, logp, adv)
    loss, stats = policy_loss(
        logp, logp, adv, ref_log_probs=ref, kl_coef=0.1, entropy=entropy, entropy_coef=0.01
    )
    k3 = kl_k3(logp, ref).mean()
    assert loss.item() == pytest.approx(base.item() + 0.1 * k3.item() - 0.01 * 0.8)
    assert set(stats) == {"clip_fraction", "kl", "entropy"}
    with pytest.raises(ValueError, match="ref_log_probs"):
        policy_loss(logp, logp, adv, kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(logp, logp, adv, entropy_coef=0.1)
    with pytest.raises(ValueError, match="KL estimator"):
        policy_loss(logp, logp, adv, kl_estimator="k2", ref_log_probs=ref, kl_coef=1.0)


def test_policy_loss_registry_entry_and_its_closed_form_weights():
    from bioreason.registry import Registry
    from bioreason.rl.losses import POLICY_LOSSES, clipped_policy_loss

    assert isinstance(POLICY_LOSSES, Registry) and POLICY_LOSSES["clipped"] is clipped_policy_loss
    g = torch.Generator().manual_seed(3)
    log_probs = (torch.randn(6, 1, generator=g, dtype=torch.float64) * 0.3).requires_grad_()
    old = torch.randn(6, 1, generator=g, dtype=torch.float64) * 0.3
    advantages = torch.randn(6, 1, generator=g, dtype=torch.float64)
    loss, stats = POLICY_LOSSES["clipped"](
        log_probs, old, advantages, clip_eps=0.2, aggregation="sequence_sum", constant=1.0
    )
    (grad,) = torch.autograd.grad(loss, log_probs)
    weights = POLICY_LOSSES.metadata("clipped")["weights"]
    ratio = torch.exp(log_probs.detach() - old)
    # d(-loss)/d log pi = weights / batch (sequence_sum over one token, mean over sequences)
    assert torch.allclose(-grad * 6, weights(ratio, advantages, 0.2))
    assert "clip_fraction" in stats
    with pytest.raises(ValueError, match="unknown policy loss"):
        policy_loss(log_probs, old, advantages, loss="dual_clip")
