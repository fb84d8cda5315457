"""Model-free baselines: the plug-in probability against resampled replicate experiments
from the same cells, the additive baseline against its formula, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from bioreason.data import simulate_screen
from bioreason.sim import cell_scores, learn_programs
from bioreason.sim.baselines import observed_probability, plugin_error
from bioreason.sim.outcomes import ScreenHit
from bioreason.sim.readouts import ReadoutSet


@pytest.fixture(scope="module")
def screen():
    adata = simulate_screen(
        n_perturbations=3, n_combinations=1, n_genes=60, n_cells_per_condition=1500, seed=3
    )
    programs = learn_programs(adata, n_programs=3, n_markers=10, seed=0)
    return adata, programs


def _scores(adata, programs):
    names = [p.name for p in programs]
    weights = ReadoutSet(list(map(str, adata.var_names)), programs).weights(names)
    counts = adata.layers["counts"].toarray()
    return cell_scores(counts, weights), adata.obs["perturbation"].astype(str).to_numpy()


def test_plugin_matches_replicates_resampled_from_the_same_cells(screen):
    """With 1,500 observed cells per condition the estimate's variance is small, so the
    plug-in probability is the normal approximation of D over replicates of 30 cells;
    4,000 resampled replicates have a Monte Carlo sd <= 0.008, and the CLT at 30 cells
    adds a little: the tolerance is 0.04."""
    adata, programs = screen
    scores, labels = _scores(adata, programs)
    conditions = [c for c in dict.fromkeys(labels) if c != "control"]
    control = scores[labels == "control"]
    effects = np.array([scores[labels == c].mean(0) - control.mean(0) for c in conditions])
    threshold = {p.name: float(t) for p, t in zip(programs, np.median(np.abs(effects), 0))}
    outcome = ScreenHit(n_cells=30, threshold=threshold)
    result = observed_probability(outcome, adata, programs, conditions)
    assert list(result.columns) == [
        "condition",
        "readout",
        "p_star",
        "effect",
        "effect_se",
        "n_cells",
        "replicate_sd",
        "df",
    ]
    rng = np.random.default_rng(0)
    t = np.array(list(threshold.values()))
    for condition in conditions:
        cells = scores[labels == condition]
        pick_p = rng.integers(len(cells), size=(4000, 30))
        pick_c = rng.integers(len(control), size=(4000, 30))
        d = cells[pick_p].mean(1) - control[pick_c].mean(1)
        empirical = (np.abs(d) > t).mean(0)
        rows = result[result["condition"] == condition]
        np.testing.assert_allclose(rows["p_star"], empirical, atol=0.04)
        np.testing.assert_allclose(rows["effect"], cells.mean(0) - control.mean(0), atol=1e-4)


def test_additive_adds_the_parts_effects_and_their_variances(screen):
    adata, programs = screen
    labels = adata.obs["perturbation"].astype(str)
    pair = next(c for c in labels.unique() if "+" in c)
    a, b = pair.split("+")
    outcome = ScreenHit(n_cells=100, threshold=0.05)
    singles = observed_probability(outcome, adata, programs, [a, b]).set_index(
        ["condition", "readout"]
    )
    control_se2 = observed_probability(outcome, adata, programs, [a])["effect_se"].to_numpy() ** 2
    additive = observed_probability(outcome, adata, programs, [f"{b}+{a}"], method="additive")
    assert (additive["condition"] == f"{b}+{a}").all()  # answered as asked
    summed = singles.loc[a, "effect"].to_numpy() + singles.loc[b, "effect"].to_numpy()
    np.testing.assert_allclose(additive["effect"], summed, rtol=1e-5, atol=1e-7)
    # var = var_A/m_A + var_B/m_B + 4 var_c/m_c > either part's var_A/m_A + var_c/m_c
    assert (additive["effect_se"].to_numpy() ** 2 > control_se2).all()
    plugin = observed_probability(outcome, adata, programs, [f"{b}+{a}"])  # spelled B+A
    assert (plugin["n_cells"] == (labels == pair).sum()).all()


def test_bad_input_is_named(screen):
    adata, programs = screen
    single = next(
        c for c in adata.obs["perturbation"].astype(str).unique() if "+" not in c and c != "control"
    )
    with pytest.raises(ValueError, match="thresholds first"):
        observed_probability(ScreenHit(threshold=None), adata, programs, [single])
    with pytest.raises(ValueError, match="'plugin' or 'additive'"):
        observed_probability(ScreenHit(), adata, programs, [single], method="sum")
    with pytest.raises(ValueError, match="condition 'NOPE'.*0 observed"):
        observed_probability(ScreenHit(), adata, programs, ["NOPE"])
    with pytest.raises(ValueError, match="part 'NOPE'"):
        observed_probability(ScreenHit(), adata, programs, [f"{single}+NOPE"], method="additive")


def test_plugin_error_matches_the_integral_over_the_redrawn_estimate():
    """Threshold event |D| > t: the truth is Phi((d-t)/s) + Phi((-d-t)/s); a plug-in
    from new cells sees d_hat ~ N(d, v) and answers with scale sqrt(s^2 + v). Its mean
    |error| is a one-dimensional integral over d_hat, done by quadrature; 20,000 redrawn
    estimates have a Monte Carlo sd <= 0.5 / sqrt(20,000) = 0.0035 per row."""
    import pandas as pd
    from scipy import integrate, stats

    t = 0.2
    outcome = ScreenHit(n_cells=100, threshold={"a": t, "b": t, "c": t})
    table = pd.DataFrame(
        {
            "readout": ["a", "b", "c"],
            "effect": [0.25, -0.05, 0.6],
            "effect_se": [0.15, 0.1, 1e-6],
            "replicate_sd": [0.1, 0.12, 0.1],
            "df": [198.0, 198.0, 198.0],
        }
    )
    got = plugin_error(outcome, table, n_draws=20_000, seed=1)
    bias = plugin_error(outcome, table, n_draws=20_000, seed=1, signed=True)

    def event(x, scale):
        return stats.norm.cdf((x - t) / scale) + stats.norm.cdf((-x - t) / scale)

    def integral(d, v, s, absolute):
        truth = event(d, s)

        def integrand(x):
            error = event(x, np.sqrt(s**2 + v)) - truth
            return (abs(error) if absolute else error) * stats.norm.pdf(x, d, np.sqrt(v))

        return integrate.quad(integrand, d - 10 * np.sqrt(v), d + 10 * np.sqrt(v), limit=200)[0]

    for i, row in table.iterrows():
        d, v, s = row["effect"], row["effect_se"] ** 2, row["replicate_sd"]
        expected = integral(d, v, s, absolute=True)
        assert abs(got[i] - expected) < 4 * 0.0035, (i, got[i], expected)
        mean = integral(d, v, s, absolute=False)
        assert abs(bias[i] - mean) < 4 * 0.0035, (i, bias[i], mean)
    assert got[2] < 1e-3  # an exact estimate has no error of its own
    assert got[0] > 0.1  # a noisy one near its threshold has much
    with pytest.raises(ValueError, match="missing \\['replicate_sd', 'df'\\]"):
        plugin_error(outcome, table.drop(columns=["replicate_sd", "df"]))
    with pytest.raises(ValueError, match="n_draws must be >= 1"):
        plugin_error(outcome, table, n_draws=0)


def test_heldout_reference_reads_the_held_out_cells_against_the_training_controls(screen):
    """A pair held out: p_obs's effect is its own cells' mean score minus the *training*
    control cells' (control cells outside the training set are not used), the additive
    baseline reads only training cells (changing the held-out cells leaves it as it
    was), and a condition without held-out cells is refused."""
    from bioreason.sim.baselines import heldout_reference

    adata, programs = screen
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    pair = next(c for c in dict.fromkeys(labels) if "+" in c)
    rng = np.random.default_rng(0)
    control_rows = np.flatnonzero(labels == "control")
    spare_controls = rng.choice(control_rows, size=len(control_rows) // 2, replace=False)
    train = np.setdiff1d(np.arange(adata.n_obs), np.flatnonzero(labels == pair))
    train = np.setdiff1d(train, spare_controls)
    outcome = ScreenHit(n_cells=100, threshold=0.1)
    got = heldout_reference(outcome, adata, programs, [pair], train)
    assert list(got.columns) == [
        "condition",
        "readout",
        "p_obs",
        "p_obs_effect",
        "p_obs_effect_se",
        "p_obs_own_error",
        "p_obs_own_bias",
        "n_cells",
        "p_additive",
    ]
    scores, _ = _scores(adata, programs)
    train_controls = np.intersect1d(control_rows, train)
    expected = scores[labels == pair].mean(0) - scores[train_controls].mean(0)
    np.testing.assert_allclose(got["p_obs_effect"], expected, atol=1e-4)
    assert (got["n_cells"] == (labels == pair).sum()).all()
    assert ((got["p_obs_own_error"] >= 0) & (got["p_obs_own_error"] <= 1)).all()

    # the held-out cells emptied: p_obs moves, the additive baseline does not
    changed = adata.copy()
    counts = changed.layers["counts"].toarray()
    counts[labels == pair] = counts[labels == "control"][: (labels == pair).sum()]
    changed.layers["counts"] = counts
    again = heldout_reference(outcome, changed, programs, [pair], train)
    np.testing.assert_allclose(again["p_additive"], got["p_additive"])
    assert not np.allclose(again["p_obs_effect"], got["p_obs_effect"])
    with pytest.raises(ValueError, match="0 observed"):
        heldout_reference(outcome, adata, programs, [pair], np.arange(adata.n_obs))


def test_heldout_reference_leaves_the_additive_baseline_out_where_a_part_is_unmeasured(screen):
    """A held-out pair with a part that has no training cells (as the Norman reference
    split's CBL+CNN1): p_obs is read from its cells as before, the additive baseline is
    NaN instead of an error."""
    from bioreason.sim.baselines import heldout_reference

    adata, programs = screen
    labels = adata.obs["perturbation"].astype(str).to_numpy()
    pair = next(c for c in dict.fromkeys(labels) if "+" in c)
    part = pair.split("+")[1]
    outcome = ScreenHit(n_cells=100, threshold=0.1)
    measured = heldout_reference(outcome, adata, programs, [pair], np.flatnonzero(labels != pair))
    unmeasured = heldout_reference(
        outcome, adata, programs, [pair], np.flatnonzero(~np.isin(labels, [pair, part]))
    )
    assert measured["p_additive"].notna().all()
    assert unmeasured["p_additive"].isna().all()
    np.testing.assert_allclose(unmeasured["p_obs"], measured["p_obs"])
