"""``bioreason.models.fit_vae``: the one train-and-evaluate function of the VAEs. Its
figures are checked against the same figures computed here by hand from a model built
and trained the way the function documents; SVAE+ mask recovery scores the single
perturbations; evaluations do not depend on each other; settings and splits are
validated with errors that name the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _models_util import tiny_screen

FAST_VAE = {"n_latent": 3, "n_hidden": 16}
FAST_TRAIN = {"max_steps": 4, "batch_size": 64, "n_particles": 1, "device": "cpu"}
FAST_TRAIN |= {"progress": False, "seed": 1}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def screen():
    from bioreason.data import (
        PerturbationData,
        ScreenGroundTruth,
        composable_combinations,
        split_heldout_combinations,
    )

    adata = tiny_screen(seed=2, n_perturbations=5, n_combinations=4)
    data = PerturbationData.from_anndata(adata)
    heldout = composable_combinations(data, fraction=0.5, seed=0)
    split = split_heldout_combinations(data, heldout=heldout, val_fraction=0.2, seed=0)
    truth = ScreenGroundTruth.from_uns(adata.uns["ground_truth"])
    return adata, data, split, truth


def _configs(**evaluation):
    from bioreason.models import EvaluationConfig, TrainConfig, VAEConfig

    settings = {"iwelbo_particles": 3, "ate_cells": 40, "truth_ate_cells": 50} | evaluation
    return VAEConfig(**FAST_VAE), TrainConfig(**FAST_TRAIN), EvaluationConfig(**settings)


def _by_hand(name, adata, data, split):
    """The model fit_vae documents, built and trained here."""
    from bioreason.models import MODELS

    cls = MODELS[name]
    cells = adata[np.concatenate([split.train, split.val])].copy()
    cls.setup_anndata(cells)
    model = cls(cells, perturbation_names=data.perturbation_names, seed=1, **FAST_VAE)
    model.train(
        **FAST_TRAIN,
        train_indices=np.arange(split.train.size),
        validation_indices=np.arange(split.train.size, cells.n_obs),
    )
    return model


EVERYTHING = (
    "loss_curve",
    "final_loss",
    "validation_iwelbo",
    "heldout_iwelbo",
    "heldout_iwelbo_per_condition",
    "ate_heldout",
    "ate_pooled",
    "ate_truth",
    "ate_seen",
    "mask_recovery",
    "mask_quantiles",
    "ppc",
    "iwelbo_terms",
    "global_kl",
)


def test_every_figure_equals_the_one_computed_by_hand(screen):
    from bioreason.data.expression import (
        ate_agreement,
        average_treatment_effect,
        ground_truth_ate,
        pooled_ate_agreement,
    )
    from bioreason.models import fit_vae
    from bioreason.models.evaluation import mask_recovery

    adata, data, split, truth = screen
    vae, train, evaluation = _configs(evaluations=EVERYTHING)
    model, result = fit_vae(adata, split, "sams_vae", vae, train, evaluation, truth=truth)
    assert set(result) == {
        "model",
        "steps",
        "train_seconds",
        "loss_curve",
        "final_train_loss",
        "final_validation_loss",
        "iwelbo_validation",
        "iwelbo_heldout",
        "iwelbo_heldout_per_condition",
        "ate_pearson_heldout",
        "ate_pearson_heldout_top20",
        "ate_pooled_pearson_heldout",
        "ate_pooled_pearson_heldout_top20",
        "ate_truth_pearson_heldout",
        "ate_truth_pearson_heldout_top20",
        "ate_pearson_seen",
        "mask_auroc",
        "mask_probability_quantiles",
        "mask_prior_probability",
        "ppc",
        "iwelbo_terms",
        "global_kl",
        "global_kl_per_training_cell",
    }
    assert result["model"] == "sams_vae" and result["steps"] == 4

    hand = _by_hand("sams_vae", adata, data, split)
    assert hand.history["train_loss"].tolist() == model.history["train_loss"].tolist()
    assert result["loss_curve"] == hand.history[["step", "train_loss"]].to_numpy().tolist()
    assert result["final_train_loss"] == hand.history["train_loss"].iloc[-1]
    validation = hand.adata[split.train.size :].copy()
    assert result["iwelbo_validation"] == hand.iwelbo(validation, n_particles=3)
    per_cell = hand.iwelbo(adata[split.test].copy(), n_particles=3, return_per_cell=True)
    assert result["iwelbo_heldout"] == float(per_cell.mean())
    labels = data.cell_condition[split.test]
    for condition, value in result["iwelbo_heldout_per_condition"].items():
        assert value == float(per_cell[labels == condition].mean())
    assert set(result["iwelbo_heldout_per_condition"]) == set(split.heldout_conditions)

    heldout = list(split.heldout_conditions)
    observed = np.concatenate([np.flatnonzero(data.is_control), split.test])
    data_ate = average_treatment_effect(adata[observed].copy(), conditions=heldout)
    model_ate = hand.average_treatment_effect(heldout, n_cells=40)
    table = ate_agreement(data_ate, model_ate, top_k=20)
    assert result["ate_pearson_heldout"] == float(table["pearson_all"].mean())
    assert result["ate_pearson_heldout_top20"] == float(table["pearson_top"].mean())
    pooled = pooled_ate_agreement(data_ate, model_ate, top_k=20)
    assert result["ate_pooled_pearson_heldout"] == pooled["pearson_all"]
    exact = ground_truth_ate(truth, heldout, list(adata.var_names), n_cells=50)
    vs_truth = ate_agreement(exact, model_ate, top_k=20)
    assert result["ate_truth_pearson_heldout"] == float(vs_truth["pearson_all"].mean())

    seen = [c for c in data.condition_names if c != "control" and c not in heldout]
    seen_ate = average_treatment_effect(
        adata[np.concatenate([split.train, split.val])].copy(), conditions=seen
    )
    seen_table = ate_agreement(seen_ate, hand.average_treatment_effect(seen, n_cells=40))
    assert result["ate_pearson_seen"] == float(seen_table["pearson_all"].mean())

    effects = hand.get_perturbation_effects()
    rows = [truth.perturbation_names.index(p) for p in effects["mask_probability"].index]
    recovery = mask_recovery(
        truth.masks[rows],
        truth.effects[rows],
        effects["mask_probability"].to_numpy(),
        effects["effect"].to_numpy(),
    )
    assert result["mask_auroc"] == recovery["auroc"]
    median = np.quantile(effects["mask_probability"].to_numpy(), 0.5)
    assert result["mask_probability_quantiles"]["0.5"] == median
    assert result["mask_prior_probability"] == pytest.approx(0.01)  # fixed by default
    assert set(result["ppc"]) == {"mean_log_ratio_median", "mean_corr", "variance_corr"}
    # the IWELBO read off the terms is the same estimate (same draws, other sum order)
    terms = result["iwelbo_terms"]
    assert set(terms) == {"heldout", "validation", "train"}
    assert terms["heldout"]["iwelbo"] == pytest.approx(result["iwelbo_heldout"], rel=1e-9)
    assert terms["validation"]["iwelbo"] == pytest.approx(result["iwelbo_validation"], rel=1e-9)
    assert result["global_kl_per_training_cell"] == result["global_kl"] / split.train.size


def test_an_evaluation_gives_the_same_figure_alone_or_among_others(screen):
    from bioreason.models import fit_vae

    adata, _, split, truth = screen
    vae, train, _ = _configs()
    _, everything = fit_vae(adata, split, "sams_vae", vae, train, _configs()[2], truth=truth)
    for alone in (("ppc",), ("ate_seen", "heldout_iwelbo")):
        _, result = fit_vae(
            adata, split, "sams_vae", vae, train, _configs(evaluations=alone)[2], truth=truth
        )
        for key, value in result.items():
            if key != "train_seconds":
                assert everything[key] == value, key


def test_the_default_evaluations_write_the_vae_stage_keys(screen):
    from bioreason.models import EvaluationConfig

    assert EvaluationConfig().evaluations == (
        "loss_curve",
        "validation_iwelbo",
        "heldout_iwelbo",
        "ate_heldout",
        "ate_seen",
        "mask_recovery",
        "mask_quantiles",
        "ppc",
    )


def test_svae_plus_masks_are_scored_on_the_single_perturbations(screen):
    from bioreason.models import fit_vae
    from bioreason.models.evaluation import mask_recovery

    adata, data, split, truth = screen
    evaluations = ("heldout_iwelbo", "ate_heldout", "mask_recovery", "mask_quantiles")
    vae, train, evaluation = _configs(evaluations=evaluations)
    model, result = fit_vae(adata, split, "svae_plus", vae, train, evaluation, truth=truth)
    # SVAE+ has a category per training condition, combinations included
    effects = model.get_perturbation_effects()
    frame = effects["mask_probability"]
    assert any("+" in name for name in frame.index)
    singles = [p for p in truth.perturbation_names if p in frame.index]
    assert singles and all("+" not in p for p in singles)
    rows = [truth.perturbation_names.index(p) for p in singles]
    recovery = mask_recovery(
        truth.masks[rows],
        truth.effects[rows],
        frame.loc[singles].to_numpy(),
        effects["effect"].loc[singles].to_numpy(),
    )
    assert result["mask_auroc"] == recovery["auroc"]
    assert 0.0 <= result["mask_auroc"] <= 1.0
    assert result["mask_probability_quantiles"]["0.5"] == np.quantile(frame.to_numpy(), 0.5)
    assert "mask_prior_probability" not in result  # SVAE+ infers pi per dimension
    # it cannot score or generate the held-out combinations: skipped, saying why
    assert "iwelbo_heldout" not in result and "ate_pearson_heldout" not in result
    assert set(result["notes"]) == {"heldout_iwelbo", "ate_heldout"}
    assert "SVAE+ cannot predict" in result["notes"]["heldout_iwelbo"]


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_run(screen, tmp_path):
    import dataclasses

    from bioreason.models import fit_vae

    adata, _, split, _ = screen
    vae, train, evaluation = _configs(evaluations=("final_loss", "validation_iwelbo"))
    _, whole = fit_vae(adata, split, "cpa_vae", vae, train, evaluation)
    first = dataclasses.replace(train, max_steps=2, checkpoint_every=2)
    fit_vae(adata, split, "cpa_vae", vae, first, evaluation, checkpoint_dir=tmp_path)
    second = dataclasses.replace(train, checkpoint_every=2)
    _, resumed = fit_vae(
        adata, split, "cpa_vae", vae, second, evaluation, checkpoint_dir=tmp_path, resume=True
    )
    for key in ("steps", "final_train_loss", "final_validation_loss", "iwelbo_validation"):
        assert resumed[key] == whole[key], key


def test_bad_arguments_name_what_is_wrong(screen):
    from bioreason.data import Split
    from bioreason.models import EvaluationConfig, fit_vae

    adata, _, split, _ = screen
    vae, train, evaluation = _configs()
    with pytest.raises(ValueError, match="unknown perturbation model 'sams'"):
        fit_vae(adata, split, "sams", vae, train)
    with pytest.raises(TypeError, match="train must be a TrainConfig"):
        fit_vae(adata, split, "sams_vae", vae, {"max_steps": 3})
    with pytest.raises(TypeError, match="split must be a bioreason.data.Split"):
        fit_vae(adata, {"train": split.train}, "sams_vae", vae, train)
    overlapping = Split(split.train, split.train[:3], split.test, split.heldout_conditions)
    with pytest.raises(ValueError, match="split.train and split.val share 3 cells"):
        fit_vae(adata, overlapping, "sams_vae", vae, train)
    outside = Split(np.array([0, adata.n_obs]), split.val, split.test)
    with pytest.raises(ValueError, match=r"split.train holds 1 indices outside"):
        fit_vae(adata, outside, "sams_vae", vae, train)
    unknown = Split(split.train, split.val, split.test, ("P0+P99",))
    with pytest.raises(ValueError, match=r"split.heldout_conditions \['P0\+P99'\]"):
        fit_vae(adata, unknown, "sams_vae", vae, train)
    with pytest.raises(ValueError, match="unknown VAE evaluation 'iwelbo'"):
        EvaluationConfig(evaluations=("iwelbo",))
    with pytest.raises(ValueError, match=r"lists \['ppc'\] more than once"):
        EvaluationConfig(evaluations=("ppc", "ppc"))
    with pytest.raises(ValueError, match="ate_cells must be an integer >= 1"):
        EvaluationConfig.from_dict({"ate_cells": 0})


def test_train_vae_config_reads_the_flat_and_the_nested_form():
    from bioreason.models import TrainVAEConfig

    flat = TrainVAEConfig.from_dict(
        {"model": "cpa_vae", "n_latent": 3, "lr": 0.01, "control": "ctrl", "iwelbo_particles": 7}
    )
    nested = TrainVAEConfig.from_dict(
        {
            "model": "cpa_vae",
            "vae": {"n_latent": 3},
            "train": {"lr": 0.01},
            "setup": {"control": "ctrl"},
            "evaluation": {"iwelbo_particles": 7},
        }
    )
    assert flat == nested
    assert flat.vae.n_latent == 3 and flat.train.lr == 0.01 and flat.setup.control == "ctrl"
    # a partial evaluation keeps the command's evaluations and seed
    assert flat.evaluation.evaluations == ("final_loss", "heldout_iwelbo")
    assert flat.evaluation.seed is None and flat.evaluation.iwelbo_particles == 7
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['n_latnt'\].*'n_latent'"):
        TrainVAEConfig.from_dict({"n_latnt": 3})
    with pytest.raises(ValueError, match="n_latent is given twice"):
        TrainVAEConfig.from_dict({"n_latent": 3, "vae": {"n_latent": 4}})
    with pytest.raises(ValueError, match="test_fraction must be a number in"):
        TrainVAEConfig.from_dict({"test_fraction": 1.0})
    with pytest.raises(ValueError, match="model must be one of"):
        TrainVAEConfig.from_dict({"model": "vae"})


def test_the_flat_form_has_one_home_per_name():
    import dataclasses

    from bioreason.data import PerturbationSetup
    from bioreason.models import TrainConfig, TrainVAEConfig, VAEConfig

    names = [
        f.name
        for cls in (PerturbationSetup, VAEConfig, TrainConfig, TrainVAEConfig)
        for f in dataclasses.fields(cls)
    ]
    assert len(names) == len(set(names))


def test_train_vae_split_draws_validation_as_model_train_does():
    from bioreason.models import TrainConfig, TrainVAEConfig

    config = TrainVAEConfig(train=TrainConfig(seed=3), test_fraction=0.2, validation_fraction=0.25)
    split = config.split(50)
    assert (split.test.size, split.val.size, split.train.size) == (10, 10, 30)
    cells = np.concatenate([split.train, split.val, split.test])
    assert np.array_equal(np.sort(cells), np.arange(50))
    # model.train(validation_fraction=...) draws its validation cells among the rest so
    rest = np.setdiff1d(np.arange(50), split.test)
    order = np.random.default_rng(3).permutation(rest.size)
    assert np.array_equal(split.val, rest[np.sort(order[:10])])
    again = config.split(50)
    assert all(np.array_equal(getattr(again, k), getattr(split, k)) for k in ("train", "val"))


def test_every_evaluation_setting_is_documented():
    from bioreason.cli._options import undocumented_fields
    from bioreason.models import EvaluationConfig, TrainVAEConfig

    assert undocumented_fields(EvaluationConfig) == []
    assert undocumented_fields(TrainVAEConfig) == []
