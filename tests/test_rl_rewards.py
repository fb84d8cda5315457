import math

import pytest
import torch

from bioreason.lm.answer_protocol import AnswerGrid, parse_answers
from bioreason.rl.rewards import (
    FLOOR_REWARD,
    SCORING_RULES,
    brier_reward,
    correctness_reward,
    log_score,
    score_answers,
    spherical_score,
)


def test_parse_answers_valid_invalid_and_count():
    texts = [
        "reasoning... <answer>37</answer>",
        "<answer> 5 </answer>",
        "no tag at all",
        "<answer>0</answer>",
        "<answer>100</answer>",
        "<answer>abc</answer>",
        "first <answer>10</answer> then <answer>90</answer>",
        "<ANSWER>99</ANSWER>",
    ]
    parsed = parse_answers(texts)
    expected = [0.37, 0.05, None, None, None, None, 0.90, 0.99]
    for got, want in zip(parsed.probabilities.tolist(), expected):
        if want is None:
            assert math.isnan(got)
        else:
            assert got == pytest.approx(want)
    assert parsed.valid.tolist() == [w is not None for w in expected]
    assert parsed.n_invalid == 4


def test_configurable_grid():
    grid = AnswerGrid(low=1, high=9, scale=10)
    parsed = parse_answers(["<answer>3</answer>", "<answer>10</answer>"], grid)
    assert parsed.probabilities[0].item() == pytest.approx(0.3)
    assert parsed.n_invalid == 1
    assert grid.probabilities().tolist() == pytest.approx([i / 10 for i in range(1, 10)])
    assert AnswerGrid().size == 99
    with pytest.raises(ValueError, match="low"):
        AnswerGrid(low=0, high=99, scale=100)
    with pytest.raises(TypeError, match="sequence"):
        parse_answers("<answer>3</answer>")


def test_floor_reward_for_invalid_answers():
    parsed = parse_answers(["<answer>80</answer>", "garbage", "<answer>150</answer>"])
    rewards, n_floored = score_answers(parsed.probabilities, torch.tensor([1.0, 1.0, 0.0]))
    assert n_floored == 2
    assert rewards[0].item() == pytest.approx(math.log(0.8))
    assert rewards[1].item() == pytest.approx(math.log(0.01)) == FLOOR_REWARD
    assert rewards[2].item() == FLOOR_REWARD
    with pytest.raises(ValueError, match="scoring rule"):
        score_answers(parsed.probabilities, torch.ones(3), rule="hinge")


def test_scoring_rule_closed_forms():
    q = torch.tensor([0.2, 0.7], dtype=torch.float64)
    y1, y0 = torch.ones(2), torch.zeros(2)
    assert log_score(q, y1).tolist() == pytest.approx([math.log(0.2), math.log(0.7)])
    assert log_score(q, y0).tolist() == pytest.approx([math.log(0.8), math.log(0.3)])
    assert brier_reward(q, y1).tolist() == pytest.approx([-0.64, -0.09])
    assert brier_reward(q, y0).tolist() == pytest.approx([-0.04, -0.49])
    norm = [math.sqrt(0.04 + 0.64), math.sqrt(0.49 + 0.09)]
    assert spherical_score(q, y1).tolist() == pytest.approx([0.2 / norm[0], 0.7 / norm[1]])
    assert spherical_score(q, y0).tolist() == pytest.approx([0.8 / norm[0], 0.3 / norm[1]])


@pytest.mark.parametrize("rule", sorted(SCORING_RULES))
@pytest.mark.parametrize("p", [0.13, 0.5, 0.81])
def test_scoring_rules_are_proper(rule, p):
    """E_{y ~ Bernoulli(p)} S(q, y) is maximised on the grid at q = p."""
    q = torch.arange(1, 100, dtype=torch.float64) / 100
    score = SCORING_RULES[rule]
    expected = p * score(q, torch.ones_like(q)) + (1 - p) * score(q, torch.zeros_like(q))
    assert q[expected.argmax()].item() == pytest.approx(round(p, 2))


def test_correctness_reward():
    answers = torch.tensor([1.0, 0.0, 1.0, 0.0])
    outcomes = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert correctness_reward(answers, outcomes).tolist() == [1.0, 1.0, 0.0, 0.0]
