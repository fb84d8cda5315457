"""Bad input to the pure math (calibration metrics, advantage estimators, policy losses,
rewards, theory) never passes silently (issue 9).

Each function either raises a ValueError/TypeError that names the function, the
argument and (for per-question data) the offending index, or returns a finite,
documented answer. Regression tests first, then property-based tests (hypothesis).
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bioreason.calibration import (
    METRICS,
    REFERENCE_METRICS,
    bootstrap_ci,
    brier_loss,
    calibration_bins,
    ece_to_reference,
    expected_calibration_error,
    mean_absolute_error_to_reference,
    overconfidence,
    sharpness,
    summarize,
)
from bioreason.lm.answer_protocol import AnswerGrid, parse_answers
from bioreason.rl.advantages import (
    ADVANTAGES,
    gae,
    get_advantage,
    grpo,
    h_target_coefficients,
    ppo,
    register_advantage,
    rejection_sampling,
    seed_grpo,
    semantic_entropy,
)
from bioreason.rl.bernstein import bernstein_basis
from bioreason.rl.losses import (
    aggregate,
    clipped_surrogate_loss,
    clipped_surrogate_weights,
    entropy_from_logits,
    kl_k3,
    policy_loss,
)
from bioreason.rl.outcomes import BernoulliOutcomes
from bioreason.rl.rewards import (
    FLOOR_REWARD,
    SCORING_RULES,
    correctness_reward,
    log_score,
    score_answers,
)
from bioreason.rl.tabular import TabularPolicy
from bioreason.rl.theory import (
    expected_scoring_update,
    predict_grpo_drift,
    theory_fixed_point,
)

CLEAR = (ValueError, TypeError)


# ----- calibration metrics ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METRICS))
def test_outcome_metrics_refuse_2d_probabilities_against_flat_outcomes(name):
    """(5, 2) probabilities against 10 outcomes used to be flattened into a number."""
    outcomes = np.array([0, 1] * 5, dtype=float)
    probs = np.full((5, 2), 0.3)
    with pytest.raises(ValueError, match=rf"{METRICS[name].__name__}: probs .*1-d.*\(5, 2\)"):
        METRICS[name](outcomes, probs)


REFERENCE_CASES = {
    "nan": ([0.2, np.nan], [0.3, 0.4]),
    "empty": ([], []),
    "above one": ([0.2, 1.5], [0.3, 0.4]),
    "negative reference": ([0.2, 0.5], [-0.1, 0.4]),
    "inf": ([0.2, np.inf], [0.3, 0.4]),
    "2-d": (np.full((2, 2), 0.5), np.full(4, 0.5)),
}


@pytest.mark.parametrize("case", sorted(REFERENCE_CASES))
@pytest.mark.parametrize("name", sorted(REFERENCE_METRICS))
def test_reference_metrics_refuse_nan_empty_and_out_of_range(name, case):
    probs, reference = REFERENCE_CASES[case]
    fn = REFERENCE_METRICS[name]
    with pytest.raises(ValueError, match=fn.__name__):
        fn(np.asarray(probs, dtype=float), np.asarray(reference, dtype=float))


def test_reference_error_names_the_argument_and_index():
    with pytest.raises(ValueError, match=r"overconfidence: p_star\[1\] = -0.1"):
        overconfidence([0.2, 0.5], [0.3, -0.1])
    with pytest.raises(ValueError, match=r"mean_absolute_error_to_reference: probs .*empty"):
        mean_absolute_error_to_reference([], [])
    with pytest.raises(ValueError, match="same length"):
        ece_to_reference([0.2, 0.5], [0.3])


@pytest.mark.parametrize("probs", [[0.2, np.nan], [], [1.2, 0.3], [[0.2, 0.3]]])
def test_sharpness_refuses_nan_empty_out_of_range_and_2d(probs):
    with pytest.raises(ValueError, match="sharpness: probs"):
        sharpness(np.asarray(probs, dtype=float))


def test_metrics_refuse_non_numbers_with_a_type_error():
    with pytest.raises(TypeError, match="brier_loss: outcomes must be numbers"):
        brier_loss(["yes", "no"], [0.2, 0.3])
    with pytest.raises(TypeError, match="sharpness: probs must be numbers"):
        sharpness([0.2, None])
    with pytest.raises(TypeError, match="probs must be numbers"):
        brier_loss([0, 1], [[0.2], [0.3, 0.4]])  # ragged


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True, "10"])
def test_binned_metrics_check_n_bins(n_bins):
    outcomes, probs = [0.0, 1.0], [0.2, 0.7]
    with pytest.raises(CLEAR, match="n_bins"):
        expected_calibration_error(outcomes, probs, n_bins)
    with pytest.raises(CLEAR, match="n_bins"):
        ece_to_reference(probs, probs, n_bins)
    with pytest.raises(CLEAR, match="n_bins"):
        calibration_bins(outcomes, probs, n_bins)


def test_accuracy_threshold_must_be_a_finite_number():
    with pytest.raises(ValueError, match="threshold"):
        METRICS["accuracy"]([0.0, 1.0], [0.2, 0.7], threshold=float("nan"))


@pytest.mark.parametrize("n_boot", [0, -5])
def test_bootstrap_ci_refuses_zero_or_negative_replicates(n_boot):
    with pytest.raises(ValueError, match=f"n_boot must be an integer >= 1, got {n_boot}"):
        bootstrap_ci(brier_loss, [0.0, 1.0], [0.2, 0.7], n_boot=n_boot)


@pytest.mark.parametrize("n_boot", [2.5, "100", None, True])
def test_bootstrap_ci_refuses_non_integer_replicates(n_boot):
    with pytest.raises(TypeError, match="n_boot must be an integer"):
        bootstrap_ci(brier_loss, [0.0, 1.0], [0.2, 0.7], n_boot=n_boot)


def test_bootstrap_ci_refuses_empty_and_missing_arrays_and_non_callables():
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci(brier_loss, [], [], n_boot=10)
    with pytest.raises(ValueError, match="at least one array"):
        bootstrap_ci(brier_loss, n_boot=10)
    with pytest.raises(TypeError, match="metric must be callable"):
        bootstrap_ci("brier", [0.0], [0.2], n_boot=10)


def test_bootstrap_ci_all_nan_replicates_give_nan_bounds_without_warnings(recwarn):
    # AUROC is NaN (documented) when one class is missing: every replicate is NaN
    estimate, low, high = bootstrap_ci(METRICS["auroc"], [1.0, 1.0], [0.2, 0.7], n_boot=5)
    assert math.isnan(estimate) and math.isnan(low) and math.isnan(high)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_summarize_names_itself_and_checks_references_and_n_boot():
    outcomes, probs = [0.0, 1.0, 1.0], [0.2, 0.7, 0.9]
    with pytest.raises(ValueError, match=r"summarize: references\['empirical'\]"):
        summarize(outcomes, probs, references={"empirical": [0.2, np.nan, 0.1]})
    with pytest.raises(ValueError, match="summarize: probs and p_star must have the same"):
        summarize(outcomes, probs, p_star=[0.2, 0.3])
    with pytest.raises(ValueError, match="n_boot"):
        summarize(outcomes, probs, n_boot=-1)
    with pytest.raises(ValueError, match=r"summarize: probs .*1-d"):
        summarize([0.0] * 4, np.full((2, 2), 0.5))


# ----- advantage estimators ---------------------------------------------------------


def _inputs(name, rewards):
    """Keyword inputs an estimator requires, shaped like ``rewards``."""
    rewards = torch.as_tensor(rewards)
    meta = ADVANTAGES.metadata(name)
    kwargs = {}
    n = rewards.shape[0] if rewards.ndim else 1
    if meta["requires_values"]:
        kwargs["values"] = torch.zeros(n, 1, dtype=torch.float64)
    if meta["requires_answers"]:
        kwargs["answers"] = torch.full(rewards.shape, 0.5, dtype=torch.float64)
    if meta["requires_log_probs"]:
        kwargs["log_probs"] = torch.full(rewards.shape, -1.0, dtype=torch.float64)
    return kwargs


def _binary(n_questions=4, group_size=5):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(n_questions, group_size, generator=g) < 0.5).to(torch.float64)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_every_estimator_names_the_question_with_a_non_finite_reward(name, bad):
    """One NaN/inf reward used to turn a whole group (or batch) into NaN."""
    rewards = _binary()
    rewards[2, 3] = bad
    with pytest.raises(ValueError, match=rf"{name}: rewards of question 2 .*not finite"):
        get_advantage(name)(rewards, **_inputs(name, rewards))


def test_a_custom_registered_estimator_gets_the_same_validation():
    @register_advantage("_test_identity", theory="unbiased")
    def identity(rewards, *, values=None, answers=None, log_probs=None):
        return rewards

    try:
        rewards = _binary()
        rewards[1, 0] = math.nan
        with pytest.raises(ValueError, match="_test_identity: rewards of question 1"):
            identity(rewards)
        with pytest.raises(ValueError, match="_test_identity: rewards of question 1"):
            ADVANTAGES["_test_identity"](rewards)
    finally:
        ADVANTAGES.unregister("_test_identity")


def test_a_custom_estimator_that_returns_the_wrong_shape_is_named():
    @register_advantage("_test_mean", theory="unbiased")
    def mean(rewards, *, values=None, answers=None, log_probs=None):
        return rewards.mean(1)

    try:
        with pytest.raises(ValueError, match=r"_test_mean returned advantages of shape \(4,\)"):
            mean(_binary())
    finally:
        ADVANTAGES.unregister("_test_mean")


def test_ppo_refuses_nan_values():
    rewards = _binary()
    values = torch.zeros(4, 1, dtype=torch.float64)
    values[3, 0] = math.nan
    with pytest.raises(ValueError, match=r"ppo: values of question 3 .*not finite"):
        ppo(rewards, values=values)


@pytest.mark.parametrize("shape", [(3, 1), (4, 2), (4,), (5,), (4, 5, 1)])
def test_ppo_refuses_values_of_the_wrong_shape(shape):
    """(3, 1) raised deep inside torch; (5,) against 5 rollouts broadcast silently along
    the group axis."""
    rewards = _binary(4, 5)
    with pytest.raises(ValueError, match=r"ppo: values must have shape \(4, 1\)"):
        ppo(rewards, values=torch.zeros(shape, dtype=torch.float64))


def test_ppo_accepts_per_question_per_rollout_and_scalar_baselines():
    rewards = _binary(4, 5)
    for values in (torch.full((4, 1), 0.5), torch.full((4, 5), 0.5), torch.tensor(0.5)):
        assert torch.allclose(ppo(rewards, values=values), rewards - 0.5)


def test_rejection_sampling_requires_binary_rewards():
    rewards = _binary()
    rewards[1, 2] = 0.5
    with pytest.raises(ValueError, match=r"rejection_sampling: rewards of question 1 .*0/1"):
        rejection_sampling(rewards)


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_estimators_refuse_empty_0d_1d_and_non_numeric_rewards(name):
    fn = get_advantage(name)
    for rewards in (torch.zeros(0, 5), torch.zeros(3, 0), torch.tensor(0.5), torch.zeros(5)):
        with pytest.raises(ValueError, match=f"{name}: rewards"):
            fn(rewards, **_inputs(name, torch.zeros(1, 1)))
    with pytest.raises(TypeError, match=f"{name}: rewards must be"):
        fn([["a", "b"]], **_inputs(name, torch.zeros(1, 2)))
    with pytest.raises(TypeError, match=f"{name}: rewards must be"):
        fn(torch.ones(2, 3, dtype=torch.complex64), **_inputs(name, torch.zeros(2, 3)))


@pytest.mark.parametrize("name", ["rloo", "h_target"])
def test_leave_one_out_estimators_name_group_size_one(name):
    with pytest.raises(ValueError, match=f"{name} needs group_size >= 2, got 1"):
        get_advantage(name)(torch.ones(3, 1, dtype=torch.float64))


def test_grpo_group_of_one_says_what_to_do():
    with pytest.raises(ValueError, match="ddof=0"):
        grpo(torch.ones(3, 1, dtype=torch.float64))
    assert torch.equal(grpo(torch.ones(3, 1), ddof=0), torch.zeros(3, 1))


@pytest.mark.parametrize("options", [{"eps": math.nan}, {"ddof": 0.5}, {"eps": -1.0}])
def test_grpo_refuses_nan_eps_and_fractional_ddof(options):
    with pytest.raises(CLEAR, match="eps|ddof"):
        grpo(_binary(), **options)


def test_huge_rewards_that_overflow_raise_instead_of_returning_nan():
    rewards = torch.tensor([[1e308, -1e308, 1e308], [0.0, 1.0, 0.5]], dtype=torch.float64)
    with pytest.raises(ValueError, match="grpo: .*question 0.*not finite"):
        grpo(rewards)


def test_seed_grpo_refuses_answers_outside_unit_interval_and_nan_log_probs():
    rewards = _binary(2, 4)
    answers = torch.full((2, 4), 0.5, dtype=torch.float64)
    answers[1, 1] = 5.0
    with pytest.raises(ValueError, match=r"answers of question 1 .*\[0, 1\]"):
        seed_grpo(rewards, answers=answers)
    log_probs = torch.full((2, 4), -1.0, dtype=torch.float64)
    log_probs[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"seed_grpo: log_probs of question 0 .*not finite"):
        seed_grpo(rewards, answers=torch.full((2, 4), 0.5), log_probs=log_probs)
    with pytest.raises(ValueError, match=r"seed_grpo: answers must have shape \(2, 4\)"):
        seed_grpo(rewards, answers=torch.full((2, 3), 0.5))
    with pytest.raises(TypeError, match="n_bins"):
        seed_grpo(rewards, answers=torch.full((2, 4), 0.5), n_bins=2.5)
    with pytest.raises(ValueError, match=r"semantic_entropy: answers must have shape"):
        semantic_entropy(torch.full((4,), 0.5))


def test_h_target_names_the_question_outside_reward_range_and_checks_group_size_type():
    rewards = torch.tensor([[0.0, 1.0, 1.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="h_target: rewards of question 1 .*reward_range"):
        get_advantage("h_target")(rewards)
    with pytest.raises(TypeError, match="group_size"):
        h_target_coefficients("log", 4.5)


def test_gae_checks_shapes_and_finiteness():
    rewards = torch.zeros(2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"gae: rewards must have shape \(batch, n_tokens\)"):
        gae(torch.zeros(3), torch.zeros(3))
    bad = rewards.clone()
    bad[1, 2] = math.nan
    with pytest.raises(ValueError, match="gae: values of sequence 1 .*not finite"):
        gae(rewards, bad)
    with pytest.raises(ValueError, match=r"gae: mask must have shape \(2, 3\)"):
        gae(rewards, rewards, torch.ones(2, 2, dtype=torch.bool))


# ----- policy losses ----------------------------------------------------------------


def test_policy_loss_refuses_mismatched_log_prob_shapes():
    with pytest.raises(ValueError, match=r"old_log_probs must have the shape of log_probs"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 1))


def test_policy_loss_refuses_1d_advantages_that_would_broadcast_along_tokens():
    """(batch,) advantages against (batch, batch) tokens used to broadcast silently."""
    with pytest.raises(ValueError, match=r"advantages must have shape \(3, 3\) or \(3, 1\)"):
        policy_loss(torch.zeros(3, 3), torch.zeros(3, 3), torch.arange(3.0))


@pytest.mark.parametrize("which", ["log_probs", "old_log_probs", "advantages"])
def test_policy_loss_names_the_sequence_with_nan(which):
    inputs = {
        "log_probs": torch.zeros(3, 2),
        "old_log_probs": torch.zeros(3, 2),
        "advantages": torch.ones(3, 1),
    }
    inputs[which][1, 0] = math.nan
    with pytest.raises(ValueError, match=rf"policy_loss: {which} of sequence 1 .*not finite"):
        policy_loss(**inputs)
    with pytest.raises(ValueError, match=rf"{which} of sequence 1"):
        clipped_surrogate_loss(**inputs)


def test_policy_loss_checks_mask_clip_eps_and_coefficients():
    x = torch.zeros(2, 3)
    a = torch.ones(2, 1)
    with pytest.raises(ValueError, match=r"mask must have shape \(2, 3\)"):
        policy_loss(x, x, a, mask=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be 0/1"):
        policy_loss(x, x, a, mask=torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="clip_eps"):
        policy_loss(x, x, a, clip_eps=-0.2)
    with pytest.raises(ValueError, match="kl_coef"):
        policy_loss(x, x, a, kl_coef=math.nan, ref_log_probs=x)
    with pytest.raises(ValueError, match="ref_log_probs must have the shape of log_probs"):
        policy_loss(x, x, a, kl_coef=0.1, ref_log_probs=torch.zeros(2, 1))
    with pytest.raises(ValueError, match="constant"):
        aggregate(x, None, "sequence_sum", constant=math.nan)
    with pytest.raises(ValueError, match="kl_k3: ref_log_probs must have the shape"):
        kl_k3(x, torch.zeros(2, 1))


def test_policy_loss_that_overflows_raises_instead_of_returning_nan():
    log_probs = torch.tensor([[800.0, 0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="not finite"):
        policy_loss(log_probs, torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]), clip_eps=None)


def test_entropy_of_logits_with_masked_entries_is_finite():
    """-inf logits (a masked vocabulary) gave entropy NaN (0 * -inf)."""
    logits = torch.tensor([[0.0, 0.0, -math.inf], [1.0, -math.inf, -math.inf]])
    logits.requires_grad_(True)
    entropy = entropy_from_logits(logits)
    assert entropy[0].item() == pytest.approx(math.log(2)) and entropy[1].item() == 0.0
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="entropy_from_logits: logits"):
        entropy_from_logits(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match="entropy_from_logits: logits"):
        entropy_from_logits(torch.tensor([[-math.inf, -math.inf]]))


# ----- rewards ----------------------------------------------------------------------


@pytest.mark.parametrize("rule", sorted(SCORING_RULES))
@pytest.mark.parametrize("q", [1.5, -0.2, math.nan, math.inf])
def test_scoring_rules_refuse_answers_outside_unit_interval(rule, q):
    """log_score(1.5) was NaN, brier_reward(1.5) a plausible-looking number."""
    fn = SCORING_RULES[rule]
    with pytest.raises(ValueError, match=rf"{fn.__name__}: q\[1\] = .*\[0, 1\]"):
        fn(torch.tensor([0.3, q], dtype=torch.float64), torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("rule", sorted(SCORING_RULES))
def test_scoring_rules_refuse_non_binary_outcomes_and_mismatched_shapes(rule):
    """An outcome of 0.7 used to count as 1; shapes (3,) and (4,) raised inside torch."""
    fn = SCORING_RULES[rule]
    with pytest.raises(ValueError, match=r"y\[0\] = 0.7.*0/1"):
        fn(torch.tensor([0.3]), torch.tensor([0.7]))
    with pytest.raises(ValueError, match=r"shapes \(3,\) and \(4,\) do not broadcast"):
        fn(torch.full((3,), 0.5), torch.ones(4))


def test_log_score_of_a_certain_wrong_answer_raises():
    with pytest.raises(ValueError, match=r"log_score: q\[1\] = 0.0 .*outcome 1.*-inf"):
        log_score(torch.tensor([0.5, 0.0]), torch.tensor([1.0, 1.0]))
    assert log_score(torch.tensor([1.0]), torch.tensor([1.0])).item() == 0.0


def test_score_answers_floors_nan_and_refuses_numbers_outside_unit_interval():
    """The documented policy: NaN (an invalid answer from parse_answers) gets the floor;
    a number outside [0, 1] (e.g. a percentage 37 instead of 0.37) is a caller's error."""
    rewards, n_floored = score_answers(torch.tensor([math.nan, 0.5]), torch.tensor([1.0, 0.0]))
    assert n_floored == 1 and rewards[0].item() == FLOOR_REWARD
    with pytest.raises(ValueError, match=r"score_answers: probabilities\[0\] = 37.0"):
        score_answers(torch.tensor([37.0, 0.5]), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="floor"):
        score_answers(torch.tensor([0.5]), torch.tensor([1.0]), floor=math.nan)


def test_parse_answers_names_a_completion_that_is_not_text():
    with pytest.raises(TypeError, match=r"parse_answers: texts\[1\] is int"):
        parse_answers(["<answer>3</answer>", 42])


def test_correctness_reward_refuses_non_binary_outcomes():
    with pytest.raises(ValueError, match=r"correctness_reward: y\[0\] = 0.4"):
        correctness_reward(torch.tensor([1.0]), torch.tensor([0.4]))
    # an unparsable (NaN) answer is wrong, as documented
    assert correctness_reward(torch.tensor([math.nan]), torch.tensor([1.0])).item() == 0.0


# ----- theory, Bernstein basis, policy, outcomes -----------------------------------


def test_bernstein_basis_refuses_points_outside_unit_interval():
    """t = 1.5 gave NaN silently."""
    with pytest.raises(ValueError, match=r"bernstein_basis: t\[0\] = 1.5"):
        bernstein_basis(torch.tensor([1.5]), 3)
    with pytest.raises(TypeError, match="degree"):
        bernstein_basis(torch.tensor([0.5]), 2.5)


def test_theory_accepts_list_answers_and_checks_width():
    probs = torch.softmax(torch.zeros(2, 3, dtype=torch.float64), 1)
    drift = predict_grpo_drift(probs, [0.2, 0.5, 0.8], torch.tensor([0.3, 0.6]))
    assert torch.isfinite(drift.p_tilde).all()
    with pytest.raises(ValueError, match="width"):
        theory_fixed_point("grpo", torch.tensor([0.3]), torch.tensor([0.2, 0.5]), width=0.0)
    with pytest.raises(ValueError, match=r"p\[0\] = 1.3"):
        theory_fixed_point("grpo", torch.tensor([1.3]), torch.tensor([0.2, 0.5]))


def test_grpo_expected_update_of_a_point_mass_policy_is_zero_not_nan():
    probs = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    answers = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    update = expected_scoring_update(probs, answers, 0.3, grpo=True)
    assert torch.equal(update, torch.zeros(3, dtype=torch.float64))


def test_bernoulli_outcomes_refuse_nan_probabilities_and_bad_questions():
    with pytest.raises(ValueError, match=r"p_star\[1\] = nan"):
        BernoulliOutcomes(torch.tensor([0.2, math.nan]))
    source = BernoulliOutcomes(torch.tensor([0.2, 0.7]))
    with pytest.raises(ValueError, match=r"questions must be indices in \[0, 2\)"):
        source.sample(torch.tensor([0, 2]), 3, seed=0)
    with pytest.raises(TypeError, match="n must be an integer"):
        source.sample(torch.tensor([0, 1]), 2.5, seed=0)


def test_tabular_policy_refuses_fractional_categories_and_bad_sizes():
    policy = TabularPolicy(2, torch.tensor([0.25, 0.75]))
    with pytest.raises(TypeError, match="categories must be integer"):
        policy.sample(torch.tensor([0.0, 1.7]), 3)
    with pytest.raises(TypeError, match="n_categories must be an integer"):
        TabularPolicy(2.5, torch.tensor([0.25, 0.75]))
    with pytest.raises(ValueError, match=r"answers\[1\] = nan"):
        TabularPolicy(2, torch.tensor([0.25, math.nan]))
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        policy.sample(torch.tensor([0, 1]), 0)


def test_neighbouring_inputs_of_the_issue_name_the_option():
    """Found by probing every public function: each was a Python/torch error that did not
    name the option (or a silent answer)."""
    rewards = _binary(2, 4)
    with pytest.raises(TypeError, match="seed_grpo: alpha"):
        seed_grpo(rewards, answers=torch.full((2, 4), 0.5), alpha="x")
    with pytest.raises(TypeError, match="gae: gamma"):
        gae(torch.zeros(2, 3), torch.zeros(2, 3), gamma="a")
    with pytest.raises(ValueError, match="gae: mask must be 0/1"):  # 0.5 counted as valid
        gae(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match="bootstrap_ci: seed"):
        bootstrap_ci(brier_loss, [0.0, 1.0], [0.2, 0.3], n_boot=3, seed=-1)
    with pytest.raises(TypeError, match="bootstrap_ci: seed"):
        bootstrap_ci(brier_loss, [0.0, 1.0], [0.2, 0.3], n_boot=3, seed=1.5)
    with pytest.raises(TypeError, match="right must be True or False"):  # "x" was True
        expected_calibration_error([0.0, 1.0], [0.2, 0.3], right="x")
    with pytest.raises(TypeError, match="AnswerGrid: low must be an integer"):  # accepted
        AnswerGrid(low=1.5, high=2, scale=10)
    with pytest.raises(TypeError, match="sequence of completions"):
        parse_answers(None)


def test_kl_estimators_and_surrogate_weights_take_lists():
    """A list used to raise AttributeError ('list' object has no attribute ...)."""
    assert kl_k3([0.0], [0.0]).tolist() == [0.0]
    assert clipped_surrogate_weights([[1.0]], [[2.0]], 0.2).tolist() == [[2.0]]


def test_tabular_policy_refuses_out_of_range_answers_and_nan_weights():
    """Answer 2 of category 0 (of 2 answers) read category 1's answer 0 silently; NaN
    weights gave a NaN gradient; a wrong generator gave torch's list of signatures."""
    policy = TabularPolicy(2, torch.tensor([0.25, 0.75]))
    with pytest.raises(ValueError, match=r"log_prob: answers must be indices in \[0, 2\)"):
        policy.log_prob(torch.tensor([0]), torch.tensor([[2]]))
    with pytest.raises(ValueError, match="policy_gradient: weights of question 0"):
        policy.policy_gradient(torch.tensor([0]), torch.tensor([[1]]), torch.tensor([[math.nan]]))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        policy.sample(torch.tensor([0]), 2, generator="seed")


# ----- property-based tests ---------------------------------------------------------

PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_anything = st.floats(allow_nan=True, allow_infinity=True, width=64)
_extremes = st.sampled_from([0.0, 1.0, 0.5, 1e-300, 1 - 1e-16, -0.0])


def _arrays(elements, max_dims=2):
    return hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=6),
        elements=elements,
    )


@st.composite
def _valid_pairs(draw):
    """A 1-d outcome vector and probabilities (with 0 and 1 favoured) of one length."""
    n = draw(st.integers(1, 30))
    outcomes = draw(hnp.arrays(np.float64, n, elements=st.sampled_from([0.0, 1.0])))
    probs = draw(hnp.arrays(np.float64, n, elements=st.one_of(_extremes, st.floats(0.0, 1.0))))
    return outcomes, probs


#: metrics that are NaN on degenerate input (one class, or a constant array)
_UNDEFINED_WHEN_DEGENERATE = (
    "auroc",
    "auroc_to_reference",
    "correlation_to_reference",
    "rank_correlation_to_reference",
)


@PROPERTY
@given(outcomes=_arrays(_anything), probs=_arrays(_anything))
def test_property_metrics_raise_clearly_or_return_a_finite_number(outcomes, probs):
    for name, fn in [*METRICS.items(), *REFERENCE_METRICS.items()]:
        try:
            value = fn(outcomes, probs)
        except CLEAR as err:
            assert fn.__name__ in str(err)
            continue
        assert np.isfinite(value) or (name in _UNDEFINED_WHEN_DEGENERATE and np.isnan(value))
    try:
        value = sharpness(probs)
    except CLEAR as err:
        assert "sharpness" in str(err)
    else:
        assert 0 <= value <= 0.25


@PROPERTY
@given(pair=_valid_pairs())
def test_property_metrics_of_valid_inputs_are_finite_and_in_range(pair):
    outcomes, probs = pair
    for name in ("ece", "adaptive_ece", "mce", "brier", "accuracy"):
        assert 0 <= METRICS[name](outcomes, probs) <= 1
    assert 0 <= METRICS["log_loss"](outcomes, probs) < 40
    value = METRICS["auroc"](outcomes, probs)
    assert (0 <= value <= 1) or (np.isnan(value) and len(set(outcomes)) == 1)
    for name, fn in REFERENCE_METRICS.items():
        value = fn(probs, outcomes)
        if name in ("correlation_to_reference", "rank_correlation_to_reference"):
            # undefined exactly when one side is constant (0/0), else in [-1, 1]
            degenerate = len(set(probs)) == 1 or len(set(outcomes)) == 1
            assert np.isnan(value) == degenerate and (degenerate or -1 <= value <= 1)
        elif name == "auroc_to_reference":  # labels 1[reference > 1/2]: one class -> NaN
            assert np.isnan(value) == (len(set(outcomes)) == 1)
        else:
            assert np.isfinite(value)
    assert 0 <= sharpness(probs) <= 0.25


def _estimator_inputs(draw, name, shape, arbitrary=False):
    """Inputs an estimator requires: valid ones, or (``arbitrary``) any floats."""
    meta = ADVANTAGES.metadata(name)
    kwargs = {}
    n = shape[0] if len(shape) else 1

    def floats(low, high):
        return _anything if arbitrary else st.floats(low, high)

    if meta["requires_values"]:
        kwargs["values"] = torch.as_tensor(
            draw(hnp.arrays(np.float64, (n, 1), elements=floats(-1e6, 1e6)))
        )
    if meta["requires_answers"]:
        kwargs["answers"] = torch.as_tensor(
            draw(hnp.arrays(np.float64, shape, elements=floats(0.0, 1.0)))
        )
    if meta["requires_log_probs"]:
        kwargs["log_probs"] = torch.as_tensor(
            draw(hnp.arrays(np.float64, shape, elements=floats(-50.0, 0.0)))
        )
    return kwargs


@PROPERTY
@given(data=st.data(), rewards=_arrays(_anything, max_dims=3))
def test_property_estimators_raise_clearly_or_return_finite_advantages(data, rewards):
    for name in sorted(ADVANTAGES):
        kwargs = _estimator_inputs(data.draw, name, rewards.shape, arbitrary=True)
        try:
            advantages = get_advantage(name)(torch.as_tensor(rewards), **kwargs)
        except CLEAR as err:
            assert name in str(err)
            continue
        assert advantages.shape == rewards.shape
        assert torch.isfinite(advantages).all()


@PROPERTY
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 6), st.integers(2, 8)),
    binary=st.booleans(),
)
def test_property_estimators_of_valid_rewards_return_finite_advantages(data, shape, binary):
    elements = st.sampled_from([0.0, 1.0]) if binary else st.floats(-1e6, 1e6)
    rewards = torch.as_tensor(data.draw(hnp.arrays(np.float64, shape, elements=elements)))
    for name in sorted(ADVANTAGES):
        options = {}
        if name == "h_target" and not binary:
            options["reward_range"] = (-1e6, 1e6)
        if name == "rejection_sampling" and not binary:
            continue  # documented: 0/1 rewards only
        kwargs = _estimator_inputs(data.draw, name, shape)
        advantages = get_advantage(name, **options)(rewards, **kwargs)
        assert advantages.shape == rewards.shape
        assert torch.isfinite(advantages).all(), name


@PROPERTY
@given(q=_arrays(st.one_of(_anything, _extremes)), y=_arrays(st.sampled_from([0.0, 1.0, 0.5])))
def test_property_scoring_rules_raise_clearly_or_return_finite_rewards(q, y):
    for fn in SCORING_RULES.values():
        try:
            reward = fn(torch.as_tensor(q), torch.as_tensor(y))
        except CLEAR as err:
            assert fn.__name__ in str(err)
            continue
        assert reward.shape == torch.broadcast_shapes(q.shape, y.shape)
        assert torch.isfinite(reward).all()


@PROPERTY
@given(
    q=hnp.arrays(np.float64, st.integers(0, 20), elements=st.one_of(_extremes, _anything)),
    data=st.data(),
)
def test_property_score_answers_floors_invalid_answers(q, data):
    y = data.draw(hnp.arrays(np.float64, q.shape, elements=st.sampled_from([0.0, 1.0])))
    for rule, fn in SCORING_RULES.items():
        try:
            rewards, n_floored = score_answers(torch.as_tensor(q), torch.as_tensor(y), rule)
        except CLEAR as err:
            assert "score_answers" in str(err) or fn.__name__ in str(err)
            continue
        assert torch.isfinite(rewards).all()
        assert n_floored == int(np.isnan(q).sum())
        assert (rewards[torch.as_tensor(np.isnan(q))] == FLOOR_REWARD).all()


@PROPERTY
@given(
    shape=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    advantage_columns=st.sampled_from(["tokens", "one", "flat"]),
    data=st.data(),
)
def test_property_policy_loss_raises_clearly_or_is_finite(shape, advantage_columns, data):
    def draw(array_shape):
        elements = st.one_of(_anything, st.floats(-5.0, 0.0))
        return torch.as_tensor(data.draw(hnp.arrays(np.float64, array_shape, elements=elements)))

    advantages_shape = {"tokens": shape, "one": (shape[0], 1), "flat": (shape[0],)}
    try:
        loss, stats = policy_loss(
            draw(shape), draw(shape), draw(advantages_shape[advantage_columns])
        )
    except CLEAR as err:
        assert "policy_loss" in str(err)
        return
    assert torch.isfinite(loss) and 0 <= stats["clip_fraction"] <= 1
