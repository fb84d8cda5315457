import anndata as ad
import numpy as np
import pytest

from bioreason.data import ScreenConfig, ScreenGroundTruth, simulate_screen


def test_same_seed_same_screen_other_seed_differs():
    a = simulate_screen(n_cells_per_condition=20, n_genes=50, seed=7)
    b = simulate_screen(n_cells_per_condition=20, n_genes=50, seed=7)
    c = simulate_screen(n_cells_per_condition=20, n_genes=50, seed=8)
    assert (a.layers["counts"] != b.layers["counts"]).nnz == 0
    np.testing.assert_array_equal(a.uns["ground_truth"]["masks"], b.uns["ground_truth"]["masks"])
    assert (a.layers["counts"] != c.layers["counts"]).nnz > 0


def test_structure_and_labels(small_screen):
    obs = small_screen.obs
    assert small_screen.shape == (31 * 60, 200)
    labels = obs["perturbation"].astype(str)
    assert (labels == "control").sum() == 60
    combos = sorted(set(labels[labels.str.contains("+", regex=False)]))
    assert len(combos) == 10 and all(len(c.split("+")) == 2 for c in combos)
    truth = ScreenGroundTruth.from_uns(small_screen.uns["ground_truth"])
    assert truth.masks.shape == (20, 10) and truth.masks.any(axis=1).all()
    # z = z_basal + D (E * M), exactly.
    dosage = truth.dosage_of(labels.tolist())
    np.testing.assert_allclose(
        small_screen.obsm["z_true"],
        small_screen.obsm["z_basal_true"] + dosage @ truth.effects,
        atol=1e-12,
    )


def test_counts_match_conditional_expectation(small_screen):
    """Given each cell's z and library size, E[x] = l softmax(dec(z)) and
    Var[x] = mu + mu^2 / theta; condition-level sums are compared by z-scores."""
    truth = ScreenGroundTruth.from_uns(small_screen.uns["ground_truth"])
    mean = truth.expected_counts(
        small_screen.obsm["z_true"], small_screen.obs["library_size_true"].to_numpy()
    )
    variance = mean + mean**2 / truth.dispersion
    counts = small_screen.layers["counts"].toarray()
    codes = small_screen.obs["perturbation"].cat.codes.to_numpy()
    n_conditions = codes.max() + 1
    onehot = np.eye(n_conditions)[codes].T  # (conditions, cells)
    observed, expected, var = onehot @ counts, onehot @ mean, onehot @ variance
    keep = expected > 5  # sums of 60 cells are near-normal when the expected sum is not tiny
    z = (observed - expected)[keep] / np.sqrt(var[keep])
    n = z.size
    # Mean of z^2 is 1 with standard error sqrt(2 / n) for normal z; allow 5 standard errors.
    assert abs(np.mean(z**2) - 1.0) < 5 * np.sqrt(2.0 / n)
    assert abs(np.mean(z)) < 5 / np.sqrt(n)
    assert np.abs(z).max() < 6.5


def test_condition_means_match_ground_truth_over_z(small_screen):
    """Unconditional check: a condition's mean normalized expression equals
    E_z[rho(z)] computed by Monte Carlo from the ground truth alone."""
    truth = ScreenGroundTruth.from_uns(small_screen.uns["ground_truth"])
    labels = small_screen.obs["perturbation"].astype(str).to_numpy()
    counts = small_screen.layers["counts"].toarray()
    library = small_screen.obs["library_size_true"].to_numpy()
    conditions = ["control", "P00", "P01", *sorted({c for c in labels if "+" in c})[:3]]
    expected = truth.expected_condition_proportions(conditions, n_samples=20_000, seed=1)
    z_scores = []
    for row, condition in enumerate(conditions):
        ratio = counts[labels == condition] / library[labels == condition, None]
        standard_error = ratio.std(axis=0, ddof=1) / np.sqrt(ratio.shape[0])
        top = np.argsort(expected[row])[-50:]  # well-expressed genes
        z_scores.append((ratio.mean(axis=0)[top] - expected[row, top]) / standard_error[top])
    z = np.concatenate(z_scores)
    assert abs(np.mean(z)) < 5 / np.sqrt(z.size)
    assert abs(np.mean(z**2) - 1.0) < 0.5  # sample std estimates from 60 cells inflate z^2 a bit


def test_round_trip_through_h5ad(small_screen, tmp_path):
    path = tmp_path / "s.h5ad"
    small_screen.write_h5ad(path)
    loaded = ad.read_h5ad(path)
    truth = ScreenGroundTruth.from_uns(loaded.uns["ground_truth"])
    original = ScreenGroundTruth.from_uns(small_screen.uns["ground_truth"])
    z = small_screen.obsm["z_true"][:5]
    np.testing.assert_allclose(truth.proportions(z), original.proportions(z))
    assert truth.perturbation_names == original.perturbation_names


def test_config_validation():
    with pytest.raises(ValueError, match=r"n_combinations must be in \[0, 3\]"):
        simulate_screen(n_perturbations=3, n_combinations=4)
    with pytest.raises(ValueError, match="unknown field\\(s\\) \\['n_gene'\\]"):
        simulate_screen(n_gene=10)
    with pytest.raises(TypeError, match="ScreenConfig.n_genes must be an integer"):
        ScreenConfig.from_dict({"n_genes": "many"})
    with pytest.raises(ValueError, match="mask_probability must be in"):
        ScreenConfig(mask_probability=2.0)
