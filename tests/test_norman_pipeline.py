"""The shipped Norman 2019 subset (registry dataset ``norman19``), end to end: ``bioreason
run`` with ``data: {source: dataset, path: norman19}``, the own-AnnData tutorial as
written, and its labels as the file writes them (``SET+KLF1``); skipped when
../shared/data is absent (tests/helpers.py)."""

from __future__ import annotations

import contextlib
import io
import json
import warnings

import pandas as pd
import pytest
import torch
import yaml

from helpers import NORMAN_PATH, REPO_ROOT, require_norman

pytestmark = pytest.mark.skipif(not NORMAN_PATH.exists(), reason=f"{NORMAN_PATH} not present")

#: the smallest run that still passes through every stage
NORMAN_PIPELINE = {
    "name": "norman",
    "data": {"source": "dataset", "path": "norman19"},
    "vae": {
        "options": {"n_latent": 4, "n_hidden": 16},
        "train": {"max_steps": 5, "batch_size": 256, "device": "cpu"},
        "evaluation": {
            "evaluations": ["final_loss", "heldout_iwelbo", "ate_heldout", "ate_seen"],
            "iwelbo_particles": 2,
            "ate_cells": 20,
            "ate_seen_conditions": 40,
        },
    },
    "task": {
        "options": {
            "n_programs": 1,
            "outcome_options": {"threshold": None, "n_cells": 20},
            "test_fraction": 0.3,
            "val_fraction": 0.0,
            "budget": {"max_draws": 8, "min_draws": 4, "draws_per_round": 4, "target_se": 0.2},
        }
    },
    "lm": {"warm_start_steps": 1},
    "finetune": {
        "methods": ["grpo"],
        "rl": {
            "steps": 2,
            "questions_per_step": 4,
            "group_size": 2,
            "outcomes": "live",
            "eval_split": "test",
            "eval_samples": 1,
            "device": "cpu",
        },
    },
    "calibration": {"n_boot": 10},
}


@pytest.mark.slow  # about 30 s on two cores: importing and warm-starting the LM
def test_run_on_norman19_end_to_end(tmp_path):
    from bioreason.cli import main

    config = tmp_path / "norman.yaml"
    config.write_text(yaml.safe_dump(NORMAN_PIPELINE))
    out = tmp_path / "run"
    buffer = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(buffer):
            status = main(["run", str(config), "--out", str(out), "--workers", "1"])
    finally:
        torch.set_num_threads(threads)
    assert status == 0, buffer.getvalue()
    vae = json.loads((out / "vae" / "result.json").read_text())
    # ate_seen covers KLF1+SET, which the file writes SET+KLF1
    assert "ate_pearson_seen" in vae and "ate_pearson_heldout" in vae
    task = pd.read_parquet(out / "task" / "task.parquet")
    flagged = task.drop_duplicates("condition").set_index("condition")["unseen_parts"]
    assert flagged["KLF1+SET"] == "SET" and flagged["FOXL2+HOXB9"] == "FOXL2, HOXB9"
    assert flagged["KLF1"] == "" and flagged["KLF1+MAP2K6"] == ""
    summary = json.loads((out / "task" / "result.json").read_text())["summary"]
    assert summary["unseen_parts"]["KLF1+SET"] == "SET"
    report = (out / "report.md").read_text()
    assert "unseen_parts.KLF1+SET" in report and "Parts never measured alone" in report
    # real data, no p_true: p* of the held-out pairs against their own cells
    heldout = json.loads((out / "data" / "result.json").read_text())["heldout_conditions"]
    check = json.loads((out / "task" / "result.json").read_text())["check_on_cells"]
    assert check["heldout_conditions"] == sorted(heldout)
    rows = task[task["condition"].isin(heldout)]
    assert check["n_questions"] == len(rows)
    assert 0 <= check["mae_p_star_p_obs"] <= 1 and 0 < check["p_obs_own_error"] < 1
    assert set(check["mae_p_star_p_obs_by_condition"]) == set(heldout)
    assert 0 <= check["p_obs_in_90pct_interval"] <= 1
    assert "central 90 % interval" in report
    assert "p\\* is one fit's" in report and "vae.fits: 3" in report
    assert "against held-out cells" in report and "mean |p\\* - p_obs|" in report


@pytest.fixture(scope="module")
def norman():
    import bioreason.data as bd

    require_norman()
    return bd.load_dataset("norman19")


def test_labels_as_the_file_writes_them(norman):
    import bioreason.data as bd

    assert "SET+KLF1" in set(norman.obs["perturbation"])
    ate = bd.average_treatment_effect(norman, conditions=["KLF1+SET", "SET+KLF1"])
    assert list(ate.index) == ["KLF1+SET", "SET+KLF1"]
    pd.testing.assert_series_equal(ate.iloc[0], ate.iloc[1], check_names=False)
    data = bd.PerturbationData.from_anndata(norman)
    with pytest.warns(UserWarning, match=r"HOXB9\+FOXL2 \(FOXL2, HOXB9\); SET\+KLF1 \(SET\)"):
        bd.split_heldout_combinations(data, heldout=["HOXB9+FOXL2", "SET+KLF1"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        heldout = bd.composable_combinations(data, fraction=0.34, seed=0)
        bd.split_heldout_combinations(data, heldout=heldout, seed=0)


def test_own_anndata_tutorial_runs_as_written_on_norman19(norman, tmp_path, monkeypatch):
    """docs/tutorials/own_anndata.md on the shipped file: its norman19 block runs (the
    docs test skips it); the block that writes a small simulated screen instead (for
    readers without the shared data) does not."""
    from test_docs_examples import _runnable, extract_blocks

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    page = REPO_ROOT / "docs" / "tutorials" / "own_anndata.md"
    blocks = [b for b in extract_blocks(page) if b.language == "python"]
    assert any('load_dataset("norman19")' in b.code for b in blocks)
    namespace: dict = {"__name__": "__docs_example__"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for block in blocks:
            if block.marker("skip") and 'load_dataset("norman19")' not in block.code:
                continue
            if "simulate_screen(" in block.code:  # the reader's alternative input
                continue
            exec(compile(_runnable(block), block.where, "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    assert namespace["adata"].n_obs == norman.n_obs
    assert len(namespace["observed"]) == len(namespace["heldout"]) == 5
