"""The held-out results pipeline behind benchmarks/vae_results.py."""

import json

import pytest

from bioreason.pipelines.vae_results import (
    VAEResultsConfig,
    run_vae_results,
    save_result,
    write_results_table,
)


def test_config_validates_dataset_split_and_model():
    with pytest.raises(ValueError, match="reference split exists for dataset='norman' only"):
        VAEResultsConfig(dataset="synthetic", split="reference")
    with pytest.raises(ValueError, match="unknown perturbation model 'sams'"):
        VAEResultsConfig(model="sams")
    with pytest.raises(ValueError, match="split must be"):
        VAEResultsConfig(split="random")
    config = VAEResultsConfig(model_options={"embedding_n_layers": 4}, early_stopping=True)
    assert config.name == "synthetic_composable_sams_vae_3000steps_earlystop_embedding_n_layers4"


@pytest.mark.slow
def test_a_short_synthetic_run_reports_every_figure_and_tabulates(tmp_path):
    config = VAEResultsConfig(steps=3, iwelbo_particles=2, n_latent=4, n_hidden=16)
    result = run_vae_results(config)
    assert result["steps_taken"] == 3 and len(result["heldout"]) == 5
    assert set(result["test_iwelbo_per_condition"]) == set(result["heldout"])
    for key in ("test_iwelbo", "validation_iwelbo", "ate_pooled_pearson_all", "mask_auroc"):
        assert isinstance(result[key], float)
    assert 0.0 <= result["mask_probability_quantiles"]["0.5"] <= 1.0
    assert result["mask_prior_probability"] == pytest.approx(0.01)  # the fixed default
    path = save_result(result, tmp_path, config.name)
    assert json.loads(path.read_text())["model"] == "sams_vae"
    table = write_results_table(tmp_path)
    assert "### synthetic, composable split, 3 steps, early stopping off" in table
    assert "| sams_vae | default | 3 |" in table
    assert "| median q(M=1) | prior pi | train s |" in table and "| 0.01 |" in table


def test_field_values_are_json_and_errors_say_how_to_quote():
    from bioreason.pipelines.vae_results import parse_field_values

    assert parse_field_values(["a=1", 'b="x"', "c=null"]) == {"a": 1, "b": "x", "c": None}
    with pytest.raises(ValueError, match="not JSON"):
        parse_field_values(["guide=mean_field"])
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        parse_field_values(["guide"])


def _benchmark_script():
    """benchmarks/vae_results.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "vae_results.py"
    spec = importlib.util.spec_from_file_location("_vae_results_script", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_refuses_a_result_it_did_not_write_before_training(tmp_path, capsys):
    script = _benchmark_script()
    trained = []

    def run(config):
        trained.append(config.name)
        return {"model": config.model, "seed": config.seed, "test_iwelbo": -1.0}

    script.run_vae_results = run
    argv = ["--dataset", "synthetic", "--steps", "1", "--out", str(tmp_path)]
    name = VAEResultsConfig(steps=1).name
    theirs = tmp_path / f"{name}.json"
    theirs.write_text('{"written": "by hand"}')
    assert script.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(theirs) in err and "--force" in err
    assert trained == []  # refused before training
    assert theirs.read_text() == '{"written": "by hand"}'
    assert not (tmp_path / f"{name}.json.new").exists()
    assert script.main([*argv, "--force"]) == 0
    assert json.loads(theirs.read_text())["model"] == "sams_vae" and trained == [name]
    assert script.main(argv) == 0  # its own result is replaced without --force
    assert trained == [name, name]
