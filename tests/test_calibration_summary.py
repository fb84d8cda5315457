"""The calibration stage's summary on synthetic prediction tables: question-level figures
and intervals over seeds and conditions, for a policy that answers question by question,
one pushed outward past p*, and one that gives one answer to every question."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from bioreason.calibration import (
    correlation_to_reference,
    mean_absolute_error_to_reference,
    overconfidence_per_question,
)
from bioreason.pipelines.calibration_stage import HEADLINE_METRICS, finding, headline_rows
from bioreason.pipelines.headline import print_headline
from bioreason.pipelines.lm_runs import (
    SUMMARY_METRICS,
    add_fixed_points,
    interval_coverage,
    markdown_table,
    summarize_methods,
)
from bioreason.rl.theory import kl_fixed_points

N_CONDITIONS, N_READOUTS, SEEDS = 24, 6, (0, 1, 2)


def _questions(seed: int = 0) -> pd.DataFrame:
    """Test questions: p* from a condition effect and a readout effect, one outcome each."""
    rng = np.random.default_rng(seed)
    condition = np.repeat(np.arange(N_CONDITIONS), N_READOUTS)
    readout = np.tile(np.arange(N_READOUTS), N_CONDITIONS)
    logit = rng.normal(0, 1.2, N_CONDITIONS)[condition] + rng.normal(0, 0.6, N_READOUTS)[readout]
    p_star = 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "question_id": [f"q{i:04d}" for i in range(len(p_star))],
            "condition": [f"P{c:02d}" for c in condition],
            "p_star": p_star,
            "p_true": np.clip(p_star + rng.normal(0, 0.02, p_star.size), 0, 1),
            "outcome": (rng.uniform(size=p_star.size) < p_star).astype(float),
        }
    )


def _answers(method: str, questions: pd.DataFrame, seed: int) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    p = questions["p_star"].to_numpy()
    if method == "grpo":  # pushed outward past p*, question by question
        return np.clip(p + np.sign(p - 0.5) * 0.08 + rng.normal(0, 0.02, p.size), 0.01, 0.99)
    if method == "rloo":  # question-level and calibrated (noise around p*)
        return np.clip(p + rng.normal(0, 0.05, p.size), 0.01, 0.99)
    if method == "ppo":  # one answer for every question: the mean p*, seed by seed
        return np.full(p.size, p.mean() + 0.01 * seed)
    if method == "reinforce":  # an error shared by the questions of each condition
        shift = rng.normal(0, 0.08, N_CONDITIONS)
        codes = questions["condition"].str[1:].astype(int).to_numpy()
        return np.clip(p + shift[codes], 0.01, 0.99)
    raise AssertionError(method)


def _tables(methods=("grpo", "rloo", "ppo"), seeds=SEEDS) -> tuple[pd.DataFrame, pd.DataFrame]:
    questions = _questions()
    predictions, runs = [], []
    for method in methods:
        for seed in seeds:
            q = _answers(method, questions, seed)
            predictions.append(
                questions.assign(method=method, seed=seed, step=10, q_exact=q, q_sampled=q)
            )
            runs.append({"method": method, "seed": seed, "q_source": "exact", "invalid_rate": 0.01})
    return pd.concat(predictions, ignore_index=True), pd.DataFrame(runs)


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    predictions, runs = _tables()
    return summarize_methods(predictions, runs, n_boot=300, seed=0).set_index("method")


def test_figures_are_seed_means_of_the_metrics(summary):
    questions = _questions()
    p = questions["p_star"].to_numpy()
    for method in ("grpo", "rloo"):
        per_seed = [_answers(method, questions, s) for s in SEEDS]
        expected = np.mean([overconfidence_per_question(q, p) for q in per_seed])
        assert summary.loc[method, "overconfidence_question"] == pytest.approx(expected)
        corr = [correlation_to_reference(q, p) for q in per_seed]
        assert summary.loc[method, "corr_p_star"] == pytest.approx(np.mean(corr))
        assert summary.loc[method, "corr_p_star_seed_sd"] == pytest.approx(np.std(corr, ddof=1))
        sd = np.mean([np.std(q) for q in per_seed])
        assert summary.loc[method, "sd_q"] == pytest.approx(sd)
        assert summary.loc[method, "q_spread"] == summary.loc[method, "sd_q"]
        mae = np.mean([mean_absolute_error_to_reference(q, p) for q in per_seed])
        assert summary.loc[method, "mae_p_star"] == pytest.approx(mae)
    for name in SUMMARY_METRICS:
        for suffix in ("", "_low", "_high", "_seed_sd"):
            assert f"{name}{suffix}" in summary.columns
    assert (summary["n_seeds"] == 3).all()
    assert (summary["n_test"] == N_CONDITIONS * N_READOUTS).all()
    assert (summary["n_conditions"] == N_CONDITIONS).all()
    assert (summary["interval"] == "95 % bootstrap over seeds and conditions").all()
    assert (summary["invalid_rate"] == 0.01).all() and (summary["q_source"] == "exact").all()


def test_question_level_and_outward_policies(summary):
    grpo, rloo = summary.loc["grpo"], summary.loc["rloo"]
    # pushed outward by 0.08: the per-question figure sees it and its interval excludes 0
    assert grpo["overconfidence_question"] == pytest.approx(0.08, abs=0.01)
    assert grpo["overconfidence_question_low"] > 0
    # calibrated question by question: the interval contains 0
    assert rloo["overconfidence_question_low"] <= 0 <= rloo["overconfidence_question_high"]
    for row in (grpo, rloo):
        assert row["corr_p_star"] > 0.9 and row["spearman_p_star"] > 0.9
        assert row["sd_q"] > 0.15 and row["auroc_p_star"] > 0.95
        assert row["corr_p_star_low"] <= row["corr_p_star"] <= row["corr_p_star_high"]
    assert 0.5 < rloo["auroc"] <= 1


def test_one_answer_for_every_question(summary):
    """The collapsed policy: no correlation (NaN, not a crash), no spread, AUROC 0.5, and
    per question it is too cautious (negative), however calibrated its average answer."""
    ppo = summary.loc["ppo"]
    assert math.isnan(ppo["corr_p_star"]) and math.isnan(ppo["corr_p_star_low"])
    assert math.isnan(ppo["spearman_p_star"])
    assert ppo["sd_q"] == 0.0 and ppo["sd_q_high"] == 0.0
    assert ppo["auroc"] == 0.5 and ppo["auroc_p_star"] == 0.5
    p = _questions()["p_star"].to_numpy()
    expected = np.mean(
        [overconfidence_per_question(np.full(p.size, p.mean() + 0.01 * s), p) for s in SEEDS]
    )
    assert ppo["overconfidence_question"] == pytest.approx(expected) and expected < -0.1
    assert ppo["overconfidence_question_high"] < 0
    assert abs(ppo["mean_q"] - p.mean() - 0.01) < 1e-12


def test_intervals_resample_conditions_and_seeds():
    """An error shared by the questions of a condition: the interval over conditions is
    wider than one over questions that treats them as independent; the seed spread
    widens it further; one seed and no conditions narrow it, and the text says so."""
    predictions, runs = _tables(methods=("reinforce",))
    by_condition = summarize_methods(predictions, runs, n_boot=400).iloc[0]
    by_question = summarize_methods(predictions.drop(columns="condition"), runs, n_boot=400)
    by_question = by_question.iloc[0]
    assert by_question["interval"] == "95 % bootstrap over seeds and questions"

    def width(row, name="overconfidence_question"):
        return row[f"{name}_high"] - row[f"{name}_low"]

    assert width(by_condition) > 1.5 * width(by_question)
    one = predictions[predictions["seed"] == 0]
    one_seed = summarize_methods(one, runs[runs["seed"] == 0], n_boot=400).iloc[0]
    assert one_seed["interval"] == interval_coverage(1, "conditions", 400)
    assert "one seed, so the variation between seeds is not covered" in one_seed["interval"]
    assert one_seed["overconfidence_question_seed_sd"] == 0.0
    none = summarize_methods(predictions, runs, n_boot=0).iloc[0]
    assert none["interval"] == "no interval (n_boot = 0)" and math.isnan(none["ece_low"])


def test_fixed_points_theory_against_measurement():
    questions = _questions().head(36)  # keep p* away from 1/2 for a fast fixed point
    questions = questions[(questions["p_star"] - 0.5).abs() > 0.05]
    grid = np.arange(1, 100) / 100
    frames = []
    for method in ("grpo", "seed_grpo:base=grpo", "rloo", "h_target:log"):
        frames.append(questions.assign(method=method, seed=0, q_exact=0.5, q_sampled=0.5))
    out = add_fixed_points(pd.concat(frames, ignore_index=True), answers=grid)
    rloo = out[out["method"] == "rloo"]
    assert np.allclose(rloo["fixed_point"], rloo["p_star"].clip(0.01, 0.99))
    assert rloo["fixed_point_pooled"].iloc[0] == pytest.approx(questions["p_star"].mean())
    grpo = out[out["method"] == "grpo"]
    outward = np.sign(grpo["p_star"] - 0.5) * (grpo["fixed_point"] - grpo["p_star"])
    assert (outward > 0).all()  # GRPO's fixed point lies outward of p*, on p*'s side
    same = out[out["method"] == "seed_grpo:base=grpo"]["fixed_point"].to_numpy()
    assert np.array_equal(same, grpo["fixed_point"].to_numpy())  # one theory, once
    assert out[out["method"] == "h_target:log"]["fixed_point"].isna().all()
    runs = pd.DataFrame({"method": ["grpo", "rloo"], "seed": 0})
    table = summarize_methods(out, runs, n_boot=50).set_index("method")
    # the measured end state (0.5 everywhere) against the fixed point, by hand
    expected = np.mean(np.abs(0.5 - grpo["fixed_point"]))
    assert table.loc["grpo", "mae_fixed_point"] == pytest.approx(expected)
    assert table.loc["grpo", "overconfidence_fixed_point"] == pytest.approx(outward.mean())
    assert table.loc["rloo", "overconfidence_fixed_point"] == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(table.loc["rloo", "corr_fixed_point"])  # q constant
    no_reference = add_fixed_points(
        pd.concat(frames).assign(p_star=np.nan, p_true=np.nan), answers=grid
    )
    assert no_reference["fixed_point"].isna().all()
    # with the run's KL term: the unbiased estimators' end state is the tilted reference
    held = add_fixed_points(pd.concat(frames, ignore_index=True), answers=grid, kl_coef=0.15)
    rloo_held = held[held["method"] == "rloo"]
    p_star = rloo_held["p_star"].to_numpy()
    inside = np.sign(p_star - 0.5) * (rloo_held["fixed_point"].to_numpy() - p_star)
    assert (inside < 0).all()  # pulled toward the uniform reference's mean 1/2
    expected = kl_fixed_points(torch.as_tensor(p_star[:3]), torch.as_tensor(grid), 0.15, grpo=False)
    assert np.allclose(rloo_held["fixed_point"].to_numpy()[:3], expected.numpy())
    grpo_held = held[held["method"] == "grpo"]
    outward_held = np.sign(grpo_held["p_star"] - 0.5) * (
        grpo_held["fixed_point"] - grpo_held["p_star"]
    )
    assert (outward_held > 0).all()
    assert held[held["method"] == "h_target:log"]["fixed_point"].isna().all()


def test_tables_headline_and_verdict_carry_the_question_level_figures(summary, capsys):
    table = summary.reset_index()
    text = markdown_table(table)
    lines = text.splitlines()
    assert lines[0].startswith("| method |") and len(lines) == 2 + 3 + 2
    for header in ("corr(q, p*)", "sd of q", "AUROC vs p* > 1/2", "invalid answers, sampled"):
        assert header in lines[0]
    assert "0.010 (q_exact)" in lines[2]
    assert lines[-1].startswith("[CI]: 95 % bootstrap over seeds and conditions")
    rows = headline_rows(table)
    assert [r["method"] for r in rows] == ["grpo", "rloo", "ppo"]
    for metric in HEADLINE_METRICS:
        assert {metric, f"{metric}_low", f"{metric}_high"} <= set(rows[0])
    assert rows[0]["invalid_rate"] == 0.01 and rows[0]["q_source"] == "exact"
    verdict = finding(table)
    # grpo outward with its interval above 0, rloo's contains 0, ppo's lies below 0
    assert verdict["shown"], verdict["text"]
    assert "on 1 of 3 methods" in verdict["text"]  # ppo gives one answer for all
    print_headline({"headline": rows, "interval": rows[0]["interval"], "finding": verdict})
    printed = capsys.readouterr().out
    assert "overconfidence vs p*" in printed and "0.010 (q_exact)" in printed
    assert "95 % bootstrap over seeds and conditions" in printed
    assert printed.strip().endswith(verdict["text"])


def test_a_jobs_scores_carry_the_question_level_figures():
    from bioreason.rl.lm.job import score_predictions

    questions = _questions()
    q = _answers("grpo", questions, 0)
    predictions = questions.assign(q_exact=q, q_sampled=q)
    predictions.loc[0, "outcome"] = np.nan  # not scored
    task = questions.assign(reference_probability=np.nan)
    scores = score_predictions(predictions, task, n_boot=0, seed=0)
    kept = slice(1, None)
    p = questions["p_star"].to_numpy()[kept]
    assert scores["n_scored"] == len(questions) - 1
    assert scores["prediction_sd"] == pytest.approx(np.std(q[kept]))
    assert scores["overconfidence_per_question"] == pytest.approx(
        overconfidence_per_question(q[kept], p)
    )
    assert scores["correlation_to_reference"] == pytest.approx(correlation_to_reference(q[kept], p))
    assert "auroc_to_reference_p_true" in scores and "overconfidence_published" not in scores
