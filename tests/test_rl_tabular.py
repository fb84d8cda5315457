"""The tabular policy (sampler, exact gradients) and its trainer."""

import math

import pytest
import torch

from bioreason.rl.losses import clipped_surrogate_loss
from bioreason.rl.outcomes import BernoulliOutcomes
from bioreason.rl.tabular import TabularPolicy, TabularRLConfig, TabularTrainer

GRID = torch.arange(1, 100, dtype=torch.float64) / 100


def _policy(scale: float, seed: int = 0, n_categories: int = 3) -> TabularPolicy:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n_categories, 99, generator=g, dtype=torch.float64) * scale
    return TabularPolicy(n_categories, GRID, logits)


@pytest.mark.parametrize("scale", [0.0, 2.0, 40.0])
def test_sampler_matches_policy_probabilities(scale):
    """Per cell, |empirical - pi| within 5 binomial standard errors (+ 1 count)."""
    policy = _policy(scale)
    categories = torch.tensor([0, 1, 2, 1])
    n = 60_000
    draws = policy.sample(categories, n, torch.Generator().manual_seed(1))
    assert draws.shape == (4, n) and draws.min() >= 0 and draws.max() < 99
    probs = policy.probs()
    for row, category in enumerate(categories.tolist()):
        counts = torch.bincount(draws[row], minlength=99).double()
        p = probs[category]
        se = torch.sqrt(n * p * (1 - p))
        assert ((counts - n * p).abs() <= 5 * se + 1).all()


def test_sampler_is_seeded():
    policy = _policy(1.0)
    cats = torch.arange(3)
    a = policy.sample(cats, 50, torch.Generator().manual_seed(4))
    b = policy.sample(cats, 50, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="category"):
        policy.sample(torch.tensor([3]), 2)


def test_policy_gradient_equals_autograd():
    policy = _policy(1.0, seed=2)
    g = torch.Generator().manual_seed(3)
    categories = torch.tensor([0, 2, 2, 1, 0])
    answers = policy.sample(categories, 7, g)
    weights = torch.randn(5, 7, generator=g, dtype=torch.float64)
    logits = policy.logits.detach().clone().requires_grad_(True)
    log_pi = torch.log_softmax(logits, 1)
    (weights * log_pi[categories[:, None], answers]).sum().backward()
    assert torch.allclose(policy.policy_gradient(categories, answers, weights), logits.grad)
    assert torch.allclose(
        policy.log_prob(categories, answers), log_pi[categories[:, None], answers]
    )


def test_entropy_and_kl_gradients_equal_autograd():
    policy = _policy(1.5, seed=5)
    ref = torch.randn(3, 99, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    logits = policy.logits.detach().clone().requires_grad_(True)
    log_pi = torch.log_softmax(logits, 1)
    entropy = -(log_pi.exp() * log_pi).sum(1)
    entropy.sum().backward()
    value, grad = policy.entropy_gradient()
    assert torch.allclose(value, entropy.detach()) and torch.allclose(grad, logits.grad)
    logits.grad = None
    log_pi = torch.log_softmax(logits, 1)
    kl = (log_pi.exp() * (log_pi - torch.log_softmax(ref, 1))).sum(1)
    kl.sum().backward()
    value, grad = policy.kl_gradient(ref)
    assert torch.allclose(value, kl.detach()) and torch.allclose(grad, logits.grad)


def test_predict_is_mean_of_sampled_answers():
    policy = _policy(0.0)
    prediction = policy.predict(torch.zeros(2000, dtype=torch.long), 100)
    # uniform over 0.01..0.99: mean 0.5, sd of a mean of 100 draws ~ 0.0283
    assert prediction.shape == (2000,)
    assert abs(prediction.mean().item() - 0.5) < 5 * 0.0283 / math.sqrt(2000)
    assert prediction.std().item() == pytest.approx(math.sqrt((99**2 - 1) / 12) / 100 / 10, rel=0.1)


def _trainer(method="grpo", n_questions=60, **options) -> TabularTrainer:
    g = torch.Generator().manual_seed(0)
    p_category = torch.tensor([0.2, 0.5, 0.85], dtype=torch.float64)
    categories = torch.arange(n_questions) % 3
    config = TabularRLConfig(method=method, **options)
    policy = TabularPolicy(3, GRID, torch.randn(3, 99, generator=g, dtype=torch.float64) * 0.3)
    return TabularTrainer.from_source(
        policy, categories, BernoulliOutcomes(p_category[categories]), config, outcome_seed=1
    )


def test_offline_step_gradient_equals_autograd_of_clipped_surrogate():
    trainer = _trainer(group_size=4, updates_per_rollout=3, clip_eps=0.05, lr=0.05)
    trainer.train_step()  # first update: ratio 1
    rollout = trainer._rollout
    before = trainer.policy.logits.detach().clone()
    trainer.train_step()  # second update reuses the rollout, ratio != 1
    logits = before.clone().requires_grad_(True)
    log_pi = torch.log_softmax(logits, 1)
    answers = rollout["answers"]
    log_probs = log_pi[trainer.categories[:, None], answers]
    loss, clip_fraction = clipped_surrogate_loss(
        log_probs, rollout["old_log_probs"], rollout["advantages"], clip_eps=0.05
    )
    loss.backward()
    assert clip_fraction > 0  # the clip is active in this test
    assert torch.allclose(trainer.policy.logits.grad, logits.grad)


def test_trainer_resumes_from_checkpoint(tmp_path):
    straight = _trainer("ppo", group_size=1, steps=20, checkpoint_every=10, value_lr=0.01)
    straight.train(progress=False)
    interrupted = _trainer("ppo", group_size=1, steps=20, checkpoint_every=10, value_lr=0.01)
    for _ in range(10):
        interrupted.train_step()
    torch.save(interrupted.state_dict(), tmp_path / "checkpoint.pt")
    resumed = _trainer("ppo", group_size=1, steps=20, checkpoint_every=10, value_lr=0.01)
    resumed.train(checkpoint_path=tmp_path / "checkpoint.pt", progress=False)
    assert resumed.step == 20
    assert torch.allclose(resumed.policy.logits, straight.policy.logits)
    assert torch.allclose(resumed.values, straight.values)
    other = _trainer("ppo", group_size=1, steps=30, checkpoint_every=10)
    with pytest.raises(ValueError, match="different config"):
        other.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=False))


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="unknown advantage"):
        TabularRLConfig(method="dpo")
    with pytest.raises(ValueError, match="reward"):
        TabularRLConfig(reward="hinge")
    with pytest.raises(TypeError, match="group_size"):
        TabularRLConfig.from_dict({"group_size": "ten"})
    with pytest.raises(ValueError, match="outcomes"):
        TabularTrainer(
            _policy(0.0), torch.arange(4) % 3, torch.tensor([0, 1, 2, 0]), TabularRLConfig()
        )


def test_outcome_protocol_accepts_any_sampler():
    class Recorded:
        def sample(self, questions, n, seed):
            return (questions[:, None] % 2).expand(-1, n).double()

    config = TabularRLConfig(method="rloo", group_size=2, steps=1)
    trainer = TabularTrainer.from_source(_policy(0.0), torch.arange(6) % 3, Recorded(), config)
    assert trainer.outcomes.tolist() == [0, 1, 0, 1, 0, 1]


def test_rloo_learns_category_probabilities():
    trainer = _trainer("rloo", n_questions=600, group_size=8, steps=600, lr=0.03)
    p_category = torch.tensor([0.2, 0.5, 0.85], dtype=torch.float64)
    empirical = torch.stack(
        [trainer.outcomes[trainer.categories == c].double().mean() for c in range(3)]
    )
    start = (trainer.policy.mean_answer() - empirical).abs().mean().item()
    trainer.train(progress=False)
    end = (trainer.policy.mean_answer() - empirical).abs().mean().item()
    assert start > 0.15 and end < 0.05
    assert (trainer.policy.mean_answer() - p_category).abs().max() < 0.15


def test_tabular_config_extends_the_shared_rl_config():
    from bioreason.rl.loop import RLConfig

    assert issubclass(TabularRLConfig, RLConfig)
    shared = {f.name for f in __import__("dataclasses").fields(RLConfig)}
    assert {"method", "group_size", "steps", "lr", "reward", "seed", "policy_loss"} <= shared
    config = TabularRLConfig(method="seed_grpo:base=grpo", betas=(0.8, 0.99), steps=7)
    # a round trip through a dict keeps tuples (the betas) and validates again
    assert TabularRLConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="policy_loss"):
        TabularRLConfig(policy_loss="dual_clip")


def test_seed_grpo_trainer_passes_the_rollouts_log_probs():
    trainer = _trainer("seed_grpo", group_size=4)
    seen = {}
    estimator = trainer.estimator

    def spy(rewards, **kwargs):
        seen.update(kwargs)
        return estimator(rewards, **kwargs)

    trainer.estimator = spy
    trainer.estimator.requires_values = False
    trainer.estimator.requires_answers = True
    trainer.estimator.requires_log_probs = True
    sampling_policy = TabularPolicy(3, GRID, trainer.policy.logits.detach())
    trainer.train_step()
    answers = trainer._rollout["answers"]
    # log-probabilities under the policy that sampled the rollout
    expected = sampling_policy.log_prob(trainer.categories, answers)
    assert torch.allclose(seen["log_probs"], expected)
    assert torch.allclose(seen["answers"], GRID[answers])
