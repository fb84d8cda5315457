"""Bad input to bioreason.data never passes silently (issue 9): each case either raises
a ValueError/TypeError that names what is wrong, where, and what to do, or returns a
documented answer."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bioreason.data import (
    MinibatchLoader,
    PerturbationData,
    PerturbationSetup,
    ScreenConfig,
    ate_agreement,
    differential_expression,
    load_dataset,
    make_split,
    parse_perturbation_labels,
    prepare,
    recover_counts,
    select_genes,
    split_data_efficiency,
    split_heldout_combinations,
    split_heldout_perturbations,
    split_random,
    validate_counts,
)

from helpers import require_norman

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def toy(labels, counts=None, **obs):
    """An AnnData with counts in X: one row per label, 3 genes, every cell non-empty."""
    n = len(labels)
    if counts is None:
        counts = np.tile(np.array([[1.0, 2.0, 3.0]], np.float32), (n, 1))
    frame = pd.DataFrame({"perturbation": labels, **obs}, index=[f"c{i}" for i in range(n)])
    return ad.AnnData(X=np.asarray(counts, np.float32), obs=frame)


def normalized_copy(screen, target_sum=1e4):
    """log1p(normalize_total(counts)) in X, obs['ncounts'] = total counts, no counts layer."""
    adata = screen.copy()
    adata.X = adata.layers.pop("counts").astype(np.float64)
    adata.obs["ncounts"] = np.asarray(adata.X.sum(axis=1)).ravel()
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    return adata


# ------------------------------------------------------------------ 1. recover_counts
def test_recover_counts_nan_library_names_the_column_and_cells(small_screen):
    adata = normalized_copy(small_screen)
    library = adata.obs["ncounts"].to_numpy().copy()
    library[[3, 10, 20, 30, 40]] = np.nan
    adata.obs["ncounts"] = library
    with pytest.raises(ValueError) as err:
        recover_counts(adata)
    message = str(err.value)
    assert "obs['ncounts']" in message and "5 of 1860 cells" in message
    assert "'cell0000003'" in message and "nan" in message
    assert "library_key=None" in message  # what to do


def test_recover_counts_wrong_library_sizes_are_reported_not_rescaled(small_screen):
    adata = normalized_copy(small_screen)
    library = adata.obs["ncounts"].to_numpy().copy()
    library[[1, 2]] *= 3  # a whole multiple: was silently read as "smallest value = 3 counts"
    library[5] *= 1.37  # not a multiple of what the values imply
    library[7] /= 3  # smaller than the counts the values hold
    adata.obs["ncounts"] = library
    with pytest.raises(ValueError) as err:
        recover_counts(adata)
    message = str(err.value)
    assert "obs['ncounts']" in message and "4 of 1860 cells" in message
    for name in ("'cell0000001'", "'cell0000002'", "'cell0000005'"):
        assert name in message
    # on_failure="warn": the disagreeing cells are recovered from their values alone
    with pytest.warns(UserWarning, match=r"4 of 1860 cells"):
        recovered, report = recover_counts(adata, on_failure="warn")
    assert (recovered.layers["counts"] != small_screen.layers["counts"]).nnz == 0
    assert report.n_cells_library_mismatch == 4
    assert report.n_cells_rescaled == 0


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"tolerance": -0.1}, ValueError, "tolerance must be"),
        ({"tolerance": float("nan")}, ValueError, "tolerance must be"),
        ({"key_added": ""}, ValueError, "key_added must be"),
    ],
)
def test_recover_counts_option_errors(small_screen, options, error, match):
    with pytest.raises(error, match=match):
        recover_counts(normalized_copy(small_screen), **options)


def test_recover_counts_non_numeric_library_column(small_screen):
    adata = normalized_copy(small_screen)
    adata.obs["ncounts"] = "many"
    with pytest.raises(TypeError, match=r"obs\['ncounts'\] must hold numbers"):
        recover_counts(adata)


def test_mcfaline23_library_column_is_refused_and_its_values_alone_recover(tmp_path):
    path = require_norman()
    adata = ad.read_h5ad(path)
    mcfaline = adata[adata.obs["dataset"] == "mcfaline23"].copy()
    with pytest.raises(
        ValueError, match=r"obs\['ncounts'\] disagrees with adata.X for 1472 of 2586"
    ):
        recover_counts(mcfaline)
    _, report = recover_counts(mcfaline, library_key=None)
    assert report.n_cells_over_tolerance == 0 and report.n_cells_rescaled == 0
    # an entry that reads the column names the registry fix ...
    registry = tmp_path / "datasets.yaml"
    registry.write_text(
        f"mc:\n  path: {path}\n  obs_filter: {{dataset: mcfaline23}}\n"
        "  recover_counts: true\n  library_key: ncounts\n"
    )
    with pytest.raises(ValueError, match=r"dataset 'mc'.*library_key: null"):
        load_dataset("mc", registry=registry)
    # ... which the repository's entry has: it loads, every cell with whole counts
    loaded = load_dataset("mcfaline23")
    counts = loaded.layers["counts"]
    assert loaded.n_obs == 2586 and (counts.data == np.rint(counts.data)).all()


# ------------------------------------------------------------------ 2. labels and doses
@pytest.mark.parametrize("label", ["A+A", "B+A+A", "A+control+A"])
def test_repeated_perturbation_in_a_label_is_an_error(label):
    with pytest.raises(ValueError, match=r"obs\['perturbation'\].*label '.*' names 'A' twice"):
        parse_perturbation_labels(["control", label])


def test_repeated_perturbation_error_names_the_cell():
    adata = toy(["control", "A", "A+A"])
    with pytest.raises(ValueError, match=r"cell 'c2'.*names 'A' twice.*dosage_key"):
        PerturbationData.from_anndata(adata, layer=None)


@pytest.mark.parametrize(
    "dose, what",
    [(-2.0, "-2"), (0.0, "0"), ("1+-1", "-1"), (float("nan"), "nan"), ("inf", "inf")],
)
def test_bad_doses_are_errors_naming_column_and_cell(dose, what):
    adata = toy(["control", "A+B"], dose=["1", dose])
    with pytest.raises(ValueError) as err:
        PerturbationData.from_anndata(adata, layer=None, dosage_key="dose")
    message = str(err.value)
    assert "obs['dose']" in message and "cell 'c1'" in message and what in message


def test_missing_dose_of_a_control_cell_is_fine():
    adata = toy(["control", "A"], dose=[np.nan, 2.0])
    data = PerturbationData.from_anndata(adata, layer=None, dosage_key="dose")
    np.testing.assert_array_equal(data.dosage.toarray(), [[0], [2]])


# ------------------------------------------------------------------ 3. cells without counts
def test_cells_without_counts_are_refused_with_what_to_do():
    counts = np.array([[1, 2, 3], [0, 0, 0], [4, 0, 1], [0, 0, 0]], np.float32)
    adata = toy(["control", "A", "A", "control"], counts)
    for validate in (True, False):
        with pytest.raises(ValueError) as err:
            PerturbationData.from_anndata(adata, layer=None, validate=validate)
        message = str(err.value)
        assert "2 of 4 cells have no counts in adata.X" in message
        assert "'c1'" in message and "'c3'" in message
        assert "drop_empty_cells=True" in message


def test_one_gene_anndata_with_many_empty_cells():
    counts = np.array([[0], [3], [0], [0], [1], [0]], np.float32)
    adata = toy(["control", "control", "A", "A", "A", "control"], counts)
    with pytest.raises(ValueError, match="4 of 6 cells have no counts"):
        PerturbationData.from_anndata(adata, layer=None)


def test_prepare_drops_empty_cells_with_a_warning_on_request():
    counts = np.array([[1, 2, 3], [0, 0, 0], [4, 0, 1], [2, 2, 0]], np.float32)
    adata = toy(["control", "A", "A", "control"], counts)
    with pytest.raises(ValueError, match="drop_empty_cells=True"):
        prepare(adata, layer=None)
    with pytest.warns(UserWarning, match=r"dropped 1 of 4 cells .*'c1'"):
        kept, data = prepare(adata, layer=None, drop_empty_cells=True)
    assert list(kept.obs_names) == ["c0", "c2", "c3"] and data.n_cells == 3
    assert adata.n_obs == 4  # the input is not modified
    with pytest.raises(TypeError, match="drop_empty_cells must be true or false"):
        prepare(adata, layer=None, drop_empty_cells="yes")


# ------------------------------------------------------------------ 4. degenerate screens
def test_zero_genes_and_zero_cells_are_clear_errors():
    adata = toy(["control", "A"])
    with pytest.raises(ValueError, match="adata has no genes"):
        PerturbationData.from_anndata(adata[:, []].copy(), layer=None)
    with pytest.raises(ValueError, match="adata has no cells"):
        PerturbationData.from_anndata(adata[[]].copy(), layer=None)


def test_only_control_cells_is_a_clear_error_unless_perturbations_are_named():
    adata = toy(["control", "control", "ctrl"])
    with pytest.raises(ValueError, match=r"no perturbed cells: every label .*control="):
        PerturbationData.from_anndata(adata, layer=None, control=["control", "ctrl"])
    data = PerturbationData.from_anndata(
        adata, layer=None, control=["control", "ctrl"], perturbation_names=["A", "B"]
    )
    assert data.dosage.shape == (3, 2) and data.dosage.nnz == 0


def test_integer_labels_with_control_0_compare_as_text():
    adata = toy([0, 0, 1, 2, 1])
    data = PerturbationData.from_anndata(adata, layer=None, control=0)
    assert data.perturbation_names == ["1", "2"]
    assert data.is_control.tolist() == [True, True, False, False, False]
    assert data.setup.control == "0"
    assert PerturbationSetup(control=[0, "nt"]).control == ["0", "nt"]
    assert PerturbationSetup.from_json(PerturbationSetup(control=0).to_json()).control == "0"
    parsed = parse_perturbation_labels(np.array([0, 3, 3]), control=0)
    assert parsed.perturbation_names == ["3"]
    for bad in (True, 1.5, [None]):
        with pytest.raises(TypeError, match="control"):
            PerturbationSetup(control=bad)
        with pytest.raises(TypeError, match="control"):
            parse_perturbation_labels(["A"], control=bad)


# ------------------------------------------------------------------ 5. prepare on real data
def test_documented_prepare_works_on_the_shipped_norman_data():
    require_norman()
    adata = load_dataset("norman19")
    with pytest.warns(UserWarning, match=r"n_top_genes=2000 .* 250 genes with counts"):
        prepared, data = prepare(adata, n_top_genes=2000)
    assert prepared.n_vars == 250 and data.n_genes == 250 and data.n_cells == 3375
    with pytest.warns(UserWarning, match=r"seurat_v3 .* failed.*flavor='seurat'"):
        prepared, data = prepare(adata, n_top_genes=100)
    assert prepared.n_vars == 100 and data.n_genes == 100


def loess_breaking_screen():
    """40 cells x 12 genes of Poisson(2) counts: scanpy's seurat_v3 loess fails on it."""
    counts = np.random.default_rng(0).poisson(2, (40, 12)).astype(np.float32)
    labels = ["control"] * 20 + ["A"] * 20
    adata = toy(labels, counts)
    adata.layers["counts"] = adata.X.copy()
    return adata


def test_seurat_v3_failure_falls_back_to_seurat_with_a_warning():
    adata = loess_breaking_screen()
    with pytest.raises(ValueError):  # the failure the fallback guards against
        sc.pp.highly_variable_genes(adata.copy(), n_top_genes=5, flavor="seurat_v3")
    with pytest.warns(UserWarning, match=r"seurat_v3 .* failed.*flavor='seurat'"):
        selected = select_genes(adata, 5)
    assert selected.n_vars == 5
    with pytest.warns(UserWarning, match="flavor='seurat'"):
        every = select_genes(adata, 5, subset=False)
    assert every.n_vars == 12 and every.var["highly_variable"].sum() == 5
    assert "highly_variable" not in adata.var  # the input is not modified


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"n_top_genes": 2.5}, TypeError, "n_top_genes must be an integer"),
        ({"n_top_genes": "10"}, TypeError, "n_top_genes must be an integer"),
        ({"n_top_genes": 0}, ValueError, "n_top_genes must be positive"),
        ({"flavor": "seurat_v4"}, ValueError, "flavor must be one of"),
        ({"batch_key": "lane"}, ValueError, r"batch_key 'lane' not found in adata.obs"),
    ],
)
def test_select_genes_option_errors(options, error, match):
    adata = loess_breaking_screen()
    options = {"n_top_genes": 5, **options}
    with pytest.raises(error, match=match):
        select_genes(adata, **options)


# ------------------------------------------------------------------ 6. mixed experiments
def test_mixed_experiments_warn_with_how_to_subset():
    adata = toy(["control", "A", "control", "A"], dataset=["x", "x", "y", "y"])
    with pytest.warns(UserWarning) as record:
        PerturbationData.from_anndata(adata, layer=None)
    message = "\n".join(str(w.message) for w in record)
    assert "obs['dataset'] holds 2 values ['x', 'y']" in message
    assert "adata[adata.obs['dataset'] == 'x']" in message
    one = toy(["control", "A"], dataset=["x", "x"], cell_type=["k562", "k562"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PerturbationData.from_anndata(one, layer=None)


def test_the_shared_devel_file_warns_that_it_mixes_experiments():
    path = require_norman()
    adata = ad.read_h5ad(path)
    adata.layers["counts"] = np.rint(np.expm1(adata.X.toarray()))  # any counts will do
    with pytest.warns(UserWarning, match=r"obs\['dataset'\] holds 2 values"):
        PerturbationData.from_anndata(adata)


# ------------------------------------------------------------------ 7. other inputs
def test_from_anndata_needs_an_anndata():
    with pytest.raises(TypeError, match="adata must be an AnnData.*read_h5ad"):
        PerturbationData.from_anndata("screen.h5ad")


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: parse_perturbation_labels("A+B"), TypeError, "labels must be a sequence"),
        (lambda: parse_perturbation_labels([["A"], ["B"]]), ValueError, "one label per cell"),
        (lambda: parse_perturbation_labels(["A"], delimiter=1), TypeError, "delimiter"),
        (
            lambda: parse_perturbation_labels(["A"], perturbation_names=["A", "A"]),
            ValueError,
            r"perturbation_names repeats \['A'\]",
        ),
        (
            lambda: parse_perturbation_labels(["A"], perturbation_names="AB"),
            TypeError,
            "perturbation_names must be a list",
        ),
    ],
)
def test_label_argument_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_validate_counts_checks_the_names_match_the_matrix():
    matrix = sp.csr_matrix(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="3 rows but 2 cell names"):
        validate_counts(matrix, cell_names=["a", "b"], gene_names=["g", "h"])
    with pytest.raises(ValueError, match="2 columns but 3 gene names"):
        validate_counts(matrix, cell_names=["a", "b", "c"], gene_names=["g", "h", "i"])


@pytest.fixture(scope="module")
def screen_data(small_screen):
    return PerturbationData.from_anndata(small_screen)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda d: split_random(d, val_fraction="0.1"), TypeError, "val_fraction must be a number"),
        (lambda d: split_random(d, seed=-1), ValueError, "seed must be a non-negative integer"),
        (lambda d: split_random(d, seed=1.5), TypeError, "seed must be a non-negative integer"),
        (
            lambda d: split_heldout_combinations(d, heldout="P00+P01"),
            TypeError,
            "heldout must be a list of condition labels",
        ),
        (
            lambda d: split_heldout_combinations(d, heldout=[]),
            ValueError,
            "heldout is empty",
        ),
        (
            lambda d: split_heldout_perturbations(d, fraction=0.99),
            ValueError,
            "holds out all 20 perturbations",
        ),
        (
            lambda d: split_data_efficiency(d, combination_train_fraction=None),
            TypeError,
            "combination_train_fraction must be a number",
        ),
        (
            lambda d: make_split(d, "random", val_frac=0.2),
            TypeError,
            r"make_split\('random'\).*val_frac.*val_fraction",
        ),
    ],
)
def test_split_argument_errors(screen_data, call, error, match):
    with pytest.raises(error, match=match):
        call(screen_data)


def test_split_write_refuses_an_anndata_of_another_size(screen_data, small_screen):
    split = split_random(screen_data)
    with pytest.raises(ValueError, match="covers 1860 cells but adata has 10"):
        split.write(small_screen[:10].copy())


def test_loader_refuses_masks_and_impossible_batches(screen_data):
    mask = np.zeros(screen_data.n_cells, bool)
    mask[:5] = True
    with pytest.raises(TypeError, match=r"boolean mask.*np.flatnonzero"):
        MinibatchLoader(screen_data, mask)
    with pytest.raises(TypeError, match="indices must be integers"):
        MinibatchLoader(screen_data, np.array([0.0, 1.5]))
    with pytest.raises(TypeError, match="batch_size must be a positive integer"):
        MinibatchLoader(screen_data, batch_size=2.5)
    with pytest.raises(ValueError, match="drop_last=True with 5 cells and batch_size 64"):
        MinibatchLoader(screen_data, np.arange(5), batch_size=64, drop_last=True)


@pytest.mark.parametrize(
    "fields, error, match",
    [
        ({"n_genes": 2.5}, TypeError, "n_genes must be an integer"),
        ({"embedding_scale": float("nan")}, ValueError, "embedding_scale must be finite"),
        ({"library_log_mean": float("inf")}, ValueError, "library_log_mean must be finite"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
    ],
)
def test_screen_config_errors(fields, error, match):
    with pytest.raises(error, match=match):
        ScreenConfig(**fields)


def test_expression_argument_errors(small_screen):
    table = pd.DataFrame([[1.0, 2.0]], index=["A"], columns=["g0", "g1"])
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        ate_agreement(table, table, top_k=0)
    with pytest.raises(ValueError, match=r"condition 'NOPE' has no cells in obs\['perturbation'\]"):
        differential_expression(small_screen, "NOPE")


def test_load_dataset_filter_that_keeps_no_cells(tmp_path):
    toy(["control", "A"], dataset=["x", "x"]).write_h5ad(tmp_path / "toy.h5ad")
    registry = tmp_path / "datasets.yaml"
    registry.write_text(
        f"toy:\n  path: {tmp_path / 'toy.h5ad'}\n  obs_filter: {{dataset: z}}\n"
        "  setup: {layer: null}\n"
    )
    with pytest.raises(ValueError, match=r"obs_filter keeps no cells.*obs\['dataset'\].*'x'"):
        load_dataset("toy", registry=registry)


def test_registry_yaml_errors_name_the_file_and_line(tmp_path):
    registry = tmp_path / "datasets.yaml"
    registry.write_text("toy:\n  path: toy.h5ad\n  obs_filter: {dataset: [x\n  setup: {}\n")
    with pytest.raises(ValueError) as err:
        load_dataset("toy", registry=registry)
    message = str(err.value)
    assert f"dataset registry {registry} is not valid YAML" in message
    assert "at line 4, column 8" in message and "\n" not in message  # one line
    with pytest.raises(FileNotFoundError, match=r"dataset registry .*missing\.yaml does not exist"):
        load_dataset("toy", registry=tmp_path / "missing.yaml")
    with pytest.raises(IsADirectoryError, match="dataset registry .* is a folder"):
        load_dataset("toy", registry=tmp_path)


# ------------------------------------------------------------------ property-based
_PART = st.sampled_from(["A", "B", "C", "control", "", " ", "A ", "a"])
_LABEL = st.lists(_PART, min_size=1, max_size=4)


@PROPERTY
@given(
    parts=st.lists(_LABEL, max_size=12),
    delimiter=st.sampled_from(["+", "_", "--", "|"]),
)
def test_any_labels_parse_consistently_or_raise_clearly(parts, delimiter):
    labels = [delimiter.join(p) for p in parts]
    try:
        parsed = parse_perturbation_labels(labels, delimiter=delimiter, key="guide")
    except ValueError as err:
        assert "obs['guide']" in str(err)
        return
    n = len(labels)
    dense = parsed.dosage.toarray()
    assert dense.shape == (n, len(parsed.perturbation_names))
    assert parsed.perturbation_names == sorted(parsed.perturbation_names)
    assert parsed.condition_codes.shape == (n,) and parsed.is_control.shape == (n,)
    # no dose other than 1 without a dosage column (a repeated part is an error)
    assert set(np.unique(dense)) <= {0.0, 1.0}
    assert (dense[parsed.is_control] == 0).all()
    assert (dense[~parsed.is_control].sum(axis=1) > 0).all()
    names = np.asarray(parsed.perturbation_names, dtype=object)
    for i, label in enumerate(labels):
        genes = {p.strip() for p in label.split(delimiter)} - {"control"}
        assert set(names[dense[i] > 0]) == genes
        condition = parsed.condition_names[parsed.condition_codes[i]]
        assert condition == (delimiter.join(sorted(genes)) if genes else "control")


@PROPERTY
@given(
    doses=st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-3, 3),
            st.sampled_from(["1+2", "2", "x", "1+", "", "nan", "-1+1"]),
            st.none(),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_any_doses_give_finite_positive_dosages_or_a_clear_error(doses):
    labels = ["A+B" if i % 2 else "A" for i in range(len(doses))]
    try:
        parsed = parse_perturbation_labels(labels, dosages=doses, dosage_key="dose")
    except ValueError as err:
        assert "obs['dose']" in str(err)
        return
    values = parsed.dosage.toarray()
    assert np.isfinite(values).all()
    assert (values[values != 0] > 0).all()
    assert (
        parsed.dosage.getnnz(axis=1) == [1 if i % 2 == 0 else 2 for i in range(len(doses))]
    ).all()


_CONDITIONS = ["control", "A", "B", "C", "A+B", "B+C"]


@PROPERTY
@given(
    cells=st.lists(st.sampled_from(_CONDITIONS), min_size=1, max_size=40),
    kind=st.sampled_from(["random", "heldout_combinations", "heldout_perturbations"]),
    fraction=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(min_value=0.5, max_value=0.95),
        st.just(0.5),
    ),
    seed=st.integers(0, 3),
)
def test_any_split_is_a_partition_with_nonempty_train_or_a_clear_error(cells, kind, fraction, seed):
    cells = ["control", "A", *cells]
    adata = toy(cells)
    data = PerturbationData.from_anndata(adata, layer=None)
    options = {"random": {"val_fraction": fraction}}.get(kind, {"fraction": fraction})
    try:
        split = make_split(data, kind, seed=seed, **options)
    except ValueError as err:
        assert any(word in str(err) for word in ("fraction", "hold out", "holds out"))
        return
    joined = np.concatenate([split.train, split.val, split.test])
    assert np.array_equal(np.sort(joined), np.arange(data.n_cells))
    assert split.train.size > 0
    if kind != "random":  # something perturbed is left to learn from
        assert data.dosage[split.train].nnz > 0
    # every cell of a held-out condition (or carrying a held-out perturbation) is in test
    in_test = np.zeros(data.n_cells, bool)
    in_test[split.test] = True
    for name in split.heldout_conditions:
        if kind == "heldout_perturbations":
            column = data.perturbation_names.index(name)
            carriers = data.dosage[:, column].toarray().ravel() > 0
        else:
            carriers = data.cell_condition == name
        assert carriers.any() and in_test[carriers].all()


def test_ground_truth_and_counts_access_errors(small_screen, screen_data):
    from bioreason.data import ScreenGroundTruth, average_treatment_effect, simulate_screen

    truth = ScreenGroundTruth.from_uns(small_screen.uns["ground_truth"])
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"dosage must have shape \(n_cells, 20\)"):
        truth.sample_counts(np.ones((3, 5)), rng)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        truth.expected_condition_proportions(["P00"], n_samples=0)
    with pytest.raises(ValueError, match="conditions must be a non-empty list"):
        truth.expected_condition_proportions([])
    with pytest.raises(TypeError, match="config must be a ScreenConfig"):
        simulate_screen("small")
    assert (
        simulate_screen(
            {"n_genes": 5, "n_perturbations": 2, "n_combinations": 1, "n_cells_per_condition": 3}
        ).n_vars
        == 5
    )
    with pytest.raises(TypeError, match="boolean mask"):
        screen_data.get_counts(np.ones(screen_data.n_cells, bool))
    with pytest.raises(ValueError, match=r"rows must lie in \[0, 1860\)"):
        screen_data.get_counts(np.array([0, 5000]))
    with pytest.raises(TypeError, match="conditions must be a list of labels"):
        average_treatment_effect(small_screen, conditions="P00+P01")
