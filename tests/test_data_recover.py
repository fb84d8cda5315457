import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from bioreason.data import PerturbationData, recover_counts

from helpers import require_norman


def normalized_copy(screen, target_sum=1e4):
    """log1p(normalize_total(counts)) in X, obs['ncounts'] = total counts, no counts layer."""
    adata = screen.copy()
    adata.X = adata.layers.pop("counts").astype(np.float64)
    adata.obs["ncounts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    return adata


def test_round_trip_recovers_exact_counts(small_screen):
    adata = normalized_copy(small_screen)
    recovered, report = recover_counts(adata)
    expected = small_screen.layers["counts"]
    assert (recovered.layers["counts"] != expected).nnz == 0
    assert report.n_cells_over_tolerance == 0
    assert report.max_deviation < 1e-6
    assert report.target_sum == pytest.approx(1e4, rel=1e-6)
    assert "counts" not in adata.layers  # the input is not modified


def test_cell_without_single_counts_is_rescaled(small_screen):
    counts = small_screen.layers["counts"].toarray()
    # Cell 0 has no gene at one count: its smallest positive value is 2 counts.
    counts[0][counts[0] == 1] = 2
    assert (counts[0] % 2 == 1).any()  # its odd counts show that the smallest is not one
    adata = small_screen.copy()
    adata.layers["counts"] = sp.csr_matrix(counts)
    normalized = normalized_copy(adata)
    recovered, report = recover_counts(normalized)
    np.testing.assert_array_equal(recovered.layers["counts"].toarray(), counts)
    assert report.n_cells_rescaled == 1 and report.n_cells_library_mismatch == 0
    # Without the library sizes the cell's values come back as halves.
    del normalized.obs["ncounts"]
    with pytest.warns(UserWarning, match="obs\\['ncounts'\\] not found"):
        with pytest.raises(ValueError, match="farther than 0.05 from integers"):
            recover_counts(normalized)


def test_cell_with_only_even_counts_cannot_be_told_from_a_wrong_library(small_screen):
    counts = small_screen.layers["counts"].toarray()
    counts[0] *= 2  # every count even: the library column alone says "smallest = 2"
    adata = small_screen.copy()
    adata.layers["counts"] = sp.csr_matrix(counts)
    normalized = normalized_copy(adata)
    with pytest.raises(ValueError, match="'cell0000000': ncounts .* 2 times .* whole counts"):
        recover_counts(normalized)
    with pytest.warns(UserWarning, match="1 of 1860 cells"):
        halved, report = recover_counts(normalized, on_failure="warn")
    np.testing.assert_array_equal(halved.layers["counts"].toarray()[0], counts[0] / 2)
    assert report.n_cells_library_mismatch == 1 and report.n_cells_rescaled == 0


def test_non_normalized_data_fails_or_warns(small_screen):
    adata = small_screen.copy()
    adata.X = np.log1p(adata.layers["counts"].toarray() * 0.37 + 0.1 * np.arange(200))
    with pytest.raises(ValueError, match="farther than 0.05 from integers"):
        recover_counts(adata, library_key=None)
    with pytest.warns(UserWarning, match="farther than 0.05"):
        _, report = recover_counts(adata, library_key=None, on_failure="warn")
    assert report.n_cells_over_tolerance > 0
    adata.X = -adata.X
    with pytest.raises(ValueError, match="negative or non-finite"):
        recover_counts(adata, library_key=None)


def test_norman19_recovery_and_conditions():
    import anndata as ad

    adata = ad.read_h5ad(require_norman())
    norman = adata[adata.obs["dataset"] == "norman19"].copy()
    recovered, report = recover_counts(norman)
    assert report.n_cells_over_tolerance == 0
    assert report.max_deviation < 0.05
    assert report.n_cells_rescaled >= 1  # the few cells whose smallest count is 2
    counts = recovered.layers["counts"]
    # Each cell's recovered unit times its total UMI count is the normalization total.
    unit = np.expm1(norman.X.toarray()) / np.where(counts.toarray() > 0, counts.toarray(), np.nan)
    scaled = np.nanmedian(unit, axis=1) * norman.obs["ncounts"].to_numpy()
    np.testing.assert_allclose(scaled, report.target_sum, rtol=0.02)
    assert (np.asarray(counts.sum(axis=1)).ravel() <= norman.obs["ncounts"].to_numpy()).all()
    data = PerturbationData.from_anndata(recovered)
    table = data.condition_table()
    assert len(table) == 34
    assert (table["n_perturbations"] == 2).sum() == 15
    assert (table["n_perturbations"] == 1).sum() == 18
    # 13 genes appear only inside combinations (e.g. CEBPE+RUNX1T1).
    assert data.n_perturbations == 31
    assert (np.asarray((counts > 0).sum(axis=0)).ravel() == 0).sum() == 250


def test_registry_loads_norman_with_counts():
    from bioreason.data import dataset_registry, load_dataset

    require_norman()
    assert {"norman19", "mcfaline23"} <= set(dataset_registry())
    adata = load_dataset("norman19")
    assert adata.n_obs == 3375 and "counts" in adata.layers
    assert set(adata.obs["dataset"]) == {"norman19"}
    with pytest.raises(ValueError, match="unknown dataset 'nope'; registered:"):
        load_dataset("nope")


@pytest.mark.parametrize(("base", "name"), [(2, "2 (log2)"), (10, "10 (log10)")])
def test_log2_and_log10_data_are_recovered_and_the_base_is_named(small_screen, base, name):
    """log2(1 + x) data used to fail, blaming obs['ncounts'] for most cells."""
    adata = small_screen.copy()
    adata.X = adata.layers.pop("counts").astype(np.float64)
    adata.obs["ncounts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata, base=base)
    recovered, report = recover_counts(adata)
    assert (recovered.layers["counts"] != small_screen.layers["counts"]).nnz == 0
    assert report.log_base == pytest.approx(base)
    assert f"base {name}" in report.summary()
    # the base given explicitly is used as given
    _, natural = recover_counts(normalized_copy(small_screen), log_base=np.e)
    assert "natural log" in natural.summary()


def test_raw_counts_are_named_as_such(small_screen):
    adata = small_screen.copy()
    adata.X = adata.layers.pop("counts").astype(np.float64)
    with pytest.raises(ValueError, match="look like raw counts already.*--layer X"):
        recover_counts(adata, library_key=None)
