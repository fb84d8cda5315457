"""scvi-tools' names on the perturbation models (issue 20): ``get_normalized_expression``
per condition with posterior draws, model-based ``differential_expression`` that finds a
planted effect gene, ``get_elbo`` / ``get_marginal_ll`` equal to the existing (IW)ELBO
evaluation, and ``batch_key`` refused saying why."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from bioreason.models import SAMSVAE
from bioreason.models.evaluation import iwelbo

N_GENES = 12
EFFECT_GENE = "G3"


@pytest.fixture(scope="module")
def planted():
    """Control, P0 (gene G3 expressed 8x higher, every other gene as in control) and P1
    (no effect); Poisson counts, 150 cells each; a SAMS-VAE fitted to them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rates = rng.uniform(5, 20, N_GENES)
    effect = np.ones(N_GENES)
    effect[3] = 8.0
    labels = ["control"] * 150 + ["P0"] * 150 + ["P1"] * 150
    means = np.stack([rates * (effect if label == "P0" else 1.0) for label in labels])
    counts = rng.poisson(means).astype(np.float32)
    adata = ad.AnnData(
        X=counts.copy(),
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"G{g}" for g in range(N_GENES)]),
    )
    adata.layers["counts"] = counts
    SAMSVAE.setup_anndata(adata)
    model = SAMSVAE(adata, n_latent=2, seed=0)
    model.train(max_steps=1500, batch_size=128, n_particles=1, lr=3e-2, progress=False)
    yield model
    torch.set_num_threads(threads)


def test_differential_expression_finds_the_planted_gene(planted):
    # delta=1: the planted gene's share grows 8x, so every other gene's share shrinks a
    # little (|lfc| about 0.5; frequencies sum to 1, as scvi-tools' scales do)
    de = planted.differential_expression("P0", n_cells=50, n_draws=20, delta=1.0)
    assert de.index[0] == EFFECT_GENE
    top = de.loc[EFFECT_GENE]
    assert top["proba_de"] > 0.9 and top["bayes_factor"] > 2
    assert (de.drop(EFFECT_GENE)["proba_de"] < 0.5).all()
    assert top["lfc_mean"] > 1.5  # log2(8) = 3: in the right direction and large
    assert top["lfc_min"] <= top["lfc_median"] <= top["lfc_max"]
    assert top["scale1"] > top["scale2"]
    others = de.drop(EFFECT_GENE)
    assert (others["lfc_mean"].abs() < 1.0).all()
    assert bool(top["is_de_fdr_0.05"]) and (de["comparison"] == "P0 vs control").all()
    expected = {"proba_de", "proba_not_de", "bayes_factor", "scale1", "scale2", "lfc_mean"}
    assert expected <= set(de.columns)
    assert np.allclose(de["proba_de"] + de["proba_not_de"], 1.0)
    # the vanilla mode: P(h1 > h2) near 1 for the planted gene
    vanilla = planted.differential_expression("P0", mode="vanilla", n_cells=50, n_draws=20)
    assert vanilla.loc[EFFECT_GENE, "proba_m1"] > 0.95 and vanilla.index[0] == EFFECT_GENE
    # a condition with no effect: no gene called at FDR 5%
    none = planted.differential_expression("P1", n_cells=50, n_draws=20, delta=1.0)
    assert not none["is_de_fdr_0.05"].any()
    with pytest.raises(ValueError, match="mode must be one of"):
        planted.differential_expression("P0", mode="t-test")


def test_normalized_expression_per_condition_with_draws(planted):
    frame = planted.get_normalized_expression(n_cells=50, n_draws=20)
    assert list(frame.index) == ["control", "P0", "P1"]
    assert np.allclose(frame.sum(1), 1.0)  # library_size=1: proportions
    ratio = frame.loc["P0", EFFECT_GENE] / frame.loc["control", EFFECT_GENE]
    assert 3 < ratio < 16  # planted 8x (the other genes' share shrinks a little)
    draws = planted.get_normalized_expression(
        ["P0"], n_cells=50, n_draws=20, return_mean=False, library_size=1e4
    )
    assert draws.shape == (20, 1, N_GENES) and draws.std(0).max() > 0  # posterior draws
    assert np.allclose(draws.sum(-1), 1e4)
    one = planted.get_normalized_expression("P0", gene_list=[EFFECT_GENE], n_draws=5)
    assert list(one.columns) == [EFFECT_GENE]


def test_get_elbo_and_get_marginal_ll_are_the_existing_evaluations(planted):
    marginal = planted.get_marginal_ll(n_mc_samples=20, seed=3)
    assert marginal == planted.iwelbo(n_particles=20, seed=3)
    data = planted.data_for()
    per_cell_iwelbo, per_cell_elbo = iwelbo(
        planted.module,
        planted._loader(data, 256),
        planted.categories_for(data),
        n_particles=20,
        seed=3,
    )
    assert marginal == pytest.approx(float(per_cell_iwelbo.mean()))
    elbo = planted.get_elbo(n_particles=20, seed=3)
    assert elbo == pytest.approx(float(per_cell_elbo.mean())) and elbo <= marginal
    cells = planted.get_marginal_ll(n_mc_samples=20, seed=3, return_mean=False)
    assert cells.shape == (450,)


def test_batch_key_is_refused_saying_why(planted):
    with pytest.raises(ValueError, match=r"\['batch_key'\] .*not supported.*docs/models.md"):
        SAMSVAE.setup_anndata(planted.adata.copy(), batch_key="batch")


@pytest.mark.parametrize("name", ["sams_vae", "cpa_vae", "conditional_vae", "svae_plus"])
def test_every_model_has_the_scvi_names(name):
    from bioreason.data import simulate_screen
    from bioreason.models import MODELS

    cls = MODELS.get(name)
    adata = simulate_screen(
        n_cells_per_condition=10, n_genes=8, n_latent=2, n_perturbations=2, n_combinations=0
    )
    cls.setup_anndata(adata)
    model = cls(adata, n_latent=2, seed=0)
    model.train(max_steps=3, batch_size=64, n_particles=1, progress=False)
    de = model.differential_expression("P0", n_cells=5, n_draws=3)
    assert len(de) == 8 and de["proba_de"].between(0, 1).all()
    expression = model.get_normalized_expression(n_cells=5, n_draws=3)
    assert list(expression.index) == ["control", "P0", "P1"]
    assert np.isfinite(model.get_elbo(n_particles=2)) and np.isfinite(
        model.get_marginal_ll(n_mc_samples=2)
    )
