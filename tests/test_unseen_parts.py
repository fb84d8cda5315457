"""Conditions with parts never measured alone: the task table's ``unseen_parts`` column,
its summary, and the report's warning (issue 20)."""

from __future__ import annotations

import pandas as pd

import bioreason.data as bd
from bioreason.data.tasks import task_summary
from bioreason.sim import GroundTruthSimulator, build_task


def test_build_task_names_the_parts_never_measured_alone():
    screen = bd.simulate_screen(
        n_cells_per_condition=20, n_genes=30, n_perturbations=4, n_combinations=2, seed=5
    )
    combination = next(c for c in screen.obs["perturbation"].unique() if "+" in c)
    a, b = combination.split("+")
    # the simulator's observed cells lack a's single-perturbation cells
    observed = screen[screen.obs["perturbation"] != a].copy()
    simulator = GroundTruthSimulator(observed, "direction", n_cells=10)
    table = build_task(simulator, [f"{b}+{a}", b], [str(screen.var_names[0])], budget=None, seed=0)
    by_condition = table.set_index("condition")["unseen_parts"]
    assert by_condition[f"{b}+{a}"] == a and by_condition[b] == ""
    summary = task_summary(table)
    assert summary["questions_with_unseen_parts"] == 1
    assert summary["unseen_parts"] == {f"{b}+{a}": a}


def test_the_report_warns_about_conditions_with_unseen_parts():
    from bioreason.report.build import _Builder
    from bioreason.report.document import Callout

    builder = _Builder(run=None)
    task = pd.DataFrame(
        {"condition": ["KLF1+SET", "KLF1+SET", "KLF1"], "unseen_parts": ["SET", "SET", ""]}
    )
    builder.unseen_parts_callout(task)
    (callout,) = builder.blocks
    assert isinstance(callout, Callout) and callout.kind == "warning"
    assert "2 questions about 1 conditions" in callout.text and "KLF1+SET (SET)" in callout.text
    builder.unseen_parts_callout(task.iloc[2:])  # none flagged: nothing added
    builder.unseen_parts_callout(task[["condition"]])  # an older table: nothing added
    assert len(builder.blocks) == 1
