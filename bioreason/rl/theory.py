"""What each estimator optimises: objectives h_M for 0/1 rewards, and GRPO's distortion
of scoring-rule rewards.

**0/1 rewards** (Davis & Recht 2025). With M rollouts, success probability ``p`` and
per-rollout weights ``Z_i = f(R_i, S_i)`` (``S_i`` the leave-one-out success count),
the expected update of the group-mean loss is

    E[(1/M) sum_i Z_i grad log pi(y_i)] = h_M'(p) grad p,
    h_M'(p) = sum_{s=0}^{M-1} a_s b_{s,M-1}(p),   a_s = f(1, s) - f(0, s).

REINFORCE and RLOO have ``a_s = 1`` (``h = t``); GRPO's ``a_s`` tend to
``1/sqrt(t(1-t))`` (``h = 2 arcsin sqrt t``); rejection sampling's give
``h_M'(p) = (1 - (1-p)^M)/p -> 1/p`` (``h = log t``).

**Scoring-rule rewards** (Bereket & Leskovec 2025). All rollouts of a question share its
outcome y. GRPO divides the group's rewards by their spread, which for large M is
``sigma_y`` = std of ``S(a, y)`` under the policy, so its expected update is
``p grad E S(a,1) / sigma_1 + (1-p) grad E S(a,0) / sigma_0``: the unbiased update at
the distorted probability ``p~ = (p/sigma_1) / (p/sigma_1 + (1-p)/sigma_0)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bioreason.registry import Registry
from bioreason.rl._checks import check_int, unit_interval
from bioreason.rl.advantages import ADVANTAGES, get_advantage, parse_method
from bioreason.rl.bernstein import bernstein_eval, bernstein_integral
from bioreason.rl.rewards import SCORING_RULES

__all__ = [
    "THEORY_TARGETS",
    "GRPODrift",
    "distorted_probability",
    "estimator_coefficients",
    "expected_binary_update",
    "expected_scoring_update",
    "grpo_coefficients",
    "grpo_limit_derivative",
    "kl_fixed_points",
    "objective",
    "objective_derivative",
    "outcome_spreads",
    "predict_grpo_drift",
    "question_fixed_points",
    "rejection_sampling_coefficients",
    "theory_fixed_point",
    "theory_kind",
    "theory_target",
]


# ----- input checks -------------------------------------------------------------------


def _check_positive(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: {name} must be a number > 0, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}: {name} must be a finite number > 0, got {value}")
    return float(value)


def _tensor(value: Any, name: str, where: str) -> Tensor:
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{where}: {name} must be real numbers ({err})") from None


def _answers(answers: Any, where: str) -> Tensor:
    answers = unit_interval(answers, "answers", where)
    if answers.ndim != 1 or answers.numel() == 0:
        raise ValueError(
            f"{where}: answers must be a non-empty 1-d tensor, shape (n_answers,), "
            f"got shape {tuple(answers.shape)}"
        )
    return answers


def _policy(probs: Any, n_answers: int, where: str) -> Tensor:
    probs = unit_interval(probs, "probs", where)
    if probs.ndim == 0 or probs.shape[-1] != n_answers:
        raise ValueError(
            f"{where}: probs must have shape (..., n_answers) with n_answers = {n_answers} "
            f"(one probability per answer), got {tuple(probs.shape)}"
        )
    return probs


# ----- 0/1 rewards: Bernstein coefficients of each estimator -------------------------


def grpo_coefficients(group_size: int, ddof: int = 1, eps: float = 1e-6) -> Tensor:
    """Closed-form ``a_s`` of GRPO for 0/1 rewards, shape (group_size,).

    With k successes among M, the group std is ``sqrt(k (M - k) / (M (M - ddof)))``;
    ``f(1, s) = (1 - (s+1)/M) / (std(s+1) + eps)`` and ``f(0, s) = -(s/M) / (std(s) + eps)``,
    each 0 for a constant group. ``ddof`` is an integer in [0, group_size) (0 for a
    group of one); ``eps`` a finite number >= 0.
    """
    where = "grpo_coefficients"
    m = check_int(group_size, "group_size", where, 1)
    ddof = check_int(ddof, "ddof", where, 0)
    if m > 1 and ddof >= m:
        raise ValueError(f"{where}: ddof must be < group_size = {m}, got {ddof}")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"{where}: eps must be a finite number >= 0, got {eps!r}")
    s = torch.arange(m, dtype=torch.float64)

    def weight(k: Tensor, reward: float) -> Tensor:
        std = torch.sqrt(k * (m - k) / (m * (m - ddof)))
        value = (reward - k / m) / (std + eps)
        return torch.where((k == 0) | (k == m), torch.zeros_like(value), value)

    return weight(s + 1, 1.0) - weight(s, 0.0)


def rejection_sampling_coefficients(group_size: int) -> Tensor:
    """``a_s = M / (s + 1)`` (each of the k = s + 1 accepted rollouts gets M/k)."""
    check_int(group_size, "group_size", "rejection_sampling_coefficients", 1)
    return group_size / torch.arange(1, group_size + 1, dtype=torch.float64)


def grpo_limit_derivative(t: Tensor) -> Tensor:
    """``1 / sqrt(t (1 - t))``, the derivative of ``2 arcsin sqrt t`` (GRPO as M -> inf).

    ``t`` in [0, 1]; the derivative has poles at the ends, so t = 0 and t = 1 give inf."""
    t = unit_interval(t, "t", "grpo_limit_derivative")
    return 1 / torch.sqrt(t * (1 - t))


def estimator_coefficients(name: str, group_size: int, **options: Any) -> Tensor:
    """``a_s = f(1, s) - f(0, s)`` of any registered estimator, read off canonical groups.

    Evaluates the estimator on one batch of the 2M groups "rollout 1 has reward r, s of
    the other M - 1 have reward 1" and takes rollout 1's advantage. Valid for
    estimators that are functions of the group's 0/1 rewards (answers are set equal to
    the rewards, so ``seed_grpo`` clusters by outcome; ``ppo`` gets a constant
    baseline). A batch-level estimator (``grpo_batch_std``) sees this canonical batch,
    whose reward std is a constant: its ``a_s`` are right up to that positive factor
    (the real factor is the std of the training batch's rewards).

    Returns
    -------
    Tensor, shape (group_size,)
    """
    estimator = get_advantage(name, **options)
    m = check_int(group_size, "group_size", "estimator_coefficients", 1)
    s = torch.arange(m)
    others = (torch.arange(m - 1)[None, :] < s[:, None]).to(torch.float64)  # (M, M-1)
    first = torch.cat([torch.ones(m, 1), torch.zeros(m, 1)]).to(torch.float64)  # r = 1, 0
    rewards = torch.cat([first, torch.cat([others, others])], 1)  # (2M, M)
    kwargs = {}
    if estimator.requires_values:
        kwargs["values"] = torch.full((2 * m, 1), 0.5, dtype=torch.float64)
    if estimator.requires_answers:
        kwargs["answers"] = rewards * 0.999  # cluster by outcome, inside [0, 1)
    z = estimator(rewards, **kwargs)[:, 0]
    return z[:m] - z[m:]


def objective_derivative(coefficients: Tensor, p: Tensor) -> Tensor:
    """``h_M'(p) = sum_s a_s b_{s, M-1}(p)``; shape of ``p``."""
    return bernstein_eval(coefficients, p)


def objective(coefficients: Tensor, p: Tensor) -> Tensor:
    """``h_M(p) = int_0^p h_M'(t) dt`` in closed form; shape of ``p``."""
    return bernstein_integral(coefficients, p)


def expected_binary_update(coefficients: Tensor, probs: Tensor, correct: Tensor) -> Tensor:
    """Theoretical expected update ``h_M'(p) grad_theta p`` for a categorical policy.

    Parameters
    ----------
    coefficients : Tensor, shape (M,)
    probs : Tensor, shape (n_answers,)
        ``softmax(theta)``.
    correct : Tensor of bool, shape (n_answers,)
        Answers with reward 1.

    Returns
    -------
    Tensor, shape (n_answers,)
        ``h_M'(p) pi_k (1[k correct] - p)``.
    """
    where = "expected_binary_update"
    probs = unit_interval(probs, "probs", where)
    correct = _tensor(correct, "correct", where)
    if probs.ndim != 1 or correct.shape != probs.shape:
        raise ValueError(
            f"{where}: probs and correct must be 1-d of one shape (n_answers,), got "
            f"{tuple(probs.shape)} and {tuple(correct.shape)}"
        )
    if not bool(((correct == 0) | (correct == 1)).all()):
        raise ValueError(f"{where}: correct must be bool (or 0/1), one per answer")
    p = (probs * correct).sum()
    return objective_derivative(coefficients, p) * probs * (correct - p)


# ----- scoring-rule rewards: GRPO's distorted probability ----------------------------


def outcome_spreads(probs: Tensor, answers: Tensor, rule: str = "log") -> tuple[Tensor, Tensor]:
    """``sigma_1, sigma_0``: std of the reward ``S(a, y)`` under the policy, per outcome.

    Parameters
    ----------
    probs : Tensor, shape (..., n_answers)
    answers : Tensor, shape (n_answers,)
        Probability of each answer.

    Returns
    -------
    sigma_1, sigma_0 : Tensor, shape (...)
    """
    score = SCORING_RULES[rule]
    answers = _answers(answers, "outcome_spreads")
    probs = _policy(probs, answers.numel(), "outcome_spreads")
    spreads = []
    for outcome in (1.0, 0.0):
        reward = score(answers, torch.full_like(answers, outcome))
        mean = probs @ reward
        var = (probs * (reward - mean[..., None]) ** 2).sum(-1)
        spreads.append(var.clamp(min=0).sqrt())
    return spreads[0], spreads[1]


def distorted_probability(p: Tensor, sigma_1: Tensor, sigma_0: Tensor) -> Tensor:
    """``p~ = (p / sigma_1) / (p / sigma_1 + (1 - p) / sigma_0)``.

    Written as ``p sigma_0 / (p sigma_0 + (1 - p) sigma_1)`` so that a zero spread is safe
    when the other one is not (both zero: ``p``). ``p`` in [0, 1]; spreads finite, >= 0.
    """
    where = "distorted_probability"
    p = unit_interval(p, "p", where)
    sigma_1 = _tensor(sigma_1, "sigma_1", where)
    sigma_0 = _tensor(sigma_0, "sigma_0", where)
    for name, sigma in (("sigma_1", sigma_1), ("sigma_0", sigma_0)):
        if not bool((torch.isfinite(sigma) & (sigma >= 0)).all()):
            raise ValueError(f"{where}: {name} must be finite and >= 0")
    num = p * sigma_0
    den = num + (1 - p) * sigma_1
    return torch.where(den > 0, num / den.clamp(min=1e-300), p)


def expected_scoring_update(
    probs: Tensor, answers: Tensor, p: float | Tensor, rule: str = "log", *, grpo: bool
) -> Tensor:
    """Large-M expected update on the logits of one category for a scoring-rule reward.

    Unbiased estimators (``grpo=False``): ``p g_1 + (1 - p) g_0`` with
    ``g_y = grad_theta E_pi S(a, y) = pi (S(., y) - E_pi S(a, y))``. GRPO (``grpo=True``)
    divides ``g_y`` by ``sigma_y``; where ``sigma_y = 0`` (a policy whose reward under y
    is constant) ``g_y = 0`` too and GRPO's update is 0, as its advantages are for a
    constant group.

    Parameters
    ----------
    probs : Tensor, shape (n_answers,) or (n_categories, n_answers)
        One policy, or one per category.
    answers : Tensor, shape (n_answers,)
    p : float or Tensor, shape () or (n_categories,)
        The outcome probability (one per category with a batch of policies).

    Returns
    -------
    Tensor, the shape of ``probs``
    """
    where = "expected_scoring_update"
    score = SCORING_RULES[rule]
    answers = _answers(answers, where)
    probs = _policy(probs, answers.numel(), where)
    p = unit_interval(p, "p", where)
    batch = probs.shape[:-1]
    if probs.ndim > 2 or (p.ndim > 0 and (p.ndim > 1 or tuple(p.shape) != tuple(batch))):
        raise ValueError(
            f"{where}: probs must have shape (n_answers,) or (n_categories, n_answers) and "
            f"p one value or one per category, got {tuple(probs.shape)} and {tuple(p.shape)}"
        )
    p = p[..., None]
    sigma_1, sigma_0 = outcome_spreads(probs, answers, rule)
    update = torch.zeros_like(probs)
    for outcome, weight, sigma in ((1.0, p, sigma_1), (0.0, 1 - p, sigma_0)):
        reward = score(answers, torch.full_like(answers, outcome))
        grad = probs * (reward - (probs @ reward)[..., None])
        if grpo:
            sigma = sigma[..., None]
            safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
            grad = torch.where(sigma > 0, grad / safe, torch.zeros_like(grad))
        update = update + weight * grad
    return update


def kl_fixed_points(
    p: Tensor,
    answers: Tensor,
    kl_coef: float,
    *,
    grpo: bool,
    rule: str = "log",
    estimator: str = "k2",
    reference: Tensor | None = None,
    steps: int = 4000,
    step_size: float = 5.0,
) -> Tensor:
    """Where a tabular policy ends under a scoring-rule reward and a KL term to a
    reference: the mean answer of each question's stationary policy.

    Each question has its own softmax policy over the answer grid, started at the
    reference, and follows the expected update of :func:`expected_scoring_update` minus
    ``kl_coef`` times the KL term's gradient on the logits, by ``steps`` ascent steps of
    ``step_size``. Under on-policy sampling the k2 estimator's gradient is that of
    KL(pi || reference), ``pi (log(pi / reference) - KL)``; k3's is that of
    KL(reference || pi), ``pi - reference``.

    For an unbiased estimator with k2 the stationary policy is the reference tilted by
    the expected score, ``pi(a) ∝ reference(a) exp(E_p S(a, y) / kl_coef)``, returned in
    closed form: with the log score and a uniform reference a discretised
    Beta(p / kl_coef + 1, (1 - p) / kl_coef + 1), whose mean lies between p and the
    reference's mean. GRPO's update is divided by each outcome's reward spread, which
    shrinks as the policy concentrates, so the KL term holds it less and it ends
    further out; where a spread reaches 0 its update stops (see
    :func:`expected_scoring_update`).

    Parameters
    ----------
    p : Tensor, shape (n_questions,)
        Each question's outcome probability.
    answers : Tensor, shape (n_answers,)
        The answer grid's probabilities.
    kl_coef : float
        The KL weight (>= 0; 0: no KL).
    grpo : bool
        GRPO's per-outcome normalisation (True) or an unbiased estimator (False).
    rule : str
        The reward's scoring rule.
    estimator : {"k2", "k3"}
        The KL estimator of the loss (``LMRLConfig.kl_estimator``).
    reference : Tensor, shape (n_answers,), optional
        The reference policy (the warm start); default uniform over the grid.
    steps, step_size
        Ascent steps on the logits and their size.

    Returns
    -------
    Tensor, shape (n_questions,)
        The mean answer of each stationary policy.

    Raises
    ------
    ValueError, TypeError
        ``p`` not 1-d in [0, 1], ``kl_coef`` negative or not finite, an estimator
        other than k2 / k3, a reference that is not a positive distribution over the
        grid, ``steps`` < 1 or ``step_size`` not > 0.
    """
    where = "kl_fixed_points"
    p = unit_interval(p, "p", where).to(torch.float64)
    if p.ndim != 1:
        raise ValueError(f"{where}: p must be 1-d, shape (n_questions,), got {tuple(p.shape)}")
    answers = _answers(answers, where).to(torch.float64)
    if isinstance(kl_coef, bool) or not math.isfinite(float(kl_coef)) or float(kl_coef) < 0:
        raise ValueError(f"{where}: kl_coef must be a finite number >= 0, got {kl_coef!r}")
    if estimator not in ("k2", "k3"):
        raise ValueError(f"{where}: estimator must be 'k2' or 'k3', got {estimator!r}")
    step_size = _check_positive(step_size, "step_size", where)
    steps = check_int(steps, "steps", where, 1)
    if reference is None:
        reference = torch.full_like(answers, 1.0 / answers.numel())
    reference = _policy(reference, answers.numel(), where).to(torch.float64)
    if reference.ndim != 1 or not bool((reference > 0).all()):
        raise ValueError(f"{where}: reference must be a positive distribution over the grid")
    log_reference = reference.log()
    if not grpo and estimator == "k2" and kl_coef > 0:
        # the stationary policy in closed form: the reference tilted by the expected score
        score = SCORING_RULES[rule]
        expected = (
            p[:, None] * score(answers, torch.ones_like(answers))[None]
            + (1 - p[:, None]) * score(answers, torch.zeros_like(answers))[None]
        )
        return torch.softmax(log_reference + expected / float(kl_coef), -1) @ answers
    logits = log_reference.expand(p.numel(), -1).clone()
    for _ in range(steps):
        probs = torch.softmax(logits, -1)
        if estimator == "k2":
            log_ratio = torch.log_softmax(logits, -1) - log_reference
            kl_gradient = probs * (log_ratio - (probs * log_ratio).sum(-1, keepdim=True))
        else:
            kl_gradient = probs - reference
        update = expected_scoring_update(probs, answers, p, rule, grpo=grpo)
        logits = logits + step_size * (update - float(kl_coef) * kl_gradient)
    return torch.softmax(logits, -1) @ answers


@dataclass(frozen=True)
class GRPODrift:
    """Prediction of where GRPO pulls a policy that should answer ``p``.

    Attributes (all shape (n_categories,))
    ----------
    p : true probability.
    mean_answer : the policy's current mean answer.
    sigma_1, sigma_0 : reward spreads under each outcome.
    p_tilde : the probability GRPO's update is unbiased for (its target).
    drift : ``p_tilde - p``; positive means pushed up.
    outward : ``sign(p - 1/2) (p_tilde - p)``; positive means pushed toward 0/1
        (overconfidence).
    """

    p: Tensor
    mean_answer: Tensor
    sigma_1: Tensor
    sigma_0: Tensor
    p_tilde: Tensor
    drift: Tensor
    outward: Tensor


def predict_grpo_drift(probs: Tensor, answers: Tensor, p: Tensor, rule: str = "log") -> GRPODrift:
    """Direction and size of GRPO's drift for a tabular policy and true probabilities.

    Parameters
    ----------
    probs : Tensor, shape (n_categories, n_answers)
        The policy.
    answers : Tensor, shape (n_answers,)
    p : Tensor, shape (n_categories,)
        True outcome probability per category.

    Notes
    -----
    For the log score and a policy concentrated near q, ``sigma_1 ~ spread / q`` and
    ``sigma_0 ~ spread / (1 - q)``, so ``p~ = p q / (p q + (1 - p)(1 - q))``: at q = p,
    ``p~ = p^2 / (p^2 + (1-p)^2)`` lies further from 1/2 than p, and iterating pushes
    the answer to the edge of the grid (odds multiply by odds(p) each round).
    """
    where = "predict_grpo_drift"
    answers = _answers(answers, where)
    probs = _policy(probs, answers.numel(), where)
    p = unit_interval(p, "p", where)
    if probs.ndim != 2 or p.shape not in ((), (probs.shape[0],)):
        raise ValueError(
            f"{where}: probs must have shape (n_categories, n_answers) and p shape "
            f"(n_categories,), got {tuple(probs.shape)} and {tuple(p.shape)}"
        )
    sigma_1, sigma_0 = outcome_spreads(probs, answers, rule)
    p_tilde = distorted_probability(p, sigma_1, sigma_0)
    drift = p_tilde - p
    return GRPODrift(
        p=p,
        mean_answer=probs @ answers,
        sigma_1=sigma_1,
        sigma_0=sigma_0,
        p_tilde=p_tilde,
        drift=drift,
        outward=torch.sign(p - 0.5) * drift,
    )


def _unbiased_target(probs: Tensor, answers: Tensor, p: Tensor, rule: str) -> Tensor:
    return torch.as_tensor(p, dtype=torch.float64).clone()


def _group_std_target(probs: Tensor, answers: Tensor, p: Tensor, rule: str) -> Tensor:
    return predict_grpo_drift(probs, answers, p, rule).p_tilde


def _no_theory(probs: Tensor, answers: Tensor, p: Tensor, rule: str) -> Tensor:
    return torch.full_like(torch.as_tensor(p, dtype=torch.float64), math.nan)


#: For a proper scoring-rule reward: the probability an estimator's expected update is
#: unbiased for, by the ``theory`` each estimator declares where it is registered
#: (:func:`bioreason.rl.advantages.register_advantage`). ``unbiased``: the truth
#: (a baseline, or a scale shared by both outcomes, changes nothing in expectation);
#: ``group_std``: GRPO's distorted probability p~ (each outcome's reward divided by its
#: own spread); ``none``: no scoring-rule theory (NaN, e.g. the h-targeted estimator).
THEORY_TARGETS: Registry[Callable[[Tensor, Tensor, Tensor, str], Tensor]] = Registry(
    "scoring-rule theory"
)
THEORY_TARGETS.register("unbiased", _unbiased_target)
THEORY_TARGETS.register("group_std", _group_std_target)
THEORY_TARGETS.register("none", _no_theory)


def theory_kind(method: str, options: dict[str, Any] | None = None) -> str:
    """Which scoring-rule theory ``method`` (with ``options``) declared.

    Raises
    ------
    ValueError
        For an unknown estimator, or one registered without a ``theory``.
    """
    if not isinstance(method, str) or not method:
        raise TypeError(f"theory_kind: method must be a non-empty string, got {method!r}")
    base = method.partition(":")[0]
    declared = ADVANTAGES.metadata(base)["theory"]  # an unknown name raises, listing all
    if callable(declared):
        declared = declared({**parse_method(method)[1], **(options or {})})
    if declared is None:
        raise ValueError(
            f"advantage estimator {base!r} declares no scoring-rule theory; register it "
            f"with theory= one of {list(THEORY_TARGETS)} ('none' if no theory applies)"
        )
    if declared not in THEORY_TARGETS:
        raise ValueError(
            f"advantage estimator {base!r} declares theory {declared!r}; "
            f"choose one of {list(THEORY_TARGETS)}"
        )
    return declared


def theory_target(
    method: str,
    probs: Tensor,
    answers: Tensor,
    p: Tensor,
    rule: str = "log",
    options: dict[str, Any] | None = None,
) -> Tensor:
    """The probability ``method``'s update targets, per category.

    Parameters
    ----------
    method : str
        Registry name of the estimator (``h_target:<target>`` included).
    probs : Tensor, shape (n_categories, n_answers)
        The policy.
    answers : Tensor, shape (n_answers,)
    p : Tensor, shape (n_categories,)
        True outcome probability per category.
    rule : str
        Scoring rule of the reward.
    options : dict, optional
        The estimator's options (SEED-GRPO's theory depends on its ``base``).

    Returns
    -------
    Tensor, shape (n_categories,)
        NaN where the estimator declared ``theory="none"``.
    """
    kind = theory_kind(method, options)
    return THEORY_TARGETS[kind](probs, answers, p, rule)


def theory_fixed_point(
    method: str,
    p: Tensor,
    answers: Tensor,
    rule: str = "log",
    width: float = 0.02,
    max_rounds: int = 5000,
    tolerance: float = 1e-6,
    options: dict[str, Any] | None = None,
) -> Tensor:
    """Where the theory says a method's answers end up, starting calibrated.

    Start from a policy concentrated at ``q = p`` (a discretised Gaussian of ``width`` on
    the answer grid), move ``q`` to the method's target (:func:`theory_target`) for that
    policy, and repeat until ``q`` stops moving. Unbiased estimators stay at ``p``; for
    GRPO with the log score each round multiplies the odds of q by the odds of p, so q
    runs to the edge of the grid.

    Returns
    -------
    Tensor, shape of ``p``
        The fixed point, clipped to the grid's range.

    Raises
    ------
    ValueError, TypeError
        ``p`` or ``answers`` outside [0, 1], ``width``/``tolerance`` not finite and
        > 0, ``max_rounds`` not an integer >= 1.
    """
    where = "theory_fixed_point"
    p = unit_interval(p, "p", where)
    answers = _answers(answers, where)
    width = _check_positive(width, "width", where)
    tolerance = _check_positive(tolerance, "tolerance", where)
    max_rounds = check_int(max_rounds, "max_rounds", where, 1)
    low, high = float(answers.min()), float(answers.max())
    q = p.clamp(low, high)
    for _ in range(max_rounds):
        probs = torch.softmax(-((answers[None, :] - q[:, None]) ** 2) / (2 * width**2), 1)
        target = theory_target(method, probs, answers, p, rule, options)
        if bool(torch.isnan(target).any()):
            return target
        new_q = target.clamp(low, high)
        if bool(((new_q - q).abs() < tolerance).all()):
            return new_q
        q = new_q
    return q


def question_fixed_points(
    method: str,
    p: Tensor,
    answers: Tensor,
    rule: str = "log",
    *,
    width: float = 0.02,
    max_rounds: int = 5000,
    tolerance: float = 1e-6,
    options: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor]:
    """The theory's end state of each question, and of one answer for all of them.

    What a run's final answers are compared with: :func:`theory_fixed_point` at each
    question's own probability (a policy that answers question by question ends there),
    and at the mean probability (a policy that gives one answer to every question sees
    the pooled outcome rate, so the theory's end state for it is the fixed point at the
    mean).

    Parameters
    ----------
    method : str
        Registry name of the estimator (options included, e.g. ``seed_grpo:base=grpo``).
    p : Tensor, shape (n_questions,)
        Each question's probability (p*).
    answers : Tensor, shape (n_answers,)
        The answer grid's probabilities.
    rule, width, max_rounds, tolerance, options
        As :func:`theory_fixed_point`.

    Returns
    -------
    per_question : Tensor, shape (n_questions,)
    pooled : Tensor, shape ()
        The fixed point at ``p.mean()``. Both NaN where the estimator declares no
        theory (``theory="none"``).

    Raises
    ------
    ValueError, TypeError
        As :func:`theory_fixed_point`, and ``p`` not 1-d with at least one question.
    """
    where = "question_fixed_points"
    p = unit_interval(p, "p", where)
    if p.ndim != 1 or p.numel() == 0:
        raise ValueError(
            f"{where}: p must be a non-empty 1-d tensor, shape (n_questions,), "
            f"got shape {tuple(p.shape)}"
        )
    settings = {
        "width": width,
        "max_rounds": max_rounds,
        "tolerance": tolerance,
        "options": options,
    }
    per_question = theory_fixed_point(method, p, answers, rule, **settings)
    pooled = theory_fixed_point(method, p.mean().reshape(1), answers, rule, **settings)
    return per_question, pooled[0]
