import math

import numpy as np
import pytest
import torch

from bioreason.rl.advantages import (
    ADVANTAGES,
    gae,
    get_advantage,
    grpo,
    grpo_batch_std,
    grpo_no_std,
    h_target,
    h_target_coefficients,
    ppo,
    reinforce,
    rejection_sampling,
    rloo,
    seed_grpo,
    semantic_entropy,
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
        "grpo_batch_std",
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
    # base="grpo": the assertions of the former GRPO-based default, where SE_max does
    # not depend on n_bins (4 clusters of one rollout each reach log G = log 4)
    r = _rewards(4, (3, 4))
    same = torch.full((3, 4), 0.55, dtype=torch.float64)  # one cluster: entropy 0
    assert torch.allclose(seed_grpo(r, answers=same, base="grpo"), grpo(r))
    spread = torch.tensor([[0.05, 0.35, 0.65, 0.95]] * 3, dtype=torch.float64)  # 4 clusters
    assert torch.allclose(seed_grpo(r, answers=spread, base="grpo"), torch.zeros_like(r))
    half = torch.tensor([[0.05, 0.05, 0.95, 0.95]] * 3, dtype=torch.float64)
    scale = 1 - math.log(2) / math.log(4)
    assert torch.allclose(seed_grpo(r, answers=half, base="grpo"), grpo(r) * scale)
    assert torch.allclose(seed_grpo(r, answers=spread, alpha=0.0, base="grpo"), grpo(r))
    with pytest.raises(ValueError, match="answers"):
        seed_grpo(r)
    with pytest.raises(ValueError, match="base"):
        seed_grpo(r, answers=same, base="rloo")


def test_seed_grpo_default_is_mean_centred_and_normalised_by_log_group_size():
    """The published method: (R_i - mean R) f(alpha SE / log G), whatever n_bins."""
    r = _rewards(4, (3, 4))
    same = torch.full((3, 4), 0.55, dtype=torch.float64)
    assert torch.allclose(seed_grpo(r, answers=same), grpo_no_std(r))
    spread = torch.tensor([[0.05, 0.35, 0.65, 0.95]] * 3, dtype=torch.float64)
    # two bins: two clusters of two rollouts, SE = log 2 of SE_max = log 4 (was log 2)
    coarse = seed_grpo(r, answers=spread, n_bins=2)
    assert torch.allclose(coarse, grpo_no_std(r) * (1 - math.log(2) / math.log(4)))
    coarse_grpo = seed_grpo(r, answers=spread, n_bins=2, base="grpo")
    assert torch.allclose(coarse_grpo, grpo(r) * 0.5)


def test_semantic_entropy_from_cluster_probability_mass():
    answers = torch.tensor([[0.05, 0.05, 0.95, 0.95]], dtype=torch.float64)
    # two distinct sequences: pi(0.05) = 0.3 (sampled twice), pi(0.95) = 0.1 (twice)
    log_probs = torch.tensor([[0.3, 0.3, 0.1, 0.1]], dtype=torch.float64).log()
    mass = torch.tensor([0.75, 0.25], dtype=torch.float64)
    expected = -(mass * mass.log()).sum()
    assert semantic_entropy(answers, log_probs).item() == pytest.approx(expected.item())
    assert semantic_entropy(answers).item() == pytest.approx(math.log(2))  # frequencies
    # two different sequences with the same answer both count toward its cluster
    answers = torch.tensor([[0.05, 0.06, 0.95]], dtype=torch.float64)
    log_probs = torch.tensor([[0.3, 0.3, 0.2]], dtype=torch.float64).log()
    mass = torch.tensor([0.75, 0.25], dtype=torch.float64)
    expected = -(mass * mass.log()).sum()
    assert semantic_entropy(answers, log_probs).item() == pytest.approx(expected.item())
    r = _rewards(5, (1, 3))
    scaled = seed_grpo(r, answers=answers, log_probs=log_probs)
    assert torch.allclose(scaled, grpo_no_std(r) * (1 - expected / math.log(3)))


def test_grpo_batch_std_divides_by_the_batch_std():
    r = _rewards(6, (5, 4))
    for ddof in (0, 1):
        expected = (r - r.mean(1, keepdim=True)) / (r.std(correction=ddof) + 1e-6)
        assert torch.allclose(grpo_batch_std(r, ddof=ddof), expected)
    # one scale for the whole batch: a group's advantages do not depend on its own spread
    wide = r.clone()
    wide[0] *= 10
    ratio = grpo_batch_std(wide)[1:] / grpo_batch_std(r)[1:]
    assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio))
    constant = torch.full((3, 4), 0.4, dtype=torch.float64)
    assert torch.equal(grpo_batch_std(constant), torch.zeros_like(constant))


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


def test_advantages_is_a_registry_with_metadata_and_method_options():
    from bioreason.registry import Registry, UnknownEntryError
    from bioreason.rl.advantages import parse_method, register_advantage

    assert isinstance(ADVANTAGES, Registry)
    assert ADVANTAGES.metadata("ppo")["requires_values"]
    assert ADVANTAGES.metadata("seed_grpo")["requires_log_probs"]
    assert ADVANTAGES.where(lambda meta: meta["requires_values"]) == ["ppo"]
    with pytest.raises(UnknownEntryError, match="choose one of"):
        ADVANTAGES.get("a2c")
    assert parse_method("grpo") == ("grpo", {})
    assert parse_method("h_target:log") == ("h_target", {"target": "log"})
    assert parse_method("seed_grpo:base=grpo,alpha=0.5,n_bins=4") == (
        "seed_grpo",
        {"base": "grpo", "alpha": 0.5, "n_bins": 4},
    )
    r = _rewards(7, (3, 4))
    answers = torch.tensor([[0.05, 0.05, 0.95, 0.35]] * 3, dtype=torch.float64)
    named = get_advantage("seed_grpo:base=grpo")
    assert named.options == {"base": "grpo"} and named.base_name == "seed_grpo"
    assert torch.allclose(named(r, answers=answers), seed_grpo(r, answers=answers, base="grpo"))
    with pytest.raises(TypeError, match="does not take"):
        get_advantage("grpo:alpha=1")

    @register_advantage("_test_double", theory="unbiased")
    def double(rewards, *, values=None, answers=None, log_probs=None, factor: float = 2.0):
        return rewards * factor

    try:
        assert torch.allclose(get_advantage("_test_double:factor=3")(r), 3 * r)
        with pytest.raises(ValueError, match="already registered"):
            register_advantage("_test_double")(double)
        with pytest.raises(ValueError, match="theory"):
            register_advantage("_test_bad", theory="biased")
    finally:
        ADVANTAGES.unregister("_test_double")
