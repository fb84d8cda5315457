import math

import pytest
import torch

from bioreason.rl.losses import (
    KL_ESTIMATORS,
    aggregate,
    clipped_surrogate_loss,
    clipped_surrogate_weights,
    entropy_from_logits,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_loss_estimators,
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
    k2 = kl_k2(logp, ref).mean()  # the default estimator of the loss term
    assert loss.item() == pytest.approx(base.item() + 0.1 * k2.item() - 0.01 * 0.8)
    assert set(stats) == {"clip_fraction", "kl", "entropy"}
    # the logged kl is k3's unbiased estimate of KL(pi || ref), whichever the loss uses
    assert stats["kl"].item() == pytest.approx(kl_k3(logp, ref).mean().item())
    loss3, _ = policy_loss(logp, logp, adv, ref_log_probs=ref, kl_coef=0.1, kl_estimator="k3")
    assert loss3.item() == pytest.approx(base.item() + 0.1 * kl_k3(logp, ref).mean().item())
    with pytest.raises(ValueError, match="ref_log_probs"):
        policy_loss(logp, logp, adv, kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(logp, logp, adv, entropy_coef=0.1)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        policy_loss(logp, logp, adv, kl_estimator="k4", ref_log_probs=ref, kl_coef=1.0)


# ----- KL estimators: values and gradients against closed forms ----------------------
#
# A categorical policy pi = softmax(theta) over K categories, a reference ref. The
# trainer's KL term for a sampled category x is policy_loss(...) with x held fixed and
# the gradient through log pi(x); its expectation is the pi-weighted sum over all K
# categories (exact: no sampling). Closed forms, with d = log pi - log ref:
#   grad_theta KL(pi || ref) = pi * (d - KL(pi || ref))
#   grad_theta KL(ref || pi) = pi - ref


def _categorical(seed: int = 0, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    theta = (torch.randn(k, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    ref = torch.softmax(torch.randn(k, generator=g, dtype=torch.float64) * 1.5, 0)
    return theta, ref


def _expected_term(theta, ref, estimator, sampler=None):
    """Exact expectation over x ~ sampler (default pi) of the KL term of policy_loss for
    the one-token sequence x, sampled by ``sampler``: (value, gradient wrt theta)."""
    log_pi = torch.log_softmax(theta, 0)
    log_sampler = log_pi.detach() if sampler is None else sampler.log()
    weights = log_sampler.exp()
    zero = torch.zeros(1, 1, dtype=torch.float64)
    value = torch.zeros((), dtype=torch.float64)
    gradient = torch.zeros_like(theta)
    for x in range(len(theta)):
        log_probs = log_pi[x].reshape(1, 1)
        old = log_sampler[x].reshape(1, 1)  # the behaviour policy's log-prob
        term, _ = policy_loss(
            log_probs,
            old,
            zero,
            ref_log_probs=ref[x].log().reshape(1, 1),
            kl_coef=1.0,
            kl_estimator=estimator,
            clip_eps=None,
        )
        (grad,) = torch.autograd.grad(term, theta, retain_graph=True)
        value = value + weights[x] * term.detach()
        gradient = gradient + weights[x] * grad
    return value, gradient


def _closed_forms(theta, ref):
    pi = torch.softmax(theta.detach(), 0)
    d = pi.log() - ref.log()
    kl_pi_ref = (pi * d).sum()
    return {
        "kl_pi_ref": kl_pi_ref,
        "k2_value": (pi * d**2 / 2).sum(),
        "grad_kl_pi_ref": pi * (d - kl_pi_ref),
        "grad_kl_ref_pi": pi - ref,
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_estimators_expected_values_and_gradients_match_closed_forms(seed):
    theta, ref = _categorical(seed)
    exact = _closed_forms(theta, ref)
    assert exact["kl_pi_ref"] > 0.1  # far enough from ref for the directions to differ
    assert not torch.allclose(exact["grad_kl_pi_ref"], exact["grad_kl_ref_pi"], atol=1e-2)
    # k1: unbiased value, zero expected gradient (so policy_loss refuses it; computed here
    # from the estimator itself, as a loss would use it)
    log_pi = torch.log_softmax(theta, 0)
    pi = log_pi.exp().detach()
    k1_value = (pi * kl_k1(log_pi, ref.log())).sum()
    (k1_grad,) = torch.autograd.grad(k1_value, theta)
    torch.testing.assert_close(k1_value.detach(), exact["kl_pi_ref"])
    torch.testing.assert_close(k1_grad, torch.zeros_like(k1_grad), atol=1e-12, rtol=0)
    # k2: value its own f-divergence, gradient that of KL(pi || ref)
    value, gradient = _expected_term(theta, ref, "k2")
    torch.testing.assert_close(value, exact["k2_value"])
    torch.testing.assert_close(gradient, exact["grad_kl_pi_ref"])
    # k3: value KL(pi || ref), gradient that of KL(ref || pi)
    value, gradient = _expected_term(theta, ref, "k3")
    torch.testing.assert_close(value, exact["kl_pi_ref"])
    torch.testing.assert_close(gradient, exact["grad_kl_ref_pi"])
    assert not torch.allclose(gradient, exact["grad_kl_pi_ref"], atol=1e-2)
    # the registry says so
    assert KL_ESTIMATORS.metadata("k1")["gradient"] is None
    assert KL_ESTIMATORS.metadata("k2")["gradient"] == "KL(pi || ref)"
    assert KL_ESTIMATORS.metadata("k3")["gradient"] == "KL(ref || pi)"


def test_kl_term_keeps_its_expectation_under_the_behaviour_policy():
    """A rollout's later updates: tokens from pi_old, the term weighted by pi / pi_old."""
    theta, ref = _categorical(4)
    exact = _closed_forms(theta, ref)
    g = torch.Generator().manual_seed(9)
    behaviour = torch.softmax(
        theta.detach() + 0.5 * torch.randn(5, generator=g, dtype=torch.float64), 0
    )
    value, gradient = _expected_term(theta, ref, "k2", sampler=behaviour)
    torch.testing.assert_close(value, exact["k2_value"])
    torch.testing.assert_close(gradient, exact["grad_kl_pi_ref"])
    value, gradient = _expected_term(theta, ref, "k3", sampler=behaviour)
    torch.testing.assert_close(value, exact["kl_pi_ref"])
    torch.testing.assert_close(gradient, exact["grad_kl_ref_pi"])


def test_per_token_kl_gives_the_partial_gradient_of_a_sequence_kl():
    """Two tokens: the summed per-token k2 term follows the gradient of the per-position
    KLs with the prefix distribution held fixed, not that of the sequence KL."""
    k = 3
    g = torch.Generator().manual_seed(5)
    first = (torch.randn(k, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    second = (torch.randn(k, k, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    ref1 = torch.softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)
    ref2 = torch.softmax(torch.randn(k, k, generator=g, dtype=torch.float64), 1)
    log_pi1, log_pi2 = torch.log_softmax(first, 0), torch.log_softmax(second, 1)
    zero = torch.zeros(1, 1, dtype=torch.float64)
    grads = [torch.zeros_like(first), torch.zeros_like(second)]
    for y1 in range(k):
        for y2 in range(k):
            log_probs = torch.stack([log_pi1[y1], log_pi2[y1, y2]]).reshape(1, 2)
            ref = torch.stack([ref1[y1], ref2[y1, y2]]).log().reshape(1, 2)
            term, _ = policy_loss(
                log_probs,
                log_probs.detach(),
                zero,
                ref_log_probs=ref,
                kl_coef=1.0,
                aggregation="sequence_sum",
                constant=1.0,  # the sum over the two tokens
            )
            weight = float(log_probs.detach().sum().exp())
            for total, grad in zip(
                grads, torch.autograd.grad(term, [first, second], retain_graph=True)
            ):
                total += weight * grad
    pi1, pi2 = log_pi1.exp().detach(), log_pi2.exp().detach()
    kl1 = (pi1 * (pi1.log() - ref1.log())).sum()
    d2 = pi2.log() - ref2.log()
    kl2 = (pi2 * d2).sum(1)  # KL of the second token given each first token
    partial_first = pi1 * (pi1.log() - ref1.log() - kl1)
    partial_second = pi1[:, None] * pi2 * (d2 - kl2[:, None])
    torch.testing.assert_close(grads[0], partial_first)
    torch.testing.assert_close(grads[1], partial_second)
    # the sequence KL's gradient has the term through the first token's probability
    full_first = partial_first + pi1 * (kl2 - (pi1 * kl2).sum())
    assert (full_first - grads[0]).abs().max() > 1e-2


def test_k1_is_refused_as_a_loss_term_and_the_default_regularizes():
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.25]]))
    adv = torch.zeros(1, 1)
    with pytest.raises(ValueError, match=r"'k1' cannot be a loss term.*zero.*'k2'.*'k3'"):
        policy_loss(logp, logp, adv, kl_estimator="k1", ref_log_probs=ref, kl_coef=0.1)
    assert kl_loss_estimators() == ["k2", "k3"]
    import inspect

    default = inspect.signature(policy_loss).parameters["kl_estimator"].default
    assert KL_ESTIMATORS.metadata(default)["gradient"] == "KL(pi || ref)"


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
