"""Task tables: built from the outcome simulator, split, written to parquet and read back;
the Replogle task in the same schema."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import bioreason.data as bd
from bioreason.data.tasks import (
    TASK_COLUMNS,
    build_task,
    load_replogle_task,
    load_task,
    save_task,
    split_questions,
)
from bioreason.sim import GroundTruthSimulator

from helpers import require_replogle_task


@pytest.fixture(scope="module")
def screen():
    return bd.simulate_screen(
        n_cells_per_condition=40, n_genes=60, n_perturbations=5, n_combinations=4, seed=2
    )


@pytest.fixture(scope="module")
def task(screen, tmp_path_factory):
    conditions = [c for c in screen.obs["perturbation"].unique() if c != "control"]
    genes = [str(g) for g in screen.var_names[:4]]
    simulator = GroundTruthSimulator(screen, "screen_hit", threshold=None, n_cells=30)
    path = tmp_path_factory.mktemp("task") / "task.parquet"
    table = build_task(
        simulator,
        conditions,
        genes,
        n_outcomes=3,
        split="heldout_combinations",
        target_se=0.03,
        truth=GroundTruthSimulator(screen, "screen_hit", threshold=0.0, n_cells=30),
        path=path,
    )
    return table, path, simulator


def test_build_task_has_the_schema_and_one_row_per_question(task, screen):
    table, _, simulator = task
    assert all(c in table.columns for c in TASK_COLUMNS)
    n_conditions = screen.obs["perturbation"].nunique() - 1
    assert len(table) == n_conditions * 4 and table["question_id"].is_unique
    assert table["p_star"].between(0, 1).all() and table["outcome"].isin([0, 1]).all()
    assert table["further_outcomes"].map(len).eq(2).all()
    definition = json.loads(table["outcome_definition"].iloc[0])
    assert definition["name"] == "screen_hit" and isinstance(definition["threshold"], dict)
    # the truth simulator was given the same (fixed) thresholds: p_true answers the same event
    assert simulator.outcome.threshold == definition["threshold"]
    assert np.isfinite(table["p_true"]).all()
    # the task is worth predicting: the suggested thresholds spread p* over (0, 1)
    summary = table.attrs["summary"]
    assert summary["p_star_extreme_fraction"] < 0.8 and sum(summary["p_star_histogram"]) == len(
        table
    )
    assert "<answer></answer>" in table["prompt"].iloc[0]


def test_heldout_combination_split_holds_out_unseen_pairs_of_seen_parts(task):
    table, _, _ = task
    test_conditions = set(table.loc[table["split"] == "test", "condition"])
    train_conditions = set(table.loc[table["split"] == "train", "condition"])
    assert test_conditions and all("+" in c for c in test_conditions)
    assert not test_conditions & train_conditions
    for combination in test_conditions:
        assert set(combination.split("+")) <= train_conditions | set(
            table.loc[table["split"] == "val", "condition"]
        )


def test_task_round_trips_through_parquet_and_is_not_overwritten(task):
    table, path, _ = task
    loaded = load_task(path)
    pd.testing.assert_frame_equal(loaded, table, check_dtype=False, check_like=True)
    with pytest.raises(FileExistsError, match="already exists"):
        save_task(table, path)
    save_task(table, path, overwrite=True)


def test_split_questions_random_and_by_condition():
    table = pd.DataFrame({"condition": [f"c{i // 3}" for i in range(300)]})
    random = split_questions(table, "random", test_fraction=0.2, val_fraction=0.1, seed=0)
    assert (random == "test").sum() == 60 and (random == "val").sum() == 30
    by_condition = split_questions(table, "heldout_conditions", 0.2, 0.1, seed=0)
    for _, group in pd.Series(by_condition).groupby(table["condition"]):
        assert group.nunique() == 1
    with pytest.raises(ValueError, match="split must be one of"):
        split_questions(table, "by_magic")
    with pytest.raises(ValueError, match="needs combinations"):
        split_questions(table, "heldout_combinations")
    with pytest.raises(ValueError, match="test_fraction"):
        split_questions(table, "random", test_fraction=1.5)


def test_bad_templates_and_inputs_name_the_problem(screen):
    simulator = GroundTruthSimulator(screen, "direction", n_cells=20)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['gene'\]"):
        build_task(simulator, ["P0"], ["gene00000"], template="{gene}?")
    with pytest.raises(ValueError, match="needs readouts"):
        build_task(simulator, ["P0"], None)
    with pytest.raises(ValueError, match="n_outcomes"):
        build_task(simulator, ["P0"], ["gene00000"], n_outcomes=0)


def test_replogle_task_loads_into_the_schema():
    folder = require_replogle_task()
    table = load_replogle_task(folder)
    assert all(c in table.columns for c in TASK_COLUMNS)
    assert table["split"].value_counts().to_dict() == {"train": 6386, "test": 1402, "val": 1388}
    assert table["p_star"].isna().all() and table["reference_probability"].between(0, 1).all()
    assert table["outcome"].isin([0, 1]).all() and table["question_id"].is_unique
    first = table.iloc[0]
    assert (
        first["condition"] in first["prompt"] and first["markers"].split(",")[0] in first["prompt"]
    )
    # splits are disjoint by gene
    genes = {s: set(g) for s, g in table.groupby("split")["condition"]}
    assert not genes["train"] & genes["test"] and not genes["train"] & genes["val"]


def test_replogle_loader_names_missing_files_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_replogle_task(tmp_path / "nope")
    pd.DataFrame({"pert": ["A"], "hit": [True]}).to_parquet(tmp_path / "train.pq")
    with pytest.raises(FileNotFoundError, match="val.pq is missing"):
        load_replogle_task(tmp_path)
    for split in ("val", "test"):
        pd.DataFrame({"pert": ["A"], "hit": [True]}).to_parquet(tmp_path / f"{split}.pq")
    with pytest.raises(
        ValueError, match=r"lacks column\(s\) \['pheno', 'pheno_markers', 'hit_prob'\]"
    ):
        load_replogle_task(tmp_path)
