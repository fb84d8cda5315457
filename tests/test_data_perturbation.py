import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bioreason.data import PerturbationData


def toy_adata(counts, labels):
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    var = pd.DataFrame(index=[f"g{j}" for j in range(np.shape(counts)[1])])
    adata = ad.AnnData(X=sp.csr_matrix(np.asarray(counts, dtype=np.float32)), obs=obs, var=var)
    adata.layers["counts"] = np.asarray(counts, dtype=np.float64)
    return adata


def test_from_anndata_dense_sparse_and_backed_agree(screen, tmp_path):
    from_sparse = PerturbationData.from_anndata(screen, layer="counts")
    dense = screen.copy()
    dense.layers["counts"] = screen.layers["counts"].toarray()
    from_dense = PerturbationData.from_anndata(dense, layer="counts")
    path = tmp_path / "screen.h5ad"
    screen.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    from_backed = PerturbationData.from_anndata(backed, layer=None)
    assert from_backed.is_backed and not from_sparse.is_backed
    for other in (from_dense, from_backed):
        assert other.perturbation_names == from_sparse.perturbation_names
        np.testing.assert_array_equal(other.dosage.toarray(), from_sparse.dosage.toarray())
        np.testing.assert_array_equal(other.library_size, from_sparse.library_size)
    rows = np.array([5, 1, 900, 1])
    expected = screen.layers["counts"][rows].toarray()
    np.testing.assert_array_equal(from_backed.get_counts(rows).toarray(), expected)
    np.testing.assert_array_equal(from_sparse.get_counts(rows).toarray(), expected)
    backed.file.close()


def test_library_size_and_conditions(screen):
    data = PerturbationData.from_anndata(screen)
    np.testing.assert_allclose(
        data.library_size, np.asarray(screen.layers["counts"].sum(axis=1)).ravel(), rtol=1e-6
    )
    table = data.condition_table()
    assert (table["n_cells"] == 60).all()
    assert table.loc["control", "n_perturbations"] == 0
    assert sorted(table["n_perturbations"].unique()) == [0, 1, 2]
    assert (table["n_perturbations"] == 2).sum() == 10
    assert data.counts.dtype == np.float32
    # Each cell's dosage row has as many ones as its label has genes.
    np.testing.assert_array_equal(
        data.n_perturbations_per_cell, screen.obs["n_perturbations"].to_numpy()
    )


@pytest.mark.parametrize(
    "bad_value, what",
    [
        (-1.0, "a negative value"),
        (np.nan, "a non-finite value"),
        (np.inf, "a non-finite"),
        (2.5, "a non-integer value"),
        (1e30, "a count above 16,777,216"),
    ],
)
def test_count_validation_names_layer_cell_and_gene(bad_value, what):
    counts = np.ones((4, 3))
    counts[2, 1] = bad_value
    adata = toy_adata(counts, ["control", "A", "B", "A+B"])
    with pytest.raises(ValueError) as info:
        PerturbationData.from_anndata(adata, layer="counts")
    message = str(info.value)
    assert what in message
    assert "adata.layers['counts']" in message
    assert "cell 'c2' (row 2)" in message and "gene 'g1' (column 1)" in message


def test_first_offending_entry_is_reported():
    counts = np.ones((3, 3))
    counts[2, 0] = -1
    counts[1, 2] = -5
    adata = toy_adata(counts, ["control", "A", "B"])
    with pytest.raises(ValueError, match=r"cell 'c1' \(row 1\), gene 'g2'"):
        PerturbationData.from_anndata(adata)


def test_missing_column_layer_and_controls():
    adata = toy_adata(np.ones((2, 2)), ["A", "B"])
    with pytest.raises(
        ValueError, match=r"'guide' not found in adata.obs; columns are \['perturbation'\]"
    ):
        PerturbationData.from_anndata(adata, perturbation_key="guide")
    with pytest.raises(
        ValueError, match=r"layer 'raw' not found in adata.layers \(layers: \['counts'\]\)"
    ):
        PerturbationData.from_anndata(adata, layer="raw", require_control=False)
    with pytest.raises(ValueError, match=r"equals 'control'. Most common labels: \['A', 'B'\]"):
        PerturbationData.from_anndata(adata)
    with pytest.raises(ValueError, match="dosage column 'dose' not found"):
        PerturbationData.from_anndata(adata, dosage_key="dose", require_control=False)


def test_dosage_key():
    adata = toy_adata(np.ones((3, 2)), ["control", "A", "A+B"])
    adata.obs["dose"] = ["1", "2", "1+1"]
    data = PerturbationData.from_anndata(adata, dosage_key="dose")
    np.testing.assert_array_equal(data.dosage.toarray(), [[0, 0], [2, 0], [1, 1]])


def test_summary_mentions_conditions(screen):
    text = PerturbationData.from_anndata(screen).summary()
    assert "1860 cells x 200 genes, 20 perturbations, 31 conditions" in text
    assert "2-gene combination conditions: 10" in text
