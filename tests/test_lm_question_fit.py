"""benchmarks/lm_question_fit.py: the exact-objective fit check on a small pipeline run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch

from bioreason.pipelines.run import PipelineConfig, run_pipeline

from helpers import TINY_PIPELINE

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "lm_question_fit", ROOT / "benchmarks" / "lm_question_fit.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_check_prints_its_figures_and_references(tmp_path, capsys):
    torch.set_num_threads(1)
    config = PipelineConfig.from_dict(TINY_PIPELINE)
    for stage in ("data", "vae", "task", "warm_start"):
        run_pipeline(config, tmp_path / "run", only=stage, report=False)
    capsys.readouterr()  # the pipeline's progress lines
    bench = _bench()
    args = ["--run", str(tmp_path / "run"), "--steps", "3", "--lrs", "1e-3", "--threads", "1"]
    assert bench.main([*args, "--target", "outcome"]) == 0
    lines = dict(
        re.fullmatch(r"(\S+): (\S+)(?: s)?", line).groups()
        for line in capsys.readouterr().out.strip().splitlines()
    )
    references = {"reference_constant_mae_p_star"}
    for who in ("additive", "interaction"):
        references |= {f"reference_{who}_{n}" for n in ("mae_p_star", "corr_p_star", "sd_q")}
    figures = {f"{s}{n}" for s in ("", "train_") for n in ("corr_p_star", "mae_p_star", "sd_q")}
    assert set(lines) == references | {f"fit_outcome_lr0.001_{n}" for n in figures} | {
        "fit_outcome_lr0.001_time"
    }
    assert 0 <= float(lines["fit_outcome_lr0.001_mae_p_star"]) <= 1
    assert 0 <= float(lines["fit_outcome_lr0.001_sd_q"]) <= 0.5
    assert 0 <= float(lines["reference_additive_mae_p_star"]) <= 1
    assert -1 <= float(lines["reference_additive_corr_p_star"]) <= 1


def test_the_fit_trains_what_the_run_trained_and_the_ce_objective_memorises(tmp_path, capsys):
    torch.set_num_threads(1)
    bench = _bench()
    assert bench.run_trainable(tmp_path) == "all"  # no pipeline.json: the LMRLConfig default
    pipeline = dict(TINY_PIPELINE)
    pipeline["finetune"] = {**pipeline["finetune"], "rl": {"trainable": "embeddings"}}
    config = PipelineConfig.from_dict(pipeline)
    for stage in ("data", "vae", "task", "warm_start"):
        run_pipeline(config, tmp_path / "run", only=stage, report=False)
    assert bench.run_trainable(tmp_path / "run") == "embeddings"
    # --split heldout_combinations: the test questions are pairs whose parts are trained alone
    task = bench._task(tmp_path / "run", "heldout_combinations")
    test, train = task[task["split"] == "test"], task[task["split"] == "train"]
    assert len(test) and all("+" in c for c in test["condition"])
    singles = {c for c in train["condition"] if "+" not in c}
    assert all(set(c.split("+")) <= singles for c in test["condition"])
    assert set(train["question_id"]).isdisjoint(test["question_id"])
    # the cross-entropy to the nearest grid answer fits the train questions' p* closely:
    # the model can represent each question's answer (100 steps: corr 0.99, |q - p*|
    # 0.012, where the expected log score reaches 0.86 and 0.079)
    result = bench._fit(tmp_path / "run", 3e-3, 100, "p_star", 32, 0, "embeddings", "ce")
    assert result["train_corr"] > 0.95 and result["train_mae"] < 0.04
    with pytest.raises(ValueError, match="objective"):
        bench._fit(tmp_path / "run", 1e-3, 1, "p_star", 4, 0, "embeddings", "mse")


def test_fit_check_names_the_missing_run(tmp_path, capsys):
    assert _bench().main(["--run", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert "absent" in err and "bioreason demo" in err


def test_fit_check_rejects_an_unknown_target():
    with pytest.raises(SystemExit):
        _bench().main(["--target", "nonsense"])
