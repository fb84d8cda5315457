"""``bioreason finetune``: a tiny LM trained on a tiny task table writes its outputs,
refuses a folder it did not write, resumes an interrupted run, reads a config file; it is
the same job as a pipeline's (the same ``metrics.json``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bioreason.cli import main
from bioreason.data.tasks import TASK_COLUMNS, save_task

# a few steps, small groups: the whole file runs in seconds
FAST = ["--steps", "2", "--group-size", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def task_path(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        for j in range(2):
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
                    "p_true": p,
                    "reference_probability": np.nan,
                    "outcome": float(rng.random() < p),
                    "split": "train" if i < 4 else "test",
                }
            )
    path = tmp_path / "task.parquet"
    save_task(pd.DataFrame(rows, columns=TASK_COLUMNS), path)
    return path


def _config(tmp_path, **values):
    path = tmp_path / "finetune.yaml"
    base = {"questions_per_step": 2, "max_new_tokens": 3, "eval_samples": 2}
    path.write_text(json.dumps({"rl": {**base, **values}}))  # JSON is YAML
    return path


def run(task_path, out, config, *extra):
    argv = ["finetune", "--task", str(task_path), "--method", "grpo", "--model", "tiny"]
    return main([*argv, "--out", str(out), "--config", str(config), *FAST, *extra])


def test_finetune_writes_outputs_and_is_idempotent(task_path, tmp_path, capsys):
    out, config = tmp_path / "run", _config(tmp_path)
    assert run(task_path, out, config, "--warm-start-steps", "2", "--seed", "3") == 0
    for name in ("predictions.parquet", "log.csv", "eval.csv", "checkpoint.pt", "metrics.json"):
        assert (out / name).is_file(), name
    assert (out / "model" / "config.json").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["rl"]["seed"] == 3 and manifest["config"]["warm_start_steps"] == 2
    assert all(digest for digest in manifest["outputs"].values())
    predictions = pd.read_parquet(out / "predictions.parquet")
    assert set(predictions["question_id"]) == {f"P{i}:G{j}" for i in (4, 5) for j in (0, 1)}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["n_test"] == 4 and metrics["method"] == "grpo"
    assert metrics["seed"] == 3 and 0 <= metrics["ece"] <= 1 and metrics["n_scored"] == 4
    assert metrics["critic"] == "none"  # GRPO has no value function
    # the start of the drift is evaluated before training, the end at the last step
    assert pd.read_csv(out / "eval.csv")["step"].tolist() == [0, 2]
    assert np.isfinite(metrics["drift_measured_start"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"test ece {metrics['ece']:.4f} over 4 questions (q_exact scored)" in last
    assert f"invalid answers {metrics['invalid_rate']:.1%} of those sampled" in last
    assert run(task_path, out, config, "--warm-start-steps", "2", "--seed", "3") == 0
    assert "up to date" in capsys.readouterr().out
    # a manifest an older bioreason wrote, before two settings existed (one at its default
    # here, one not, as `_config` sets it): up to date for the first, refused for the second
    from bioreason.rl.lm import LMRLConfig

    recorded = manifest["config"]["rl"]
    assert recorded["kl_coef_end"] is None and LMRLConfig().kl_coef_end is None
    assert recorded["questions_per_step"] == 2 != LMRLConfig().questions_per_step
    for older, code in (("kl_coef_end", 0), ("questions_per_step", 1)):
        edited = json.loads((out / "manifest.json").read_text())
        del edited["config"]["rl"][older]
        (out / "manifest.json").write_text(json.dumps(edited))
        argv = ("--warm-start-steps", "2", "--seed", "3")
        assert run(task_path, out, config, *argv) == code, older
        printed = capsys.readouterr()
        assert ("up to date" in printed.out) == (code == 0), older
        (out / "manifest.json").write_text(json.dumps(manifest))

    from bioreason.lm import load_predictor

    predictor = load_predictor(out / "model", device="cpu")
    assert predictor.expected_answer(["perturb P4 readout G0 probability ?"]).shape == (1,)


def test_finetune_refuses_foreign_folder_and_other_settings(task_path, tmp_path, capsys):
    out, config = tmp_path / "run", _config(tmp_path)
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert run(task_path, out, config) == 1
    assert "mine.txt" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep"

    other = tmp_path / "other"
    assert run(task_path, other, config) == 0
    assert run(task_path, other, config, "--seed", "5") == 1
    assert "other settings" in capsys.readouterr().err
    assert run(task_path, other, config, "--seed", "5", "--force") == 0
    assert json.loads((other / "manifest.json").read_text())["seed"] == 5


def test_finetune_resumes_an_interrupted_run(task_path, tmp_path, monkeypatch):
    from bioreason.rl import LMTrainer

    config = _config(tmp_path, checkpoint_every=1)
    whole = tmp_path / "whole"
    assert run(task_path, whole, config, "--steps", "3") == 0

    calls = {"n": 0}
    original = LMTrainer.train_step

    def interrupted(self):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self)

    monkeypatch.setattr(LMTrainer, "train_step", interrupted)
    part = tmp_path / "part"
    assert run(task_path, part, config, "--steps", "3") == 130
    assert not (part / "metrics.json").exists()
    monkeypatch.setattr(LMTrainer, "train_step", original)
    assert run(task_path, part, config, "--steps", "3") == 0
    a = torch.load(whole / "checkpoint.pt", weights_only=False)["trainer"]["model"]
    b = torch.load(part / "checkpoint.pt", weights_only=False)["trainer"]["model"]
    diff = {k: float((a[k] - b[k]).abs().max()) for k in a if not torch.equal(a[k], b[k])}
    assert not diff, diff


def test_finetune_config_errors(task_path, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nnot_a_field: 1\n")
    assert run(task_path, tmp_path / "x", bad) == 1
    assert "unknown field(s) ['not_a_field']" in capsys.readouterr().err
    assert run(task_path, tmp_path / "x", _config(tmp_path, max_new_tokens=0)) == 1
    assert "rl: max_new_tokens must be >= 1" in capsys.readouterr().err
    argv = ["finetune", "--task", str(task_path), "--out", str(tmp_path / "y"), "--steps", "1"]
    assert main(argv) == 2
    assert "--model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["finetune", "--task", str(task_path), "--out", "z", "--steps", "0"])
    assert exit_info.value.code == 2


def test_a_flat_config_file_still_loads_with_a_warning(task_path, tmp_path):
    """The older form (LMRLConfig fields at the top level) is read as rl.<field>."""
    flat = tmp_path / "flat.yaml"
    flat.write_text("questions_per_step: 2\nmax_new_tokens: 3\neval_samples: 2\n")
    with pytest.warns(FutureWarning) as caught:
        assert run(task_path, tmp_path / "flat", flat) == 0
    messages = [str(warning.message) for warning in caught]
    assert any("'max_new_tokens' has moved to 'rl.max_new_tokens'" in m for m in messages)
    manifest = json.loads((tmp_path / "flat" / "manifest.json").read_text())
    assert manifest["config"]["rl"]["max_new_tokens"] == 3
    assert manifest["config"]["rl"]["eval_split"] == "test"  # the job's default


def test_a_ppo_job_records_its_critic(task_path, tmp_path):
    out, config = tmp_path / "ppo", _config(tmp_path)
    assert run(task_path, out, config, "--method", "ppo", "--critic", "shared") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "ppo" and metrics["critic"] == "shared"
    assert json.loads((out / "manifest.json").read_text())["config"]["rl"]["critic"] == "shared"


def test_finetune_and_a_pipeline_job_write_the_same_metrics(task_path, tmp_path):
    """One job: ``bioreason finetune`` and the pipeline's finetune stage job (built by the
    stage from a pipeline config, run by lm_runs.run_jobs) with the same task,
    warm-started model folder and LMRLConfig give the same metrics.json and predictions,
    apart from the timings."""
    from bioreason.pipelines.config import PipelineConfig
    from bioreason.pipelines.lm_runs import run_jobs, warm_start_folder
    from bioreason.pipelines.lm_stages import _jobs
    from bioreason.rl.lm import FinetuneConfig, LMRLConfig
    from bioreason.rl.lm.job import TIMING_FIELDS

    warm = warm_start_folder(task_path, tmp_path / "warm" / "seed1", 1, steps=3, device="cpu")
    rl = LMRLConfig(
        method="rloo",
        seed=1,
        steps=2,
        group_size=2,
        questions_per_step=2,
        eval_samples=2,
        eval_every=2,
        log_every=1,
        checkpoint_every=2,
        train_split="train",
        eval_split="test",
        device="cpu",
    )
    shared = {k: v for k, v in rl.to_dict().items() if k not in ("method", "seed")}
    pipeline = PipelineConfig.from_dict(
        {"finetune": {"methods": ["rloo"], "seeds": [1], "rl": shared}}
    )
    (job,) = _jobs(pipeline, tmp_path / "stage", task_path, tmp_path / "warm")
    assert job["config"].rl == rl and job["config"].model == str(warm)
    run_jobs([job])
    path = tmp_path / "cli.yaml"
    path.write_text(json.dumps(FinetuneConfig(model=str(warm), rl=rl).to_dict()))
    argv = ["finetune", "--task", str(task_path), "--config", str(path), "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0

    def read(folder):
        metrics = json.loads((folder / "metrics.json").read_text())
        predictions = pd.read_parquet(folder / "predictions.parquet")
        return {k: v for k, v in metrics.items() if k not in TIMING_FIELDS}, predictions

    cli, cli_predictions = read(tmp_path / "cli")
    assert set(TIMING_FIELDS) < set(json.loads((tmp_path / "cli" / "metrics.json").read_text()))
    assert cli["method"] == "rloo" and cli["n_test"] == 4
    metrics, predictions = read(Path(job["folder"]))
    assert metrics == cli
    pd.testing.assert_frame_equal(predictions, cli_predictions)


def test_final_line_names_the_invalid_answer_rate():
    from bioreason.cli.finetune import final_line

    metrics = {"steps": 5, "method": "grpo", "ece": 0.5088, "n_scored": 1, "q_source": "exact"}
    silent = final_line("runs/x", {**metrics, "invalid_rate": 1.0}, "test")
    assert silent.startswith("runs/x: 5 steps of grpo; test ece 0.5088 over 1 questions")
    assert "invalid answers 100.0% of those sampled" in silent
    assert "warning: the policy stopped writing valid answers" in silent
    fine = final_line("runs/x", {**metrics, "invalid_rate": 0.004}, "test")
    assert "invalid answers 0.4% of those sampled" in fine and "warning" not in fine


def test_a_finished_run_asked_for_more_steps_continues_it(task_path, tmp_path, capsys):
    config = _config(tmp_path, checkpoint_every=1)
    fresh, longer = tmp_path / "fresh", tmp_path / "longer"
    assert run(task_path, fresh, config, "--steps", "4") == 0
    assert run(task_path, longer, config) == 0  # FAST: 2 steps
    capsys.readouterr()
    assert run(task_path, longer, config, "--steps", "4") == 0
    assert "continuing the finished run from step 2 to 4" in capsys.readouterr().out
    manifest = json.loads((longer / "manifest.json").read_text())
    assert manifest["config"]["rl"]["steps"] == 4 and all(manifest["outputs"].values())
    metrics = json.loads((longer / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["steps_run"] == 2
    # the steps a run of 4 steps takes from its step 2: the same weights
    a = torch.load(fresh / "checkpoint.pt", weights_only=True)["trainer"]["model"]
    b = torch.load(longer / "checkpoint.pt", weights_only=True)["trainer"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics["ece"] == json.loads((fresh / "metrics.json").read_text())["ece"]
    assert run(task_path, longer, config, "--steps", "4") == 0
    assert "up to date" in capsys.readouterr().out
    # fewer steps, or any other change, still needs --force (naming what differs)
    assert run(task_path, longer, config, "--steps", "3") == 1
    assert "other settings (rl.steps: 4 -> 3)" in capsys.readouterr().err
    assert run(task_path, longer, config, "--steps", "6", "--seed", "5") == 1
    err = capsys.readouterr().err
    assert "rl.seed: 0 -> 5" in err and "rl.steps: 4 -> 6" in err and "--force" in err
    assert json.loads((longer / "manifest.json").read_text())["config"]["rl"]["steps"] == 4


def test_a_run_whose_schedule_follows_its_length_is_not_continued(task_path, tmp_path, capsys):
    config = _config(tmp_path, lr_end=1e-5, lr_schedule="linear")
    out = tmp_path / "scheduled"
    assert run(task_path, out, config) == 0
    capsys.readouterr()
    assert run(task_path, out, config, "--steps", "4") == 1
    err = capsys.readouterr().err
    assert "lr_schedule='linear'" in err and "cannot be continued" in err
    assert run(task_path, out, config, "--steps", "4", "--force") == 0


def test_a_job_a_callback_stops_records_it_and_continues_with_more_steps(task_path, tmp_path):
    from bioreason.rl.lm import FinetuneConfig, StopAfterSteps, run_finetune

    rl = {"steps": 3, "group_size": 2, "questions_per_step": 2, "max_new_tokens": 3}
    rl.update({"eval_samples": 2, "device": "cpu"})
    config = FinetuneConfig.from_dict({"warm_start_steps": 2, "rl": rl})
    out = tmp_path / "stopped"
    metrics = run_finetune(task_path, out, config, progress=False, callbacks=[StopAfterSteps(1)])
    assert metrics["steps"] == 1 and metrics["stopped_early"] is True
    assert pd.read_parquet(out / "predictions.parquet")["step"].max() == 1
    longer = FinetuneConfig.from_dict({"warm_start_steps": 2, "rl": {**rl, "steps": 4}})
    metrics = run_finetune(task_path, out, longer, progress=False, log=None)
    assert metrics["steps"] == 4 and metrics["stopped_early"] is False
    assert metrics["steps_run"] == 3
