"""Theory vs Monte Carlo: the expected update of every estimator on a tabular policy."""

import math

import pytest
import torch

from bioreason.rl.advantages import get_advantage, h_target_coefficients
from bioreason.rl.theory import (
    distorted_probability,
    estimator_coefficients,
    expected_binary_update,
    expected_scoring_update,
    grpo_coefficients,
    grpo_limit_derivative,
    kl_fixed_points,
    objective,
    objective_derivative,
    outcome_spreads,
    predict_grpo_drift,
    rejection_sampling_coefficients,
    theory_target,
)

GRID = torch.arange(1, 100, dtype=torch.float64) / 100


@pytest.mark.parametrize(("ddof", "eps"), [(1, 1e-6), (0, 0.0), (0, 0.3)])
def test_grpo_closed_form_coefficients_match_estimator(ddof, eps):
    closed = grpo_coefficients(7, ddof=ddof, eps=eps)
    generic = estimator_coefficients("grpo", 7, ddof=ddof, eps=eps)
    assert torch.allclose(closed, generic)


def test_simple_estimator_coefficients():
    m = 6
    ones = torch.ones(m, dtype=torch.float64)
    assert torch.allclose(estimator_coefficients("reinforce", m), ones)
    assert torch.allclose(estimator_coefficients("rloo", m), ones * m / (m - 1) * (m - 1) / m)
    assert torch.allclose(estimator_coefficients("ppo", m), ones)
    assert torch.allclose(estimator_coefficients("grpo_no_std", m), ones * (m - 1) / m)
    assert torch.allclose(
        estimator_coefficients("rejection_sampling", m), rejection_sampling_coefficients(m)
    )
    assert torch.allclose(
        estimator_coefficients("h_target:log", m), h_target_coefficients("log", m)
    )


def test_objectives_reinforce_and_rejection_sampling():
    p = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    m = 8
    ones = torch.ones(m, dtype=torch.float64)
    assert torch.allclose(objective(ones, p), p)  # h(t) = t
    rs = rejection_sampling_coefficients(m)
    assert torch.allclose(objective_derivative(rs, p), (1 - (1 - p) ** m) / p)
    # as M grows rejection sampling targets log t: h_M' -> 1/p
    big = rejection_sampling_coefficients(400)
    assert torch.allclose(objective_derivative(big, p) * p, torch.ones_like(p), atol=1e-6)
    # the closed-form integral is the antiderivative of h_M'
    step = 1e-5
    numeric = (objective(rs, p + step) - objective(rs, p - step)) / (2 * step)
    assert torch.allclose(numeric, objective_derivative(rs, p), rtol=1e-6)
    assert objective(rs, torch.tensor(0.0)).item() == 0.0


def test_grpo_tends_to_arcsine_objective():
    p = torch.tensor([0.1, 0.3, 0.5, 0.8], dtype=torch.float64)
    small = objective_derivative(grpo_coefficients(10, ddof=0, eps=0.0), p)
    large = objective_derivative(grpo_coefficients(4000, ddof=0, eps=0.0), p)
    limit = grpo_limit_derivative(p)
    assert torch.allclose(large, limit, rtol=0.01)
    # the error shrinks with M
    assert ((large - limit).abs() < (small - limit).abs()).all()
    # h_M of GRPO approaches 2 arcsin sqrt(p)
    # h_M of GRPO approaches 2 arcsin sqrt(p) up to an additive constant
    h = objective(grpo_coefficients(4000, ddof=0, eps=0.0), p)
    limit_h = 2 * torch.arcsin(p.sqrt())
    assert torch.allclose(h - h[2], limit_h - limit_h[2], atol=0.005)


@pytest.mark.parametrize("target", ["log", "arcsin", "log_odds"])
def test_h_target_derivative_converges(target):
    p = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    exact = {"log": 1 / p, "arcsin": grpo_limit_derivative(p), "log_odds": 1 / (p * (1 - p))}
    approx = objective_derivative(h_target_coefficients(target, 200), p)
    assert torch.allclose(approx, exact[target], rtol=0.02)


ESTIMATORS = [
    ("reinforce", {}),
    ("rloo", {}),
    ("grpo", {}),
    ("grpo", {"ddof": 0, "eps": 0.1}),
    ("grpo_no_std", {}),
    ("ppo", {}),
    ("rejection_sampling", {}),
    ("seed_grpo", {}),
    ("seed_grpo", {"base": "grpo"}),
    ("h_target:identity", {}),
    ("h_target:log", {}),
    ("h_target:arcsin", {}),
    ("h_target:log_odds", {}),
]


@pytest.mark.parametrize(("name", "options"), ESTIMATORS)
def test_monte_carlo_expected_update_matches_theory(name, options):
    """Tabular policy over 4 answers, 2 of them correct; 0/1 rewards; M = 5 rollouts."""
    g = torch.Generator().manual_seed(11)
    logits = torch.tensor([0.3, -0.4, 0.8, -0.2], dtype=torch.float64)
    probs = torch.softmax(logits, 0)
    correct = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    m, n_groups = 5, 200_000
    estimator = get_advantage(name, **options)
    actions = torch.multinomial(probs, n_groups * m, replacement=True, generator=g)
    actions = actions.view(n_groups, m)
    rewards = correct[actions]
    kwargs = {}
    if estimator.requires_values:
        kwargs["values"] = torch.full((n_groups, 1), 0.3, dtype=torch.float64)
    if estimator.requires_answers:
        kwargs["answers"] = rewards * 0.999  # yes/no answers: one cluster per outcome
    advantages = estimator(rewards, **kwargs)
    # per-group estimate of the update: (1/M) sum_i A_i (onehot(a_i) - pi)
    onehot = torch.nn.functional.one_hot(actions, 4).to(torch.float64)
    per_group = ((onehot - probs) * advantages[..., None]).mean(1)  # (n_groups, 4)
    estimate = per_group.mean(0)
    standard_error = per_group.std(0) / math.sqrt(n_groups)
    coefficients = estimator_coefficients(name, m, **options)
    theory = expected_binary_update(coefficients, probs, correct)
    assert (standard_error < 0.05 * theory.abs().max()).all(), "test has too little power"
    assert ((estimate - theory).abs() < 5 * standard_error + 1e-12).all(), (estimate, theory)


def test_theory_distinguishes_estimators():
    probs = torch.softmax(torch.tensor([0.3, -0.4, 0.8, -0.2], dtype=torch.float64), 0)
    correct = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    a = expected_binary_update(grpo_coefficients(5), probs, correct)
    b = expected_binary_update(torch.ones(5, dtype=torch.float64), probs, correct)
    assert not torch.allclose(a, b, rtol=0.1)


# ----- scoring-rule rewards ----------------------------------------------------------


def test_outcome_spreads_closed_form():
    answers = torch.tensor([0.2, 0.8], dtype=torch.float64)
    probs = torch.tensor([0.5, 0.5], dtype=torch.float64)
    sigma_1, sigma_0 = outcome_spreads(probs, answers, "log")
    half_gap = abs(math.log(0.8) - math.log(0.2)) / 2
    assert sigma_1.item() == pytest.approx(half_gap)
    assert sigma_0.item() == pytest.approx(half_gap)


def test_grpo_update_is_unbiased_update_at_distorted_probability():
    probs = torch.softmax(-((GRID - 0.6) ** 2) / (2 * 0.1**2), 0)
    p = 0.7
    sigma_1, sigma_0 = outcome_spreads(probs, GRID, "log")
    p_tilde = distorted_probability(torch.tensor(p), sigma_1, sigma_0).item()
    grpo_update = expected_scoring_update(probs, GRID, p, grpo=True)
    unbiased_at_tilde = expected_scoring_update(probs, GRID, p_tilde, grpo=False)
    scale = p / sigma_1 + (1 - p) / sigma_0
    assert torch.allclose(grpo_update, scale * unbiased_at_tilde)


@pytest.mark.parametrize("outcome", [1.0, 0.0])
def test_monte_carlo_grpo_weights_each_outcome_by_inverse_spread(outcome):
    """Large-group GRPO with the log score: E[update | y] ~= grad E S(a, y) / sigma_y."""
    g = torch.Generator().manual_seed(2)
    answers = torch.linspace(0.1, 0.9, 9, dtype=torch.float64)
    probs = torch.softmax(torch.tensor([0.1, 0.5, 0.9, 1.2, 1.0, 0.7, 0.2, -0.3, -0.6]), 0).double()
    m, n_groups = 400, 2_000
    actions = torch.multinomial(probs, n_groups * m, replacement=True, generator=g)
    actions = actions.view(n_groups, m)
    q = answers[actions]
    rewards = torch.log(q) if outcome else torch.log1p(-q)
    advantages = get_advantage("grpo", ddof=0, eps=0.0)(rewards)
    onehot = torch.nn.functional.one_hot(actions, 9).to(torch.float64)
    per_group = ((onehot - probs) * advantages[..., None]).mean(1)
    estimate = per_group.mean(0)
    standard_error = per_group.std(0) / math.sqrt(n_groups)
    p = 1.0 if outcome else 0.0
    theory = expected_scoring_update(probs, answers, p, grpo=True)
    # finite-M bias is O(1/M): allow 2% of the update's size on top of 5 standard errors
    tolerance = 5 * standard_error + 0.02 * theory.abs().max()
    assert ((estimate - theory).abs() < tolerance).all(), (estimate, theory)


def test_predict_grpo_drift_direction_and_size():
    # uniform policy on a symmetric grid: equal spreads, no distortion
    uniform = torch.full((2, 99), 1 / 99, dtype=torch.float64)
    drift = predict_grpo_drift(uniform, GRID, torch.tensor([0.3, 0.8]))
    assert torch.allclose(drift.p_tilde, torch.tensor([0.3, 0.8], dtype=torch.float64))
    # a policy concentrated near the truth is pushed outward, by ~p^2/(p^2 + (1-p)^2) - p
    p = torch.tensor([0.3, 0.7, 0.9], dtype=torch.float64)
    concentrated = torch.softmax(-((GRID[None, :] - p[:, None]) ** 2) / (2 * 0.02**2), 1)
    drift = predict_grpo_drift(concentrated, GRID, p)
    expected = p**2 / (p**2 + (1 - p) ** 2)
    assert (drift.outward > 0).all()
    assert torch.allclose(drift.p_tilde, expected, atol=0.02)
    assert torch.allclose(drift.mean_answer, p, atol=1e-3)


def test_theory_target_registry():
    probs = torch.softmax(-((GRID[None, :] - 0.7) ** 2) / (2 * 0.05**2), 1)
    p = torch.tensor([0.7], dtype=torch.float64)
    assert theory_target("rloo", probs, GRID, p).item() == pytest.approx(0.7)
    assert theory_target("grpo", probs, GRID, p).item() > 0.8
    assert math.isnan(theory_target("h_target:log", probs, GRID, p).item())


def test_theory_fixed_point_grpo_runs_to_the_edges_unbiased_stay():
    from bioreason.rl.theory import theory_fixed_point

    p = torch.tensor([0.1, 0.35, 0.6, 0.9], dtype=torch.float64)
    grpo_end = theory_fixed_point("grpo", p, GRID)
    assert (grpo_end[:2] < 0.05).all() and (grpo_end[2:] > 0.95).all()
    assert torch.allclose(theory_fixed_point("rloo", p, GRID), p)
    assert torch.isnan(theory_fixed_point("h_target:log", p, GRID)).all()


def test_batch_std_coefficients_are_flat_so_the_objective_stays_linear():
    """grpo_batch_std's scale is shared by the whole batch, so a_s is constant in s
    (the objective is p itself, like REINFORCE), unlike GRPO's per-group std."""
    for m in (4, 10):
        batch = estimator_coefficients("grpo_batch_std", m)
        assert torch.allclose(batch, batch[0].expand_as(batch))
        assert batch[0] > 0
        no_std = estimator_coefficients("grpo_no_std", m)
        assert torch.allclose(batch / batch[0], no_std / no_std[0])
        grpo = estimator_coefficients("grpo", m)
        assert not torch.allclose(grpo, grpo[0].expand_as(grpo), rtol=0.05)


def test_monte_carlo_batch_std_update_is_the_unbiased_one_over_the_batch_std():
    g = torch.Generator().manual_seed(12)
    probs = torch.softmax(torch.tensor([0.3, -0.4, 0.8, -0.2], dtype=torch.float64), 0)
    correct = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    m, n_groups = 5, 200_000
    actions = torch.multinomial(probs, n_groups * m, replacement=True, generator=g)
    actions = actions.view(n_groups, m)
    rewards = correct[actions]
    advantages = get_advantage("grpo_batch_std")(rewards)
    onehot = torch.nn.functional.one_hot(actions, 4).to(torch.float64)
    per_group = ((onehot - probs) * advantages[..., None]).mean(1)
    estimate = per_group.mean(0)
    standard_error = per_group.std(0) / math.sqrt(n_groups)
    p = float((probs * correct).sum())
    coefficients = estimator_coefficients("grpo_no_std", m) / math.sqrt(p * (1 - p))
    theory = expected_binary_update(coefficients, probs, correct)
    assert ((estimate - theory).abs() < 5 * standard_error + 1e-12).all(), (estimate, theory)


def test_each_estimator_declares_its_scoring_rule_theory():
    from bioreason.registry import UnknownEntryError
    from bioreason.rl.advantages import ADVANTAGES, register_advantage
    from bioreason.rl.theory import theory_fixed_point, theory_kind

    # every built-in estimator declares one (explicitly "none" where no theory applies)
    for name in ADVANTAGES:
        assert theory_kind(name) in ("unbiased", "group_std", "none")
    assert theory_kind("grpo") == "group_std"
    assert theory_kind("grpo_batch_std") == "unbiased"
    assert theory_kind("h_target:log") == "none"
    # SEED-GRPO's entropy scale is shared by both outcomes: its base decides
    assert theory_kind("seed_grpo") == "unbiased"
    assert theory_kind("seed_grpo:base=grpo") == "group_std"
    assert theory_kind("seed_grpo", {"base": "grpo"}) == "group_std"
    p = torch.tensor([0.1, 0.35, 0.6, 0.9], dtype=torch.float64)
    assert torch.allclose(theory_fixed_point("grpo_batch_std", p, GRID), p)
    seed_end = theory_fixed_point("seed_grpo:base=grpo", p, GRID)
    assert (seed_end[:2] < 0.05).all() and (seed_end[2:] > 0.95).all()
    probs = torch.softmax(-((GRID[None, :] - 0.7) ** 2) / (2 * 0.05**2), 1)
    # an unknown estimator is an error, not a silent NaN
    with pytest.raises(UnknownEntryError, match="choose one of"):
        theory_target("a2c", probs, GRID, torch.tensor([0.7], dtype=torch.float64))

    @register_advantage("_test_no_theory")
    def _no_theory(rewards, *, values=None, answers=None, log_probs=None):
        return rewards

    try:
        with pytest.raises(ValueError, match="declares no scoring-rule theory"):
            theory_target("_test_no_theory", probs, GRID, torch.tensor([0.7]))
    finally:
        ADVANTAGES.unregister("_test_no_theory")


def test_question_fixed_points_per_question_and_pooled():
    from bioreason.rl.theory import question_fixed_points, theory_fixed_point

    p = torch.tensor([0.1, 0.35, 0.6, 0.9], dtype=torch.float64)
    # unbiased estimators end at each question's own p, and one answer for all at mean p
    per_question, pooled = question_fixed_points("rloo", p, GRID)
    assert torch.allclose(per_question, p) and pooled.shape == ()
    assert pooled.item() == pytest.approx(p.mean().item())
    # GRPO: each question runs outward on its own side of 1/2; the pooled answer runs
    # to the side of the mean (0.4875 < 1/2: down)
    per_question, pooled = question_fixed_points("grpo", p, GRID)
    assert torch.equal(per_question, theory_fixed_point("grpo", p, GRID))
    assert (per_question[:2] < 0.05).all() and (per_question[2:] > 0.95).all()
    assert pooled.item() < 0.05
    assert pooled.item() == pytest.approx(
        theory_fixed_point("grpo", p.mean().reshape(1), GRID).item()
    )
    nan_q, nan_pooled = question_fixed_points("h_target:log", p, GRID)
    assert torch.isnan(nan_q).all() and torch.isnan(nan_pooled)
    with pytest.raises(ValueError, match="question_fixed_points: p must be a non-empty 1-d"):
        question_fixed_points("rloo", torch.tensor(0.3, dtype=torch.float64), GRID)
    with pytest.raises(ValueError, match="p"):
        question_fixed_points("rloo", torch.tensor([1.3], dtype=torch.float64), GRID)


def test_expected_scoring_update_of_a_batch_is_the_row_by_row_one():
    probs = torch.softmax(
        torch.randn(4, 99, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), 1
    )
    p = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
    for grpo in (False, True):
        batch = expected_scoring_update(probs, GRID, p, grpo=grpo)
        rows = torch.stack(
            [expected_scoring_update(probs[i], GRID, p[i], grpo=grpo) for i in range(4)]
        )
        assert torch.allclose(batch, rows, atol=1e-14)
    # one p for every row broadcasts; a p per row must match the rows
    shared = expected_scoring_update(probs, GRID, 0.3, grpo=False)
    assert torch.allclose(shared[1], expected_scoring_update(probs[1], GRID, 0.3, grpo=False))
    with pytest.raises(ValueError, match="one value or one per category"):
        expected_scoring_update(probs, GRID, p[:3], grpo=False)


def _tilted_mean(p, beta, reference):
    """The closed form: pi(a) ∝ reference(a) exp(E_p S(a, y) / beta), its mean answer."""
    score = p * torch.log(GRID) + (1 - p) * torch.log1p(-GRID)
    weights = reference * torch.exp((score - score.max()) / beta)
    return float((weights / weights.sum()) @ GRID)


@pytest.mark.parametrize("beta", [0.15, 0.5])
def test_kl_fixed_points_of_unbiased_estimators_are_the_tilted_reference(beta):
    p = torch.tensor([0.1, 0.3, 0.5, 0.67, 0.9], dtype=torch.float64)
    uniform = torch.full_like(GRID, 1 / 99)
    q = kl_fixed_points(p, GRID, beta, grpo=False)
    expected = torch.tensor([_tilted_mean(v, beta, uniform) for v in p], dtype=torch.float64)
    assert torch.allclose(q, expected, atol=1e-10)
    # it is stationary: the expected update and the KL gradient cancel on every logit
    score = p[:, None] * torch.log(GRID) + (1 - p[:, None]) * torch.log1p(-GRID)
    probs = torch.softmax(score / beta, 1)
    log_ratio = probs.log() - uniform.log()
    kl_gradient = probs * (log_ratio - (probs * log_ratio).sum(1, keepdim=True))
    update = expected_scoring_update(probs, GRID, p, grpo=False)
    assert float((update - beta * kl_gradient).abs().max()) < 1e-12
    # the KL pulls every answer toward the reference's mean 1/2, and more at a larger beta
    assert bool(((q - p).abs() <= (0.5 - p).abs() + 1e-9).all())
    assert q[2] == pytest.approx(0.5, abs=1e-9)
    # e.g. p = 0.67 at beta 0.15: a discretised Beta(5.47, 3.20), mean near 0.631
    if beta == 0.15:
        assert q[3] == pytest.approx((0.67 / beta + 1) / (1 / beta + 2), abs=2e-3)
    # a reference leaning to high answers moves the tilt with it
    leaning = torch.softmax(3 * GRID, 0)
    q_leaning = kl_fixed_points(p, GRID, beta, grpo=False, reference=leaning)
    expected = torch.tensor([_tilted_mean(v, beta, leaning) for v in p], dtype=torch.float64)
    assert torch.allclose(q_leaning, expected, atol=1e-4)
    assert bool((q_leaning > q).all())


def test_kl_fixed_points_k3_and_grpo():
    p = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    # k3 follows KL(reference || pi): stationary where pi (S - E S) = beta (pi - reference)
    q3 = kl_fixed_points(p, GRID, 0.15, grpo=False, estimator="k3", steps=8000)
    logits = torch.full((3, 99), -math.log(99), dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    for _ in range(8000):  # the same ascent written out
        update = expected_scoring_update(probs, GRID, p, grpo=False)
        logits = logits + 5.0 * (update - 0.15 * (probs - 1 / 99))
        probs = torch.softmax(logits, 1)
    assert torch.allclose(q3, probs @ GRID, atol=1e-10)
    stationary = expected_scoring_update(probs, GRID, p, grpo=False) - 0.15 * (probs - 1 / 99)
    assert float(stationary.abs().max()) < 1e-6
    # GRPO ends outward of the unbiased estimators at the same weight, 1/2 stays
    unbiased = kl_fixed_points(p, GRID, 0.15, grpo=False)
    grpo = kl_fixed_points(p, GRID, 0.15, grpo=True)
    outward = torch.sign(p - 0.5) * (grpo - unbiased)
    assert outward[0] > 0.05 and outward[2] > 0.05
    assert grpo[1] == pytest.approx(0.5, abs=1e-6)
    # no KL: the unbiased policy runs to the grid point nearest p (the log score's best)
    free = kl_fixed_points(torch.tensor([0.3], dtype=torch.float64), GRID, 0.0, grpo=False)
    assert float(free) == pytest.approx(0.3, abs=0.02)


def test_kl_fixed_points_refuses_bad_input():
    p = torch.tensor([0.3], dtype=torch.float64)
    with pytest.raises(ValueError, match="kl_coef must be a finite number >= 0"):
        kl_fixed_points(p, GRID, -0.1, grpo=False)
    with pytest.raises(ValueError, match="estimator must be 'k2' or 'k3'"):
        kl_fixed_points(p, GRID, 0.1, grpo=False, estimator="k1")
    with pytest.raises(ValueError, match="positive distribution"):
        kl_fixed_points(p, GRID, 0.1, grpo=False, reference=torch.zeros(99, dtype=torch.float64))
    with pytest.raises(ValueError, match="p must be 1-d"):
        kl_fixed_points(torch.tensor(0.3), GRID, 0.1, grpo=False)
