"""Outcome sources (bioreason.rl.outcomes): a task table's recorded outcomes and live
Bernoulli(p*) draws, and the LM trainer drawing through them."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from bioreason.rl import BernoulliOutcomes, OutcomeSource, TableOutcomes


def _task(further=None, p_star=(0.2, 0.7, math.nan)):
    table = pd.DataFrame(
        {
            "question_id": ["a", "b", "c"],
            "outcome": [1.0, 0.0, math.nan],
            "p_star": list(p_star),
            "split": ["train", "train", "test"],
        }
    )
    if further is not None:
        table["further_outcomes"] = further
    return table


def test_table_outcomes_read_outcome_and_further_outcomes():
    task = _task(further=[[0.0, 1.0], [1.0, 1.0], None])
    source = TableOutcomes.from_task(task, n_outcomes=3, rows=np.array([0, 1]))
    assert isinstance(source, OutcomeSource)
    assert source.outcomes.shape == (3, 3) and np.isnan(source.outcomes[2]).all()
    drawn = source.sample(torch.tensor([1, 0, 1]), 3, seed=5)
    assert drawn.dtype == torch.float64
    assert drawn.tolist() == [[0.0, 1.0, 1.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
    # recorded outcomes are the same at every draw, whatever the seed
    first = torch.tensor([0])
    assert torch.equal(source.sample(first, 1, seed=1), source.sample(first, 1, seed=2))


def test_table_outcomes_name_what_is_missing():
    with pytest.raises(ValueError, match="'outcome' column"):
        TableOutcomes.from_task(_task().drop(columns="outcome"))
    with pytest.raises(ValueError, match=r"further_outcomes.*question 'b' \(row 1\)"):
        TableOutcomes.from_task(_task(further=[[1.0], None, None]), 2, rows=np.array([0, 1]))
    # the test row lacks an outcome, but it is never drawn
    assert TableOutcomes.from_task(_task(), 1, rows=np.array([0, 1])).outcomes.shape == (3, 1)
    with pytest.raises(ValueError, match="question 'c'"):
        TableOutcomes.from_task(_task(), 1)
    source = TableOutcomes(np.ones((3, 1)))
    with pytest.raises(ValueError, match="2 outcomes per question asked for"):
        source.sample(torch.tensor([0]), 2, 0)
    with pytest.raises(ValueError, match=r"indices in \[0, 3\)"):
        source.sample(torch.tensor([3]), 1, 0)


def test_bernoulli_outcomes_from_a_task_draw_p_star_of_the_drawn_rows():
    source = BernoulliOutcomes.from_task(_task(p_star=(0.2, 0.9, math.nan)), rows=np.array([0, 1]))
    assert source.p_star.tolist() == [0.2, 0.9, 0.5]  # a row never drawn gets 1/2
    draws = source.sample(torch.tensor([0, 1]), 4000, seed=0)
    assert draws.mean(1).tolist() == pytest.approx([0.2, 0.9], abs=0.03)
    assert torch.equal(draws, source.sample(torch.tensor([0, 1]), 4000, seed=0))
    with pytest.raises(ValueError, match=r"no probability in \[0, 1\] \(row 2"):
        BernoulliOutcomes.from_task(_task())
    with pytest.raises(ValueError, match="outcome_source"):
        BernoulliOutcomes.from_task(_task().drop(columns="p_star"))
