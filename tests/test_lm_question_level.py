"""benchmarks/lm_question_level.py on a tiny pipeline config: the names it prints, the
values it reads from the calibration stage, and its constant baselines."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from bioreason.pipelines.run import load_pipeline_config

from helpers import TINY_PIPELINE

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "lm_question_level", ROOT / "benchmarks" / "lm_question_level.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lines(text: str) -> dict[str, str]:
    lines = {}
    for line in text.strip().splitlines():
        match = re.fullmatch(r"(\S+): (\S+)(?: (probability|s))?", line)
        assert match, line
        lines[match[1]] = match[2]
    return lines


def test_prints_every_figure_of_every_method_and_the_references(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_PIPELINE))
    out = tmp_path / "run"
    argv = ["--config", str(config), "--out", str(out), "--seeds", "1", "--no-report"]
    argv += ["--fit-steps", "3", "--threads", "1", "--set", "finetune.rl.steps=2"]
    try:
        assert _bench().main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    figures = _lines(printed[printed.index("corr_q_pstar_grpo") :])
    expected = {"mae_q_pstar_constant", "mae_q_pstar_best_constant", "seconds_total"}
    for who in ("supervised", "train_supervised", "supervised_ce", "train_supervised_ce"):
        expected |= {f"mae_q_pstar_{who}", f"corr_q_pstar_{who}", f"sd_q_{who}"}
    for who in ("additive", "interaction"):
        expected |= {f"mae_q_pstar_{who}", f"corr_q_pstar_{who}", f"sd_q_{who}"}
    for method in ("grpo", "rloo"):
        for who in (method, f"train_{method}"):
            expected |= {f"corr_q_pstar_{who}", f"sd_q_{who}", f"mae_q_pstar_{who}"}
        expected |= {f"overconfidence_question_{method}{s}" for s in ("", "_low", "_high")}
    assert set(figures) == expected
    # the figures are the calibration stage's, as written
    summary = pd.read_csv(out / "calibration" / "summary.csv").set_index("method")
    assert float(figures["mae_q_pstar_rloo"]) == pytest.approx(
        summary.loc["rloo", "mae_p_star"], abs=5e-5
    )
    assert summary.loc["grpo", "n_seeds"] == 1  # --seeds 1: seed 0 only
    task = pd.read_parquet(out / "task" / "task.parquet")
    test = task[task["split"] == "test"]
    rate = task[task["split"] == "train"]["outcome"].mean()
    assert float(figures["mae_q_pstar_constant"]) == pytest.approx(
        np.mean(np.abs(test["p_star"] - rate)), abs=5e-5
    )
    # the median is the best constant under absolute error
    assert (
        float(figures["mae_q_pstar_best_constant"]) <= float(figures["mae_q_pstar_constant"]) + 1e-4
    )
    assert 0 <= float(figures["mae_q_pstar_supervised"]) <= 1
    assert 0 <= float(figures["mae_q_pstar_train_supervised_ce"]) <= 1
    assert 0 <= float(figures["mae_q_pstar_additive"]) <= 1
    assert 0 <= float(figures["sd_q_additive"]) <= 0.5
    # the in-sample scoring, run on the test split, reproduces the calibration stage's
    # figures, which come from the fine-tuning jobs' own predictions
    train = task[task["split"] == "train"]
    assert 0 <= float(figures["mae_q_pstar_train_rloo"]) <= 1
    loaded = load_pipeline_config(config, ["finetune.seeds=[0]", "finetune.rl.steps=2"])
    on_test = _bench().in_sample_figures(out, task, loaded, split="test")
    assert on_test["rloo"]["mae"] == pytest.approx(summary.loc["rloo", "mae_p_star"], abs=1e-4)
    assert on_test["grpo"]["sd_q"] == pytest.approx(summary.loc["grpo", "sd_q"], abs=1e-4)
    assert len(train) > 0
    # the same folder with another VAE setting is refused: it would refit the VAE
    bench = _bench()
    assert bench._changed_fitted_stages(out, loaded) == []
    fitted = {p: p.stat().st_mtime_ns for p in (out / "vae").rglob("*") if p.is_file()}
    with pytest.raises(SystemExit):
        bench.main(argv + ["--set", "vae.train.max_steps=7"])
    error = capsys.readouterr().err
    assert "vae.train.max_steps: 30 -> 7" in error and "--refit" in error
    assert {p: p.stat().st_mtime_ns for p in (out / "vae").rglob("*") if p.is_file()} == fitted
    # a record written before a setting existed is not refused while the setting is at
    # its default (a field added to bioreason since), and is while it is not
    from bioreason.run_layout import PIPELINE_RECORD
    from bioreason.stage import config_defaults

    record_path = out / PIPELINE_RECORD
    record = json.loads(record_path.read_text())
    options = record["config"]["vae"]["options"]
    defaults = config_defaults(loaded)
    at_default = next(k for k in options if options[k] == defaults[f"vae.options.{k}"])
    off_default = next(k for k in options if options[k] != defaults[f"vae.options.{k}"])
    for name in (at_default, off_default):
        del options[name]
    record_path.write_text(json.dumps(record))
    assert bench._changed_fitted_stages(out, loaded) == [
        f"vae.options.{off_default}: (absent) -> {loaded.vae.options.to_dict()[off_default]}"
    ]


def test_additive_reference_against_a_table_worked_by_hand():
    fit = _bench()._question_fit()
    # train: conditions A, B x programs x, y with p* = row + column effects;
    # test: A-y is missing from train, so the additive answer is exact there
    rows = [
        ("A", "x", 0.2, "train"),
        ("B", "x", 0.6, "train"),
        ("B", "y", 0.8, "train"),
        ("A", "y", 0.4, "test"),  # mean A 0.2 + mean y 0.8 - mean 0.533 = 0.467
        ("B", "x", 0.5, "test"),  # 0.7 + 0.4 - 0.533 = 0.567
        ("C", "x", 0.9, "test"),  # unseen condition: 0.533 + 0.4 - 0.533 = 0.4
    ]
    task = pd.DataFrame(rows, columns=["condition", "readout", "p_star", "split"])
    mean = 1.6 / 3
    answers = np.array([0.2 + 0.8 - mean, 0.7 + 0.4 - mean, 0.4])
    p_star = np.array([0.4, 0.5, 0.9])
    result = fit.additive_reference(task)
    assert result["mae"] == pytest.approx(np.abs(answers - p_star).mean())
    assert result["corr"] == pytest.approx(np.corrcoef(answers, p_star)[0, 1])
    assert result["sd_q"] == pytest.approx(answers.std(ddof=1))
    # answers are clipped to [0.01, 0.99]: B-y's additive value is 1 + 1 - 2/3
    extreme = pd.DataFrame(
        [("A", "x", 0.0, "train"), ("B", "x", 1.0, "train"), ("B", "y", 1.0, "train")]
        + [("B", "y", 0.9, "test"), ("A", "y", 0.5, "test")],
        columns=["condition", "readout", "p_star", "split"],
    )
    expected = (abs(0.99 - 0.9) + abs(1 / 3 - 0.5)) / 2
    assert fit.additive_reference(extreme)["mae"] == pytest.approx(expected)


def test_interaction_reference_recovers_parts_that_compose_on_each_program():
    fit = _bench()._question_fit()
    # logit p* = b + a_part(program) summed over the condition's parts: each gene acts on
    # each program in its own way, so the additive fit (condition + program) cannot
    # answer a held-out combination, and the interaction fit can
    rng = np.random.default_rng(3)
    genes, programs = ["A", "B", "C", "D"], ["x", "y", "z"]
    effect = {(g, r): rng.normal(0, 1.5) for g in genes for r in programs}
    conditions = genes + ["A+B", "C+D", "A+C", "B+D"]
    rows = []
    for condition in conditions:
        for readout in programs:
            logit = -0.3 + sum(effect[(g, readout)] for g in condition.split("+"))
            split = "test" if condition in ("A+C", "B+D") else "train"
            rows.append((condition, readout, 1 / (1 + np.exp(-logit)), split))
    task = pd.DataFrame(rows, columns=["condition", "readout", "p_star", "split"])
    task["p_star"] = task["p_star"].clip(0.02, 0.98)  # inside the fit's logit clipping
    result = fit.interaction_reference(task)
    additive = fit.additive_reference(task)
    assert result["lambda"] == pytest.approx(0.1)  # the least shrinkage fits exact data best
    assert result["mae"] < 0.05 < additive["mae"]
    assert result["corr"] > 0.97
    with pytest.raises(ValueError, match="lambdas"):
        fit.interaction_reference(task, lambdas=(0.0,))
    with pytest.raises(ValueError, match="test split"):
        fit.interaction_reference(task.assign(split="train"))


def test_refuses_seeds_without_the_fits_warm_start_and_a_tabular_config(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_PIPELINE))
    with pytest.raises(SystemExit):
        _bench().main(["--config", str(config), "--out", str(tmp_path / "r"), "--seeds", "2", "3"])
    assert "include seed 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _bench().main(["--config", str(config), "--fit-steps", "0"])
    assert "--fit-steps" in capsys.readouterr().err
    tabular = ROOT / "pipelines" / "configs" / "synthetic_calibration.yaml"
    with pytest.raises(SystemExit):
        _bench().main(["--config", str(tabular), "--out", str(tmp_path / "t")])
    assert "give an LM one" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "t").exists()
