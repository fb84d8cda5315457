"""Task tables (bioreason.data.tasks): the schema's splits and templates, the Replogle task
in the same schema; ``bioreason.data`` never imports the simulator (tasks built from it:
tests/test_sim_tasks.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from bioreason.data.tasks import (
    TASK_COLUMNS,
    check_template,
    describe_task,
    format_task_description,
    load_replogle_task,
    load_task,
    read_task,
    save_task,
    saved_task_summary,
    split_questions,
)

from helpers import require_replogle_task


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


def test_templates_name_their_unknown_fields():
    check_template("{question} {condition_text} {readout} {markers} {condition}")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['gene'\]; available"):
        check_template("{gene}?")
    with pytest.raises(ValueError, match="not a valid format string"):
        check_template("{question")


def test_saving_refuses_a_table_without_the_schema_and_an_existing_file(tmp_path):
    table = pd.DataFrame({c: [0] for c in TASK_COLUMNS}).assign(split="train")
    path = save_task(table, tmp_path / "t.parquet")
    assert load_task(path)["split"].tolist() == ["train"]
    with pytest.raises(FileExistsError, match="already exists"):
        save_task(table, path)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['prompt'\]"):
        save_task(table.drop(columns="prompt"), tmp_path / "u.parquet", overwrite=True)


def _small_task() -> pd.DataFrame:
    definition = json.dumps({"name": "screen_hit", "threshold": {"g0": 0.1, "g1": 0.3}})
    return pd.DataFrame(
        {
            "question_id": ["q0", "q1", "q2", "q3"],
            "condition": ["A", "A", "B", "A+B"],
            "readout": ["g0", "g1", "g0", "g1"],
            "outcome_definition": definition,
            "prompt": "p",
            "p_star": [0.02, 0.5, np.nan, 0.9],
            "p_star_se": [0.001, 0.03, np.nan, 0.005],
            "p_star_spread": np.nan,
            "p_true": [0.0, 0.6, 0.3, np.nan],
            "reference_probability": np.nan,
            "outcome": [0, 1, 0, 1],
            "split": ["test", "train", "val", "train"],
        }
    )


def test_describe_task_counts_question_by_question_and_formats_the_facts(tmp_path):
    table = _small_task()
    facts = describe_task(table, target_se=0.01)
    assert list(facts["questions_per_split"]) == ["train", "val", "test"]
    assert facts["outcome_rate_per_split"] == {"train": 1.0, "val": 0.0, "test": 0.0}
    assert facts["n_conditions"] == 3 and facts["n_readouts"] == 2
    assert facts["n_with_p_star"] == 3 and facts["n_unconverged"] == 1
    assert facts["mean_abs_p_star_minus_p_true"] == pytest.approx((0.02 + 0.1) / 2)
    assert facts["mean_reference"] is None and facts["reference_histogram"] == []
    assert describe_task(table)["target_se"] == 0.01
    json.dumps(facts)  # JSON-ready
    text = format_task_description(facts, "t.parquet")
    assert text.splitlines()[0] == "t.parquet: 4 questions, 3 conditions, 2 readouts"
    assert "outcome: screen_hit (threshold per readout (2 values, 0.1-0.3))" in text
    assert "unconverged (SE > 0.01) 1 of 3" in text and not text.endswith("\n")
    path = save_task(table, tmp_path / "t.parquet")
    assert read_task(path)["question_id"].tolist() == table["question_id"].tolist()
    assert saved_task_summary(path) == {} and saved_task_summary(tmp_path / "none.pq") == {}
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_task(tmp_path)


def test_the_data_package_does_not_import_the_simulator():
    # imports point one way: sim -> data (build_task lives in bioreason.sim)
    code = "import sys, bioreason.data, bioreason.data.tasks; print('bioreason.sim' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


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
