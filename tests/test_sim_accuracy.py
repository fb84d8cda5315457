"""compare_to_truth: p* against p_true per group of questions (fast, no model)."""

import numpy as np
import pandas as pd
import pytest

from bioreason.sim.accuracy import METRIC_UNITS, compare_to_truth, join_truth


def _frames():
    truth = pd.DataFrame(
        {
            "condition": ["A", "A", "B", "B", "A+B", "A+B"],
            "readout": ["p0", "p1"] * 3,
            "p_star": [0.2, 0.8, 0.5, 0.5, 0.1, 0.9],
            "p_star_se": [0.01] * 6,
        }
    )
    # predictions listed in another order; A and B exact, A+B off by 0.3 towards 1/2
    predicted = pd.DataFrame(
        {
            "condition": ["A+B", "A+B", "B", "B", "A", "A"],
            "readout": ["p1", "p0", "p1", "p0", "p1", "p0"],
            "p_star": [0.6, 0.4, 0.5, 0.5, 0.8, 0.2],
            "p_star_se": [0.01] * 6,
            "p_star_spread": [0.2, 0.2, 0.1, 0.1, 0.1, 0.1],
            "group": ["heldout", "heldout", "seen", "seen", "seen", "seen"],
        }
    )
    return predicted, truth


def test_compare_to_truth_per_group():
    predicted, truth = _frames()
    table = compare_to_truth(predicted, truth, tolerance=0.1)
    assert list(table.index) == ["heldout", "seen"]
    assert set(METRIC_UNITS) >= set(table.columns)
    seen, heldout = table.loc["seen"], table.loc["heldout"]
    assert seen["mean_abs_error"] == pytest.approx(0.0)
    assert seen["fraction_off"] == 0.0
    assert seen["n_questions"] == 4 and seen["n_conditions"] == 2
    assert heldout["mean_abs_error"] == pytest.approx(0.3)
    assert heldout["fraction_off"] == 1.0
    # p* 0.4 and 0.6 fall in different bins, each 0.3 from its p_true
    assert heldout["ece_to_reference"] == pytest.approx(0.3)
    assert heldout["overconfidence"] == pytest.approx(0.1 - 0.4)  # underconfident
    assert heldout["mean_spread"] == pytest.approx(0.2)
    expected_floor = np.sqrt(2 / np.pi) * np.hypot(0.01, 0.01)
    assert heldout["noise_floor"] == pytest.approx(expected_floor)
    assert table.attrs["tolerance"] == 0.1


def test_constant_predictor_and_bootstrap():
    predicted, truth = _frames()
    constant = predicted[["condition", "readout", "group"]].assign(p_star=0.5)
    table = compare_to_truth(constant, truth, by=None, n_boot=200, seed=1)
    row = table.loc["all"]
    assert row["mean_abs_error"] == pytest.approx(np.mean([0.3, 0.3, 0, 0, 0.4, 0.4]))
    assert np.isnan(row["mean_spread"]) and np.isnan(row["noise_floor"])
    assert row["mean_abs_error_low"] <= row["mean_abs_error"] <= row["mean_abs_error_high"]
    # one bin holds every prediction: the ECE is |0.5 - mean p_true|
    assert row["ece_to_reference"] == pytest.approx(0.0)


def test_join_truth_errors():
    predicted, truth = _frames()
    joined = join_truth(predicted, truth.rename(columns={"p_star": "p_true"}))
    assert np.allclose(joined["p_true"], [0.9, 0.1, 0.5, 0.5, 0.8, 0.2])
    with pytest.raises(ValueError, match="no p_true"):
        join_truth(predicted, truth.iloc[:4])
    with pytest.raises(ValueError, match="twice"):
        join_truth(predicted, pd.concat([truth, truth]))
    with pytest.raises(ValueError, match="p_star"):
        join_truth(predicted.drop(columns="p_star"), truth)
