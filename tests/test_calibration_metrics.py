import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import accuracy_score, brier_score_loss, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from bioreason.calibration import (
    accuracy,
    adaptive_calibration_error,
    auroc,
    bootstrap_ci,
    brier_loss,
    calibration_bins,
    ece_to_reference,
    expected_calibration_error,
    log_loss,
    max_calibration_error,
    mean_absolute_error_to_reference,
    overconfidence,
    sharpness,
    summarize,
)


def _data(n=5000, seed=0, distortion=1.0):
    rng = np.random.default_rng(seed)
    p_star = rng.uniform(0, 1, n)
    outcomes = (rng.uniform(0, 1, n) < p_star).astype(float)
    logit = np.log(p_star / (1 - p_star)) * distortion
    probs = 1 / (1 + np.exp(-logit))
    return outcomes, probs, p_star


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_matches_sklearn_calibration_curve(n_bins):
    outcomes, probs, _ = _data(distortion=2.0)
    prob_true, prob_pred = calibration_curve(outcomes, probs, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0, 1, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], probs), minlength=n_bins)
    counts = counts[counts > 0]
    sk_ece = float(np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred)))
    assert expected_calibration_error(outcomes, probs, n_bins) == pytest.approx(sk_ece)
    assert max_calibration_error(outcomes, probs, n_bins) == pytest.approx(
        np.max(np.abs(prob_true - prob_pred))
    )


def test_brier_log_loss_auroc_accuracy_match_sklearn():
    outcomes, probs, _ = _data(seed=1, distortion=1.7)
    assert brier_loss(outcomes, probs) == pytest.approx(brier_score_loss(outcomes, probs))
    assert log_loss(outcomes, probs) == pytest.approx(sk_log_loss(outcomes, probs))
    assert auroc(outcomes, probs) == pytest.approx(roc_auc_score(outcomes, probs))
    tied = np.round(probs, 2)  # many ties: midranks must match sklearn
    assert auroc(outcomes, tied) == pytest.approx(roc_auc_score(outcomes, tied))
    assert accuracy(outcomes, probs) == pytest.approx(accuracy_score(outcomes, probs >= 0.5))
    assert math.isnan(auroc(np.ones(4), np.full(4, 0.3)))


def test_adaptive_ece_closed_form_and_calibrated_predictions():
    outcomes = np.array([0, 0, 1, 1, 1, 0], dtype=float)
    probs = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    # two equal-mass bins: {0.1, 0.2, 0.3} vs {0.6, 0.7, 0.9}
    expected = 0.5 * abs(0.2 - 1 / 3) + 0.5 * abs(0.7333333333 - 2 / 3)
    assert adaptive_calibration_error(outcomes, probs, n_bins=2) == pytest.approx(expected)
    bins = calibration_bins(outcomes, probs, n_bins=2, strategy="quantile")
    assert bins["count"].tolist() == [3, 3]
    # calibrated predictions: ECE shrinks like 1/sqrt(n)
    outcomes, probs, _ = _data(n=200_000, seed=2)
    assert expected_calibration_error(outcomes, probs) < 0.01
    assert adaptive_calibration_error(outcomes, probs) < 0.01
    assert max_calibration_error(outcomes, probs) >= expected_calibration_error(outcomes, probs)


def test_reference_metrics():
    _, _, p_star = _data(seed=3)
    assert mean_absolute_error_to_reference(p_star, p_star) == 0.0
    assert ece_to_reference(p_star, p_star) == 0.0
    assert overconfidence(p_star, p_star) == 0.0
    extreme = np.where(p_star > 0.5, 0.99, 0.01)
    assert overconfidence(extreme, p_star) == pytest.approx(0.49 - np.mean(np.abs(p_star - 0.5)))
    shrunk = 0.5 + 0.5 * (p_star - 0.5)
    assert overconfidence(shrunk, p_star) == pytest.approx(-0.5 * np.mean(np.abs(p_star - 0.5)))
    assert mean_absolute_error_to_reference(shrunk, p_star) == pytest.approx(
        0.5 * np.mean(np.abs(p_star - 0.5))
    )
    shifted = np.clip(p_star + 0.05, 0, 1)
    assert ece_to_reference(shifted, p_star) == pytest.approx(np.mean(shifted - p_star))


def test_sharpness_and_input_errors():
    assert sharpness(np.array([0.2, 0.8])) == pytest.approx(0.09)
    with pytest.raises(ValueError, match="same length"):
        brier_loss(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="probabilities"):
        brier_loss(np.zeros(2), np.array([0.2, 1.2]))
    with pytest.raises(ValueError, match="0/1"):
        brier_loss(np.array([0.0, 2.0]), np.array([0.2, 0.3]))


def test_bootstrap_ci_covers_and_matches_normal_theory():
    rng = np.random.default_rng(4)
    outcomes = (rng.uniform(size=4000) < 0.3).astype(float)
    probs = np.full(4000, 0.3)
    estimate, low, high = bootstrap_ci(brier_loss, outcomes, probs, n_boot=400, seed=1)
    assert low <= estimate <= high
    # Brier of a constant 0.3 forecast is a mean of iid terms: normal-theory half width
    terms = (probs - outcomes) ** 2
    half_width = 1.96 * terms.std() / math.sqrt(terms.size)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.2)
    with pytest.raises(ValueError, match="same length"):
        bootstrap_ci(brier_loss, outcomes, probs[:10])


def test_summarize_has_every_metric_and_intervals():
    outcomes, probs, p_star = _data(n=1000, seed=5)
    result = summarize(outcomes, probs, p_star=p_star, n_boot=50)
    for name in ("ece", "adaptive_ece", "mce", "brier", "log_loss", "auroc", "accuracy"):
        assert result[f"{name}_low"] <= result[name] <= result[f"{name}_high"]
    for name in ("mae_to_reference", "ece_to_reference", "overconfidence", "sharpness"):
        assert name in result


def test_right_closed_bins_match_pandas_cut():
    """``right=True`` bins exactly as pandas.cut (the Uncalibrated Reasoning code)."""
    pd = pytest.importorskip("pandas")
    grid = np.arange(0, 101) / 100  # every answer of the grid, 0 and 1 included
    rng = np.random.default_rng(7)
    probs = np.concatenate([grid, rng.uniform(size=500)])
    outcomes = (rng.uniform(size=probs.size) < probs).astype(float)
    for n_bins in (5, 10, 20):
        edges = np.linspace(0, 1, n_bins + 1)
        codes = pd.cut(probs, edges, right=True, include_lowest=True, labels=False)
        bins = calibration_bins(outcomes, probs, n_bins, right=True)
        assert bins["count"].tolist() == np.bincount(codes, minlength=n_bins).tolist()
        frame = pd.DataFrame({"y": outcomes, "q": probs, "bin": codes})
        grouped = frame.groupby("bin").agg(n=("y", "size"), y=("y", "mean"), q=("q", "mean"))
        reference = float((grouped["n"] / probs.size * (grouped["y"] - grouped["q"]).abs()).sum())
        assert expected_calibration_error(outcomes, probs, n_bins, right=True) == pytest.approx(
            reference
        )
    # the conventions differ exactly on the edges: 0.1 is in bin 0 with right=True, 1 without
    edge = np.array([0.1])
    assert calibration_bins([1.0], edge, 10, right=True)["count"][0] == 1
    assert calibration_bins([1.0], edge, 10, right=False)["count"][1] == 1
    assert expected_calibration_error(outcomes, probs, 10, right=True) != pytest.approx(
        expected_calibration_error(outcomes, probs, 10, right=False)
    )


def test_adaptive_ece_keeps_tied_predictions_in_one_bin():
    probs = np.array([0.2] * 6 + [0.8] * 4)
    outcomes = np.array([0, 1, 0, 0, 1, 0, 1, 1, 0, 1], dtype=float)
    bins = calibration_bins(outcomes, probs, n_bins=4, strategy="quantile")
    filled = bins["count"] > 0
    # each bin holds one predicted value, never a mix of 0.2 and 0.8
    assert sorted(bins["count"][filled].tolist()) == [4, 6]
    assert set(bins["mean_prob"][filled].round(6)) == {0.2, 0.8}
    expected = 0.6 * abs(0.2 - 2 / 6) + 0.4 * abs(0.8 - 3 / 4)
    assert adaptive_calibration_error(outcomes, probs, n_bins=4) == pytest.approx(expected)


def test_metric_registries_and_references():
    from bioreason.calibration import METRICS, REFERENCE_METRICS
    from bioreason.registry import Registry, UnknownEntryError

    assert isinstance(METRICS, Registry) and isinstance(REFERENCE_METRICS, Registry)
    assert METRICS["brier"] is brier_loss
    assert METRICS.where(lambda meta: meta["binned"]) == ["ece", "adaptive_ece", "mce"]
    with pytest.raises(UnknownEntryError, match="choose one of"):
        METRICS.get("brier_score")
    outcomes, probs, p_star = _data(n=2000, seed=6)
    rate = np.full(probs.size, outcomes.mean())
    result = summarize(outcomes, probs, p_star=p_star, references={"empirical": rate})
    assert result["mae_to_reference_empirical"] == pytest.approx(
        mean_absolute_error_to_reference(probs, rate)
    )
    assert result["overconfidence_empirical"] == pytest.approx(overconfidence(probs, rate))
    assert result["ece_to_reference"] == pytest.approx(ece_to_reference(probs, p_star))


# ----------------------------------------------------------------- question-level metrics


def test_overconfidence_per_question_by_hand_and_against_the_average_level_one():
    from bioreason.calibration import overconfidence_per_question

    q = np.array([0.2, 0.4, 0.9, 0.5])
    p = np.array([0.1, 0.6, 0.8, 0.5])
    # signs -1, +1, +1, 0; q - p = 0.1, -0.2, 0.1, 0.0
    assert overconfidence_per_question(q, p) == pytest.approx((-0.1 - 0.2 + 0.1 + 0) / 4)
    _, _, p_star = _data(n=2000, seed=8)
    assert overconfidence_per_question(p_star, p_star) == 0.0
    extreme = np.where(p_star > 0.5, 0.99, 0.01)  # GRPO's fixed point: every answer outward
    assert overconfidence_per_question(extreme, p_star) == pytest.approx(
        np.mean(0.49 - np.abs(p_star - 0.5))
    )
    # one answer for every question (the mean p*): calibrated in the average answer, and
    # too cautious question by question: minus the mean distance from the mean (on the
    # side of 1/2 where p* lies)
    constant = np.full_like(p_star, p_star.mean())
    assert overconfidence_per_question(constant, p_star) < -0.2
    # the two figures disagree on a predictor that swaps sides: the average-level one
    # cannot tell an answer on the wrong side of 1/2 from one on the right side
    swapped = 1 - p_star
    assert overconfidence(swapped, p_star) == pytest.approx(0.0)
    assert overconfidence_per_question(swapped, p_star) == pytest.approx(
        -2 * np.mean(np.abs(p_star - 0.5))
    )


def test_overconfidence_per_answer_is_zero_for_a_calibrated_partly_informed_predictor():
    from bioreason.calibration import overconfidence_per_answer, overconfidence_per_question

    q = np.array([0.2, 0.4, 0.9, 0.5])
    p = np.array([0.1, 0.6, 0.8, 0.5])
    # signs of q - 1/2: -1, -1, +1, 0; q - p = 0.1, -0.2, 0.1, 0.0
    assert overconfidence_per_answer(q, p) == pytest.approx((-0.1 + 0.2 + 0.1 + 0) / 4)
    # a predictor that knows only each question's group answers the group's mean p*:
    # calibrated against p* (E[p* | q] = q), so keyed on the answer it is exactly 0,
    # while keyed on p* it is negative (its answers regress toward the mean)
    rng = np.random.default_rng(3)
    group = rng.integers(0, 12, size=3000)
    p_star = 1 / (1 + np.exp(-(0.5 * group - 3 + rng.normal(0, 1.5, size=group.size))))
    means = np.bincount(group, p_star) / np.bincount(group)
    informed = means[group]
    assert len(np.unique(informed)) == 12
    assert overconfidence_per_answer(informed, p_star) == pytest.approx(0.0, abs=1e-12)
    assert overconfidence_per_question(informed, p_star) < -0.05
    # the same answers pushed outward (GRPO's direction) are positive
    pushed = np.clip(0.5 + 1.6 * (informed - 0.5), 0.01, 0.99)
    assert overconfidence_per_answer(pushed, p_star) > 0.05
    assert overconfidence_per_answer(p_star, p_star) == 0.0


def test_correlations_match_numpy_and_scipy_and_are_nan_when_undefined():
    from scipy.stats import pearsonr, spearmanr

    from bioreason.calibration import correlation_to_reference, rank_correlation_to_reference

    outcomes, probs, p_star = _data(n=500, seed=9, distortion=1.7)
    noisy = np.clip(probs + np.random.default_rng(1).normal(0, 0.1, probs.size), 0, 1)
    assert correlation_to_reference(noisy, p_star) == pytest.approx(
        pearsonr(noisy, p_star)[0], abs=1e-12
    )
    rounded = np.round(noisy, 1)  # many ties: midranks
    assert rank_correlation_to_reference(rounded, p_star) == pytest.approx(
        spearmanr(rounded, p_star)[0], abs=1e-12
    )
    # a monotone distortion keeps the ranks: Spearman 1, Pearson below 1
    assert rank_correlation_to_reference(probs, p_star) == pytest.approx(1.0)
    assert correlation_to_reference(probs, p_star) < 1.0
    assert correlation_to_reference(1 - p_star, p_star) == pytest.approx(-1.0)
    # one answer to every question: no correlation to speak of
    constant = np.full(p_star.size, 0.63)
    assert math.isnan(correlation_to_reference(constant, p_star))
    assert math.isnan(rank_correlation_to_reference(constant, p_star))
    assert math.isnan(correlation_to_reference([0.3], [0.4]))
    with pytest.raises(ValueError, match="correlation_to_reference: probs and p_star"):
        correlation_to_reference(probs, p_star[:-1])


def test_auroc_to_reference_and_prediction_sd():
    from bioreason.calibration import auroc_to_reference, prediction_sd

    p = np.array([0.2, 0.4, 0.6, 0.9])  # labels 0, 0, 1, 1
    assert auroc_to_reference(np.array([0.1, 0.2, 0.3, 0.4]), p) == 1.0
    # one positive (0.3) below one negative (0.35): 3 of 4 pairs ordered
    assert auroc_to_reference(np.array([0.1, 0.35, 0.3, 0.4]), p) == pytest.approx(0.75)
    assert auroc_to_reference(np.full(4, 0.5), p) == pytest.approx(0.5)  # ties: half
    assert math.isnan(auroc_to_reference(np.array([0.1, 0.9]), np.array([0.6, 0.7])))
    assert math.isnan(auroc_to_reference(np.array([0.1, 0.9]), np.array([0.5, 0.2])))
    assert prediction_sd(np.array([0.2, 0.8])) == pytest.approx(0.3)
    assert prediction_sd(np.full(7, 0.4)) == 0.0
    with pytest.raises(ValueError, match="prediction_sd: probs"):
        prediction_sd(np.array([0.2, 1.5]))


def test_reference_bins_by_hand():
    from bioreason.calibration import reference_bins

    p = np.array([0.05, 0.15, 0.12, 0.95, 1.0])
    q = np.array([0.30, 0.20, 0.40, 0.70, 0.90])
    bins = reference_bins(q, p, n_bins=10)
    assert bins["count"].tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins["mean_reference"][1] == pytest.approx(0.135)
    assert bins["mean_prob"][1] == pytest.approx(0.30)
    assert bins["mean_prob"][9] == pytest.approx(0.80)
    assert bins["prob_low"][1] == pytest.approx(0.25) and bins["prob_high"][1] == pytest.approx(
        0.35
    )
    assert np.isnan(bins["mean_prob"][2]) and np.isnan(bins["prob_low"][2])
    flat = reference_bins(np.full(5, 0.5), p, n_bins=2)  # one answer: a flat diagram
    assert flat["mean_prob"].tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="reference_bins: n_bins"):
        reference_bins(q, p, n_bins=0)


def test_new_reference_metrics_are_registered_and_summarized():
    from bioreason.calibration import REFERENCE_METRICS, overconfidence_per_question

    for name in (
        "overconfidence_per_question",
        "correlation_to_reference",
        "rank_correlation_to_reference",
        "auroc_to_reference",
    ):
        assert name in REFERENCE_METRICS and not REFERENCE_METRICS.metadata(name)["binned"]
    outcomes, probs, p_star = _data(n=400, seed=10, distortion=2.0)
    result = summarize(outcomes, probs, p_star=p_star, references={"p_true": p_star}, n_boot=30)
    assert result["overconfidence_per_question"] == pytest.approx(
        overconfidence_per_question(probs, p_star)
    )
    assert result["overconfidence_per_question"] > 0  # distortion 2 pushes outward
    low, high = result["correlation_to_reference_low"], result["correlation_to_reference_high"]
    assert low <= result["correlation_to_reference"] <= high
    assert "auroc_to_reference_p_true" in result
    # a constant predictor does not crash the summary: NaN correlations, NaN intervals
    constant = summarize(outcomes, np.full(400, 0.4), p_star=p_star, n_boot=10)
    assert math.isnan(constant["correlation_to_reference"])
    assert math.isnan(constant["correlation_to_reference_low"])
    assert constant["auroc_to_reference"] == pytest.approx(0.5)


# ----------------------------------------------------------------- cluster bootstrap


def test_cluster_bootstrap_is_bootstrap_ci_for_one_seed_and_no_clusters():
    from bioreason.calibration import cluster_bootstrap_ci

    outcomes, probs, _ = _data(n=300, seed=11)
    plain = bootstrap_ci(brier_loss, outcomes, probs, n_boot=60, seed=4)
    clustered = cluster_bootstrap_ci(
        lambda q, y: brier_loss(y, q), probs[:, None], outcomes, n_boot=60, seed=4
    )
    assert clustered == pytest.approx(plain, abs=0)


def test_cluster_bootstrap_width_follows_clusters_and_seeds():
    """Mean of q with a shared cluster effect c_k and a seed effect d_s: the interval's
    half width is 1.96 sqrt(var(c) / K + var(d) / S), far wider than the question-level
    bootstrap's 1.96 sd / sqrt(n) that treats the n = K m questions as independent."""
    from bioreason.calibration import cluster_bootstrap_ci

    rng = np.random.default_rng(12)
    n_clusters, size, n_seeds = 60, 8, 40
    effect = rng.normal(0, 0.1, n_clusters)
    labels = np.repeat(np.arange(n_clusters), size)
    base = 0.5 + effect[labels]
    seed_effect = rng.normal(0, 0.05, n_seeds)
    per_seed = base[:, None] + seed_effect[None, :]

    def mean(q):
        return float(np.mean(q))

    estimate, low, high = cluster_bootstrap_ci(mean, per_seed, clusters=labels, n_boot=2000, seed=0)
    assert estimate == pytest.approx(per_seed.mean())
    expected = 1.96 * math.sqrt(effect.var() / n_clusters + seed_effect.var() / n_seeds)
    # 2,000 replicates: the percentile half width is within ~5 % of its limit
    assert (high - low) / 2 == pytest.approx(expected, rel=0.15)
    one_seed = cluster_bootstrap_ci(mean, per_seed[:, :1], clusters=labels, n_boot=2000, seed=0)
    assert (one_seed[2] - one_seed[1]) / 2 == pytest.approx(
        1.96 * effect.std() / math.sqrt(n_clusters), rel=0.15
    )
    by_question = cluster_bootstrap_ci(mean, per_seed[:, :1], n_boot=2000, seed=0)
    assert (by_question[2] - by_question[1]) < 0.5 * (one_seed[2] - one_seed[1])


def test_cluster_bootstrap_errors_and_nan_replicates():
    from bioreason.calibration import cluster_bootstrap_ci, correlation_to_reference

    q = np.full((6, 2), 0.3)
    p = np.linspace(0.1, 0.9, 6)
    estimate, low, high = cluster_bootstrap_ci(correlation_to_reference, q, p, n_boot=5)
    assert math.isnan(estimate) and math.isnan(low) and math.isnan(high)
    with pytest.raises(ValueError, match="per_seed must have shape"):
        cluster_bootstrap_ci(correlation_to_reference, p, p)
    with pytest.raises(ValueError, match="one entry per question, length 6"):
        cluster_bootstrap_ci(correlation_to_reference, q, p[:4])
    with pytest.raises(ValueError, match=r"clusters must have shape \(6,\)"):
        cluster_bootstrap_ci(correlation_to_reference, q, p, clusters=[1, 2])
    with pytest.raises(ValueError, match="level must be in"):
        cluster_bootstrap_ci(correlation_to_reference, q, p, level=1.5)
    with pytest.raises(TypeError, match="metric must be callable"):
        cluster_bootstrap_ci(None, q, p)
