"""compare_to_truth: p* against p_true per group of questions (fast, no model)."""

import numpy as np
import pandas as pd
import pytest

from bioreason.sim.accuracy import METRIC_UNITS, compare_to_truth, join_truth


def _frames():
    truth = pd.DataFrame(
        {
            "condition": ["A", "A", "B", "B", "A+B", "A+B"],
            "readout": ["p0", "p1"] * 3,
            "p_star": [0.2, 0.8, 0.5, 0.5, 0.1, 0.9],
            "p_star_se": [0.01] * 6,
        }
    )
    # predictions listed in another order; A and B exact, A+B off by 0.3 towards 1/2
    predicted = pd.DataFrame(
        {
            "condition": ["A+B", "A+B", "B", "B", "A", "A"],
            "readout": ["p1", "p0", "p1", "p0", "p1", "p0"],
            "p_star": [0.6, 0.4, 0.5, 0.5, 0.8, 0.2],
            "p_star_se": [0.01] * 6,
            "p_star_spread": [0.2, 0.2, 0.1, 0.1, 0.1, 0.1],
            "group": ["heldout", "heldout", "seen", "seen", "seen", "seen"],
        }
    )
    return predicted, truth


def test_compare_to_truth_per_group():
    predicted, truth = _frames()
    table = compare_to_truth(predicted, truth, tolerance=0.1)
    assert list(table.index) == ["heldout", "seen"]
    assert set(METRIC_UNITS) >= set(table.columns)
    seen, heldout = table.loc["seen"], table.loc["heldout"]
    assert seen["mean_abs_error"] == pytest.approx(0.0)
    assert seen["fraction_off"] == 0.0
    assert seen["n_questions"] == 4 and seen["n_conditions"] == 2
    assert heldout["mean_abs_error"] == pytest.approx(0.3)
    assert heldout["fraction_off"] == 1.0
    # p* 0.4 and 0.6 fall in different bins, each 0.3 from its p_true
    assert heldout["ece_to_reference"] == pytest.approx(0.3)
    assert heldout["overconfidence"] == pytest.approx(0.1 - 0.4)  # underconfident
    assert heldout["mean_spread"] == pytest.approx(0.2)
    expected_floor = np.sqrt(2 / np.pi) * np.hypot(0.01, 0.01)
    assert heldout["noise_floor"] == pytest.approx(expected_floor)
    assert table.attrs["tolerance"] == 0.1


def test_constant_predictor_and_bootstrap():
    predicted, truth = _frames()
    constant = predicted[["condition", "readout", "group"]].assign(p_star=0.5)
    table = compare_to_truth(constant, truth, by=None, n_boot=200, seed=1)
    row = table.loc["all"]
    assert row["mean_abs_error"] == pytest.approx(np.mean([0.3, 0.3, 0, 0, 0.4, 0.4]))
    assert np.isnan(row["mean_spread"]) and np.isnan(row["noise_floor"])
    assert row["mean_abs_error_low"] <= row["mean_abs_error"] <= row["mean_abs_error_high"]
    # one bin holds every prediction: the ECE is |0.5 - mean p_true|
    assert row["ece_to_reference"] == pytest.approx(0.0)


def test_join_truth_errors():
    predicted, truth = _frames()
    joined = join_truth(predicted, truth.rename(columns={"p_star": "p_true"}))
    assert np.allclose(joined["p_true"], [0.9, 0.1, 0.5, 0.5, 0.8, 0.2])
    with pytest.raises(ValueError, match="no p_true"):
        join_truth(predicted, truth.iloc[:4])
    with pytest.raises(ValueError, match="twice"):
        join_truth(predicted, pd.concat([truth, truth]))
    with pytest.raises(ValueError, match="p_star"):
        join_truth(predicted.drop(columns="p_star"), truth)


def test_the_benchmark_pools_fits_from_other_seeds(tmp_path, capsys):
    """benchmarks/simulator_accuracy.py --fits 2 on a tiny screen: each fit's figures,
    the pooled ones, the between-fit and within-fit spreads, and the pooled rows in --out."""
    import importlib.util
    import re
    from pathlib import Path

    import torch

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "simulator_accuracy.py"
    spec = importlib.util.spec_from_file_location("_simulator_accuracy", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    screen = '{"n_genes": 60, "n_perturbations": 4, "n_combinations": 2, '
    screen += '"n_cells_per_condition": 30}'
    out = tmp_path / "accuracy.parquet"
    threads = torch.get_num_threads()
    try:
        argv = ["--threads", "1", "--models", "sams_vae", "--steps", "3", "--fits", "2"]
        argv += ["--screen", screen, "--n-programs", "2", "--n-markers", "5", "--n-cells", "20"]
        argv += ["--target-se", "0.2", "--max-draws", "16", "--n-boot", "10"]
        argv += ["--heldout-fraction", "0.5", "--vae-options", '{"n_latent": 2, "n_hidden": 16}']
        assert bench.main([*argv, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = dict(re.findall(r"^(\S+): (\S+) ", capsys.readouterr().out, flags=re.M))
    for label in ("sams_vae", "sams_vae_fit1", "sams_vae_pooled"):
        coverage = float(printed[f"{label}_seen_ptrue_in_90pct_interval"])
        assert 0 <= coverage <= 1
    assert "sams_vae_fit1_train_seconds" in printed
    between = float(printed["sams_vae_seen_pstar_sd_between_fits"])
    assert 0 <= between <= 0.75 and float(printed["sams_vae_seen_pstar_spread_within_fit"]) >= 0
    table = pd.read_parquet(out)
    assert set(table["model"]) >= {"sams_vae", "sams_vae_fit1", "sams_vae_pooled"}
    fits = table[table["model"].isin(["sams_vae", "sams_vae_fit1"])]
    pooled = table[table["model"] == "sams_vae_pooled"].set_index(["condition", "readout"])
    mean = fits.groupby(["condition", "readout"])["p_star"].mean()
    assert np.allclose(pooled.loc[mean.index, "p_star"], mean)
    assert "p_star_per_draw" not in table.columns


def test_the_real_benchmark_pools_fits_and_prints_the_headline(capsys):
    """benchmarks/simulator_real.py --fits 2 on the shipped Norman cells (a 3-step model):
    each fit's figures, the pooled ones, and the issue's ``real_*_pobs`` lines, per
    held-out pair too. The additive baseline does not depend on the model, so its line
    equals the per-pair lines' mean (the pairs have equal numbers of questions)."""
    import importlib.util
    import re
    from pathlib import Path

    import torch

    from helpers import require_norman

    require_norman()
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "simulator_real.py"
    spec = importlib.util.spec_from_file_location("_simulator_real", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    try:
        argv = ["--threads", "1", "--steps", "3", "--fits", "2", "--target-se", "0.2"]
        argv += ["--n-boot", "10", "--n-programs", "3"]
        argv += ["--vae-options", '{"n_latent": 2, "n_hidden": 16}']
        assert bench.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    lines = re.findall(r"^(\S+): (\S+) (\S+)$", out, flags=re.M)
    printed = {name: float(value) for name, value, _unit in lines}
    for label in ("sams_vae", "sams_vae_fit1", "sams_vae_pooled"):
        assert 0 <= printed[f"{label}_heldout_reference_in_90pct_interval"] <= 1
    pooled = printed["sams_vae_pooled_heldout_mean_abs_error_vs_reference"]
    assert printed["real_mae_pstar_pobs"] == pooled
    additive = printed["additive_heldout_mean_abs_error_vs_reference"]
    assert printed["real_mae_additive_pobs"] == additive
    assert 0 <= printed["real_pobs_in_90pct_interval"] <= 1
    pairs = re.findall(r"^heldout_combinations: (.*)$", out, flags=re.M)[0].split(", ")
    assert len(pairs) >= 2 and all("+" in pair for pair in pairs)
    per_pair = [printed[f"real_{pair}_mae_additive_pobs"] for pair in pairs]
    assert np.mean(per_pair) == pytest.approx(printed["real_mae_additive_pobs"], abs=1e-4)
    assert all(printed[f"real_{pair}_pobs_own_error"] > 0 for pair in pairs)


def test_interval_coverage_counts_the_questions_inside():
    from bioreason.sim.accuracy import interval_coverage

    low = np.array([0.1, 0.2, 0.3, np.nan, 0.5])
    high = np.array([0.3, 0.4, 0.5, 0.9, 0.7])
    reference = np.array([0.3, 0.5, 0.3, 0.5, np.nan])  # inside (end), outside, inside (end)
    assert interval_coverage(low, high, reference) == pytest.approx(2 / 3)
    assert np.isnan(interval_coverage([np.nan], [0.5], [0.2]))
    with pytest.raises(ValueError, match="one low, high and reference per question, got 2, 1"):
        interval_coverage([0.1, 0.2], [0.3], [0.2])
