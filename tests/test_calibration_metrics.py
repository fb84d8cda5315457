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
