"""The posterior predictive API: draws kept apart, expected counts, sample() on top of
it, models that know perturbations without training cells, early-stopping defaults."""

import numpy as np
import pytest
import torch
from _models_util import tiny_screen

from bioreason.models import CPAVAE, SAMSVAE, ConditionalVAE, PosteriorPredictive, SVAEPlus


@pytest.fixture(scope="module")
def sams():
    adata = tiny_screen()
    SAMSVAE.setup_anndata(adata)
    model = SAMSVAE(adata, n_latent=3, n_hidden=16)
    model.train(max_steps=30, batch_size=64, progress=False, device="cpu")
    return model


@pytest.mark.parametrize("cls", [SAMSVAE, CPAVAE, ConditionalVAE, SVAEPlus])
def test_posterior_predictive_shapes_and_expected_counts(cls):
    adata = tiny_screen()
    cls.setup_anndata(adata)
    model = cls(adata, n_latent=3, n_hidden=16)
    result = model.posterior_predictive(["control", "P0"], n_cells=6, n_draws=4, seed=1)
    assert isinstance(result, PosteriorPredictive)
    assert result.conditions == ["control", "P0"] and result.gene_names == model.gene_names
    assert result.counts.shape == result.expected_counts.shape == (4, 2, 6, adata.n_vars)
    assert result.library_size.shape == (4, 2, 6)
    assert result.counts.dtype == np.float32
    assert np.array_equal(result.counts, np.round(result.counts)) and (result.counts >= 0).all()
    # negative binomial means are l * softmax(...): each cell's means sum to its library size
    np.testing.assert_allclose(result.expected_counts.sum(-1), result.library_size, rtol=1e-4)
    # library sizes come from the training cells
    assert set(np.unique(result.library_size)) <= set(np.asarray(model.library_sizes))


def test_sampled_counts_average_to_the_expected_counts(sams):
    result = sams.posterior_predictive(["control", "P1", "P0+P2"], n_cells=50, n_draws=20)
    mu = result.expected_counts.astype(np.float64)
    theta = torch.nn.functional.softplus(sams.module.gene_parameter).detach().numpy()
    variance = (mu + mu**2 / theta).sum()  # NB variance, summed over all entries
    z = (result.counts.sum() - mu.sum()) / np.sqrt(variance)
    assert abs(z) < 4.5  # a 4.5-sigma band for one Gaussian statistic


def test_draws_are_kept_apart_and_shared_by_the_conditions_of_a_draw():
    adata = tiny_screen()
    CPAVAE.setup_anndata(adata)
    model = CPAVAE(adata, n_latent=2, n_layers=0, guide="mean_field", likelihood="poisson")
    with torch.no_grad():
        model.module.embedding_loc.zero_()
        model.module.embedding_raw_scale.fill_(2.0)  # q(E) wide: draws differ a lot
        model.module.decoder.output.weight.zero_()
        model.module.decoder.output.weight[0, 0] = 1.0  # gene 0 reads latent dimension 0
        model.module.decoder.output.bias.zero_()
    result = model.posterior_predictive(
        ["P0", "P0+P1", "P2"], n_cells=200, n_draws=100, library_size=1e4, seed=0
    )
    gene0 = np.log(result.expected_counts[..., 0]).mean(axis=2)  # (draws, conditions)
    # within a draw the cells' means vary only through z_basal, across draws through E:
    spread_across_draws = gene0.std(axis=0)
    assert (spread_across_draws > 0.5).all()
    # P0 and P0+P1 share E_P0 within a draw; P2 shares nothing with P0
    assert np.corrcoef(gene0[:, 0], gene0[:, 1])[0, 1] > 0.45
    assert abs(np.corrcoef(gene0[:, 0], gene0[:, 2])[0, 1]) < 0.35


def test_posterior_predictive_is_seeded_and_converts_to_anndata(sams):
    a = sams.posterior_predictive(["P1", "control"], n_cells=3, n_draws=2, seed=5)
    b = sams.posterior_predictive(["P1", "control"], n_cells=3, n_draws=2, seed=5)
    np.testing.assert_array_equal(a.counts, b.counts)
    state = torch.get_rng_state()
    sams.posterior_predictive(["P1"], n_cells=3, n_draws=2, seed=6)
    assert torch.equal(state, torch.get_rng_state())  # the caller's stream is untouched
    adata = a.to_anndata()
    assert adata.n_obs == 2 * 2 * 3
    assert adata.obs["draw"].tolist() == [0] * 6 + [1] * 6
    assert adata.obs["perturbation"].tolist() == (["P1"] * 3 + ["control"] * 3) * 2
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), a.counts.reshape(12, -1))
    np.testing.assert_array_equal(
        adata.layers["expected_counts"], a.expected_counts.reshape(12, -1)
    )
    assert a.index("control") == 1
    with pytest.raises(ValueError, match="was not generated"):
        a.index("P3")


def test_posterior_predictive_rejects_bad_arguments(sams):
    with pytest.raises(ValueError, match="n_draws must be positive"):
        sams.posterior_predictive(["P1"], n_draws=0)
    with pytest.raises(ValueError, match="does not broadcast"):
        sams.posterior_predictive(["P1"], n_cells=3, n_draws=2, library_size=np.ones(5))
    with pytest.raises(ValueError, match="positive and finite"):
        sams.posterior_predictive(["P1"], n_cells=3, n_draws=2, library_size=-1.0)
    with pytest.raises(ValueError, match="can only generate conditions built from"):
        sams.posterior_predictive(["NOPE"], n_cells=3, n_draws=2)


def test_sample_is_built_on_blocks_of_draws(sams):
    generated = sams.sample(["control", "P0+P1"], n_cells=7, n_global_draws=3, seed=2)
    assert generated.n_obs == 14
    assert generated.obs["perturbation"].tolist() == ["control"] * 7 + ["P0+P1"] * 7
    # 7 cells over 3 draws: blocks of ceil(7 / 3) = 3 cells share a draw
    assert generated.obs["draw"].tolist() == [0, 0, 0, 1, 1, 1, 2] * 2
    # the same library sizes for every condition
    lib = generated.obs["library_size"].to_numpy()
    np.testing.assert_array_equal(lib[:7], lib[7:])


def test_a_model_knows_perturbations_without_training_cells():
    adata = tiny_screen()
    labels = adata.obs["perturbation"].astype(str)
    held = labels.str.contains("P4").to_numpy()
    assert held.any() and (~held).any()
    train = adata[~held].copy()
    SAMSVAE.setup_anndata(train)
    with pytest.raises(ValueError, match="perturbation_names="):
        model = SAMSVAE(train, n_latent=3, n_hidden=16)
        model.iwelbo(adata[held].copy(), n_particles=2)
    names = [f"P{i}" for i in range(5)]
    model = SAMSVAE(train, n_latent=3, n_hidden=16, perturbation_names=names)
    assert model.perturbation_names == names
    model.train(max_steps=3, batch_size=64, progress=False, device="cpu")
    test = adata[held].copy()
    assert np.isfinite(model.iwelbo(test, n_particles=2))
    assert model.sample(["P4"], n_cells=2).n_obs == 2
    # P4 had no training cells: its guide is its prior, exactly
    assert model.module.perturbation_observed.tolist() == [True] * 4 + [False]
    effects = model.get_perturbation_effects(n_draws=400)
    np.testing.assert_allclose(effects["mask_probability"].loc["P4"], 0.01, rtol=1e-5)
    assert (np.abs(effects["mask_probability"].loc["P0"] - 0.01) > 0.1).all()
    embedding = effects["embedding"].loc["P4"].to_numpy()
    assert np.abs(embedding).max() < 5 / np.sqrt(400)  # mean of 400 N(0, 1) draws
    from pyro import poutine

    trace = poutine.trace(model.module.guide_globals).get_trace()
    scale = trace.nodes["embedding"]["fn"].scale.detach()
    assert (scale[4] == 1.0).all() and (scale[:4] != 1.0).any()


def test_max_steps_are_honoured_and_early_stopping_is_robust_to_validation_noise():
    adata = tiny_screen()
    SAMSVAE.setup_anndata(adata)
    model = SAMSVAE(adata, n_latent=3, n_hidden=16)
    history = model.train(max_steps=40, batch_size=64, progress=False, device="cpu")
    assert len(history) == 40  # early stopping is off by default
    # on: a 30-cell validation set is noisy, but the defaults (evaluations at least 100
    # steps apart, patience 10, 20 particles, min_delta) do not stop a run that learns
    model = SAMSVAE(adata, n_latent=3, n_hidden=16)
    history = model.train(
        max_steps=400,
        batch_size=64,
        lr=3e-3,
        progress=False,
        device="cpu",
        early_stopping=True,
        validation_fraction=0.11,
    )
    assert len(history) == 400
    losses = history["train_loss"].to_numpy()
    assert losses[-50:].mean() < losses[:50].mean()
    assert history["validation_loss"].notna().sum() == 4
