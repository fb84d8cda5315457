"""The outcome simulator: p* against closed forms, fast path against brute force, sampled
outcomes against p*, the ground-truth simulator against a direct Monte Carlo."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import bioreason.data as bd
from bioreason.models import PosteriorPredictive
from bioreason.rl.outcomes import OutcomeSource
from bioreason.sim import (
    OUTCOMES,
    GroundTruthSimulator,
    OutcomeSimulator,
    SimulationBudget,
    cell_scores,
    learn_programs,
    program_readout,
    register_outcome,
)

LOG_SCALE = float(np.log1p(1e4))


class PoissonModel:
    """A model whose cells have one informative gene ``g0`` with Poisson counts and a
    silent gene ``g1``: a cell's g0 score is log1p(1e4) when it has a count, else 0.
    The "posterior" alternates between two rates per condition (draw k uses rates[k % 2])."""

    gene_names = ["g0", "g1"]
    control_label = "control"

    def __init__(self, rates: dict[str, tuple[float, float]]) -> None:
        self.rates = rates

    def posterior_predictive(self, conditions, n_cells=100, n_draws=100, library_size=None, seed=0):
        if isinstance(conditions, str):
            conditions = [conditions]
        unknown = [c for c in conditions if c not in self.rates]
        if unknown:
            raise ValueError(f"unknown condition {unknown[0]!r}; known: {sorted(self.rates)}")
        rng = np.random.default_rng(seed)
        start = rng.integers(2)  # which posterior "draw" comes first: both equally likely
        which = (start + np.arange(n_draws)) % 2
        rate = np.array([[self.rates[c][w] for c in conditions] for w in which])
        g0 = rng.poisson(rate[:, :, None], size=(n_draws, len(conditions), n_cells))
        counts = np.stack([g0, np.zeros_like(g0)], axis=-1).astype(np.float32)
        return PosteriorPredictive(
            conditions=list(conditions),
            gene_names=self.gene_names,
            counts=counts,
            expected_counts=counts,
            library_size=counts.sum(-1),
        )


def _exact_hit_probability(q_perturbed: float, q_control: float, n: int, threshold: float):
    """P(log1p(1e4) * (B_p - B_c) / n > threshold) for B ~ Binomial(n, q)."""
    k = np.arange(n + 1)
    pmf_p = stats.binom.pmf(k, n, q_perturbed)
    pmf_c = stats.binom.pmf(k, n, q_control)
    difference = LOG_SCALE * (k[:, None] - k[None, :]) / n
    return float((pmf_p[:, None] * pmf_c[None, :] * (difference > threshold)).sum())


def test_cell_expression_matches_the_poisson_closed_form_over_two_posterior_draws():
    model = PoissonModel({"control": (1.0, 1.0), "A": (0.2, 1.5)})
    simulator = OutcomeSimulator(
        model, "cell_expression", threshold=1.0, budget=SimulationBudget(cells_per_draw=400)
    )
    result = simulator.probability([("A", "g0")], target_se=0.005, min_draws=64)
    # P(x > 0) = 1 - exp(-rate), averaged over the two equally likely draws
    exact = 1 - 0.5 * (np.exp(-0.2) + np.exp(-1.5))
    row = result.iloc[0]
    assert row["method"] == "fast"
    assert abs(row["p_star"] - exact) < 4 * row["p_star_se"] + 1e-3
    # the epistemic spread: the two draws' probabilities differ by exp(-0.2) - exp(-1.5)
    between = 0.5 * (np.exp(-0.2) - np.exp(-1.5))
    assert abs(row["p_star_spread"] - between) < 0.05


@pytest.mark.parametrize("method", ["brute", "fast"])
def test_screen_hit_matches_the_exact_binomial_answer(method):
    rates = {"control": (0.4, 0.4), "A": (0.7, 0.7)}
    n, threshold = 100, LOG_SCALE * 16.5 / 100  # halfway between two lattice points of D
    model = PoissonModel(rates)
    simulator = OutcomeSimulator(
        model,
        "screen_hit",
        threshold=threshold,
        direction="up",
        n_cells=n,
        budget=SimulationBudget(replicates_per_draw=8),
    )
    result = simulator.probability([("A", "g0")], target_se=0.01, method=method, seed=3)
    q_p, q_c = 1 - np.exp(-0.7), 1 - np.exp(-0.4)
    exact = _exact_hit_probability(q_p, q_c, n, threshold)
    row = result.iloc[0]
    assert row["method"] == method
    # brute force is exact up to Monte Carlo error; the fast path adds the normal
    # approximation of a difference of two binomial means (n = 100): allow 0.02 for it
    slack = 0.0 if method == "brute" else 0.02
    assert abs(row["p_star"] - exact) < 4 * row["p_star_se"] + slack, (row["p_star"], exact)


def test_sampled_outcomes_match_p_star_within_binomial_tolerance():
    model = PoissonModel({"control": (0.5, 0.5), "A": (0.8, 0.3), "B": (0.6, 0.6)})
    simulator = OutcomeSimulator(model, "screen_hit", threshold=0.3, n_cells=50)
    questions = [("A", "g0"), ("B", "g0")]
    p_star = simulator.probability(questions, target_se=0.005, method="brute", seed=1)["p_star"]
    n = 2000
    outcomes = simulator.sample(questions, n=n, seed=7)
    assert outcomes.shape == (2, n) and outcomes.dtype == torch.float64
    assert set(outcomes.unique().tolist()) <= {0.0, 1.0}
    for rate, p in zip(outcomes.mean(1).tolist(), p_star, strict=True):
        tolerance = 4 * np.sqrt(p * (1 - p) / n) + 4 * 0.005
        assert abs(rate - p) < tolerance


def test_same_seed_same_outcomes_and_the_outcome_source_protocol():
    model = PoissonModel({"control": (0.5, 0.5), "A": (0.8, 0.3)})
    simulator = OutcomeSimulator(model, "direction", n_cells=30, questions=[("A", "g0")] * 3)
    assert isinstance(simulator, OutcomeSource)
    for independent in (True, False):
        first = simulator.sample(torch.tensor([0, 2]), n=50, seed=11, independent=independent)
        again = simulator.sample(torch.tensor([0, 2]), n=50, seed=11, independent=independent)
        other = simulator.sample(torch.tensor([0, 2]), n=50, seed=12, independent=independent)
        assert torch.equal(first, again) and not torch.equal(first, other)
        # shared: one question asked twice is one simulated experiment; independent: two
        assert torch.equal(first[0], first[1]) is not independent
    with pytest.raises(ValueError, match="out of range"):
        simulator.sample(torch.tensor([5]), n=1, seed=0)
    with pytest.raises(TypeError, match="independent must be True or False"):
        simulator.sample(torch.tensor([0]), n=1, seed=0, independent="yes")


class TwoPointPosteriorModel:
    """Cells with informative genes ``g0`` and ``g1`` (Poisson at the condition's rate)
    and a steady gene ``g2`` (Poisson(50)) that keeps library sizes alike. Each
    posterior draw picks one of the condition's two rates independently (a two-point
    posterior with iid draws), shared by g0 and g1: a global that makes questions of one
    condition dependent when they share a draw."""

    gene_names = ["g0", "g1", "g2"]
    control_label = "control"

    def __init__(self, rates: dict[str, tuple[float, float]]) -> None:
        self.rates = rates

    def posterior_predictive(self, conditions, n_cells=100, n_draws=100, library_size=None, seed=0):
        rng = np.random.default_rng(seed)
        which = rng.integers(2, size=n_draws)
        rate = np.array([[self.rates[c][w] for c in conditions] for w in which])
        shape = (n_draws, len(conditions), n_cells)
        informative = rng.poisson(rate[:, :, None, None], size=(*shape, 2))
        steady = rng.poisson(50.0, size=(*shape, 1))
        counts = np.concatenate([informative, steady], axis=-1).astype(np.float32)
        return PosteriorPredictive(
            conditions=list(conditions),
            gene_names=self.gene_names,
            counts=counts,
            expected_counts=counts,
            library_size=counts.sum(-1),
        )


def _correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(np.corrcoef(x.numpy(), y.numpy())[0, 1])


@pytest.mark.parametrize("independent", [True, False])
def test_independent_outcomes_are_uncorrelated_across_questions_and_match_p_star(independent):
    """Monte Carlo over n repetitions: each question's outcome frequency is within 4
    binomial SEs of p* (plus 4 of p*'s own SEs) in both modes; the correlation of two
    questions' outcomes is within 4 / sqrt(n) of 0 (sqrt(n) r is about N(0, 1) for
    independent outcomes) only with independent sampling. Shared sampling makes
    questions of one condition (one draw of the rate, one set of cells) and of two
    conditions (one set of control cells, one draw) correlated."""
    model = TwoPointPosteriorModel({"control": (1.0, 1.0), "A": (0.7, 1.6), "B": (0.4, 2.5)})
    simulator = OutcomeSimulator(model, "screen_hit", threshold=0.0, direction="up", n_cells=20)
    questions = [("A", "g0"), ("A", "g1"), ("B", "g0")]
    result = simulator.probability(questions, target_se=0.005, method="brute", seed=1)
    p_star, p_star_se = result["p_star"].to_numpy(), result["p_star_se"].to_numpy()
    assert (np.abs(p_star - 0.5) < 0.4).all()  # outcomes that vary
    n = 3000
    outcomes = simulator.sample(questions, n=n, seed=5, independent=independent)
    assert outcomes.shape == (3, n) and set(outcomes.unique().tolist()) <= {0.0, 1.0}
    frequency = outcomes.mean(dim=1).numpy()
    tolerance = 4 * np.sqrt(p_star * (1 - p_star) / n) + 4 * p_star_se
    assert (np.abs(frequency - p_star) < tolerance).all(), (frequency, p_star, tolerance)
    same_condition = _correlation(outcomes[0], outcomes[1])
    two_conditions = _correlation(outcomes[0], outcomes[2])
    bound = 4 / np.sqrt(n)
    if independent:
        assert abs(same_condition) < bound and abs(two_conditions) < bound
    else:
        # the shared draw of A's rate decides much of both of A's outcomes
        assert same_condition > 0.3 and two_conditions > bound, (same_condition, two_conditions)


def test_a_questions_independent_outcomes_do_not_depend_on_the_other_conditions_asked():
    model = TwoPointPosteriorModel({"control": (1.0, 1.0), "A": (0.7, 1.6), "B": (0.4, 2.5)})
    simulator = OutcomeSimulator(model, "direction", n_cells=10)
    alone = simulator.sample([("A", "g0"), ("A", "g1")], n=20, seed=3)
    among = simulator.sample([("B", "g1"), ("A", "g0"), ("B", "g0"), ("A", "g1")], n=20, seed=3)
    assert torch.equal(alone, among[[1, 3]])
    # a condition's questions take their own draws: g0 and g1 of A differ
    assert not torch.equal(alone[0], alone[1])


@pytest.fixture(scope="module")
def screen():
    return bd.simulate_screen(
        n_cells_per_condition=60, n_genes=80, n_perturbations=6, n_combinations=4, seed=0
    )


def test_ground_truth_simulator_matches_a_direct_monte_carlo_of_the_true_model(screen):
    truth = bd.ScreenGroundTruth.from_uns(screen.uns["ground_truth"])
    condition = [c for c in screen.obs["perturbation"].unique() if "+" in c][0]
    genes = [str(g) for g in screen.var_names[:4]]
    program = program_readout("prog", genes)
    n, threshold = 40, 0.15
    simulator = GroundTruthSimulator(
        screen,
        "screen_hit",
        readouts=[program],
        threshold=threshold,
        n_cells=n,
        budget=SimulationBudget(cells_per_draw=4 * n),
    )
    result = simulator.probability([(condition, "prog")], target_se=0.01, seed=0)
    row = result.iloc[0]
    # direct Monte Carlo: replicate experiments drawn straight from ScreenGroundTruth
    rng = np.random.default_rng(123)
    replicates = 800
    dosage = truth.dosage_of([condition] * (n * replicates) + ["control"] * (n * replicates))
    counts, *_ = truth.sample_counts(dosage, rng)
    weights = np.zeros((len(screen.var_names), 1), dtype=np.float32)
    weights[:4, 0] = 0.25
    scores = cell_scores(counts.toarray(), weights)[:, 0]
    perturbed = scores[: n * replicates].reshape(replicates, n).mean(1)
    control = scores[n * replicates :].reshape(replicates, n).mean(1)
    direct = np.mean(np.abs(perturbed - control) > threshold)
    direct_se = np.sqrt(direct * (1 - direct) / replicates)
    assert abs(row["p_star"] - direct) < 4 * np.hypot(row["p_star_se"], direct_se) + 0.02
    # the true parameters are one point: no epistemic spread beyond estimate noise
    assert row["p_star_spread"] < 0.2


@pytest.mark.parametrize("counterfactual", [True, False])
def test_fast_path_agrees_with_brute_force_for_welch_and_thresholds(screen, counterfactual):
    condition = [c for c in screen.obs["perturbation"].unique() if c != "control"][0]
    genes = [str(g) for g in screen.var_names[:3]]
    questions = [(condition, g) for g in genes]
    for options in ({"test": "welch", "alpha": 0.05}, {"threshold": 0.1, "direction": "either"}):
        simulator = GroundTruthSimulator(
            screen, "screen_hit", n_cells=40, counterfactual=counterfactual, **options
        )
        assert simulator.paired is counterfactual
        fast = simulator.probability(questions, target_se=0.01, method="fast", seed=0)
        brute = simulator.probability(questions, target_se=0.015, method="brute", seed=1)
        gap = np.abs(fast["p_star"] - brute["p_star"])
        bound = 4 * np.hypot(fast["p_star_se"], brute["p_star_se"]) + 0.03
        assert (gap < bound).all(), (options, fast["p_star"].tolist(), brute["p_star"].tolist())


def test_custom_outcomes_are_registered_and_simulated_by_brute_force(screen):
    def more_total_counts(perturbed, control):
        return perturbed.sum(axis=(-1, -2)) > control.sum(axis=(-1, -2))

    register_outcome("more_counts", more_total_counts, n_cells=20, overwrite=True)
    try:
        simulator = GroundTruthSimulator(screen, "more_counts")
        result = simulator.probability(["control"], target_se=0.03, seed=0)
        # control against control: a coin flip up to ties
        assert result["method"].iloc[0] == "brute"
        assert abs(result["p_star"].iloc[0] - 0.5) < 4 * result["p_star_se"].iloc[0] + 0.02
        assert simulator.sample(["control"], n=5, seed=0).shape == (1, 5)
        with pytest.raises(ValueError, match="no fast path"):
            simulator.probability(["control"], method="fast")
    finally:
        OUTCOMES.unregister("more_counts")


def test_unknown_perturbation_gene_or_program_names_the_problem(screen):
    simulator = GroundTruthSimulator(screen, "screen_hit", threshold=0.1)
    gene = str(screen.var_names[0])
    with pytest.raises(ValueError, match="ZZZ"):
        simulator.probability([("ZZZ", gene)])
    with pytest.raises(ValueError, match="unknown readout 'NOPE'"):
        simulator.probability([("P0", "NOPE")])
    with pytest.raises(ValueError, match="not among the model's"):
        GroundTruthSimulator(screen, "screen_hit", readouts=[program_readout("p", ["nope"])])
    with pytest.raises(ValueError, match="outcome"):
        GroundTruthSimulator(screen, "no_such_outcome")
    with pytest.raises(ValueError, match="bad options"):
        GroundTruthSimulator(screen, "screen_hit", treshold=0.1)
    with pytest.raises(ValueError, match="direction"):
        GroundTruthSimulator(screen, "screen_hit", direction="sideways")


def test_cell_expression_threshold_defaults_to_the_observed_control_median(screen):
    simulator = GroundTruthSimulator(screen, "cell_expression")
    gene = str(screen.var_names[5])
    result = simulator.probability([("control", gene)], target_se=0.01, seed=0)
    threshold = simulator.outcome.threshold[gene]
    control = screen[screen.obs["perturbation"] == "control"]
    scores = cell_scores(control.layers["counts"].toarray(), np.eye(80, dtype=np.float32)[:, 5:6])
    assert threshold == pytest.approx(float(np.median(scores)))
    expected = float(np.mean(scores[:, 0] > threshold))
    n = len(scores)
    assert abs(result["p_star"].iloc[0] - expected) < 4 * np.sqrt(0.25 / n) + 0.02


def test_suggested_thresholds_spread_p_star(screen):
    simulator = GroundTruthSimulator(screen, "screen_hit", threshold=None, n_cells=50)
    conditions = [c for c in screen.obs["perturbation"].unique() if c != "control"]
    genes = [str(g) for g in screen.var_names[:5]]
    with pytest.raises(ValueError, match="suggest_thresholds"):
        simulator.probability([(conditions[0], genes[0])])
    thresholds = simulator.suggest_thresholds(conditions, genes, quantile=0.5)
    assert set(thresholds) == set(genes) and all(v > 0 for v in thresholds.values())
    tuned = GroundTruthSimulator(screen, "screen_hit", threshold=thresholds, n_cells=50)
    result = tuned.probability([(c, g) for c in conditions for g in genes], target_se=0.03)
    # at the median effect about half of the conditions are hits: p* is not all 0 or 1
    assert 0.2 < result["p_star"].mean() < 0.8


def test_learned_programs_score_their_marker_genes(screen):
    programs = learn_programs(screen, n_programs=3, n_markers=5, seed=0)
    assert [p.name for p in programs] == ["program0", "program1", "program2"]
    for program in programs:
        assert len(program.genes) == 5 and abs(sum(program.weights) - 1) < 1e-9
    simulator = GroundTruthSimulator(screen, "direction", readouts=programs, n_cells=30)
    result = simulator.probability(pd.DataFrame({"condition": ["P0"], "readout": ["program1"]}))
    assert 0 <= result["p_star"].iloc[0] <= 1


@pytest.fixture(scope="module")
def fitted_models():
    from _models_util import tiny_screen

    from bioreason.models import MODELS

    adata = tiny_screen(seed=1)
    combos = [c for c in adata.obs["perturbation"].unique() if "+" in c]
    train = adata[adata.obs["perturbation"] != combos[0]].copy()
    models = {}
    for name in ("sams_vae", "svae_plus"):
        cls = MODELS[name]
        cls.setup_anndata(train)
        model = cls(train, n_latent=3, n_hidden=16)
        model.train(max_steps=30, batch_size=64, progress=False, device="cpu")
        models[name] = model
    return models, combos[0], str(adata.var_names[0])


def test_a_fitted_sams_vae_answers_questions_about_an_unseen_combination(fitted_models):
    models, unseen, gene = fitted_models
    simulator = OutcomeSimulator(models["sams_vae"], "screen_hit", threshold=0.2, n_cells=20)
    part = unseen.split("+")[0]
    result = simulator.probability(
        [(unseen, gene), (part, gene)], target_se=0.05, max_draws=64, seed=0
    )
    assert list(result.columns[:2]) == ["condition", "readout"]
    assert result["p_star"].between(0, 1).all() and (result["n_draws"] >= 16).all()
    assert (result["converged"] == (result["p_star_se"] <= 0.05)).all()
    outcomes = simulator.sample([(unseen, gene)], n=4, seed=0)
    assert outcomes.shape == (1, 4)


def test_svae_plus_gives_its_clear_error_for_an_unseen_combination(fitted_models):
    models, unseen, gene = fitted_models
    simulator = OutcomeSimulator(models["svae_plus"], "direction", n_cells=20)
    with pytest.raises(ValueError, match="SVAE|combination|categor"):
        simulator.probability([(unseen, gene)])


def test_counterfactual_cells_share_basal_state_and_library(fitted_models):
    models = fitted_models[0]
    model = models["sams_vae"]
    labels = [model.control_label, model.control_label, model.perturbation_names[0]]
    pp = model.posterior_predictive(labels, n_cells=30, n_draws=4, seed=0, counterfactual=True)
    # the same basal cell under the same condition: identical means, fresh count noise
    np.testing.assert_array_equal(pp.expected_counts[:, 0], pp.expected_counts[:, 1])
    assert not np.array_equal(pp.counts[:, 0], pp.counts[:, 1])
    np.testing.assert_array_equal(pp.library_size[:, 0], pp.library_size[:, 2])
    independent = model.posterior_predictive(labels, n_cells=30, n_draws=4, seed=0)
    assert not np.array_equal(independent.expected_counts[:, 0], independent.expected_counts[:, 1])
    with pytest.raises(ValueError, match="no basal state"):
        models["svae_plus"].posterior_predictive(
            [model.control_label], n_cells=2, n_draws=1, counterfactual=True
        )
    with pytest.raises(ValueError, match="cannot generate counterfactual"):
        OutcomeSimulator(models["svae_plus"], "screen_hit", counterfactual=True)


@pytest.mark.parametrize("likelihood", ["nb", "poisson"])
def test_generating_some_genes_keeps_the_total_count_distribution(likelihood):
    from bioreason.models.likelihoods import LIKELIHOODS

    torch.manual_seed(0)
    n_cells, n_genes = 4000, 300
    logits = torch.randn(n_genes) * 1.5
    library = torch.full((n_cells,), 2000.0)
    gene_parameter = torch.full((n_genes,), 0.5)  # unconstrained; theta = softplus(.)
    distribution = LIKELIHOODS[likelihood](logits.expand(n_cells, -1), library, gene_parameter)
    genes = torch.arange(0, n_genes, 7)
    counts, totals = distribution.sample_genes(genes)
    full = distribution.sample()
    assert counts.shape == (n_cells, len(genes)) and totals.shape == (n_cells,)
    # the returned genes have their own distribution ...
    mean, sd = full[:, genes].mean(0), full[:, genes].std(0)
    assert (torch.abs(counts.mean(0) - mean) < 6 * sd / n_cells**0.5 + 1e-3).all()
    # ... and the totals the full sample's mean and variance (Monte Carlo tolerances:
    # the mean within 5 SE, the variance within 5 SE of a sample variance, ~sqrt(2/n))
    full_totals = full.sum(-1)
    se = full_totals.std() / n_cells**0.5
    assert abs(totals.mean() - full_totals.mean()) < 5 * 2**0.5 * se
    ratio = totals.var() / full_totals.var()
    assert abs(ratio - 1) < 5 * (4 / n_cells) ** 0.5
    assert (totals >= counts.sum(-1)).all()


def test_posterior_predictive_of_some_genes_names_unknown_genes(fitted_models):
    model = fitted_models[0]["sams_vae"]
    genes = list(model.gene_names[:3])
    pp = model.posterior_predictive([model.control_label], n_cells=5, n_draws=2, genes=genes)
    assert pp.counts.shape == (2, 1, 5, 3) and pp.gene_names == genes
    assert (pp.totals() >= pp.counts.sum(-1)).all()
    with pytest.raises(ValueError, match="NOPE"):
        model.posterior_predictive([model.control_label], genes=["NOPE"])


def test_a_small_draw_budget_is_honoured_and_bad_budgets_name_the_argument(screen):
    condition = [c for c in screen.obs["perturbation"].unique() if "+" in c][0]
    genes = [str(g) for g in screen.var_names[:4]]
    simulator = GroundTruthSimulator(
        screen, "screen_hit", readouts=[program_readout("prog", genes)], threshold=0.15, n_cells=40
    )
    for budget in (1, 5):  # below the default minimum of 16 draws: that many, not an error
        row = simulator.probability([(condition, "prog")], max_draws=budget, seed=0).iloc[0]
        assert row["n_draws"] == budget and 0 <= row["p_star"] <= 1
    with pytest.raises(ValueError, match=r"min_draws must be between 1 and max_draws \(10\)"):
        simulator.probability([(condition, "prog")], max_draws=10, min_draws=20)
    with pytest.raises(ValueError, match="max_draws must be >= 1, got 0"):
        simulator.probability([(condition, "prog")], max_draws=0)


def test_bad_outcome_options_name_the_option(screen):
    for option in ({"threshold": "abc"}, {"threshold": {"g": "0.1"}}, {"alpha": "abc"}):
        with pytest.raises(ValueError, match=rf"{next(iter(option))}.* must be a number"):
            GroundTruthSimulator(screen, "screen_hit", **option)
    with pytest.raises(ValueError, match="needs at least 2 perturbed and 2 control cells"):
        GroundTruthSimulator(screen, "screen_hit", test="welch", n_cells=1)
    with pytest.raises(ValueError, match="cell_expression.*threshold must be a number"):
        GroundTruthSimulator(screen, "cell_expression", threshold="high")


@pytest.mark.parametrize("answer", [0.3, np.nan, "yes"])
def test_a_custom_outcome_that_is_not_a_boolean_is_refused(screen, answer):
    def not_a_bool(perturbed, control):
        return np.full(perturbed.shape[:-2], answer)

    register_outcome("not_a_bool", not_a_bool, n_cells=5, overwrite=True)
    try:
        simulator = GroundTruthSimulator(screen, "not_a_bool")
        with pytest.raises(ValueError, match="must return one boolean per replicate"):
            simulator.probability(["control"], max_draws=4, seed=0)
    finally:
        OUTCOMES.unregister("not_a_bool")


def test_an_untrained_model_warns(fitted_models):
    from bioreason.models import SAMSVAE

    trained = fitted_models[0]["sams_vae"]
    untrained = SAMSVAE(trained.adata, n_latent=3, n_hidden=16)
    with pytest.warns(UserWarning, match="has not been trained"):
        OutcomeSimulator(untrained, "direction", n_cells=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        OutcomeSimulator(trained, "direction", n_cells=5)


def test_a_combination_is_asked_in_either_order_and_answered_as_asked(fitted_models):
    models, unseen, gene = fitted_models
    model = models["sams_vae"]
    a, b = unseen.split("+")
    simulator = OutcomeSimulator(model, "screen_hit", threshold=0.2, n_cells=10)
    result = simulator.probability(
        [(f"{b}+{a}", gene), (f"{a}+{b}", gene), (a, gene)], max_draws=8, seed=0
    )
    assert list(result["condition"]) == [f"{b}+{a}", f"{a}+{b}", a]
    assert result["p_star"].iloc[0] == result["p_star"].iloc[1]  # one condition, simulated once
    assert list(result["unseen_parts"]) == ["", "", ""]  # a and b are measured alone
    cells = model.sample([f"{b}+{a}", model.control_label], n_cells=3, seed=0)
    assert set(cells.obs["perturbation"]) == {f"{b}+{a}", model.control_label}
    with pytest.raises(ValueError, match="asked for twice"):
        model.sample([f"{b}+{a}", f"{a}+{b}"], n_cells=3)


def test_model_history_names_its_columns(fitted_models):
    history = fitted_models[0]["sams_vae"].history
    assert isinstance(history, pd.DataFrame) and len(history["train_loss"]) > 0
    with pytest.raises(KeyError, match=r"'elbo_train'.*'train_loss'.*is called 'train_loss'"):
        history["elbo_train"]


def test_the_models_treatment_effects_are_named_as_asked(fitted_models):
    models, unseen, _ = fitted_models
    a, b = unseen.split("+")
    ate = models["sams_vae"].average_treatment_effect([f"{b}+{a}", a], n_cells=20)
    assert list(ate.index) == [f"{b}+{a}", a]


@pytest.mark.parametrize("p", [0.01, 0.99])
def test_brute_force_standard_error_does_not_vanish_near_0_and_1(p):
    """Single-cell expression P(x > 0) = 1 - exp(-rate) = p on the brute-force path:
    16 draws x 8 replicates agree on every experiment (1 - p)^128 ~ 28 % of the time at
    p = 0.01. The stopping rule must not accept SE = 0 there; the reported p* +/- 2 SE
    covers p, and the sequential rule does not bias p* (200 runs: the mean's MC sd is
    about 0.0006, so 0.002 is > 3 sd)."""
    rate = -np.log1p(-p)
    model = PoissonModel({"control": (1.0, 1.0), "A": (rate, rate)})
    simulator = OutcomeSimulator(
        model, "cell_expression", threshold=1.0, budget=SimulationBudget(method="brute")
    )
    runs = [simulator.probability([("A", "g0")], seed=s).iloc[0] for s in range(200)]
    p_star = np.array([r["p_star"] for r in runs])
    se = np.array([r["p_star_se"] for r in runs])
    assert all(r["method"] == "brute" for r in runs)
    assert se.min() > 0.004  # about sqrt(p~ (1 - p~) / N) with p~ = 2 / (N + 4), N <= 512
    assert (se <= 0.01).all()  # and every run still meets the target
    covered = np.mean(np.abs(p_star - p) <= 2 * se)
    assert covered >= 0.9, covered
    assert abs(p_star.mean() - p) < 0.002, p_star.mean()


def test_a_pooled_control_arm_of_its_own_size_on_both_paths():
    """n_control = 2000 (a screen's pooled control cells) against 100 perturbed cells:
    the fast path and brute force agree (each to SE 0.005), and the larger control arm
    makes the replicate's difference less noisy, so a clear effect is called more often
    than with 100 control cells."""
    model = PoissonModel({"control": (1.0, 1.0), "A": (1.2, 1.3)})
    answers = {}
    for n_control in (100, 2000):
        simulator = OutcomeSimulator(
            model, "screen_hit", threshold=0.3, n_cells=100, n_control=n_control
        )
        fast = simulator.probability([("A", "g0")], target_se=0.005, method="fast").iloc[0]
        brute = simulator.probability([("A", "g0")], target_se=0.005, method="brute").iloc[0]
        assert f"100 perturbed and {n_control} control cells" in simulator.describe("A", "g0")
        gap = abs(fast["p_star"] - brute["p_star"])
        assert gap < 4 * np.hypot(fast["p_star_se"], brute["p_star_se"]) + 0.01, (fast, brute)
        answers[n_control] = brute["p_star"]
    assert answers[2000] > answers[100] + 0.03


@pytest.mark.parametrize("method", ["brute", "fast"])
def test_replicate_variation_matches_the_exact_binomial_answer_with_a_normal_shift(method):
    """replicate_sd = 1: each replicate's D gets an N(0, 1) shift, so
    P(D + e > t) = sum over the binomial lattice of pmf * Phi((d - t) / 1), exactly."""
    rates = {"control": (0.4, 0.4), "A": (0.7, 0.7)}
    n, threshold, sd = 100, LOG_SCALE * 25.5 / 100, 1.0
    simulator = OutcomeSimulator(
        PoissonModel(rates),
        "screen_hit",
        threshold=threshold,
        direction="up",
        n_cells=n,
        replicate_sd=sd,
    )
    row = simulator.probability([("A", "g0")], target_se=0.01, method=method, seed=3).iloc[0]
    k = np.arange(n + 1)
    pmf_p = stats.binom.pmf(k, n, 1 - np.exp(-0.7))
    pmf_c = stats.binom.pmf(k, n, 1 - np.exp(-0.4))
    difference = LOG_SCALE * (k[:, None] - k[None, :]) / n
    exact = float(
        (pmf_p[:, None] * pmf_c[None, :] * stats.norm.sf((threshold - difference) / sd)).sum()
    )
    without = _exact_hit_probability(1 - np.exp(-0.7), 1 - np.exp(-0.4), n, threshold)
    assert abs(exact - without) > 0.05  # the shift matters at this size
    slack = 0.0 if method == "brute" else 0.02
    assert abs(row["p_star"] - exact) < 4 * row["p_star_se"] + slack, (row["p_star"], exact)
    if method == "brute":  # sampled outcomes carry the same shift
        outcomes = simulator.sample([("A", "g0")], n=2000, seed=5)
        rate = float(outcomes.mean())
        assert abs(rate - exact) < 4 * np.sqrt(exact * (1 - exact) / 2000) + 0.04
    with pytest.raises(ValueError, match="replicate_sd must be >= 0"):
        OutcomeSimulator(PoissonModel(rates), "screen_hit", replicate_sd=-1.0)


class LibraryModel(PoissonModel):
    """g0 ~ Poisson(rate * library / 1000): a cell's chance of expressing g0 depends on
    its library size, which the caller may give per condition."""

    library_sizes = np.full(50, 1000.0, dtype=np.float32)  # the pooled training sizes

    def posterior_predictive(self, conditions, n_cells=100, n_draws=100, library_size=None, seed=0):
        if isinstance(conditions, str):
            conditions = [conditions]
        rng = np.random.default_rng(seed)
        shape = (n_draws, len(conditions), n_cells)
        library = (
            rng.choice(self.library_sizes, shape)
            if library_size is None
            else np.broadcast_to(library_size, shape)
        )
        rate = np.array([self.rates[c][0] for c in conditions])[None, :, None]
        g0 = rng.poisson(rate * library / 1000.0)
        counts = np.stack([g0, np.zeros_like(g0)], axis=-1).astype(np.float32)
        return PosteriorPredictive(
            conditions=list(conditions),
            gene_names=self.gene_names,
            counts=counts,
            expected_counts=counts,
            library_size=np.asarray(library, dtype=np.float32),
        )


def test_library_sizes_per_condition_follow_each_conditions_observed_cells():
    """Condition A's observed cells have libraries of 200 or 400 (an essential-gene
    knockdown), the control's 1,000-3,000: with per-condition sizes P(g0 > 0) in one A
    cell is the mean of 1 - exp(-rate L / 1000) over A's sizes; pooled, over the
    model's 1,000s. B has too few cells (5 < MIN_LIBRARY_CELLS) and falls back. The
    combination A+C has no cells: its sizes are the control's times A's and C's ratios to
    the control, quantile by quantile (1,000 x 0.2 x 0.5 = 100 and 3,000 x 0.133 x 0.5 =
    200); A+B falls back to the pooled sizes, as B's own cells are too few."""
    import anndata as ad

    from bioreason.sim.simulator import MIN_LIBRARY_CELLS

    sizes = {
        "control": [1000.0, 3000.0] * 30,
        "A": [200.0, 400.0] * 30,
        "B": [50.0] * 5,
        "C": [500.0, 1500.0] * 30,
    }
    labels = [c for c, values in sizes.items() for _ in values]
    library = np.concatenate([v for v in sizes.values()])
    counts = np.stack([library, np.zeros_like(library)], axis=1).astype(np.float32)
    observed = ad.AnnData(
        X=counts,
        obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))]),
    )
    observed.layers["counts"] = counts
    observed.var_names = ["g0", "g1"]
    model = LibraryModel(
        {c: (2.0, 2.0) for c in ("A", "B", "C", "A+C", "A+B")} | {"control": (1.0, 1.0)}
    )
    assert 5 < MIN_LIBRARY_CELLS
    questions = [("A", "g0"), ("B", "g0"), ("A+C", "g0"), ("A+B", "g0")]
    answers = {}
    for rule in ("pooled", "per_condition"):
        simulator = OutcomeSimulator(
            model, "cell_expression", threshold=1.0, observed=observed, library_sizes=rule
        )
        answers[rule] = simulator.probability(questions, target_se=0.005, method="brute", seed=2)
    own = np.mean(1 - np.exp(-2.0 * np.array([200.0, 400.0]) / 1000))
    composed = np.mean(1 - np.exp(-2.0 * np.array([100.0, 200.0]) / 1000))
    pooled = 1 - np.exp(-2.0)
    for rule, expected in (
        ("pooled", [pooled] * 4),
        ("per_condition", [own, pooled, composed, pooled]),
    ):
        frame = answers[rule]
        gap = np.abs(frame["p_star"].to_numpy() - expected)
        assert (gap < 4 * frame["p_star_se"].to_numpy() + 0.01).all(), (
            rule,
            frame["p_star"].tolist(),
        )
    # held-out cells of A+C (libraries of 2,000) among the observed ones: read unless
    # library_cells names the training cells, which leaves A+C composed from its parts
    held = ad.AnnData(
        X=np.tile(np.float32([[2000.0, 0.0]]), (30, 1)),
        obs=pd.DataFrame({"perturbation": ["A+C"] * 30}, index=[f"h{i}" for i in range(30)]),
    )
    held.layers["counts"] = held.X.copy()
    held.var_names = ["g0", "g1"]
    every = ad.concat([observed, held])
    for cells, expected in ((None, 1 - np.exp(-4.0)), (observed, composed)):
        simulator = OutcomeSimulator(
            model,
            "cell_expression",
            threshold=1.0,
            observed=every,
            library_sizes="per_condition",
            library_cells=cells,
        )
        frame = simulator.probability([("A+C", "g0")], target_se=0.005, method="brute", seed=2)
        gap = abs(float(frame["p_star"].iloc[0]) - expected)
        assert gap < 4 * float(frame["p_star_se"].iloc[0]) + 0.01, (cells is None, frame)
    with pytest.raises(ValueError, match="library_sizes must be 'pooled' or 'per_condition'"):
        OutcomeSimulator(model, "cell_expression", threshold=1.0, library_sizes="mine")


def test_kept_draws_give_p_star_and_its_interval():
    model = PoissonModel({"control": (1.0, 1.0), "A": (0.2, 1.5)})
    simulator = OutcomeSimulator(
        model, "cell_expression", threshold=1.0, budget=SimulationBudget(cells_per_draw=200)
    )
    result = simulator.probability([("A", "g0"), ("A", "g1")], min_draws=40, keep_draws=True)
    for _, row in result.iterrows():
        draws = row["p_star_per_draw"]
        assert draws.shape == (row["n_draws"],)
        assert row["p_star"] == pytest.approx(draws.mean())
        assert (row["p_star_low"], row["p_star_high"]) == pytest.approx(
            tuple(np.quantile(draws, [0.05, 0.95]))
        )
    assert "p_star_per_draw" not in simulator.probability([("A", "g0")], min_draws=4).columns


def test_pooled_fits_weigh_each_fit_equally_and_their_interval_spans_both():
    """Two "fits" that disagree: one puts A's rate at 0.2, the other at 1.5. The pooled
    p* is their mean; its interval reaches from one fit's answer to the other's, and its
    spread is that of an equal mixture even though the fits drew unequally often."""
    from bioreason.sim import pool_fits

    questions = [("A", "g0"), ("B", "g0")]
    budget = SimulationBudget(cells_per_draw=400, target_se=1.0)
    frames = []
    for rate, draws in ((0.2, 64), (1.5, 200)):
        model = PoissonModel({"control": (1.0, 1.0), "A": (rate, rate), "B": (0.5, 0.5)})
        simulator = OutcomeSimulator(model, "cell_expression", threshold=1.0, budget=budget)
        frames.append(
            simulator.probability(questions, min_draws=draws, max_draws=draws, keep_draws=True)
        )
    pooled = pool_fits(frames)
    assert list(pooled["condition"]) == ["A", "B"] and (pooled["n_fits"] == 2).all()
    a, b = (f.iloc[0] for f in frames)
    assert pooled.iloc[0]["p_star"] == pytest.approx((a["p_star"] + b["p_star"]) / 2)
    assert pooled.iloc[0]["p_star_se"] == pytest.approx(
        np.hypot(a["p_star_se"], b["p_star_se"]) / 2
    )
    assert pooled.iloc[0]["p_star_between_fits"] == pytest.approx(
        abs(a["p_star"] - b["p_star"]) / np.sqrt(2)
    )
    low_fit, high_fit = 1 - np.exp(-0.2), 1 - np.exp(-1.5)  # each fit's exact answer
    noise = 4 * np.sqrt(0.25 / 400)  # a draw's own binomial noise, 4 sd
    assert abs(pooled.iloc[0]["p_star_low"] - low_fit) < noise
    assert abs(pooled.iloc[0]["p_star_high"] - high_fit) < noise
    # equal weights: the mixture's sd is half the distance between the answers (an
    # unweighted pool of 64 and 200 draws would give 0.43 of it)
    assert pooled.iloc[0]["p_star_spread"] == pytest.approx((high_fit - low_fit) / 2, abs=0.02)
    assert pooled.iloc[0]["n_draws"] == 264 and len(pooled.iloc[0]["p_star_per_draw"]) == 264
    # B: the fits agree, so the pooled interval is as narrow as one fit's
    assert pooled.iloc[1]["p_star_between_fits"] < 0.02
    assert pooled.iloc[1]["p_star_high"] - pooled.iloc[1]["p_star_low"] < 2 * noise
    assert pooled.iloc[1]["p_star_within_fit"] == pytest.approx(
        (frames[0].iloc[1]["p_star_spread"] + frames[1].iloc[1]["p_star_spread"]) / 2
    )
    # per group: the means of the two columns (A and B in groups of their own, then one)
    from bioreason.sim import fit_spreads

    spreads = fit_spreads(pooled.assign(group=["a", "b"]))
    assert list(spreads.index) == ["a", "b"]
    assert spreads.loc["a", "between_fits"] == pooled.iloc[0]["p_star_between_fits"]
    both = fit_spreads(pooled.assign(group="all")).loc["all"]
    assert both["within_fit"] == pytest.approx(pooled["p_star_within_fit"].mean())
    with pytest.raises(ValueError, match=r"missing \['group'\]"):
        fit_spreads(pooled)


def test_pooling_fits_names_what_is_wrong():
    from bioreason.sim import pool_fits

    model = PoissonModel({"control": (1.0, 1.0), "A": (0.2, 0.2), "B": (0.5, 0.5)})
    simulator = OutcomeSimulator(model, "cell_expression", threshold=1.0)
    kept = simulator.probability([("A", "g0"), ("B", "g0")], max_draws=8, keep_draws=True)
    other = simulator.probability([("B", "g0"), ("A", "g0")], max_draws=8, keep_draws=True)
    with pytest.raises(ValueError, match="at least one"):
        pool_fits([])
    with pytest.raises(ValueError, match="keep_draws=True"):
        pool_fits([kept, kept.drop(columns="p_star_per_draw")])
    with pytest.raises(ValueError, match=r"fit 1 row 0 asks \('B', 'g0'\)"):
        pool_fits([kept, other])
    with pytest.raises(ValueError, match="1 questions, fit 0 has 2"):
        pool_fits([kept, kept.iloc[:1]])


def _two_worlds():
    """Two "fits" that disagree completely: under the first no cell of A or B expresses
    g0, under the second every cell does, so each gives p 0 or 1 and their mixture 1/2."""
    never = PoissonModel({"control": (1.0, 1.0), "A": (0.0, 0.0), "B": (0.0, 0.0)})
    always = PoissonModel({"control": (1.0, 1.0), "A": (60.0, 60.0), "B": (60.0, 60.0)})
    return never, always


def test_an_ensemble_answers_with_the_pooled_p_star_and_draws_from_the_mixture():
    from bioreason.sim import EnsembleSimulator, pool_fits

    never, always = _two_worlds()
    questions = [("A", "g0"), ("B", "g0")]
    budget = SimulationBudget(cells_per_draw=100, max_draws=32)
    ensemble = EnsembleSimulator([never, always], "cell_expression", threshold=1.0, budget=budget)
    assert ensemble.models == [never, always]
    result = ensemble.probability(questions, seed=0)
    assert result["p_star"].tolist() == pytest.approx([0.5, 0.5])
    assert result["p_star_between_fits"].tolist() == pytest.approx([np.sqrt(0.5)] * 2)
    assert (result["n_fits"] == 2).all() and "p_star_per_draw" not in result.columns
    # the same as pooling the fits by hand
    alone = [
        OutcomeSimulator(m, "cell_expression", threshold=1.0, budget=budget).probability(
            questions, seed=0, keep_draws=True
        )
        for m in (never, always)
    ]
    assert np.allclose(pool_fits(alone)["p_star_high"], result["p_star_high"])
    # outcomes: each a Bernoulli(1/2) draw; independent questions disagree half the time,
    # shared worlds never (a column is one fit's)
    n = 400
    independent = ensemble.sample(questions, n=n, seed=3).numpy()
    assert independent.shape == (2, n) and set(np.unique(independent)) == {0.0, 1.0}
    tolerance = 4 * np.sqrt(0.25 / n)
    assert abs(independent.mean(axis=1) - 0.5).max() < tolerance
    assert abs((independent[0] != independent[1]).mean() - 0.5) < tolerance
    shared = ensemble.sample(questions, n=n, seed=3, independent=False).numpy()
    assert (shared[0] == shared[1]).all() and abs(shared.mean() - 0.5) < tolerance
    assert np.array_equal(independent, ensemble.sample(questions, n=n, seed=3).numpy())


def test_an_ensemble_builds_a_task_and_serves_live_outcomes_by_index():
    from bioreason.sim import EnsembleSimulator, build_task

    never, always = _two_worlds()
    budget = SimulationBudget(cells_per_draw=100, max_draws=16)
    ensemble = EnsembleSimulator(
        [never, always],
        "cell_expression",
        threshold=1.0,
        budget=budget,
        questions=[("A", "g0"), ("B", "g0")],
    )
    by_index = ensemble.sample(np.array([1, 0, 1]), n=200, seed=0).numpy()
    assert by_index.shape == (3, 200) and abs(by_index.mean() - 0.5) < 4 * np.sqrt(0.25 / 600)
    task = build_task(ensemble, ["A", "B"], ["g0"], test_fraction=0.5, seed=0)
    assert task["p_star"].tolist() == pytest.approx([0.5, 0.5])
    assert set(task["outcome"]) <= {0, 1}


def test_an_ensemble_refuses_no_fits_and_fits_of_other_genes():
    from bioreason.sim import EnsembleSimulator

    never, _ = _two_worlds()
    with pytest.raises(ValueError, match="at least one"):
        EnsembleSimulator([], "cell_expression", threshold=1.0)
    other = PoissonModel({"control": (1.0, 1.0), "A": (1.0, 1.0)})
    other.gene_names = ["g0", "g9"]
    with pytest.raises(ValueError, match="model 1 has other genes"):
        EnsembleSimulator([never, other], "cell_expression", threshold=1.0)
