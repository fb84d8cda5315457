"""``bioreason inspect-task`` checks a task table's values (issue 20's probe: NaN p*, an
outcome rate of 2, p* of 50, repeated ids went unmentioned) and says whether the SE target
it judges convergence by is the task's own or assumed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from bioreason.cli import main
from bioreason.data.tasks import TASK_COLUMNS, describe_task, task_problems


def _table(**columns) -> pd.DataFrame:
    rows = {
        "question_id": [f"P{i}:G0" for i in range(6)],
        "condition": [f"P{i}" for i in range(6)],
        "readout": "G0",
        "outcome_definition": "screen_hit",
        "prompt": [f"perturb P{i} readout G0 probability ?" for i in range(6)],
        "p_star": 0.3,
        "p_star_se": 0.02,
        "p_star_spread": 0.0,
        "p_true": 0.3,
        "reference_probability": np.nan,
        "outcome": [float(i % 2) for i in range(6)],
        "split": ["train"] * 4 + ["test"] * 2,
    }
    rows.update(columns)
    return pd.DataFrame(rows, columns=TASK_COLUMNS)


def _inspect(tmp_path, table, *extra, summary=None):
    path = tmp_path / "task.parquet"
    table.to_parquet(path)
    if summary is not None:
        path.with_suffix(".parquet.summary.json").write_text(json.dumps(summary))
    return main(["inspect-task", str(path), *extra])


def test_a_clean_table_has_no_problems_and_the_assumed_target_is_said(tmp_path, capsys):
    assert task_problems(_table()) == []
    assert _inspect(tmp_path, _table()) == 0
    out = capsys.readouterr().out
    assert "unconverged (SE > 0.01, assumed: no target recorded) 6 of 6" in out
    assert "problem:" not in out


def test_the_tasks_own_target_se_is_read(tmp_path, capsys):
    assert _inspect(tmp_path, _table(), summary={"target_se": 0.05}) == 0
    out = capsys.readouterr().out
    assert "unconverged (SE > 0.05) 0 of 6" in out and "assumed" not in out
    facts = describe_task(_table(), 0.05)
    assert facts["target_se"] == 0.05 and facts["target_se_known"]


def test_bad_values_are_named_and_the_status_is_1(tmp_path, capsys):
    table = _table(
        question_id=["a", "a", "b", "c", "d", "e"],
        p_star=[0.3, np.nan, 50.5, 0.2, 0.1, 0.4],
        outcome=[0.0, 2.0, 1.0, 0.0, 1.0, 0.0],
        prompt=["x", "y", "", "z", "w", "v"],
    )
    assert _inspect(tmp_path, table) == 1
    captured = capsys.readouterr()
    problems = [line for line in captured.out.splitlines() if line.startswith("problem:")]
    text = "\n".join(problems)
    assert "question_id has duplicates: 1 id(s) repeated over 2 rows (e.g. a)" in text
    assert "p_star lies outside [0, 1] for 1 question(s) (b; e.g. 50.5)" in text
    assert "p_star is missing (NaN) for 1 of 6 questions (a)" in text
    assert "outcome holds [2.0] for 1 question(s) (a)" in text
    assert "prompt is null or empty for 1 question(s) (b)" in text
    assert len(problems) == 5 and "5 problem(s)" in captured.err
    assert _inspect(tmp_path, table, "--json") == 1
    assert len(json.loads(capsys.readouterr().out)["problems"]) == 5


def test_text_outcomes_are_a_problem_not_a_crash(tmp_path, capsys):
    table = _table(outcome=["yes", "no", "yes", "no", "yes", "no"])
    assert _inspect(tmp_path, table) == 1
    out = capsys.readouterr().out
    assert "problem: outcome holds text (e.g. 'yes') for 6 question(s)" in out
    assert "Could not convert" not in out


def test_a_table_without_any_p_star_is_not_a_problem():
    table = _table(p_star=np.nan, p_star_se=np.nan, reference_probability=0.4)
    assert task_problems(table) == []
