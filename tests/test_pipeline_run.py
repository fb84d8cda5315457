"""``bioreason run CONFIG.yaml`` (bioreason.pipelines.run) on a tiny config: every stage's
outputs, skip / resume / --set / --only, config validation, the finding's verdict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from bioreason.cli import main
from bioreason.pipelines.calibration_stage import finding
from bioreason.pipelines.config import PipelineConfig, load_pipeline_config
from bioreason.pipelines.run import run_pipeline
from bioreason.run_layout import INVALID_RATE_FLAG, INVALID_RATE_LIMIT

from helpers import TINY_PIPELINE as TINY

ROOT = Path(__file__).resolve().parents[1]
STAGE_NAMES = ["data", "vae", "task", "warm_start", "finetune", "calibration"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write(tmp_path: Path, values: dict, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path, str]:
    """One finished tiny run (its folder, its config file, the first run's output)."""
    import contextlib
    import io

    tmp = tmp_path_factory.mktemp("pipeline")
    config = _write(tmp, TINY)
    out = tmp / "run"
    buffer = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(buffer):
            status = main(["run", str(config), "--out", str(out), "--workers", "1"])
    finally:
        torch.set_num_threads(threads)
    assert status == 0, buffer.getvalue()
    return out, config, buffer.getvalue()


def test_every_stage_writes_its_result_and_the_run_record(tiny_run):
    out, _, printed = tiny_run
    for name in STAGE_NAMES:
        assert (out / name / "result.json").is_file(), name
        assert (out / name / "manifest.json").is_file(), name
    data = json.loads((out / "data" / "result.json").read_text())
    assert data["n_cells"] > 0 and data["ground_truth"] is True
    assert len(data["heldout_conditions"]) >= 1
    vae = json.loads((out / "vae" / "result.json").read_text())
    assert np.isfinite(vae["iwelbo_heldout"]) and 0.0 <= vae["mask_auroc"] <= 1.0
    assert len(vae["loss_curve"]) >= 2 and set(vae["ppc"]) >= {"mean_corr"}
    assert vae["mask_prior_probability"] == pytest.approx(0.01)  # SAMS-VAE's fixed default
    assert set(vae["mask_probability_quantiles"]) == {"0.1", "0.5", "0.9", "0.99"}
    task = pd.read_parquet(out / "task" / "task.parquet")
    assert set(task["split"]) == {"train", "test"}
    assert task["p_star"].between(0, 1).all() and task["p_true"].between(0, 1).all()
    task_result = json.loads((out / "task" / "result.json").read_text())
    assert task_result["n_questions"] == len(task)
    expected = np.abs(task["p_star"] - task["p_true"]).mean()
    assert task_result["mae_p_star_p_true"] == pytest.approx(expected)
    # p*'s 90 % interval travels with the table, and its coverage of p_true with the result
    assert (task["p_star_low"] <= task["p_star_high"]).all()
    assert task["p_star_low"].between(0, 1).all() and task["p_star_high"].between(0, 1).all()
    inside = task["p_star_low"].le(task["p_true"]) & task["p_true"].le(task["p_star_high"])
    assert task_result["p_true_in_90pct_interval"] == pytest.approx(inside.mean())
    predictions = pd.read_parquet(out / "calibration" / "predictions.parquet")
    n_test = int((task["split"] == "test").sum())
    assert sorted(predictions["method"].unique()) == ["grpo", "rloo"]
    assert len(predictions) == 2 * n_test
    summary = pd.read_csv(out / "calibration" / "summary.csv")
    assert list(summary["method"]) == ["grpo", "rloo"]
    assert (summary["ece_low"] <= summary["ece"] + 1e-12).all()
    # question-level figures, the per-question fixed point, and what intervals cover
    for column in ("corr_p_star", "spearman_p_star", "sd_q", "auroc", "auroc_p_star"):
        assert {column, f"{column}_low", f"{column}_high", f"{column}_seed_sd"} <= set(summary)
    assert np.isfinite(summary["overconfidence_question"]).all()
    assert np.isfinite(summary["mae_fixed_point"]).all()  # grpo and rloo declare a theory
    assert (summary["interval"].str.startswith("95 % bootstrap over conditions")).all()
    assert (summary["n_conditions"] == task[task["split"] == "test"]["condition"].nunique()).all()
    assert set(summary["q_source"]) == {"exact"} and summary["invalid_rate"].between(0, 1).all()
    assert {"condition", "fixed_point", "fixed_point_pooled"} <= set(predictions)
    rloo = predictions[predictions["method"] == "rloo"]  # unbiased: the fixed point is p*
    assert np.allclose(rloo["fixed_point"], rloo["p_star"].clip(0.01, 0.99))
    # the prompt spread before and after the warm start reaches every run's row
    warm = json.loads((out / "warm_start" / "result.json").read_text())["prompt_spread"]["0"]
    runs = pd.read_csv(out / "calibration" / "runs.csv")
    assert 0 < warm["before"] <= 1 and 0 < warm["after"] <= 1
    assert np.allclose(runs["prompt_spread_before_warm_start"], warm["before"])
    assert np.allclose(runs["prompt_spread_after_warm_start"], warm["after"])
    result = json.loads((out / "calibration" / "result.json").read_text())
    assert isinstance(result["finding"]["shown"], bool) and result["finding"]["text"]
    assert [row["method"] for row in result["headline"]] == ["grpo", "rloo"]
    headline = result["headline"][0]
    for key in ("overconfidence_question_low", "corr_p_star", "sd_q", "auroc_p_star"):
        assert key in headline
    assert headline["invalid_rate"] >= 0 and headline["q_source"] == "exact"
    assert result["interval"].startswith("95 % bootstrap over conditions")
    assert "corr(q, p*)" in printed and "invalid, sampled" in printed
    record = json.loads((out / "pipeline.json").read_text())
    assert record["config"]["finetune"]["rl"]["steps"] == 4 and record["finished"]
    assert all(record["stages"][name]["status"] == "done" for name in STAGE_NAMES)
    assert record["versions"]["torch"] == torch.__version__.split("+")[0] or record["versions"]
    assert "ECE vs outcomes" in printed and "grpo" in printed


def test_a_rerun_skips_every_stage_and_set_recomputes_only_what_changed(tiny_run, tmp_path, capsys):
    out, config, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    task_bytes = (copy / "task" / "task.parquet").read_bytes()
    assert main(["run", str(config), "--out", str(copy), "--workers", "1", "--no-report"]) == 0
    printed = capsys.readouterr().out
    for name in STAGE_NAMES:
        assert f"[{name}] up to date" in printed, name
    assert "[finetune] 2 jobs" not in printed
    argv = ["run", str(config), "--out", str(copy), "--workers", "1", "--no-report"]
    assert main([*argv, "--set", "finetune.rl.steps=2"]) == 0
    printed = capsys.readouterr().out
    for name in ("data", "vae", "task", "warm_start"):
        assert f"[{name}] up to date" in printed, name
    assert "[finetune] 2 jobs" in printed
    assert (copy / "task" / "task.parquet").read_bytes() == task_bytes
    runs = pd.read_csv(copy / "calibration" / "runs.csv")
    assert (runs["steps"] == 2).all()
    # a new prompt template: the task and everything after it are recomputed
    template = "Does {condition_text} shift {readout}? Percent inside <answer></answer>."
    assert (
        main([*argv, "--set", "finetune.rl.steps=2", "--set", f"task.options.template={template}"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "[vae] up to date" in printed and "[task] up to date" not in printed
    prompts = pd.read_parquet(copy / "task" / "task.parquet")["prompt"]
    assert prompts.str.startswith("Does knocking down").all()
    record = json.loads((copy / "pipeline.json").read_text())
    assert record["config"]["finetune"]["rl"]["steps"] == 2 and len(record["commands"]) == 4


def test_an_interrupted_finetune_stage_resumes_job_by_job(tiny_run, tmp_path, monkeypatch, capsys):
    import bioreason.pipelines.lm_runs as lm_runs

    out, config, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    for name in ("finetune", "calibration"):
        shutil.rmtree(copy / name)
    real = lm_runs.run_job

    def second_job_fails(job):
        if job["config"].rl.method == "rloo":
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(lm_runs, "run_job", second_job_fails)
    argv = ["run", str(config), "--out", str(copy), "--workers", "1", "--no-report"]
    assert main(argv) == 130  # interrupted
    record = json.loads((copy / "pipeline.json").read_text())
    assert record["stages"]["finetune"]["status"] == "failed"
    assert (copy / "finetune" / "grpo_seed0" / "metrics.json").is_file()
    capsys.readouterr()
    monkeypatch.setattr(lm_runs, "run_job", real)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "[finetune] up to date: grpo seed 0" in printed
    assert "[finetune] 1 jobs" in printed
    assert pd.read_csv(copy / "calibration" / "summary.csv")["method"].tolist() == ["grpo", "rloo"]


def test_foreign_files_are_refused_before_any_work_unless_forced(tiny_run, tmp_path, capsys):
    out, config, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "task")
    (copy / "task").mkdir()
    mine = copy / "task" / "notes.txt"
    mine.write_text("my notes")
    argv = ["run", str(config), "--out", str(copy), "--workers", "1", "--no-report"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "notes.txt" in err and "--force" in err
    assert mine.read_text() == "my notes"
    assert main(["run", str(config), "--out", str(copy), "--only", "calibration"]) == 1
    assert "task" in capsys.readouterr().err


def test_only_and_from_need_the_earlier_stages(tiny_run, tmp_path, capsys):
    out, config, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    argv = ["run", str(config), "--out", str(copy), "--workers", "1", "--no-report"]
    assert main([*argv, "--only", "calibration"]) == 0
    assert "[calibration] up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:  # exclusive options
        main([*argv, "--from", "finetune", "--only", "task"])
    assert exit_info.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--only", "nonsense"])
    assert exit_info.value.code == 2
    assert "warm_start" in capsys.readouterr().err  # the choices are listed


@pytest.mark.parametrize(
    "change, words",
    [
        ({"finetune": {"methods": ["nonsense"]}}, ["methods", "nonsense", "grpo"]),
        ({"vae": {"model": "big_vae"}}, ["vae.model", "sams_vae", "cpa_vae"]),
        ({"vae": {"stepz": 3}}, ["stepz", "train"]),
        ({"colour": "red"}, ["colour", "finetune"]),
        ({"task": {"options": {"n_program": 3}}}, ["n_program", "n_programs"]),
        ({"finetune": {"seeds": [0, 0]}}, ["seeds", "twice"]),
        ({"kind": "tabular", "tabular": {"stepz": 1}}, ["tabular", "stepz"]),
    ],
)
def test_bad_config_names_the_key_and_the_allowed_values(tmp_path, capsys, change, words):
    values = json.loads(json.dumps(TINY))
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    path = _write(tmp_path, values)
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)
    assert not (tmp_path / "out").exists()


def test_bad_override_and_missing_config_are_clear(tmp_path, capsys):
    path = _write(tmp_path, TINY)
    assert main(["run", str(path), "--set", "finetune.rl.steps"]) == 1
    assert "section.field=value" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "absent.yaml")]) == 1
    assert "absent.yaml" in capsys.readouterr().err


def test_exponent_floats_read_as_numbers_in_files_and_overrides(tmp_path):
    # PyYAML alone reads "1e-4" (no dot) as a string; configs and --set take it as a number
    path = tmp_path / "exp.yaml"
    text = yaml.safe_dump(TINY).replace("  rl:\n", "  rl:\n    kl_coef: 1e-4\n", 1)
    path.write_text(text)
    assert load_pipeline_config(path).finetune.rl.kl_coef == pytest.approx(1e-4)
    overridden = load_pipeline_config(path, ["finetune.rl.lr=3E-5", "calibration.n_boot=20"])
    assert overridden.finetune.rl.lr == pytest.approx(3e-5)
    assert overridden.calibration.n_boot == 20
    with pytest.raises((TypeError, ValueError), match="finetune.rl.lr must be a number"):
        load_pipeline_config(path, ["finetune.rl.lr=1e"])  # not a number: still an error


def test_shipped_configs_load_and_demo_yaml_matches_the_demo():
    from bioreason.pipelines.demo import demo_config

    configs = sorted((ROOT / "pipelines" / "configs").glob("*.yaml"))
    assert {p.stem for p in configs} >= {
        "demo",
        "synthetic_lm",
        "replogle",
        "synthetic_calibration",
    }
    for path in configs:
        assert isinstance(load_pipeline_config(path), PipelineConfig)
    assert load_pipeline_config(ROOT / "pipelines" / "configs" / "demo.yaml") == demo_config()
    replogle = load_pipeline_config(ROOT / "pipelines" / "configs" / "replogle.yaml")
    assert not replogle.task.from_simulator


def _summary(figures: dict[str, tuple[float, float, float]], sd_q: float = 0.2) -> pd.DataFrame:
    """A summary table: per method the per-question overconfidence and its interval."""
    return pd.DataFrame(
        [
            {
                "method": m,
                "overconfidence_question": value,
                "overconfidence_question_low": low,
                "overconfidence_question_high": high,
                "ece": 0.05,
                "sd_q": sd_q,
                "interval": "95 % bootstrap over seeds and conditions",
            }
            for m, (value, low, high) in figures.items()
        ]
    )


def test_finding_is_shown_only_when_grpo_is_overconfident_question_by_question():
    shown = finding(
        _summary(
            {"grpo": (0.1, 0.05, 0.15), "rloo": (0.0, -0.03, 0.02), "ppo": (-0.1, -0.2, -0.05)}
        )
    )
    assert shown["shown"] and shown["grpo_overconfidence_low"] == 0.05
    text = shown["text"]
    # both sides and what the interval covers are stated
    assert text.startswith("Shown, question by question") and "rloo, ppo" in text
    assert "GRPO +0.100 [+0.050, +0.150]" in text and "ppo -0.100 [-0.200, -0.050]" in text
    assert "95 % bootstrap over seeds and conditions" in text
    assert shown["others_overconfidence"]["rloo"] == [0.0, -0.03, 0.02]
    overlap = finding(_summary({"grpo": (0.1, -0.01, 0.2), "rloo": (0.0, -0.03, 0.02)}))
    assert not overlap["shown"] and "does not exclude 0" in overlap["text"]
    inward = finding(_summary({"grpo": (-0.1, -0.2, -0.05), "rloo": (0.0, -0.03, 0.02)}))
    assert not inward["shown"] and "pulled in toward 1/2" in inward["text"]
    both = finding(_summary({"grpo": (0.1, 0.05, 0.15), "rloo": (0.08, 0.01, 0.12)}))
    assert not both["shown"] and "rloo's interval lies above 0 too" in both["text"]
    assert not finding(_summary({"rloo": (0.0, -0.1, 0.1)}))["shown"]
    assert not finding(_summary({"grpo": (0.1, 0.05, 0.2), "seed_grpo": (0, -1, 1)}))["shown"]
    no_interval = finding(_summary({"grpo": (0.1, np.nan, np.nan), "rloo": (0, np.nan, np.nan)}))
    assert not no_interval["shown"] and "n_boot = 0" in no_interval["text"]


def test_finding_against_the_answers_when_every_method_is_pulled_in_per_question():
    """Keyed on p* every method is below 0 (answers that read their questions only partly
    regress to the mean); keyed on the answer GRPO is above 0 and the others are not:
    shown "against the answers", and the text gives both sets of figures."""
    table = _summary({"grpo": (-0.2, -0.26, -0.15), "rloo": (-0.28, -0.3, -0.26)})
    table["corr_p_star"] = [0.39, 0.42]
    for column, values in {
        "overconfidence_answer": [0.233, -0.022],
        "overconfidence_answer_low": [0.19, -0.05],
        "overconfidence_answer_high": [0.27, 0.01],
    }.items():
        table[column] = values
    verdict = finding(table)
    assert verdict["shown"] and verdict["criterion"] == "per_answer"
    text = verdict["text"]
    assert text.startswith("Shown against the answers, not per question")
    assert "GRPO +0.233 [+0.190, +0.270]; rloo -0.022 [-0.050, +0.010]" in text
    assert "every method's answers are pulled in toward 1/2" in text and "0.39" in text
    assert "GRPO -0.200 [-0.260, -0.150]" in text  # the per-question figures too
    assert verdict["grpo_overconfidence_answer_low"] == 0.19
    # the others above 0 keyed on the answer too: not shown, both figures in the reason
    table["overconfidence_answer_low"] = [0.19, 0.01]
    other = finding(table)
    assert not other["shown"] and other["criterion"] is None
    assert "Keyed on the answer" in other["text"]
    # the per-question criterion, where it holds, is the one named
    strong = _summary({"grpo": (0.1, 0.05, 0.15), "rloo": (0.0, -0.03, 0.02)})
    assert finding(strong)["criterion"] == "per_question"


def test_finding_without_p_star_uses_p_true_and_without_either_says_so():
    table = _summary({"grpo": (np.nan,) * 3, "rloo": (np.nan,) * 3})
    table["overconfidence_question_p_true"] = [0.1, 0.0]
    table["overconfidence_question_p_true_low"] = [0.05, -0.1]
    table["overconfidence_question_p_true_high"] = [0.15, 0.1]
    verdict = finding(table)
    assert verdict["shown"] and verdict["reference"] == "p_true"
    assert "sign(p_true - 1/2)" in verdict["text"]
    nothing = finding(_summary({"grpo": (np.nan,) * 3, "rloo": (np.nan,) * 3}))
    assert not nothing["shown"] and "neither p* nor p_true" in nothing["text"]


def test_finding_on_collapsed_runs_is_not_shown_and_says_why():
    """One answer for every question can lie outward of most p* (a high base-rate answer):
    that is not overconfidence question by question, and the verdict says so."""
    figures = {"grpo": (0.06, 0.02, 0.1), "rloo": (-0.17, -0.2, -0.14)}
    collapsed = finding(_summary(figures, sd_q=1e-5))
    assert not collapsed["shown"]
    assert "GRPO gives (almost) one answer to every question" in collapsed["text"]
    assert "'calibrated' describes only an average answer" in collapsed["text"]
    assert collapsed["collapsed_runs"] == 2
    run_sd = pd.Series([1e-5, 0.2, 0.15], index=[("grpo", 0), ("rloo", 0), ("rloo", 1)])
    note = finding(_summary(figures, sd_q=0.2), run_sd=run_sd)
    assert note["shown"] and "on 1 of 3 runs" in note["text"]
    assert "Note" not in finding(_summary(figures, sd_q=0.2))["text"]


def test_finding_flags_methods_that_stop_answering():
    figures = {"grpo": (0.1, 0.05, 0.15), "rloo": (0.0, -0.1, 0.1), "seed_grpo": (0, -1, 1)}
    table = _summary(figures)
    table["invalid_rate"] = [0.0, 0.01, 1.0]
    kept = finding(table)  # seed_grpo is not compared: the finding stands, with a warning
    assert kept["shown"]
    assert "Warning: seed_grpo stopped writing a valid answer" in kept["text"]
    assert "seed_grpo 1.00" in kept["text"] and "rloo" not in kept["text"].split("Warning")[1]
    table["invalid_rate"] = [0.0, 0.9, 0.0]  # a compared method that does not answer
    lost = finding(table)
    assert not lost["shown"]
    assert "rloo stopped answering validly" in lost["text"] and "rloo 0.90" in lost["text"]
    table["invalid_rate"] = [0.0, INVALID_RATE_LIMIT, 0.0]  # at the limit: still answering
    assert finding(table)["shown"] and "Warning" not in finding(table)["text"]


def test_finding_flags_methods_above_one_percent_invalid_answers():
    figures = {"grpo": (0.1, 0.05, 0.15), "rloo": (0.0, -0.1, 0.1), "ppo": (-0.1, -0.2, 0.0)}
    table = _summary(figures)
    table["invalid_rate"] = [0.011, INVALID_RATE_FLAG, 0.2]
    verdict = finding(table)
    assert verdict["shown"]  # flagged methods still answer: the finding stands
    assert verdict["flagged_invalid"] == {"grpo": 0.011, "ppo": 0.2}
    assert "Flagged: more than 1% of the sampled held-out answers" in verdict["text"]
    assert "grpo 1.1%, ppo 20.0%" in verdict["text"] and "rloo 1.0%" not in verdict["text"]
    table["invalid_rate"] = [0.0, 0.01, 0.6]  # above the limit: a warning, not a flag
    verdict = finding(table)
    assert verdict["flagged_invalid"] == {} and "Flagged" not in verdict["text"]
    assert "Warning: ppo stopped writing" in verdict["text"]


def test_tabular_kind_runs_the_synthetic_calibration_experiment_as_a_stage(tmp_path, capsys):
    values = {
        "name": "tab",
        "kind": "tabular",
        "tabular": {
            "n_questions": 40,
            "n_categories": 4,
            "methods": ["grpo", "rloo"],
            "n_eval_samples": 10,
            "n_boot": 0,
            "rl": {"steps": 20, "group_size": 4, "checkpoint_every": 10, "log_every": 10},
        },
    }
    config = PipelineConfig.from_dict(values)
    results = run_pipeline(config, tmp_path / "tab", report=False)
    assert list(results) == ["tabular"]
    metrics = results["tabular"].result["metrics"]
    assert sorted(row["method"] for row in metrics) == ["grpo", "rloo"]
    assert (tmp_path / "tab" / "tabular" / "runs" / "metrics.csv").is_file()
    again = run_pipeline(config, tmp_path / "tab", report=False)
    assert again["tabular"].skipped


def test_torch_compile_reaches_the_jobs_but_not_the_stage_manifest(tmp_path):
    from bioreason.pipelines import lm_stages

    plain = PipelineConfig.from_dict(TINY)
    values = json.loads(json.dumps(TINY))
    values["finetune"]["rl"]["torch_compile"] = True
    values["finetune"]["threads"] = 2
    compiled = PipelineConfig.from_dict(values)
    jobs = lm_stages._jobs(compiled, tmp_path, tmp_path / "task.parquet", tmp_path)
    assert jobs and all(job["config"].rl.torch_compile is True for job in jobs)
    assert all(job["config"].threads == 2 for job in jobs)
    plain_jobs = lm_stages._jobs(plain, *[tmp_path] * 3)
    assert not any(job["config"].rl.torch_compile for job in plain_jobs)
    # speed-only settings leave the manifest (and so earlier runs' finetune stages) as is
    stages = [lm_stages.finetune_stage(c, workers=1, force=False) for c in (plain, compiled)]
    assert stages[0].config == stages[1].config
    recorded = stages[1].config["finetune"]  # recorded at their defaults
    assert recorded.rl.torch_compile is False and recorded.threads == 1


def test_ctrl_c_in_a_parallel_finetune_stage_stops_it_and_the_rerun_resumes(
    tiny_run, tmp_path, capsys
):
    """issue 20: Ctrl-C (SIGINT to the process group, as a terminal sends it) during the
    finetune stage with --workers 2 stops the whole stage within seconds, no queued job
    starts after it, and the rerun finishes the stage."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out, config, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    for name in ("finetune", "calibration"):
        shutil.rmtree(copy / name)
    methods = ["--set", "finetune.methods=[grpo, rloo, reinforce, grpo_no_std]"]
    argv = ["run", str(config), "--out", str(copy), "--no-report", *methods]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = (tmp_path / "log.txt").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bioreason.cli", *argv, "--workers", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group, like a terminal's job
    )
    jobs = lambda: {p.parent.name for p in (copy / "finetune").glob("*/manifest.json")}  # noqa: E731
    deadline = time.monotonic() + 240
    while not jobs() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, (tmp_path / "log.txt").read_text()
    os.killpg(process.pid, signal.SIGINT)
    started = jobs()
    start = time.monotonic()
    try:
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert time.monotonic() - start < 30
    assert code == 130, (tmp_path / "log.txt").read_text()
    assert len(started) <= 2 and jobs() <= started, (started, jobs())
    record = json.loads((copy / "pipeline.json").read_text())
    assert record["stages"]["finetune"]["status"] == "failed"
    capsys.readouterr()
    assert main([*argv, "--workers", "1"]) == 0
    summary = pd.read_csv(copy / "calibration" / "summary.csv")
    assert sorted(summary["method"]) == ["grpo", "grpo_no_std", "reinforce", "rloo"]


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "{config}", "--out", "{out}"],
        ["run", "{config}", "--out", "{out}", "--only", "data"],
        ["demo", "--out", "{out}"],
    ],
    ids=["run", "run-only-data", "demo"],
)
def test_a_pipeline_json_of_the_users_is_not_replaced(tmp_path, capsys, argv):
    """issue 20: run / run --only data / demo replaced a D/pipeline.json the user wrote."""
    config = _write(tmp_path, TINY)
    out = tmp_path / "D"
    out.mkdir()
    mine = out / "pipeline.json"
    mine.write_text('{"my": "notes"}')
    args = [a.format(config=config, out=out) for a in argv]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "pipeline.json" in err and "--force" in err
    assert mine.read_text() == '{"my": "notes"}'
    assert sorted(p.name for p in out.iterdir()) == ["pipeline.json"]  # before any stage


def test_a_report_figure_of_the_users_stops_the_run_before_any_work(tiny_run, tmp_path, capsys):
    out, config, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "calibration")
    figure = copy / "report_files" / "figure-01.png"
    figure.write_bytes(b"my figure")
    assert main(["run", str(config), "--out", str(copy), "--workers", "1"]) == 1
    assert "figure-01.png" in capsys.readouterr().err
    assert figure.read_bytes() == b"my figure" and not (copy / "calibration").exists()


def test_an_empty_config_is_refused_instead_of_running_every_default(tmp_path, capsys):
    """issue 20: an empty file started the full default pipeline without a word."""
    for text in ("", "{}\n", "# nothing yet\n"):
        config = tmp_path / "empty.yaml"
        config.write_text(text)
        assert main(["run", str(config), "--out", str(tmp_path / "E")]) == 1
        err = capsys.readouterr().err
        assert "is empty" in err and "demo.yaml" in err
        assert not (tmp_path / "E").exists()


@pytest.mark.parametrize(
    "override, words",
    [
        ("lm.model=./no/such/model", ["lm.model", "no/such/model"]),
        ("calibration.n_boot=-1", ["n_boot", "-1"]),
        ("task.options.n_programs=null", ["task.options.n_programs", "readouts"]),
        ("vae.train.device=cuda:7", ["vae.train.device"]),
    ],
)
def test_the_whole_config_is_checked_before_the_first_stage(tmp_path, capsys, override, words):
    """issue 20: lm.model was checked only after data, vae, task and warm start;
    calibration.n_boot and a user's report.html only after all fine-tuning."""
    config = _write(tmp_path, TINY)
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--set", override]) == 1
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)
    assert not out.exists() or not any((out / name).exists() for name in STAGE_NAMES)


def test_a_report_html_of_the_users_is_refused_before_the_first_stage(tmp_path, capsys):
    config = _write(tmp_path, TINY)
    out = tmp_path / "run"
    out.mkdir()
    (out / "report.html").write_text("<html>mine</html>")
    assert main(["run", str(config), "--out", str(out)]) == 1
    assert "report.html" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]


def test_changing_the_vae_or_the_screen_of_a_finished_run_recomputes(tiny_run, tmp_path, capsys):
    """issue 20 / docs/pipelines.md: a changed setting recomputes; it failed with
    "vae/checkpoint already exists and was not written by bioreason"."""
    out, config, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    argv = ["run", str(config), "--out", str(copy), "--workers", "1", "--no-report"]
    argv += ["--set", "finetune.rl.steps=2"]
    vae = ["--set", "vae.train.max_steps=20", "--set", "vae.options.n_latent=3"]
    assert main([*argv, *vae]) == 0
    printed = capsys.readouterr().out
    assert "[data] up to date" in printed and "[vae] up to date" not in printed
    manifest = json.loads((copy / "vae" / "manifest.json").read_text())
    assert manifest["config"]["vae"]["options"]["n_latent"] == 3
    assert not (copy / "vae" / "checkpoint").exists()
    assert main([*argv, *vae, "--set", "data.screen.n_cells_per_condition=20"]) == 0
    printed = capsys.readouterr().out
    assert "[data] up to date" not in printed and "[vae] up to date" not in printed
    data = json.loads((copy / "data" / "manifest.json").read_text())
    assert data["config"]["data"]["screen"]["n_cells_per_condition"] == 20


def test_vae_fits_pools_the_fits_into_the_tasks_p_star(tiny_run, tmp_path, capsys):
    """vae.fits: 2 fits the model a second time from seed + 1000 (model_fit1/), and the
    task stage answers with the two fits' mixture: p* is the mean of the fits' own p*
    (each computed alone with the task's thresholds, budget and seed)."""
    import dataclasses

    from bioreason.pipelines.config import load_pipeline_config
    from bioreason.sim import build_task_from_config

    out, config, _ = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    argv = ["run", str(config), "--out", str(copy), "--workers", "1", "--no-report"]
    argv += ["--set", "vae.fits=2"]
    assert main([*argv, "--only", "vae"]) == 0
    assert main([*argv, "--only", "task"]) == 0
    printed = capsys.readouterr().out
    assert "fit 2 of 2, seed 1000" in printed and "the 2 fits of the model pooled" in printed
    vae = json.loads((copy / "vae" / "result.json").read_text())
    assert [fit["seed"] for fit in vae["fits"]] == [0, 1000]
    assert vae["iwelbo_heldout"] == vae["fits"][0]["iwelbo_heldout"]  # fit 0 on top
    assert vae["fits"][0]["iwelbo_heldout"] != vae["fits"][1]["iwelbo_heldout"]
    assert json.loads((copy / "task" / "result.json").read_text())["n_fits"] == 2
    task = pd.read_parquet(copy / "task" / "task.parquet")
    thresholds = json.loads(task["outcome_definition"].iloc[0])["threshold"]
    loaded = load_pipeline_config(config, ["vae.fits=2"])
    data = json.loads((copy / "data" / "result.json").read_text())
    train_cells = None
    if data.get("heldout_conditions"):
        with np.load(copy / "data" / "split.npz") as split:
            train_cells = np.concatenate([split["train"], split["val"]])
    each = []
    for folder in ("model", "model_fit1"):
        options = dataclasses.replace(
            loaded.task.options,
            seed=loaded.seed,
            model=str(copy / "vae" / folder),
            adata=str(copy / "data" / "data.h5ad"),
            outcome_options={**loaded.task.options.outcome_options, "threshold": thresholds},
        )
        each.append(build_task_from_config(options, train_cells=train_cells)["p_star"])
    assert np.allclose(task["p_star"], (each[0] + each[1]) / 2, atol=1e-12)
    assert not np.allclose(each[0], each[1])  # two fits, two answers
    assert main([*argv[:-1], "vae.fits=0", "--only", "vae"]) == 1
    assert "vae: fits must be an integer >= 1, got 0" in capsys.readouterr().err


def test_an_interrupted_vae_stage_with_several_fits_resumes_each_fit(
    tiny_run, tmp_path, capsys, monkeypatch
):
    """vae.fits: 2, interrupted while saving fit 1 (after both fits trained): the rerun
    resumes both fits from their checkpoints instead of training them again, ends with
    the same fits as an uninterrupted run, and leaves no checkpoint behind."""
    from bioreason.models import SAMSVAE

    out, config, _ = tiny_run
    argv = ["run", str(config), "--workers", "1", "--no-report", "--only", "vae"]
    argv += ["--set", "vae.fits=2"]
    whole = tmp_path / "whole"
    shutil.copytree(out, whole)
    assert main([*argv, "--out", str(whole)]) == 0
    capsys.readouterr()

    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    original = SAMSVAE.save

    def interrupted(self, path, *args, **kwargs):
        if Path(path).name == "model_fit1":
            raise KeyboardInterrupt
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(SAMSVAE, "save", interrupted)
    assert main([*argv, "--out", str(copy)]) == 130  # interrupted, as on Ctrl-C
    assert (copy / "vae" / "checkpoint_fit1").is_dir()
    assert not (copy / "vae" / "model_fit1").exists()
    monkeypatch.setattr(SAMSVAE, "save", original)
    capsys.readouterr()
    assert main([*argv, "--out", str(copy)]) == 0
    printed = capsys.readouterr()
    assert "fit 1 of 2, seed 0), resuming from checkpoint/" in printed.out
    assert "fit 2 of 2, seed 1000), resuming from checkpoint_fit1/" in printed.out
    resumed = json.loads((copy / "vae" / "result.json").read_text())
    expected = json.loads((whole / "vae" / "result.json").read_text())
    for fit, (got, want) in enumerate(zip(resumed["fits"], expected["fits"], strict=True)):
        assert got["steps"] == want["steps"], fit
        assert got["iwelbo_heldout"] == pytest.approx(want["iwelbo_heldout"], abs=1e-6), fit
    for folder in ("checkpoint", "checkpoint_fit1"):
        assert not (copy / "vae" / folder).exists()
    assert (copy / "vae" / "model_fit1").is_dir()
