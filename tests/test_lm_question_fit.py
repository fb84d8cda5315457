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
    assert set(lines) == {
        "reference_constant_mae_p_star",
        "reference_additive_mae_p_star",
        "reference_additive_corr_p_star",
        "reference_additive_sd_q",
        "fit_outcome_lr0.001_corr_p_star",
        "fit_outcome_lr0.001_mae_p_star",
        "fit_outcome_lr0.001_sd_q",
        "fit_outcome_lr0.001_time",
    }
    assert 0 <= float(lines["fit_outcome_lr0.001_mae_p_star"]) <= 1
    assert 0 <= float(lines["fit_outcome_lr0.001_sd_q"]) <= 0.5
    assert 0 <= float(lines["reference_additive_mae_p_star"]) <= 1
    assert -1 <= float(lines["reference_additive_corr_p_star"]) <= 1


def test_fit_check_names_the_missing_run(tmp_path, capsys):
    assert _bench().main(["--run", str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert "absent" in err and "bioreason demo" in err


def test_fit_check_rejects_an_unknown_target():
    with pytest.raises(SystemExit):
        _bench().main(["--target", "nonsense"])
