"""benchmarks/lm_calibration.py on a tiny hand-made task: outputs with the documented
columns and finite metrics; a rerun skips finished runs; foreign files are refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bioreason._io import json_safe
from bioreason.data.tasks import TASK_COLUMNS, save_task


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _script():
    """benchmarks/lm_calibration.py as a module (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "lm_calibration.py"
    spec = importlib.util.spec_from_file_location("_lm_calibration_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def task_path(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        for j in range(3):
            p = float(rng.uniform(0.1, 0.9))
            rows.append(
                {
                    "question_id": f"P{i}:G{j}",
                    "condition": f"P{i}",
                    "readout": f"G{j}",
                    "outcome_definition": "screen_hit",
                    "prompt": f"perturb P{i} readout G{j} probability ?",
                    "p_star": p,
                    "p_star_se": 0.01,
                    "p_star_spread": 0.0,
                    "p_true": float(np.clip(p + rng.normal(0, 0.05), 0.01, 0.99)),
                    "reference_probability": np.nan,
                    "outcome": float(rng.random() < p),
                    "split": "train" if i < 4 else "test",
                }
            )
    path = tmp_path / "task.parquet"
    save_task(pd.DataFrame(rows, columns=TASK_COLUMNS), path)
    return path


def _argv(task_path, out):
    return [
        "--task", str(task_path), "--out", str(out), "--methods", "grpo", "rloo",
        "--seeds", "1", "--steps", "2", "--warm-start-steps", "2", "--group-size", "2",
        "--questions-per-step", "2", "--eval-samples", "2", "--n-boot", "20", "--threads", "1",
    ]  # fmt: skip


def test_tiny_run_writes_tables_and_resumes(task_path, tmp_path, capsys):
    script = _script()
    out = tmp_path / "bench"
    assert script.main(_argv(task_path, out)) == 0
    printed = capsys.readouterr().out
    assert "grpo_ece:" in printed and "| method | seeds |" in printed

    runs = pd.read_csv(out / "runs.csv")
    assert list(runs["method"]) == ["grpo", "rloo"] and set(runs["seed"]) == {0}
    for column in (*script.RUN_COLUMNS, "ece", "ece_low", "ece_high", "brier", "log_loss"):
        assert column in runs, column
    for column in ("mae_to_reference", "mae_to_reference_p_true", "overconfidence", "ece"):
        assert np.isfinite(runs[column]).all(), column
    assert (runs["n_test"] == 6).all() and (runs["steps"] == 2).all()
    assert np.isfinite(runs[["drift_grpo_predicted", "drift_measured"]]).all().all()
    pd.testing.assert_frame_equal(runs, pd.read_parquet(out / "runs.parquet"), check_dtype=False)

    summary = pd.read_csv(out / "summary.csv")
    for metric in script.SUMMARY_METRICS:
        for suffix in ("", "_low", "_high", "_seed_sd"):
            assert f"{metric}{suffix}" in summary, metric + suffix
        if "fixed_point" in metric:  # this script's predictions have no fixed points
            assert summary[metric].isna().all(), metric
            continue
        assert np.isfinite(summary[metric]).all(), metric
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert len(predictions) == 12 and np.isfinite(predictions["q_exact"]).all()
    assert (out / "summary.md").read_text().startswith("| method |")
    for name in ("predictions.parquet", "log.csv", "eval.csv", "metrics.json", "manifest.json"):
        assert (out / "runs" / "grpo_seed0" / name).is_file(), name
    assert (out / "warm" / "seed0" / "model").is_dir()

    # a rerun trains nothing and gives the same table
    before = (out / "runs" / "rloo_seed0" / "metrics.json").stat().st_mtime_ns
    assert script.main(_argv(task_path, out)) == 0
    printed = capsys.readouterr().out
    assert printed.count("[run] up to date") == 2
    assert (out / "runs" / "rloo_seed0" / "metrics.json").stat().st_mtime_ns == before
    again = pd.read_csv(out / "runs.csv")
    pd.testing.assert_frame_equal(runs, again)


def test_foreign_files_are_refused_without_force(task_path, tmp_path):
    script = _script()
    out = tmp_path / "bench"
    (out / "runs" / "grpo_seed0").mkdir(parents=True)
    (out / "runs" / "grpo_seed0" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt .*not written by bioreason"):
        script.main(_argv(task_path, out))
    assert (out / "runs" / "grpo_seed0" / "notes.txt").read_text() == "mine"


def test_bad_arguments_name_the_problem(task_path, tmp_path, capsys):
    script = _script()
    argv = _argv(task_path, tmp_path / "x")
    assert script.main([*argv, "--methods", "nonsense"]) == 2
    assert "nonsense" in capsys.readouterr().err
    no_test = pd.read_parquet(task_path).assign(split="train")
    path = tmp_path / "no_test.parquet"
    save_task(no_test, path)
    with pytest.raises(ValueError, match="test"):
        script.main(["--task", str(path), *argv[2:]])
    assert json.loads(json.dumps(json_safe({"a": float("nan")}))) == {"a": None}
