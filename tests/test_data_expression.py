import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bioreason.data import (
    ate_agreement,
    average_treatment_effect,
    condition_means,
    differential_expression,
    ground_truth_ate,
    log_normalized,
    pooled_ate_agreement,
)

COUNTS = np.array(
    [[10, 0, 5], [30, 10, 0], [0, 10, 20], [10, 30, 0], [4, 4, 4], [1, 2, 3]], dtype=np.float32
)
LABELS = ["control", "control", "A", "A", "B", "B"]


def toy(sparse: bool = False) -> ad.AnnData:
    obs = pd.DataFrame({"perturbation": LABELS}, index=[f"c{i}" for i in range(len(LABELS))])
    adata = ad.AnnData(X=np.zeros_like(COUNTS), obs=obs)
    adata.var_names = ["g0", "g1", "g2"]
    adata.layers["counts"] = sp.csr_matrix(COUNTS) if sparse else COUNTS.copy()
    return adata


def normalized() -> np.ndarray:
    counts = COUNTS.astype(np.float64)
    return np.log2(1e4 * counts / counts.sum(1, keepdims=True) + 1)


@pytest.mark.parametrize("sparse", [False, True])
def test_log_normalized_and_condition_means_closed_form(sparse):
    adata = toy(sparse)
    out = log_normalized(adata)
    x = out.X.toarray() if sp.issparse(out.X) else out.X
    np.testing.assert_allclose(x, normalized(), rtol=1e-10)
    assert (adata.X == 0).all()  # the input is untouched
    means = condition_means(adata)
    assert list(means.index) == ["control", "A", "B"] and list(means.columns) == ["g0", "g1", "g2"]
    expected = normalized()
    for rows, label in (([0, 1], "control"), ([2, 3], "A"), ([4, 5], "B")):
        np.testing.assert_allclose(means.loc[label], expected[rows].mean(0), rtol=1e-10)


def test_average_treatment_effect_closed_form_and_errors():
    adata = toy()
    ate = average_treatment_effect(adata)
    expected = normalized()
    assert list(ate.index) == ["A", "B"]
    np.testing.assert_allclose(ate.loc["A"], expected[2:4].mean(0) - expected[:2].mean(0))
    np.testing.assert_allclose(ate.loc["B"], expected[4:].mean(0) - expected[:2].mean(0))
    only_b = average_treatment_effect(adata, conditions=["B"])
    assert list(only_b.index) == ["B"]
    with pytest.raises(ValueError, match="no control cells labelled 'ctrl'"):
        average_treatment_effect(adata, control="ctrl")
    with pytest.raises(ValueError, match=r"conditions \['C'\] have no cells"):
        average_treatment_effect(adata, conditions=["C"])
    with pytest.raises(ValueError, match="layer 'raw' not found"):
        average_treatment_effect(adata, layer="raw")
    with pytest.raises(ValueError, match="perturbation column 'guide' not found"):
        average_treatment_effect(adata, perturbation_key="guide")


def ate_tables(seed=0, n_conditions=4, n_genes=50):
    rng = np.random.default_rng(seed)
    genes = [f"g{i}" for i in range(n_genes)]
    conditions = [f"P{i}" for i in range(n_conditions)]
    # conditions with effects of different sizes, and a model with noise
    data = pd.DataFrame(
        rng.normal(size=(n_conditions, n_genes)) * np.arange(1, n_conditions + 1)[:, None],
        index=conditions,
        columns=genes,
    )
    model = data + rng.normal(scale=0.7, size=data.shape)
    return data, model


def test_pooled_agreement_is_numpy_on_the_flattened_matrices():
    data, model = ate_tables()
    pooled = pooled_ate_agreement(data, model, top_k=5)
    truth, prediction = data.to_numpy(), model.to_numpy()
    assert pooled["pearson_all"] == pytest.approx(
        np.corrcoef(truth.ravel(), prediction.ravel())[0, 1]
    )
    residual = ((truth - prediction) ** 2).sum()
    assert pooled["r2_all"] == pytest.approx(1 - residual / ((truth - truth.mean()) ** 2).sum())
    assert pooled["n_all"] == truth.size and pooled["n_top"] == 4 * 5
    # top-k: each condition's own 5 genes of largest |data ATE|, pooled
    keep_truth, keep_prediction = [], []
    for t, p in zip(truth, prediction):
        order = sorted(range(t.size), key=lambda g: -abs(t[g]))[:5]
        keep_truth += [t[g] for g in order]
        keep_prediction += [p[g] for g in order]
    assert pooled["pearson_top"] == pytest.approx(np.corrcoef(keep_truth, keep_prediction)[0, 1])
    # the model rows are aligned by name, not by position
    shuffled = model.iloc[::-1]
    assert pooled_ate_agreement(data, shuffled, top_k=5) == pytest.approx(pooled)


def test_pooled_and_per_condition_values_differ_as_they_should():
    data, _ = ate_tables()
    # a model exact up to a per-condition scale: every per-condition r is 1, but pooled
    # r is below 1 because the sizes of the effects across conditions are wrong
    model = data.mul([4.0, 0.5, 1.0, 0.25], axis=0)
    per_condition = ate_agreement(data, model, top_k=5)
    np.testing.assert_allclose(per_condition["pearson_all"], 1.0)
    np.testing.assert_allclose(per_condition["pearson_top"], 1.0)
    pooled = pooled_ate_agreement(data, model, top_k=5)
    assert pooled["pearson_all"] < 0.9 and pooled["pearson_top"] < 0.9


def test_ate_agreement_per_condition_pearson_r2_and_top_k():
    genes = [f"g{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.normal(size=(2, 30)), index=["A", "B"], columns=genes)
    model = data.copy()
    model.loc["B"] = 2 * data.loc["B"]
    table = ate_agreement(data, model, top_k=5)
    assert table.loc["A"].tolist() == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert table.loc["B", "pearson_all"] == pytest.approx(1.0)
    b = data.loc["B"].to_numpy()
    assert table.loc["B", "r2_all"] == pytest.approx(1 - (b**2).sum() / ((b - b.mean()) ** 2).sum())
    # the top genes are chosen by |data ATE|: spoil the others and top-k stays perfect
    spoiled = data.copy()
    top = np.argsort(-np.abs(data.loc["A"].to_numpy()))[:5]
    rest = np.setdiff1d(np.arange(30), top)
    spoiled.iloc[0, rest] = rng.normal(size=rest.size)
    table = ate_agreement(data, spoiled, top_k=5)
    assert table.loc["A", "pearson_top"] == pytest.approx(1.0)
    assert table.loc["A", "r2_top"] == pytest.approx(1.0)
    assert table.loc["A", "pearson_all"] < 0.9


def test_agreement_errors():
    data, model = ate_tables()
    with pytest.raises(ValueError, match=r"model ATE lacks conditions \['P3'\]"):
        ate_agreement(data, model.drop(index="P3"))
    with pytest.raises(ValueError, match="different genes"):
        pooled_ate_agreement(data, model.iloc[:, ::-1])


def test_ground_truth_ate_agrees_with_a_large_simulated_screen():
    from bioreason.data import ScreenGroundTruth, simulate_screen

    adata = simulate_screen(
        n_cells_per_condition=1500,
        n_genes=20,
        n_latent=3,
        n_perturbations=5,
        n_combinations=3,
        library_log_mean=6.0,
        seed=0,
    )
    truth = ScreenGroundTruth.from_uns(adata.uns["ground_truth"])
    labels = set(adata.obs["perturbation"])
    conditions = ["P0"] + sorted(c for c in labels if "+" in c)[:1]
    exact = ground_truth_ate(truth, conditions, list(adata.var_names), n_cells=20_000)
    assert list(exact.index) == conditions
    observed = average_treatment_effect(adata, conditions=conditions)
    assert (ate_agreement(observed, exact)["pearson_all"] > 0.9).all()
    assert pooled_ate_agreement(observed, exact)["pearson_all"] > 0.9


def test_differential_expression_finds_the_shifted_gene():
    rng = np.random.default_rng(0)
    counts = rng.poisson(20, size=(80, 6)).astype(np.float32)
    counts[40:, 2] *= 4  # gene g2 goes up in A
    obs = pd.DataFrame({"perturbation": ["control"] * 40 + ["A"] * 40})
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(X=counts, obs=obs)
    adata.var_names = [f"g{i}" for i in range(6)]
    table = differential_expression(adata, "A", layer=None, n_genes=3)
    assert len(table) == 3 and {"names", "logfoldchanges", "pvals_adj"} <= set(table.columns)
    assert table["names"].iloc[0] == "g2" and table["logfoldchanges"].iloc[0] > 1


def test_a_combination_is_found_in_either_order_and_named_as_asked():
    """Norman writes SET+KLF1; splits and models say KLF1+SET: both find the cells."""
    adata = toy()
    adata.obs["perturbation"] = ["control", "control", "SET+KLF1", "SET+KLF1", "B", "B"]
    expected = normalized()[2:4].mean(0) - normalized()[:2].mean(0)
    for spelling in ("KLF1+SET", "SET+KLF1"):
        ate = average_treatment_effect(adata, conditions=[spelling])
        assert list(ate.index) == [spelling]
        np.testing.assert_allclose(ate.loc[spelling], expected)
    # the default rows are the canonical conditions
    assert list(average_treatment_effect(adata).index) == ["KLF1+SET", "B"]
    with pytest.raises(TypeError, match=r"pass \['KLF1\+SET'\]"):
        average_treatment_effect(adata, conditions="KLF1+SET")
    with pytest.raises(ValueError, match=r"conditions with cells: \['KLF1\+SET', 'B'\]"):
        average_treatment_effect(adata, conditions=["KLF1+B"])
    # a model table in the other spelling lines up with the data's rows
    data_ate = average_treatment_effect(adata, conditions=["SET+KLF1"])
    model_ate = average_treatment_effect(adata, conditions=["KLF1+SET"])
    assert ate_agreement(data_ate, model_ate)["pearson_all"].iloc[0] == pytest.approx(1.0)


def test_differential_expression_finds_a_combination_in_either_order():
    rng = np.random.default_rng(0)
    counts = rng.poisson(20, size=(80, 6)).astype(np.float32)
    counts[40:, 2] *= 4
    obs = pd.DataFrame({"perturbation": ["control"] * 40 + ["SET+KLF1"] * 40})
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(X=counts, obs=obs)
    adata.var_names = [f"g{i}" for i in range(6)]
    for spelling in ("KLF1+SET", "SET+KLF1"):
        table = differential_expression(adata, spelling, layer=None, n_genes=3)
        assert table["names"].iloc[0] == "g2"
