"""The synthetic-calibration pipeline and CLI, on a shortened run."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bioreason.cli import main
from bioreason.pipelines.synthetic_calibration import SyntheticCalibrationConfig, plan_runs
from bioreason.rl import TabularRLConfig

REPO = Path(__file__).resolve().parents[1]


def test_default_plan_is_the_paper_setting():
    runs = dict(plan_runs(SyntheticCalibrationConfig()))
    assert list(runs) == ["grpo", "grpo_no_std", "rloo", "reinforce", "ppo"]
    for name, config in runs.items():
        assert config.steps == 50_000 and config.lr == 3e-3
        assert config.updates_per_rollout == 1 and config.clip_eps is None
        assert config.group_size == (1 if name in ("reinforce", "ppo") else 10)
    assert runs["ppo"].value_lr == 1e-5
    offline = dict(plan_runs(SyntheticCalibrationConfig(offline=True)))
    assert len(offline) == 15
    assert offline["grpo_offline_clip0.2"].clip_eps == 0.2
    assert offline["rloo_offline_clip0.001"].updates_per_rollout == 10
    # the YAML shipped in pipelines/ is the same setting
    from_yaml = SyntheticCalibrationConfig.from_yaml(REPO / "pipelines/synthetic_calibration.yaml")
    assert from_yaml == SyntheticCalibrationConfig()


def test_cli_short_run_writes_metrics_figures_and_resumes(tmp_path, capsys):
    out = tmp_path / "calibration"
    config = tmp_path / "small.yaml"
    config.write_text("n_questions: 400\nn_boot: 20\nrl: {log_every: 50, checkpoint_every: 50}\n")
    args = [
        "synthetic-calibration",
        "--out",
        str(out),
        "--config",
        str(config),
        "--steps",
        "150",
        "--methods",
        "grpo",
        "rloo",
        "ppo",
        "h_target:log",
        "seed_grpo",
        "--offline",
        "--no-progress",
    ]
    assert main(args) == 0
    table = pd.read_csv(out / "metrics.csv")
    expected = ["grpo", "rloo", "ppo", "h_target:log", "seed_grpo"]
    expected += [f"{m}_offline_clip{c}" for c in ("0.2", "0.001") for m in expected[:5]]
    assert table["method"].tolist() == expected
    for column in (
        "ece",
        "auroc",
        "accuracy",
        "mae_to_reference",
        "ece_to_reference",
        "overconfidence",
        "theory_drift",
        "observed_drift",
        # against each category's empirical outcome rate
        "mae_to_reference_empirical",
        "ece_to_reference_empirical",
        "overconfidence_empirical",
        "mae_category_to_empirical",
    ):
        assert column in table.columns
    assert table["ece"].between(0, 1).all() and table["auroc"].between(0, 1).all()
    # unbiased estimators are predicted not to drift; GRPO's prediction is a number
    assert (table.set_index("method").loc[["rloo", "ppo"], "theory_drift"] == 0).all()
    assert pd.notna(table.set_index("method").loc["grpo", "theory_drift"])
    assert pd.isna(table.set_index("method").loc["h_target:log", "drift_sign_agreement"])
    for name in ("grpo", "h_target-log", "rloo_offline_clip0.001"):
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    log = pd.read_csv(out / "runs" / "grpo" / "log.csv")
    assert log["step"].tolist() == [0, 50, 100, 150]
    assert not (out / "runs" / "grpo" / "checkpoint.pt").exists()
    capsys.readouterr()

    # a second invocation skips every completed run and rewrites the same table
    assert main(args) == 0
    assert capsys.readouterr().out.count("up to date") == 15
    assert pd.read_csv(out / "metrics.csv").equals(table)

    # a run recorded before a TabularRLConfig field existed stays up to date while that
    # field is at its default (the manifest rule of bioreason.stage), and only then
    manifest_path = out / "runs" / "rloo" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["config"]["run"]["entropy_coef"] == 0.0  # the default
    del manifest["config"]["run"]["entropy_coef"]
    manifest_path.write_text(json.dumps(manifest))
    assert main(args) == 0
    assert capsys.readouterr().out.count("up to date") == 15
    assert manifest["config"]["run"]["log_every"] == 50  # 1,000 by default
    del manifest["config"]["run"]["log_every"]
    manifest_path.write_text(json.dumps(manifest))
    assert main(args) == 1
    assert "different settings" in capsys.readouterr().err
    manifest["config"]["run"]["log_every"] = 50
    manifest_path.write_text(json.dumps(manifest))

    # other settings in the same folder: refused unless --overwrite
    changed = [a if a != "150" else "100" for a in args]
    assert main(changed) == 1  # a failure, not a usage error (exit codes of issue 9)
    assert "different settings" in capsys.readouterr().err


def test_cli_refuses_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["synthetic-calibration", "--out", str(tmp_path), "--steps", "1"]) == 1
    assert "not written by synthetic-calibration" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_cli_rejects_unknown_method(tmp_path, capsys):
    code = main(["synthetic-calibration", "--out", str(tmp_path / "x"), "--methods", "dpo"])
    assert code == 2
    assert "unknown advantage estimator" in capsys.readouterr().err


def test_grpo_becomes_overconfident_while_rloo_does_not(tmp_path):
    """A reduced paper run (2,000 questions, 1,500 steps): GRPO already drifts outward,
    as the theory predicts; RLOO approaches the truth from the uniform start."""
    from bioreason.pipelines.synthetic_calibration import run_synthetic_calibration

    # seed 1: since p_c and the outcomes come from independent streams, seed 0's question
    # set has a category with p_c = 0.007, below the answer grid, where even the
    # unbiased theory's end point is clipped to 0.01
    config = SyntheticCalibrationConfig(
        n_questions=2000,
        methods=["grpo", "rloo"],
        n_boot=0,
        seed=1,
        rl=TabularRLConfig(steps=1500, seed=1),
    )
    table = run_synthetic_calibration(tmp_path, config, progress=False).set_index("method")
    assert table.loc["grpo", "overconfidence"] > 0.1
    assert table.loc["rloo", "overconfidence"] < 0.05
    assert table.loc["grpo", "theory_drift"] > 0 and table.loc["grpo", "observed_drift"] > 0
    assert table.loc["grpo", "theory_overconfidence"] > 0.2
    assert table.loc["rloo", "theory_overconfidence"] == 0


def test_category_probabilities_and_outcomes_come_from_independent_streams():
    """Drawn from generators with the same seed, an outcome reused the uniform that made
    its p_c, so question 0's outcome was 0 for every seed."""
    import numpy as np

    from bioreason.pipelines.synthetic_calibration import _questions

    first = [
        int(_questions(SyntheticCalibrationConfig(n_questions=40, seed=seed))["outcome"][0])
        for seed in range(40)
    ]
    assert 8 <= sum(first) <= 32  # p_0 ~ U(0, 1): about half the seeds give a 1
    config = SyntheticCalibrationConfig(n_questions=40, seed=3)
    p_stream, y_stream = np.random.SeedSequence(3).spawn(2)
    p_category = np.random.default_rng(p_stream).random(20)
    table = _questions(config)
    assert np.allclose(table["p_star"], p_category[np.arange(40) % 20])
    uniforms = np.random.default_rng(y_stream).random(40)
    assert (table["outcome"] == (uniforms < table["p_star"])).all()


def test_plan_nests_the_rl_config_and_method_options():
    config = SyntheticCalibrationConfig.from_dict(
        {
            "methods": ["grpo_batch_std", "seed_grpo:base=grpo"],
            "group_sizes": {"seed_grpo": 6},
            "rl": {"steps": 7, "lr": 0.01, "seed": 4},
        }
    )
    runs = dict(plan_runs(config))
    assert runs["grpo_batch_std"].steps == 7 and runs["grpo_batch_std"].lr == 0.01
    assert runs["grpo_batch_std"].group_size == 10 and runs["grpo_batch_std"].seed == 4
    assert runs["seed_grpo:base=grpo"].group_size == 6
    assert runs["seed_grpo:base=grpo"].method == "seed_grpo:base=grpo"
    with pytest.raises(ValueError, match="rl: steps must be >= 1"):
        SyntheticCalibrationConfig.from_dict({"rl": {"steps": 0}})


# ----- bad settings fail before anything is trained or written (issue 9) ------------


def _small(**values):
    values = {"n_questions": 40, "n_boot": 0, "rl": {"steps": 2, "log_every": 1}, **values}
    return SyntheticCalibrationConfig.from_dict(values)


@pytest.mark.parametrize(
    ("methods", "named"),
    [
        (["grpo", "rloo", "grpo"], "'grpo'"),
        (["h_target:log", "h_target:target=log"], "'h_target:target=log'"),
        (["seed_grpo:base=grpo,alpha=0.5", "seed_grpo:alpha=0.5,base=grpo"], "seed_grpo"),
    ],
)
def test_duplicate_methods_are_refused_naming_the_duplicate(methods, named):
    """``--methods grpo grpo`` produced two rows named grpo (and trained twice)."""
    with pytest.raises(ValueError, match=rf"methods lists .*{named}.* more than once"):
        _small(methods=methods)


def test_cli_refuses_duplicate_methods(tmp_path, capsys):
    out = tmp_path / "x"
    args = ["synthetic-calibration", "--out", str(out), "--methods", "grpo", "grpo"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "grpo" in err and "more than once" in err
    assert not out.exists()


def test_duplicate_offline_clips_and_misspelt_group_sizes_are_refused():
    with pytest.raises(ValueError, match="offline_clips lists 0.2 more than once"):
        _small(offline=True, offline_clips=[0.2, 0.2])
    with pytest.raises(ValueError, match="group_sizes.*'rinforce'.*choose"):
        _small(group_sizes={"rinforce": 1})
    with pytest.raises(ValueError, match="n_bins"):
        _small(n_bins=0)
    with pytest.raises(ValueError, match="n_boot"):
        _small(n_boot=-1)


def test_unknown_method_fails_before_anything_is_written(tmp_path):
    from bioreason.pipelines.synthetic_calibration import run_synthetic_calibration

    config = _small(methods=["grpo"])
    config.methods.append("dpo")  # changed after validation
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"unknown advantage estimator 'dpo'; choose one of"):
        run_synthetic_calibration(out, config, progress=False)
    assert not out.exists()


@pytest.mark.parametrize(
    ("methods", "group_sizes", "message"),
    [
        (["grpo", "rejection_sampling"], {}, "rejection_sampling.*0/1"),
        (["grpo", "rloo"], {"rloo": 1}, "rloo needs group_size >= 2"),
    ],
)
def test_a_method_that_cannot_run_fails_before_any_training(
    tmp_path, methods, group_sizes, message
):
    """rejection_sampling with the log-score reward, or RLOO with one rollout, used to
    fail (or train on garbage) only after the runs before it had trained."""
    from bioreason.pipelines.synthetic_calibration import run_synthetic_calibration

    config = _small(methods=methods, group_sizes=group_sizes)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"cannot run.*{message}"):
        run_synthetic_calibration(out, config, progress=False)
    assert not out.exists()
