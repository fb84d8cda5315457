import numpy as np
import pytest
import scanpy as sc

from bioreason.data import prepare, select_genes


def test_select_genes_matches_scanpy_seurat_v3(small_screen):
    selected = select_genes(small_screen, 50)
    assert selected.n_vars == 50
    reference = small_screen.copy()
    sc.pp.highly_variable_genes(reference, n_top_genes=50, flavor="seurat_v3", layer="counts")
    expected = reference.var_names[reference.var["highly_variable"].to_numpy()]
    assert set(selected.var_names) == set(expected)
    assert "highly_variable" not in small_screen.var  # input untouched
    np.testing.assert_array_equal(
        selected.layers["counts"].toarray(),
        small_screen[:, selected.var_names].layers["counts"].toarray(),
    )


def test_prepare_in_one_call(small_screen):
    adata, data = prepare(small_screen, n_top_genes=80)
    assert adata.n_vars == 80 and data.n_genes == 80
    assert list(data.gene_names) == list(adata.var_names)
    assert data.n_perturbations == 20
    with pytest.raises(ValueError, match="layer 'raw' not found"):
        prepare(small_screen, layer="raw", n_top_genes=10)
