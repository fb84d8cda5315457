import math

import numpy as np
import pytest
import torch

from bioreason.rl.advantages import (
    ADVANTAGES,
    gae,
    get_advantage,
    grpo,
    grpo_no_std,
    h_target,
    h_target_coefficients,
    ppo,
    reinforce,
    rejection_sampling,
    rloo,
    seed_grpo,
)
from bioreason.rl.bernstein import bernstein_eval


def _rewards(seed=0, shape=(7, 5)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_registry_names():
    assert set(ADVANTAGES) >= {
        "reinforce",
        "rloo",
        "grpo",
        "grpo_no_std",
        "ppo",
        "h_target",
        "seed_grpo",
        "rejection_sampling",
    }


def test_reinforce_rloo_grpo_no_std_closed_forms():
    r = _rewards()
    assert torch.equal(reinforce(r), r)
    g = r.shape[1]
    loo = torch.stack([r[:, i] - (r.sum(1) - r[:, i]) / (g - 1) for i in range(g)], 1)
    assert torch.allclose(rloo(r), loo)
    assert torch.allclose(grpo_no_std(r), r - r.mean(1, keepdim=True))
    assert torch.allclose(grpo_no_std(r).sum(1), torch.zeros(r.shape[0], dtype=r.dtype), atol=1e-12)


@pytest.mark.parametrize("ddof", [0, 1])
def test_grpo_matches_definition(ddof):
    r = _rewards(1)
    eps = 1e-4
    expected = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, correction=ddof) + eps)
    assert torch.allclose(grpo(r, ddof=ddof, eps=eps), expected)


@pytest.mark.parametrize("eps", [0.0, 1e-6])
def test_grpo_zero_std_group_gives_zero_not_nan(eps):
    r = torch.tensor([[math.log(0.37)] * 10, [0.0] * 9 + [1.0]], dtype=torch.float64)
    a = grpo(r, eps=eps)
    assert torch.isfinite(a).all()
    assert torch.equal(a[0], torch.zeros(10, dtype=torch.float64))
    assert a[1, -1] > 0
    with pytest.raises(ValueError, match="ddof"):
        grpo(r, ddof=10)


def test_ppo_needs_values_and_subtracts_them():
    r = _rewards(2)
    v = torch.randn(r.shape[0], 1, dtype=torch.float64)
    assert torch.allclose(ppo(r, values=v), r - v)
    with pytest.raises(ValueError, match="values"):
        ppo(r)


def test_rejection_sampling_weights_accepted_equally():
    r = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    a = rejection_sampling(r)
    assert a.tolist() == [[2.0, 0.0, 2.0, 0.0], [0.0] * 4, [1.0] * 4]


def test_h_target_binary_uses_coefficients():
    group = 6
    coefficients = h_target_coefficients("log", group)
    r = (torch.rand(50, group, generator=torch.Generator().manual_seed(3)) < 0.4).double()
    a = h_target(r, target="log")
    s = (r.sum(1, keepdim=True) - r).long()
    expected = coefficients[s] * (r - s / (group - 1))
    assert torch.allclose(a, expected)


def test_h_target_coefficients_exact_for_polynomials_and_positive_otherwise():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    # h(t) = t^3 - t/2 + t^6 / 6  ->  h'(t) = 3t^2 - 1/2 + t^5, degree 5 < M = 6
    coefficients = h_target_coefficients(
        lambda x: x**3 - x / 2 + x**6 / 6, 6
    )  # callable h, derivative by central differences
    assert torch.allclose(bernstein_eval(coefficients, t), 3 * t**2 - 0.5 + t**5, atol=1e-6)
    for name in ("log", "arcsin", "log_odds"):
        assert (h_target_coefficients(name, 10) > 0).all()
    assert torch.allclose(h_target_coefficients("identity", 8), torch.ones(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown h target"):
        h_target_coefficients("sqrt", 5)


def test_h_target_continuous_rewards_need_range():
    r = torch.tensor([[-2.0, -1.0, -3.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="reward_range"):
        h_target(r, target="log")
    a = h_target(r, target="log", reward_range=(-4.0, 0.0))
    assert torch.isfinite(a).all() and a[0, 1] > 0 > a[0, 2]


def test_seed_grpo_scales_grpo_by_semantic_entropy():
    r = _rewards(4, (3, 4))
    same = torch.full((3, 4), 0.55, dtype=torch.float64)  # one cluster: entropy 0
    assert torch.allclose(seed_grpo(r, answers=same), grpo(r))
    spread = torch.tensor([[0.05, 0.35, 0.65, 0.95]] * 3, dtype=torch.float64)  # 4 clusters
    assert torch.allclose(seed_grpo(r, answers=spread), torch.zeros_like(r))
    half = torch.tensor([[0.05, 0.05, 0.95, 0.95]] * 3, dtype=torch.float64)
    scale = 1 - math.log(2) / math.log(4)
    assert torch.allclose(seed_grpo(r, answers=half), grpo(r) * scale)
    assert torch.allclose(seed_grpo(r, answers=spread, alpha=0.0), grpo(r))
    coarse = seed_grpo(r, answers=spread, n_bins=2)  # two clusters of two
    assert torch.allclose(coarse, grpo(r) * (1 - math.log(2) / math.log(2)))
    with pytest.raises(ValueError, match="answers"):
        seed_grpo(r)


def test_get_advantage_resolution_and_errors():
    fn = get_advantage("h_target:arcsin")
    r = (torch.rand(4, 5, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    assert torch.allclose(fn(r), h_target(r, target="arcsin"))
    assert get_advantage("ppo").requires_values and get_advantage("seed_grpo").requires_answers
    assert torch.allclose(get_advantage("grpo", ddof=0)(r), grpo(r, ddof=0))
    with pytest.raises(ValueError, match="unknown advantage"):
        get_advantage("a2c")
    with pytest.raises(TypeError, match="does not take"):
        get_advantage("rloo", ddof=1)
    with pytest.raises(ValueError, match="only h_target"):
        get_advantage("grpo:log")
    with pytest.raises(ValueError, match="unknown h target"):
        get_advantage("h_target:cube")
    with pytest.raises(ValueError, match="shape"):
        grpo(torch.ones(5))


def _gae_reference(rewards, values, mask, gamma, lam):
    batch, n = rewards.shape
    out = np.zeros((batch, n))
    for b in range(batch):
        length = int(mask[b].sum())
        running = 0.0
        for t in reversed(range(length)):
            next_value = values[b, t + 1] if t + 1 < length else 0.0
            delta = rewards[b, t] + gamma * next_value - values[b, t]
            running = delta + gamma * lam * running
            out[b, t] = running
    return out


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 1.0), (0.9, 0.8), (1.0, 0.0)])
def test_gae_matches_reference_loop(gamma, lam):
    g = torch.Generator().manual_seed(5)
    rewards = torch.randn(4, 6, generator=g, dtype=torch.float64)
    values = torch.randn(4, 6, generator=g, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 1, 5])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected = _gae_reference(rewards.numpy(), values.numpy(), mask.numpy(), gamma, lam)
    assert np.allclose(advantages.numpy(), expected)
    assert torch.allclose(returns, (advantages + values) * mask)


def test_gae_outcome_reward_gamma_one_is_reward_minus_value():
    values = torch.tensor([[0.2, 0.4, 0.7]], dtype=torch.float64)
    rewards = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    advantages, _ = gae(rewards, values, gamma=1.0, lam=1.0)
    assert torch.allclose(advantages, 1.0 - values)
