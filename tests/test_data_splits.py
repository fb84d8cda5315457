import numpy as np
import pytest

from bioreason.data import (
    PerturbationData,
    make_split,
    split_data_efficiency,
    split_heldout_combinations,
    split_heldout_perturbations,
    split_random,
)


@pytest.fixture(scope="module")
def data(small_screen):
    return PerturbationData.from_anndata(small_screen)


def assert_partition(split, n_cells):
    joined = np.concatenate([split.train, split.val, split.test])
    assert joined.size == n_cells
    assert np.unique(joined).size == n_cells


def test_random_split_fractions_and_determinism(data):
    split = split_random(data, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert_partition(split, data.n_cells)
    assert split.val.size == round(0.2 * data.n_cells)
    assert split.test.size == round(0.1 * data.n_cells)
    again = split_random(data, val_fraction=0.2, test_fraction=0.1, seed=1)
    other = split_random(data, val_fraction=0.2, test_fraction=0.1, seed=2)
    np.testing.assert_array_equal(split.train, again.train)
    assert not np.array_equal(split.train, other.train)


def test_heldout_combinations_do_not_leak(data):
    split = split_heldout_combinations(data, fraction=0.25, seed=0)
    assert_partition(split, data.n_cells)
    conditions = data.cell_condition
    assert len(split.heldout_conditions) == round(0.25 * 10)
    assert all("+" in c for c in split.heldout_conditions)
    assert set(conditions[split.test]) == set(split.heldout_conditions)
    seen = set(conditions[split.train]) | set(conditions[split.val])
    assert not seen & set(split.heldout_conditions)
    # All singles and controls are available for training.
    singles = {c for c in conditions if "+" not in c}
    assert singles <= set(conditions[split.train])
    np.testing.assert_array_equal(
        split.test, split_heldout_combinations(data, fraction=0.25, seed=0).test
    )


def test_heldout_combinations_by_name_and_errors(data):
    combo = next(c for c in data.condition_names if "+" in c)
    split = split_heldout_combinations(data, heldout=[combo])
    assert split.heldout_conditions == (combo,)
    with pytest.raises(ValueError, match=r"cannot hold out \['P00\+P99'\]"):
        split_heldout_combinations(data, heldout=["P00+P99"])
    with pytest.raises(ValueError, match="fraction in \\(0, 1\\)"):
        split_heldout_combinations(data, fraction=1.5)


def test_heldout_perturbations(data):
    split = split_heldout_perturbations(data, heldout=["P01"], seed=0)
    column = data.perturbation_names.index("P01")
    carries = data.dosage[:, column].toarray().ravel() > 0
    np.testing.assert_array_equal(np.sort(np.flatnonzero(carries)), split.test)
    assert not carries[split.train].any() and not carries[split.val].any()


def test_data_efficiency(data):
    split = split_data_efficiency(data, combination_train_fraction=0.2, seed=0)
    assert_partition(split, data.n_cells)
    is_combo = data.n_perturbations_per_cell >= 2
    assert is_combo[split.test].all()
    assert not is_combo[split.val].any()
    combo_train = split.train[is_combo[split.train]]
    per_condition = np.bincount(data.condition_codes[combo_train])
    assert set(per_condition[per_condition > 0]) == {12}  # 20% of 60 cells each


def test_make_split_writes_obs(small_screen, data):
    adata = small_screen.copy()
    split = make_split(data, "heldout_combinations", adata=adata, fraction=0.3, seed=4)
    labels = adata.obs["split"].astype(str).to_numpy()
    assert (labels[split.test] == "test").all() and (labels[split.train] == "train").all()
    with pytest.raises(ValueError, match="unknown split kind 'bogus'"):
        make_split(data, "bogus")
    with pytest.raises(ValueError, match="val_fraction"):
        split_random(data, val_fraction=0.6, test_fraction=0.5)
