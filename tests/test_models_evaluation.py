"""IWELBO, average treatment effects, mask recovery and posterior predictive checks."""

import numpy as np
import pandas as pd
import pytest
import torch
from _models_util import tiny_screen

from bioreason.data import ScreenGroundTruth
from bioreason.models import CPAVAE, SAMSVAE
from bioreason.models import evaluation as ev


@pytest.fixture(scope="module")
def trained():
    adata = tiny_screen(n_cells_per_condition=40)
    SAMSVAE.setup_anndata(adata)
    model = SAMSVAE(adata, n_latent=3, n_hidden=16)
    model.train(max_steps=150, batch_size=128, lr=3e-3, progress=False, device="cpu")
    return model, adata


def test_iwelbo_is_above_elbo_and_increases_with_particles(trained):
    model, adata = trained
    data = model.data_for(adata)
    loader = model._loader(data, 200)
    categories = model.categories_for(data)
    means = {}
    for k in (1, 10, 100):
        iw, elbo = ev.iwelbo(model.module, loader, categories, n_particles=k, seed=k)
        assert iw.shape == elbo.shape == (adata.n_obs,)
        assert (iw >= elbo - 1e-9).all()  # Jensen, for every draw
        if k == 1:
            np.testing.assert_allclose(iw, elbo)
        means[k] = iw.mean()
    # E[IWELBO_K] increases with K; over ~500 cells the gaps dwarf the noise
    assert means[1] < means[10] < means[100]
    assert model.iwelbo(adata, n_particles=10, seed=10, batch_size=200) == pytest.approx(means[10])


def _known_answer_model():
    """CPA-VAE with a linear decoder reading only latent dimension 0, a certain shift of
    +1.5 on that dimension for perturbation A, and a Poisson likelihood with a huge
    library, so the ATE is E f(z0 + 1.5) - E f(z0) with z0 ~ N(0, 1)."""
    import anndata as ad

    rng = np.random.default_rng(0)
    counts = rng.poisson(50.0, size=(40, 3)).astype(np.float32)
    obs = pd.DataFrame(
        {"perturbation": ["control"] * 20 + ["A"] * 20}, index=[f"c{i}" for i in range(40)]
    )
    adata = ad.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=["g0", "g1", "g2"]))
    adata.layers["counts"] = counts
    CPAVAE.setup_anndata(adata)
    model = CPAVAE(adata, n_latent=2, n_layers=0, likelihood="poisson", guide="mean_field")
    weights = torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]])
    with torch.no_grad():
        model.module.decoder.output.weight.copy_(weights)
        model.module.decoder.output.bias.zero_()
        model.module.embedding_loc.copy_(torch.tensor([[1.5, 0.0]]))
        model.module.embedding_raw_scale.fill_(-30.0)  # q(E) is a point mass
    return model, weights.numpy()


def test_model_ate_matches_a_known_answer():
    model, weights = _known_answer_model()
    n_cells = 4000
    ate = model.average_treatment_effect(["A"], n_cells=n_cells, library_size=1e8, seed=0)

    def f(z0):
        logits = np.outer(z0, weights[:, 0])
        rho = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return np.log2(1e4 * rho + 1)

    z0 = np.random.default_rng(1).standard_normal(400_000)
    expected = f(z0 + 1.5).mean(0) - f(z0).mean(0)
    # standard error of a difference of two means of n_cells cells each
    se = np.sqrt(f(z0 + 1.5).var(0) / n_cells + f(z0).var(0) / n_cells)
    assert np.all(np.abs(ate.loc["A"].to_numpy() - expected) < 5 * se)
    assert abs(expected[0]) > 10 * se[0]  # the check is not trivially about zero


def test_mask_recovery_is_invariant_to_permuting_latent_dimensions():
    rng = np.random.default_rng(0)
    masks = rng.random((30, 6)) < 0.3
    effects = rng.normal(size=(30, 6)) * masks
    permutation = rng.permutation(6)
    noisy_probability = np.clip(masks + rng.normal(0, 0.2, masks.shape), 0, 1)
    result = ev.mask_recovery(
        masks, effects, noisy_probability[:, permutation], effects[:, permutation]
    )
    assert result["auroc"] > 0.95
    np.testing.assert_array_equal(permutation[result["model_dims"]], result["true_dims"])
    shuffled = ev.mask_recovery(masks, effects, rng.random((30, 6)), rng.normal(size=(30, 6)))
    assert shuffled["auroc"] < 0.75


def test_posterior_predictive_check_table_and_plot(trained, tmp_path):
    model, adata = trained
    table = ev.posterior_predictive_check(model, adata)
    n_conditions = adata.obs["perturbation"].nunique()
    assert len(table) == n_conditions * adata.n_vars
    observed = adata.layers["counts"].toarray()
    control = adata.obs["perturbation"].to_numpy() == "control"
    first = table[(table["condition"] == "control") & (table["gene"] == adata.var_names[0])]
    assert first["observed_mean"].item() == pytest.approx(observed[control, 0].mean())
    assert (table[["replicated_mean", "replicated_variance"]] >= 0).all().all()
    # a trained model replicates the gene means roughly (log-scale correlation)
    r = np.corrcoef(np.log1p(table["observed_mean"]), np.log1p(table["replicated_mean"]))[0, 1]
    assert r > 0.8
    ev.plot_posterior_predictive(table, tmp_path / "ppc.png")
    assert (tmp_path / "ppc.png").read_bytes()[:4] == b"\x89PNG"


def test_training_on_a_small_synthetic_screen_recovers_strong_masks():
    from bioreason.data import simulate_screen

    adata = simulate_screen(
        n_cells_per_condition=80,
        n_genes=60,
        n_latent=3,
        n_perturbations=8,
        n_combinations=0,
        mask_probability=0.2,
        ensure_effect=False,
        embedding_scale=2.5,
        decoder_scale=2.0,
        seed=1,
    )
    truth = ScreenGroundTruth.from_uns(adata.uns["ground_truth"])
    SAMSVAE.setup_anndata(adata)
    # the thresholds below were set with the standardized encoder input, kept here; with
    # the log1p default this screen's AUROC is 0.84 (noted in issue 8)
    # ... and with the paper's direct basal guide. The residual guide (the default since
    # issue 21) recovers masks with a similar AUROC on this screen (0.97 here; 0.57-0.95
    # over model seeds 0-3 with log1p input, direct 0.68-0.92) but turns on the mask of
    # an unaffected perturbation more often (largest 0.54-0.82 against 0.49-0.74)
    model = SAMSVAE(
        adata,
        n_latent=3,
        n_hidden=32,
        mask_prior_probability=0.1,
        encoder_input="standardize",
        basal_guide="direct",
    )
    model.train(
        max_steps=1500, batch_size=256, lr=1e-2, progress=False, device="cpu", early_stopping=False
    )
    effects = model.get_perturbation_effects()
    probability = effects["mask_probability"].to_numpy()
    result = ev.mask_recovery(truth.masks, truth.effects, probability, effects["effect"].to_numpy())
    assert result["auroc"] > 0.85
    strong = np.abs(truth.effects).max(1) > 1.0
    assert strong.any() and (~truth.masks.any(1)).any()
    # every strongly affected perturbation has a likely mask; no unaffected one has
    assert probability[strong].max(1).min() > 0.9
    assert probability[~truth.masks.any(1)].max() < 0.5


def test_local_terms_add_up_to_the_log_weights(trained):
    from bioreason.models.objectives import local_terms, log_importance_weights

    model, adata = trained
    data = model.data_for(adata)
    loader = model._loader(data, 200)
    categories = model.categories_for(data)
    terms = local_terms(model.module, loader, categories, n_particles=6, seed=2)
    assert set(terms) == {"model:z_basal", "model:counts", "guide:z_basal"}
    assert all(v.shape == (6, adata.n_obs) for v in terms.values())
    log_w = log_importance_weights(model.module, loader, categories, n_particles=6, seed=2)
    expected = terms["model:counts"] + terms["model:z_basal"] - terms["guide:z_basal"]
    torch.testing.assert_close(log_w, expected)


def test_global_kl_matches_the_closed_form_for_a_mean_field_guide():
    from bioreason.models.objectives import global_kl

    adata = tiny_screen()
    CPAVAE.setup_anndata(adata)
    model = CPAVAE(adata, n_latent=3, n_hidden=8, guide="mean_field")
    module = model.module
    with torch.no_grad():
        module.embedding_loc.copy_(
            torch.linspace(-1, 1, module.embedding_loc.numel()).reshape(5, 3)
        )
    loc = module.embedding_loc.detach().double()
    scale = (torch.nn.functional.softplus(module.embedding_raw_scale) + 1e-4).detach().double()
    exact = float((-torch.log(scale) + (scale**2 + loc**2) / 2 - 0.5).sum())
    # the estimate averages n_draws i.i.d. values of log q - log p; its standard error
    n_draws = 4000
    draws = torch.distributions.Normal(loc, scale).sample((n_draws,))
    values = (
        torch.distributions.Normal(loc, scale).log_prob(draws)
        - torch.distributions.Normal(0.0, 1.0).log_prob(draws)
    ).sum((1, 2))
    se = float(values.std() / n_draws**0.5)
    assert global_kl(module, n_draws=n_draws, seed=0) == pytest.approx(exact, abs=5 * se)


def test_per_cell_posteriors_close_the_amortization_gap(trained):
    model, adata = trained
    cells = adata[:60].copy()
    result = ev.amortization_gap(model, cells, n_steps=150, n_particles=20)
    assert result["amortized_iwelbo"] == pytest.approx(model.iwelbo(cells, n_particles=20))
    # free per-cell posteriors can only match or beat the encoder (up to MC noise)
    assert result["gap"] > -0.5
    assert result["gap"] == pytest.approx(result["optimized_iwelbo"] - result["amortized_iwelbo"])


def test_the_residual_basal_guide_generates_effects_of_the_right_size_after_short_training():
    """Issue 21: with the direct guide the encoder explains perturbed cells by moving their
    basal states, so after a short training the generated effects are a fraction of the
    true ones. With the residual guide each cell's prior term pulls the embedding toward
    the encoded shift. Slope of the model's ATE on the true ATE over (condition, gene)
    after 300 steps, model seeds 0-3: residual 0.81 / 0.65 / 0.76 / 0.86, direct
    0.29 / 0.40 / 0.16 / 0.11 (true ATE from 5,000 cells, the model's from 2,000)."""
    from bioreason.data import simulate_screen
    from bioreason.data.expression import ground_truth_ate

    adata = simulate_screen(
        n_cells_per_condition=80,
        n_genes=60,
        n_latent=3,
        n_perturbations=8,
        n_combinations=0,
        mask_probability=0.3,
        embedding_scale=2.0,
        seed=1,
    )
    truth = ScreenGroundTruth.from_uns(adata.uns["ground_truth"])
    SAMSVAE.setup_anndata(adata)
    conditions = [c for c in adata.obs["perturbation"].astype(str).unique() if c != "control"]
    true_ate = ground_truth_ate(truth, conditions, list(adata.var_names), n_cells=5000, seed=0)
    slopes = {}
    for guide in ("direct", "residual"):
        model = SAMSVAE(adata, n_latent=3, n_hidden=32, basal_guide=guide, seed=0)
        model.train(
            max_steps=300,
            batch_size=256,
            lr=3e-3,
            progress=False,
            device="cpu",
            early_stopping=False,
        )
        ate = model.average_treatment_effect(conditions, n_cells=2000, seed=0)
        a = ate.to_numpy().ravel()
        b = true_ate.loc[ate.index, ate.columns].to_numpy().ravel()
        slopes[guide] = float((a * b).sum() / (b * b).sum())
    assert slopes["residual"] > 0.6, slopes
    assert slopes["residual"] > slopes["direct"] + 0.2, slopes
