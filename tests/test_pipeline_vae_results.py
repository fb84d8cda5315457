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
    path = save_result(result, tmp_path, config.name)
    assert json.loads(path.read_text())["model"] == "sams_vae"
    table = write_results_table(tmp_path)
    assert "### synthetic, composable split, 3 steps, early stopping off" in table
    assert "| sams_vae | default | 3 |" in table


def test_field_values_are_json_and_errors_say_how_to_quote():
    from bioreason.pipelines.vae_results import parse_field_values

    assert parse_field_values(["a=1", 'b="x"', "c=null"]) == {"a": 1, "b": "x", "c": None}
    with pytest.raises(ValueError, match="not JSON"):
        parse_field_values(["guide=mean_field"])
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        parse_field_values(["guide"])
