"""``bioreason demo``: the whole pipeline with the built-in config (slow: minutes), and its
config at test sizes (fast)."""

from __future__ import annotations

import json

import pytest

from bioreason.cli import main


@pytest.mark.slow
def test_demo_runs_end_to_end_and_skips_completed_stages(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    first = capsys.readouterr().out
    assert "[vae] fitting sams_vae" in first and "ECE vs outcomes" in first
    assert (out / "report.html").is_file() and f"report: {out / 'report.html'}" in first
    result = json.loads((out / "calibration" / "result.json").read_text())
    methods = [row["method"] for row in result["headline"]]
    assert methods[0] == "grpo" and len(methods) == 9
    assert main(["demo", "--out", str(out)]) == 0
    second = capsys.readouterr().out
    for stage in ("data", "vae", "task", "warm_start", "finetune", "calibration"):
        assert f"[{stage}] up to date" in second


def test_demo_config_covers_every_method_of_the_comparison():
    from bioreason.pipelines.demo import demo_config

    config = demo_config(seed=3)
    assert config.seed == 3 and config.finetune.seeds == [3]
    assert set(config.finetune.methods) == {
        "grpo",
        "grpo_no_std",
        "grpo_batch_std",
        "rloo",
        "reinforce",
        "ppo",
        "seed_grpo",
        "seed_grpo:base=grpo",
        "h_target:log",
    }
    assert config.task.from_simulator and config.vae.model == "sams_vae"


def test_demo_screen_is_the_demo_configs_with_fields_replaced():
    from bioreason.pipelines.demo import demo_config, demo_screen

    screen = demo_config().data.screen
    assert demo_screen() == screen
    # the demo's screen shares effects across latent dimensions (docs/results_lm.md)
    assert screen.mask_probability == 0.3
    earlier = demo_screen({"mask_probability": 0.1, "n_genes": 50})
    assert earlier.mask_probability == 0.1 and earlier.n_genes == 50
    assert earlier.n_perturbations == screen.n_perturbations
    with pytest.raises(ValueError, match="unknown field.*mask_prob"):
        demo_screen({"mask_prob": 0.1})
    with pytest.raises(ValueError, match="mask_probability must be in"):
        demo_screen({"mask_probability": 1.5})


def test_fields_option_takes_a_json_object_and_names_what_else_it_got():
    import argparse

    from bioreason.cli._base import add_fields_option, json_fields
    from bioreason.pipelines.demo import demo_screen

    parser = argparse.ArgumentParser()
    add_fields_option(parser, "--screen", "ScreenConfig", '{"mask_probability": 0.1}')
    assert parser.parse_args([]).screen == {}
    fields = parser.parse_args(["--screen", '{"mask_probability": 0.1}']).screen
    assert demo_screen(fields).mask_probability == 0.1
    with pytest.raises(argparse.ArgumentTypeError, match="expected a JSON object"):
        json_fields("[0.1]")
    with pytest.raises(argparse.ArgumentTypeError, match="not JSON"):
        json_fields("{mask_probability: 0.1}")
