import warnings

import numpy as np
import pytest

from bioreason.data import (
    SPLITS,
    PerturbationData,
    composable_combinations,
    make_split,
    split_data_efficiency,
    split_heldout_combinations,
    split_heldout_perturbations,
    split_norman_reference,
    split_random,
)
from bioreason.data.splits import NORMAN_REFERENCE_HELDOUT

from helpers import require_norman


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


def composable_toy():
    """Singles A, B, C (measured alone), D only inside C+D; combinations A+B, A+C, C+D."""
    import anndata as ad
    import pandas as pd

    labels = ["control"] * 4 + ["A"] * 2 + ["B"] * 2 + ["C"] * 2
    labels += ["A+B"] * 3 + ["C+A"] * 3 + ["C+D"] * 3
    obs = pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(len(labels))])
    adata = ad.AnnData(X=np.ones((len(labels), 3), dtype=np.float32), obs=obs)
    return PerturbationData.from_anndata(adata, layer=None)


def test_composable_combinations_only_draws_combinations_of_measured_singles():
    data = composable_toy()
    # 2 of the 3 combinations are composable (C+D is not: D never appears alone)
    drawn = {tuple(composable_combinations(data, fraction=0.34, seed=s)) for s in range(20)}
    assert drawn == {("A+B",), ("A+C",)}  # one of three, rounded; canonical labels
    assert composable_combinations(data, fraction=0.5, seed=0) == ["A+B", "A+C"]
    assert composable_combinations(data, fraction=0.34, seed=3) == composable_combinations(
        data, fraction=0.34, seed=3
    )
    with pytest.raises(ValueError, match=r"only 2 of 3 combinations .* cannot hold out 3"):
        composable_combinations(data, fraction=1.0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        composable_combinations(data, fraction=0.0)


def test_composable_combinations_of_the_small_screen(data):
    heldout = composable_combinations(data, fraction=0.25, seed=0)
    assert len(heldout) == round(0.25 * 10)
    table = data.condition_table()
    for combination in heldout:
        assert table.loc[combination, "n_perturbations"] == 2
        assert all(table.loc[part, "n_perturbations"] == 1 for part in combination.split("+"))
    split = split_heldout_combinations(data, heldout=heldout, seed=0)
    assert split.heldout_conditions == tuple(heldout)


def test_reference_split_holds_out_named_combinations_and_splits_the_rest_90_10():
    data = composable_toy()
    split = split_norman_reference(data, heldout=["A+B", "C+D"], seed=1)
    assert_partition(split, data.n_cells)
    conditions = data.cell_condition
    assert split.heldout_conditions == ("A+B", "C+D")
    assert set(conditions[split.test]) == {"A+B", "C+D"} and split.test.size == 6
    rest = data.n_cells - 6
    assert split.train.size == np.rint(0.9 * rest) and split.val.size == rest - split.train.size
    again = split_norman_reference(data, heldout=["A+B", "C+D"], seed=1)
    np.testing.assert_array_equal(split.val, again.val)
    assert SPLITS.get("norman_reference") is split_norman_reference
    with pytest.raises(ValueError, match=r"cannot hold out \['CBL\+CNN1'"):
        split_norman_reference(data)  # the default names are Norman's


def test_reference_split_of_the_norman_subset():
    require_norman()
    from bioreason.data import load_dataset

    data = PerturbationData.from_anndata(load_dataset("norman19"))
    split = split_norman_reference(data, seed=0)
    assert_partition(split, data.n_cells)
    assert split.heldout_conditions == NORMAN_REFERENCE_HELDOUT
    assert split.test.size == 400  # 100 cells each
    assert split.train.size == np.rint(0.9 * (data.n_cells - 400))  # 90/10 of the rest
    seen = set(data.cell_condition[split.train])
    # CBL and TBX3 appear only inside held-out combinations: no training cell carries them
    for name in ("CBL", "TBX3"):
        column = data.perturbation_names.index(name)
        assert not data.dosage[split.train, column].toarray().any()
    assert not seen & set(NORMAN_REFERENCE_HELDOUT)
    # 5 of the 15 Norman combinations have both parts measured alone; 25 % of 15 is 4
    assert composable_combinations(data, fraction=0.25, seed=0) == [
        "KLF1+TGFBR2",
        "MAP2K3+MAP2K6",
        "MAP2K3+SLC38A2",
        "MAPK1+TGFBR2",
    ]


def test_heldout_combinations_in_the_datas_spelling_and_either_order():
    data = composable_toy()  # the file writes "C+A"; the canonical condition is "A+C"
    for spelling in ("C+A", "A+C"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # A and C are measured alone: no warning
            split = split_heldout_combinations(data, heldout=[spelling], seed=0)
        assert split.heldout_conditions == (spelling,)
        assert set(data.cell_condition[split.test]) == {"A+C"}
    with pytest.raises(TypeError, match=r"heldout must be a list.*\['A\+C'\]"):
        split_heldout_combinations(data, heldout="A+C")


def test_holding_out_parts_never_measured_alone_warns_naming_them():
    data = composable_toy()
    with pytest.warns(UserWarning, match=r"D\+C \(D\).*composable_combinations") as record:
        split_heldout_combinations(data, heldout=["D+C"], seed=0)
    assert record[0].filename == __file__  # points at the caller's line
    # drawn at random: every seed that draws C+D warns, the others do not
    for seed in range(10):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            split = split_heldout_combinations(data, fraction=0.34, seed=seed)
        assert bool(caught) == ("C+D" in split.heldout_conditions), seed
    # composable_combinations never draws it
    heldout = composable_combinations(data, fraction=0.5, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        split_heldout_combinations(data, heldout=heldout, seed=0)
