"""`paired_comparison`: two methods on the same questions, differenced question by question."""

import math

import numpy as np
import pandas as pd
import pytest

from bioreason.calibration import format_paired_comparison, paired_comparison


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "question_id": ["a", "b", "c"] * 2,
            "method": ["m1"] * 3 + ["m2"] * 3,
            "q": [0.2, 0.7, 0.5, 0.4, 0.9, 0.5],
            "y": [0, 1, 1, 0, 1, 1],
        }
    )


def test_differences_against_a_hand_computation():
    frame = _frame().sample(frac=1, random_state=1)  # rows shuffled: matched by id
    table = paired_comparison(frame, method_col="method", interval="normal")
    row = table.iloc[0]
    assert (row["method"], row["baseline"], row["n_questions"]) == ("m2", "m1", 3)
    # Brier per question, m2 - m1: a (0.16 - 0.04), b (0.01 - 0.09), c (0.25 - 0.25)
    d = np.array([0.12, -0.08, 0.0])
    assert row["brier_method"] == pytest.approx((0.16 + 0.01 + 0.25) / 3)
    assert row["brier_baseline"] == pytest.approx((0.04 + 0.09 + 0.25) / 3)
    assert row["brier_diff"] == pytest.approx(d.mean())
    half = 1.959964 * d.std(ddof=1) / math.sqrt(3)
    assert row["brier_diff_low"] == pytest.approx(d.mean() - half, rel=1e-5)
    assert row["brier_diff_high"] == pytest.approx(d.mean() + half, rel=1e-5)
    # log loss: a -log(0.6) + log(0.8), b -log(0.9) + log(0.7), c 0
    dl = np.array([-math.log(0.6) + math.log(0.8), -math.log(0.9) + math.log(0.7), 0.0])
    assert row["log_loss_diff"] == pytest.approx(dl.mean())
    # the baseline flips the sign
    flipped = paired_comparison(frame, method_col="method", baseline="m2", interval="normal")
    assert flipped.loc[0, "brier_diff"] == pytest.approx(-d.mean())
    assert flipped.loc[0, "brier_diff_low"] == pytest.approx(-row["brier_diff_high"])
    text = format_paired_comparison(table)
    assert "| m2 " in text and "0.0133 [" in text


def test_rows_of_one_question_are_averaged_and_invalid_answers_left_out():
    frame = _frame()
    seeds = frame.assign(q=frame["q"].where(frame["method"] == "m1", [0, 0, 0, 0.6, 0.9, 0.5]))
    both = pd.concat([frame, seeds.iloc[3:]])  # m2 answered each question twice
    row = paired_comparison(both, method_col="method", n_boot=50).iloc[0]
    # question a, m2: ((0.4)^2 + (0.6)^2) / 2 = 0.26; b 0.01; c 0.25
    assert row["brier_method"] == pytest.approx((0.26 + 0.01 + 0.25) / 3)
    invalid = _frame().astype({"q": float})
    invalid.loc[4, "q"] = np.nan  # m2 has no valid answer to b
    row = paired_comparison(invalid, method_col="method", interval="normal").iloc[0]
    assert (row["n_questions"], row["n_left_out"]) == (2, 1)
    assert row["brier_diff"] == pytest.approx((0.12 + 0.0) / 2)


def test_mismatched_ids_and_other_bad_input_are_clear_errors():
    frame = _frame()
    frame.loc[5, "question_id"] = "d"
    with pytest.raises(ValueError, match=r"same questions.*only in 'm1' \('c'\).*only in 'm2'"):
        paired_comparison(frame, method_col="method")
    with pytest.raises(ValueError, match="at least two values"):
        paired_comparison(_frame().iloc[:3], method_col="method")
    with pytest.raises(ValueError, match="baseline 'm3'.*m1, m2"):
        paired_comparison(_frame(), method_col="method", baseline="m3")
    with pytest.raises(ValueError, match="no column 'qid'"):
        paired_comparison(_frame(), method_col="method", id_col="qid")
    with pytest.raises(ValueError, match="interval must be"):
        paired_comparison(_frame(), method_col="method", interval="t")


def _simulated(n: int, rng: np.random.Generator) -> tuple[pd.DataFrame, float, float]:
    """Two fixed predictors of questions with p ~ U(0.05, 0.95); one draw of outcomes.
    Returns the frame and the expected Brier difference given the questions and its
    expected log-loss difference (outcomes averaged out)."""
    p = rng.uniform(0.05, 0.95, n)
    y = (rng.random(n) < p).astype(int)
    q1, q2 = p, np.clip(0.5 + 1.6 * (p - 0.5), 0.01, 0.99)  # calibrated, overconfident
    ids = np.arange(n)
    frame = pd.DataFrame(
        {"question_id": np.r_[ids, ids], "method": ["a"] * n + ["b"] * n,
         "q": np.r_[q1, q2], "y": np.r_[y, y]}
    )  # fmt: skip
    # E[(q - y)^2 | p] = (q - p)^2 + p (1 - p)
    brier = np.mean((q2 - p) ** 2 - (q1 - p) ** 2)

    def expected_log_loss(q):
        return -(p * np.log(q) + (1 - p) * np.log(1 - q))

    log_loss = np.mean(expected_log_loss(q2) - expected_log_loss(q1))
    return frame, float(brier), float(log_loss)


@pytest.mark.parametrize(
    "interval, reps, n_boot, least", [("normal", 300, 0, 0.9), ("bootstrap", 100, 200, 0.86)]
)
def test_interval_coverage_and_width(interval, reps, n_boot, least):
    # nominal 95%; measured about 92% at 100 questions. `least` is about 3 standard
    # errors of the simulated coverage (2 * reps intervals) below that.
    rng = np.random.default_rng(0)
    covered = {"brier": 0, "log_loss": 0}
    widths = {100: [], 400: []}
    for rep in range(reps):
        for n in (100, 400):
            frame, brier, log_loss = _simulated(n, rng)
            row = paired_comparison(
                frame, method_col="method", interval=interval, n_boot=max(n_boot, 1), seed=rep
            ).iloc[0]
            assert row["brier_diff_low"] <= row["brier_diff"] <= row["brier_diff_high"]
            widths[n].append(row["brier_diff_high"] - row["brier_diff_low"])
            covered["brier"] += row["brier_diff_low"] <= brier <= row["brier_diff_high"]
            covered["log_loss"] += row["log_loss_diff_low"] <= log_loss <= row["log_loss_diff_high"]
    for name, hits in covered.items():
        assert least <= hits / (2 * reps) <= 0.99, (name, hits / (2 * reps))
    ratio = np.mean(widths[400]) / np.mean(widths[100])
    assert 0.4 <= ratio <= 0.6  # width ~ 1 / sqrt(n): 1/2 for four times the questions
    assert np.mean(widths[100]) < 0.05  # far narrower than the Brier scores themselves
