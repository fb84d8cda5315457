"""The NumPyro NUTS reference for p* (bioreason.sim.reference: the screen, the collapsed
model and NUTS, the linear SAMS model, the comparison with SVI)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from bioreason.sim import OutcomeSimulator, SimulationBudget
from bioreason.sim import reference as ref
from bioreason.sim.reference import nuts as collapsed

SMALL = {
    "n_perturbations": 4,
    "n_combinations": 1,
    "n_genes": 30,
    "n_latent": 3,
    "n_cells_per_condition": 20,
    "seed": 1,
}


@pytest.fixture(scope="module")
def small_reference_screen():
    """A 4-perturbation, 1-pair screen (6 conditions x 20 cells, 30 genes); do not modify."""
    return ref.simulate_reference_screen(**SMALL)


@pytest.fixture(scope="module")
def small_nuts(small_reference_screen):
    """A short NUTS fit of the small screen (150 warmup + 150 draws)."""
    return ref.fit_nuts_reference(small_reference_screen, num_warmup=150, num_samples=150, seed=0)


_GRID = np.linspace(-8, 8, 641)


def _quadrature_log_prior(z, dosage, mask_probability, scale, grid=_GRID):
    """log p(z) of one latent dimension by brute force: a sum over the masks of the
    integral over the embeddings on a grid (two perturbations)."""
    step = grid[1] - grid[0]
    first, second = np.meshgrid(grid, grid, indexing="ij")
    total = 0.0
    for on_first in (0, 1):
        for on_second in (0, 1):
            prior = np.prod(
                [mask_probability if on else 1 - mask_probability for on in (on_first, on_second)]
            )
            mean = (
                dosage[:, 0, None, None] * first * on_first
                + dosage[:, 1, None, None] * second * on_second
            )
            likelihood = np.exp(norm.logpdf(z[:, None, None] - mean).sum(axis=0))
            weight = norm.pdf(first, 0, scale) * norm.pdf(second, 0, scale)
            total += prior * (likelihood * weight).sum() * step**2
    return np.log(total)


def test_collapsed_prior_is_the_exact_sum_over_masks_and_embeddings():
    # two perturbations, singles and their pair; one latent dimension
    dosage = np.array([[0, 0], [1, 0], [1, 0], [0, 1], [1, 1], [1, 1]], dtype=float)
    z = np.random.default_rng(0).normal(0.5, 1.0, size=(6, 1))
    groups = collapsed._mask_groups(dosage, 0.3, 1.2)
    exact = collapsed._log_latent_prior(z, dosage, groups)
    assert exact == pytest.approx(_quadrature_log_prior(z[:, 0], dosage, 0.3, 1.2), abs=1e-6)
    # two latent dimensions are independent given the masks' prior
    z2 = np.random.default_rng(1).normal(size=(6, 2))
    both = collapsed._log_latent_prior(z2, dosage, groups)
    apart = sum(_quadrature_log_prior(z2[:, d], dosage, 0.3, 1.2) for d in range(2))
    assert both == pytest.approx(apart, abs=1e-6)


def test_globals_drawn_given_latents_follow_their_conditional():
    # one perturbation with many cells whose latents sit at 2.0: the mask is on and
    # E | z, M=1 ~ N(sum z / (n + 1/s^2), 1 / (n + 1/s^2))
    n = 40
    dosage = np.vstack([np.zeros((5, 1)), np.ones((n, 1))])
    z = np.vstack([np.zeros((5, 1)), np.full((n, 1), 2.0)])[None].repeat(4000, axis=0)
    groups = collapsed._mask_groups(dosage, 0.3, 1.0)
    masks, embeddings = collapsed._draw_globals(z, dosage, groups, np.random.default_rng(0))
    assert masks.mean() == 1.0
    precision = n + 1.0
    assert embeddings.mean() == pytest.approx(
        2.0 * n / precision, abs=4 / np.sqrt(4000 * precision)
    )
    assert embeddings.std() == pytest.approx(1 / np.sqrt(precision), rel=0.05)


def test_reference_screen_layout_and_truth(small_reference_screen):
    adata = small_reference_screen
    truth = ref.ReferenceTruth.from_uns(adata.uns[ref.TRUTH_KEY])
    labels = list(adata.obs["perturbation"].cat.categories)
    assert labels[0] == "control" and len(labels) == 1 + 4 + 1
    assert adata.shape == (6 * 20, 30)
    assert truth.masks.shape == truth.embeddings.shape == (4, 3)
    assert truth.decoder_weight.shape == (3, 30)
    counts = adata.layers["counts"].toarray()
    assert np.array_equal(counts, np.round(counts)) and counts.min() >= 0
    again = ref.simulate_reference_screen(**SMALL)
    assert (again.layers["counts"] != adata.layers["counts"]).nnz == 0
    pairs = ref.simulate_reference_screen(n_perturbations=10, n_combinations=5, seed=2)
    combos = [c.split("+") for c in pairs.obs["perturbation"].cat.categories if "+" in c]
    members = [p for pair in combos for p in pair]
    assert len(members) == len(set(members)) == 10  # disjoint pairs


def test_truth_model_generates_like_the_data(small_reference_screen):
    from bioreason.sim import log_normalize

    adata = small_reference_screen
    model = ref.LinearSAMSModel.from_truth(adata)
    predictive = model.posterior_predictive(["control", "P1"], n_cells=500, n_draws=2, seed=0)
    assert predictive.counts.shape == (2, 2, 500, 30)
    observed = adata[adata.obs["perturbation"] == "P1"].layers["counts"].toarray()
    simulated = log_normalize(predictive.counts[:, 1].reshape(-1, 30)).mean(axis=0)
    gap = np.abs(log_normalize(observed).mean(axis=0) - simulated)
    # 20 observed cells: their mean log expression has a standard error of ~0.2
    assert gap.mean() < 0.25
    paired = model.posterior_predictive(
        ["control", "P1"], n_cells=5, n_draws=3, seed=0, counterfactual=True
    )
    assert np.array_equal(paired.library_size[:, 0], paired.library_size[:, 1])


def test_nuts_recovers_the_effects_and_p_true(small_reference_screen, small_nuts):
    adata, nuts = small_reference_screen, small_nuts
    truth = ref.ReferenceTruth.from_uns(adata.uns[ref.TRUTH_KEY])
    diagnostics = nuts.diagnostics
    assert diagnostics["r_hat_max"] < 1.1
    assert diagnostics["n_eff_min"] > 20
    assert diagnostics["divergences"] == 0
    effects = nuts.effects
    # every true effect within 4 posterior sds (+ 0.05 for effects the posterior pins at 0)
    deviation = np.abs(effects.mean(axis=0) - truth.effects)
    assert (deviation <= 4 * effects.std(axis=0) + 0.05).all(), deviation

    questions = [(c, g) for c in ("P0", "P2", "P1+P3") for g in ("gene00", "gene05")]
    options = {"threshold": 0.3, "n_cells": 20}
    nuts_p = ref.reference_probability(
        adata,
        questions,
        reference=nuts,
        budget=SimulationBudget(target_se=0.02, max_draws=300),
        seed=1,
        **options,
    )
    assert list(nuts_p.columns[:4]) == ["condition", "readout", "p_star_nuts", "p_star_se"]
    assert nuts_p.attrs["r_hat_max"] == diagnostics["r_hat_max"]
    truth_p = OutcomeSimulator(ref.LinearSAMSModel.from_truth(adata), "screen_hit", **options)
    p_true = truth_p.probability(questions, target_se=0.02, max_draws=300, seed=2)
    # p* differs from p_true by the posterior's error (at most a few across-draw sds)
    # plus Monte Carlo error
    gap = np.abs(nuts_p["p_star_nuts"] - p_true["p_star"]).to_numpy()
    tolerance = (
        3 * nuts_p["p_star_spread"] + 4 * np.hypot(nuts_p["p_star_se"], p_true["p_star_se"])
    ).to_numpy() + 0.02
    assert (gap <= tolerance).all(), (gap, tolerance)


def test_errors_name_the_problem(small_reference_screen, small_nuts):
    adata = small_reference_screen
    with pytest.raises(ValueError, match="unknown perturbation 'P9'"):
        ref.reference_probability(adata, [("P9", "gene00")], reference=small_nuts)
    unknown_truth = adata.copy()
    del unknown_truth.uns[ref.TRUTH_KEY]
    with pytest.raises(ValueError, match="decoder is unknown"):
        ref.fit_nuts_reference(unknown_truth)
    with pytest.raises(
        ValueError,
        match=r"decoder weight must have shape \(n_latent, n_genes\) = \(3, 30\), got \(3, 29\)",
    ):
        ref.fit_nuts_reference(unknown_truth, decoder=(np.zeros((3, 29)), np.zeros(30)))
    with pytest.raises(ValueError, match="num_samples must be an integer >= 4"):
        ref.fit_nuts_reference(adata, num_samples=2)
    with pytest.raises(ValueError, match="mask_probability must be in"):
        ref.fit_nuts_reference(adata, mask_probability=1.5)
    with pytest.raises(TypeError, match="reference must be a LinearSAMSModel"):
        ref.reference_probability(adata, [("P0", "gene00")], reference="nuts")
    with pytest.raises(ValueError, match="decoder must be 'fixed' or 'learned'"):
        ref.compare_with_svi(adata, reference=small_nuts, decoder="frozen")
    with pytest.raises(ValueError, match="n_combinations must be in"):
        ref.simulate_reference_screen(n_perturbations=4, n_combinations=3)
    with pytest.raises(ValueError, match="unknown field"):
        ref.simulate_reference_screen(n_genez=10)
    # 11 perturbations chained by pairs: 2^11 mask sets is over the limit
    chain = np.zeros((10, 11))
    chain[np.arange(10), np.arange(10)] = chain[np.arange(10), np.arange(1, 11)] = 1
    with pytest.raises(ValueError, match="11 perturbations share cells"):
        collapsed._mask_groups(chain, 0.3, 1.0, [f"Q{i}" for i in range(11)])


@pytest.mark.slow
def test_compare_with_svi_tables_every_method(small_reference_screen, small_nuts):
    questions = ref.reference_questions(small_reference_screen, n_readouts=2)
    table = ref.compare_with_svi(
        small_reference_screen,
        questions,
        reference=small_nuts,
        svi_steps=1500,
        threshold=None,
        n_cells=20,
        budget=SimulationBudget(target_se=0.03, max_draws=200),
    )
    columns = ["p_true", "p_star_nuts", "p_star_svi_correlated", "p_star_svi_mean_field"]
    assert set(columns) <= set(table.columns)
    assert table[columns].apply(lambda c: c.between(0, 1).all()).all()
    summary = table.attrs["summary"]
    assert summary["mean_abs_pstar_nuts_vs_true"] < 0.1
    for guide in ("correlated", "mean_field"):
        assert np.isfinite(summary[f"mean_abs_pstar_svi_{guide}_vs_nuts"])
    assert set(table.attrs["thresholds"]) == set(table["readout"])
    # each method's 90 % interval of its per-draw probabilities, and what it covers
    for label in ("nuts", "svi_correlated", "svi_mean_field"):
        low, high = table[f"p_star_{label}_low"], table[f"p_star_{label}_high"]
        assert (low <= high).all() and low.between(0, 1).all() and high.between(0, 1).all()
        assert summary[f"mean_interval_width_{label}"] == pytest.approx((high - low).mean())
        inside = (low <= table["p_true"]) & (table["p_true"] <= high)
        assert summary[f"ptrue_in_90pct_interval_{label}"] == pytest.approx(inside.mean())
        if label != "nuts":
            inside = (low <= table["p_star_nuts"]) & (table["p_star_nuts"] <= high)
            assert summary[f"pstar_nuts_in_90pct_interval_{label}"] == pytest.approx(inside.mean())
    assert "p_true_low" not in table.columns  # the truth has no posterior to spread over
