"""Task tables built by the simulator (bioreason.sim.tasks, bioreason.sim.task_config): the
schema, splits and p_true of build_task, and the simulation budget of a TaskConfig (nested,
its flat old fields still loading, reaching the draws of p*)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import bioreason.data as bd
from bioreason.data.tasks import TASK_COLUMNS, load_task, save_task
from bioreason.sim import (
    GroundTruthSimulator,
    SimulationBudget,
    TaskConfig,
    build_task,
    build_task_from_config,
    program_readout,
)


@pytest.fixture(scope="module")
def screen():
    return bd.simulate_screen(
        n_cells_per_condition=40, n_genes=60, n_perturbations=5, n_combinations=4, seed=2
    )


@pytest.fixture(scope="module")
def task(screen, tmp_path_factory):
    conditions = [c for c in screen.obs["perturbation"].unique() if c != "control"]
    genes = [str(g) for g in screen.var_names[:4]]
    simulator = GroundTruthSimulator(screen, "screen_hit", threshold=None, n_cells=30)
    path = tmp_path_factory.mktemp("task") / "task.parquet"
    table = build_task(
        simulator,
        conditions,
        genes,
        n_outcomes=3,
        split="heldout_combinations",
        budget=SimulationBudget(target_se=0.03),
        truth=GroundTruthSimulator(screen, "screen_hit", threshold=0.0, n_cells=30),
        path=path,
    )
    return table, path, simulator


def test_build_task_has_the_schema_and_one_row_per_question(task, screen):
    table, _, simulator = task
    assert all(c in table.columns for c in TASK_COLUMNS)
    n_conditions = screen.obs["perturbation"].nunique() - 1
    assert len(table) == n_conditions * 4 and table["question_id"].is_unique
    assert table["p_star"].between(0, 1).all() and table["outcome"].isin([0, 1]).all()
    assert table["further_outcomes"].map(len).eq(2).all()
    definition = json.loads(table["outcome_definition"].iloc[0])
    assert definition["name"] == "screen_hit" and isinstance(definition["threshold"], dict)
    # the truth simulator was given the same (fixed) thresholds: p_true answers the same event
    assert simulator.outcome.threshold == definition["threshold"]
    assert np.isfinite(table["p_true"]).all()
    # the task is worth predicting: the suggested thresholds spread p* over (0, 1)
    summary = table.attrs["summary"]
    assert summary["p_star_extreme_fraction"] < 0.8 and sum(summary["p_star_histogram"]) == len(
        table
    )
    assert "<answer></answer>" in table["prompt"].iloc[0]


def test_heldout_combination_split_holds_out_unseen_pairs_of_seen_parts(task):
    table, _, _ = task
    test_conditions = set(table.loc[table["split"] == "test", "condition"])
    train_conditions = set(table.loc[table["split"] == "train", "condition"])
    assert test_conditions and all("+" in c for c in test_conditions)
    assert not test_conditions & train_conditions
    for combination in test_conditions:
        assert set(combination.split("+")) <= train_conditions | set(
            table.loc[table["split"] == "val", "condition"]
        )


def test_task_round_trips_through_parquet_and_is_not_overwritten(task):
    table, path, _ = task
    loaded = load_task(path)
    pd.testing.assert_frame_equal(loaded, table, check_dtype=False, check_like=True)
    with pytest.raises(FileExistsError, match="already exists"):
        save_task(table, path)
    save_task(table, path, overwrite=True)


def test_bad_templates_and_inputs_name_the_problem(screen):
    simulator = GroundTruthSimulator(screen, "direction", n_cells=20)
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['gene'\]"):
        build_task(simulator, ["P0"], ["gene00000"], template="{gene}?")
    with pytest.raises(ValueError, match="needs readouts"):
        build_task(simulator, ["P0"], None)
    with pytest.raises(ValueError, match="n_outcomes"):
        build_task(simulator, ["P0"], ["gene00000"], n_outcomes=0)


def test_build_task_gives_its_budget_to_p_star_and_p_true(screen):
    conditions = ["P0", "P1", "P0+P1"]
    genes = [str(g) for g in screen.var_names[:2]]
    budget = SimulationBudget(target_se=0.5, min_draws=3, draws_per_round=3, method="brute")
    simulator = GroundTruthSimulator(screen, "screen_hit", threshold=0.1, n_cells=30)
    truth = GroundTruthSimulator(screen, "screen_hit", threshold=0.1, n_cells=30)
    table = build_task(simulator, conditions, genes, budget=budget, truth=truth, seed=1)
    assert (table["p_star_draws"] == 3).all() and (table["p_star_method"] == "brute").all()
    # p_true is the truth simulator's p* under the same budget and seed
    same = truth.probability(table[["condition", "readout"]], budget, seed=1)
    np.testing.assert_array_equal(table["p_true"].to_numpy(), same["p_star"].to_numpy())
    # without a budget: the simulator's own
    simulator.budget = budget.replace(min_draws=5, draws_per_round=5)
    again = build_task(simulator, conditions, genes, seed=1)
    assert (again["p_star_draws"] == 5).all()
    with pytest.raises(TypeError, match="budget must be a SimulationBudget"):
        build_task(simulator, conditions, genes, budget={"target_se": 0.1})


def _outcome_matrix(table: pd.DataFrame) -> np.ndarray:
    """The table's outcomes, shape (n_questions, n_outcomes): ``outcome`` first."""
    further = np.stack(table["further_outcomes"].to_numpy())
    return np.column_stack([table["outcome"].to_numpy(), further]).astype(np.float64)


def test_build_task_draws_its_outcomes_independently_per_question_unless_asked(screen):
    """Two overlapping programs on three conditions, 400 outcomes per question: with
    independent sampling (the default) every question's outcome frequency matches its p*
    and no two questions' outcomes are correlated beyond 4 / sqrt(400); with shared
    sampling the two programs of one condition are clearly correlated (one simulated
    screen per outcome column)."""
    genes = [str(g) for g in screen.var_names]
    programs = [program_readout("early", genes[0:6]), program_readout("late", genes[2:8])]
    conditions, readouts, n = ["P0", "P1", "P0+P1"], ["early", "late"], 400
    tables = {}
    for mode in ("independent", "shared", None):
        simulator = GroundTruthSimulator(
            screen, "screen_hit", readouts=programs, threshold=None, n_cells=30
        )
        options = {} if mode is None else {"outcome_sampling": mode}
        tables[mode] = build_task(
            simulator,
            conditions,
            readouts,
            n_outcomes=n,
            budget=SimulationBudget(target_se=0.02),
            seed=4,
            **options,
        )
    independent, shared = tables["independent"], tables["shared"]
    assert independent.attrs["summary"]["outcome_sampling"] == "independent"
    assert shared.attrs["summary"]["outcome_sampling"] == "shared"
    # the default is independent; the same seed gives the same p* but other outcomes
    pd.testing.assert_frame_equal(tables[None], independent)
    np.testing.assert_array_equal(independent["p_star"], shared["p_star"])
    assert not np.array_equal(_outcome_matrix(independent), _outcome_matrix(shared))
    bound = 4 / np.sqrt(n)
    for table in (independent, shared):
        outcomes, p_star = _outcome_matrix(table), table["p_star"].to_numpy()
        # p* is the fast path's: allow 0.02 for its normal approximation (n_cells = 30)
        tolerance = (
            4 * np.sqrt(p_star * (1 - p_star) / n) + 4 * table["p_star_se"].to_numpy() + 0.02
        )
        assert (np.abs(outcomes.mean(axis=1) - p_star) < tolerance).all()
    correlation = np.corrcoef(_outcome_matrix(independent))
    off_diagonal = correlation[~np.eye(len(correlation), dtype=bool)]
    assert np.abs(off_diagonal).max() < bound, correlation.round(2)
    correlation = np.corrcoef(_outcome_matrix(shared))
    same_condition = [correlation[i, i + 1] for i in range(0, len(correlation), 2)]
    assert min(same_condition) > bound, correlation.round(2)
    with pytest.raises(ValueError, match="outcome_sampling must be one of"):
        build_task(simulator, conditions, readouts, outcome_sampling="paired")


# ---------------------------------------------------------------- TaskConfig and its budget
FLAT = {"target_se": 0.05, "max_draws": 32, "cells_per_draw": 64, "replicates_per_draw": 4}


def test_a_task_config_with_the_old_flat_budget_loads_with_a_warning(tmp_path):
    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.yaml"
    flat.write_text(yaml.safe_dump({"model": "m", "seed": 2, **FLAT}))
    nested.write_text(yaml.safe_dump({"model": "m", "seed": 2, "budget": FLAT}))
    with pytest.warns(FutureWarning) as caught:
        old = TaskConfig.from_yaml(flat)
    messages = " ".join(str(w.message) for w in caught)
    for name in FLAT:
        assert f"'{name}' has moved to 'budget.{name}'" in messages
    new = TaskConfig.from_yaml(nested)
    assert old == new
    assert new.budget == SimulationBudget(**FLAT)
    assert new.to_dict()["budget"]["cells_per_draw"] == 64  # the manifest nests it too
    # an old key and the new place together are one setting given twice
    with pytest.raises(ValueError, match="target_se and budget.target_se are the same"):
        TaskConfig.from_dict({"model": "m", "target_se": 0.1, "budget": {"target_se": 0.2}})


def test_a_task_config_budget_names_its_bad_field():
    with pytest.raises(ValueError, match=r"TaskConfig.budget: target_se must be > 0, got 0"):
        TaskConfig.from_dict({"model": "m", "budget": {"target_se": 0}})
    with pytest.raises(ValueError, match=r"TaskConfig.budget: unknown field\(s\) \['max_draw'\]"):
        TaskConfig.from_dict({"model": "m", "budget": {"max_draw": 5}})
    with pytest.raises(TypeError, match=r"TaskConfig.budget.method must be one of"):
        TaskConfig.from_dict({"model": "m", "budget": {"method": "exact"}})
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="max_draws must be >= 1"):
        TaskConfig.from_dict({"model": "m", "max_draws": 0})


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny screen (4 singles, 2 measured pairs) and a SAMS-VAE trained 20 steps."""
    from bioreason.models import SAMSVAE

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("saved")
    adata = bd.simulate_screen(
        n_cells_per_condition=20,
        n_genes=30,
        n_latent=3,
        n_perturbations=4,
        n_combinations=2,
        seed=0,
    )
    SAMSVAE.setup_anndata(adata)
    model = SAMSVAE(adata, n_latent=3, seed=0)
    model.train(max_steps=20, batch_size=256, n_particles=1, progress=False)
    model.save(folder / "model")
    adata.write_h5ad(folder / "screen.h5ad")
    yield {"model": str(folder / "model"), "adata": str(folder / "screen.h5ad")}
    torch.set_num_threads(threads)


def _config(saved, **budget):
    return TaskConfig.from_dict(
        {
            **saved,
            "readouts": ["gene00000", "gene00001"],
            "conditions": ["P0", "P1", "P0+P1"],
            "outcome_options": {"threshold": 0.1, "n_cells": 30},
            "budget": {"target_se": 0.5, **budget},
        }
    )


def test_the_budget_of_a_task_config_reaches_the_draws_of_p_star(saved, tmp_path):
    default = build_task_from_config(_config(saved))
    # a loose target stops at the default minimum (16 draws, one round) on the fast path
    assert (default["p_star_draws"] == 16).all() and (default["p_star_method"] == "fast").all()
    table = build_task_from_config(
        _config(saved, min_draws=10, draws_per_round=7, method="brute", replicates_per_draw=2),
        out=tmp_path / "task.parquet",
    )
    # rounds of 7 until at least 10: 14 draws, by brute force
    assert (table["p_star_draws"] == 14).all() and (table["p_star_method"] == "brute").all()
    # the summary sidecar records the budget's target SE (bioreason inspect-task reads it)
    summary = json.loads((tmp_path / "task.parquet.summary.json").read_text())
    assert summary["target_se"] == 0.5 and summary["n_unconverged"] == 0
    manifest = json.loads((tmp_path / "task.parquet.manifest.json").read_text())
    assert manifest["config"]["budget"]["draws_per_round"] == 7
    # cells per draw below twice or once the replicate size are refused naming the field
    with pytest.raises(ValueError, match=r"cells_per_draw must be at least .*\(30\), got 8"):
        build_task_from_config(_config(saved, cells_per_draw=8))


def test_a_task_configs_outcome_sampling_reaches_the_table_and_is_reproducible(saved, tmp_path):
    config = _config(saved)
    assert config.outcome_sampling == "independent"
    first = build_task_from_config(config, out=tmp_path / "task.parquet")
    again = build_task_from_config(_config(saved))
    pd.testing.assert_frame_equal(first, again)  # the same config and seed: the same table
    summary = json.loads((tmp_path / "task.parquet.summary.json").read_text())
    assert summary["outcome_sampling"] == "independent"
    manifest = json.loads((tmp_path / "task.parquet.manifest.json").read_text())
    assert manifest["config"]["outcome_sampling"] == "independent"
    shared = TaskConfig.from_dict({**config.to_dict(), "outcome_sampling": "shared"})
    table = build_task_from_config(shared)
    assert table.attrs["summary"]["outcome_sampling"] == "shared"
    np.testing.assert_array_equal(table["p_star"], first["p_star"])
    with pytest.raises(TypeError, match=r"TaskConfig.outcome_sampling must be one of"):
        TaskConfig.from_dict({"model": "m", "outcome_sampling": "paired"})
    with pytest.raises(ValueError, match="outcome_sampling must be one of"):
        TaskConfig(model="m", outcome_sampling="paired")


def test_build_task_takes_readout_objects_as_the_simulator_does(screen):
    genes = [str(g) for g in screen.var_names]
    program = program_readout("early", genes[0:6])
    conditions = ["P0", "P1"]
    budget = SimulationBudget(target_se=0.5, min_draws=3, draws_per_round=3, method="brute")
    options = {"threshold": 0.1, "n_cells": 30}
    given = GroundTruthSimulator(screen, "screen_hit", readouts=[program], **options)
    by_name = build_task(given, conditions, ["early", genes[7]], budget=budget, seed=1)
    # the same readout as an object, to a simulator (and a truth) that was not given it
    plain = GroundTruthSimulator(screen, "screen_hit", **options)
    truth = GroundTruthSimulator(screen, "screen_hit", **options)
    table = build_task(plain, conditions, [program, genes[7]], budget=budget, seed=1, truth=truth)
    assert list(table["readout"].unique()) == ["early", genes[7]]
    assert list(table["prompt"]) == list(by_name["prompt"])
    np.testing.assert_allclose(table["p_star"], by_name["p_star"])
    assert np.isfinite(table["p_true"]).all()
    # one name given as a string and as a different program: refused, naming it
    other = program_readout("early", genes[10:14])
    with pytest.raises(ValueError, match="two different readouts are named 'early'"):
        build_task(plain, conditions, [other], budget=budget)
    with pytest.raises(TypeError, match=r"single str 'early'; pass \['early'\]"):
        build_task(plain, conditions, "early", budget=budget)
    with pytest.raises(TypeError, match="readout names .* or Readout objects, got int"):
        build_task(plain, conditions, [3], budget=budget)


def test_a_string_where_a_list_belongs_names_the_argument(screen):
    simulator = GroundTruthSimulator(screen, "direction", n_cells=20)
    with pytest.raises(TypeError, match=r"conditions must be a list.*\['P0\+P1'\]"):
        build_task(simulator, "P0+P1", ["gene00000"])
    with pytest.raises(TypeError, match=r"readouts must be a list.*\['gene00000'\]"):
        build_task(simulator, ["P0"], "gene00000")
    with pytest.raises(ValueError, match="one condition twice"):
        build_task(simulator, ["P0+P1", "P1+P0"], ["gene00000"])


def test_the_prompts_verb_follows_the_perturbation_type(screen):
    simulator = GroundTruthSimulator(screen, "direction", n_cells=20)
    budget = SimulationBudget(target_se=0.5, min_draws=2, draws_per_round=2, method="brute")
    common = {"budget": budget, "seed": 1, "template": "{question}"}
    default = build_task(simulator, ["P0", "P0+P1"], ["gene00000"], **common)
    assert default["prompt"].str.contains("knocking down P0").all()
    activated = build_task(
        simulator, ["P0", "P0+P1"], ["gene00000"], perturbation_type="CRISPRa", **common
    )
    assert activated["prompt"].iloc[0].count("activating P0") == 1
    assert "activating P0 and P1 together" in activated["prompt"].iloc[1]
    assert not activated["prompt"].str.contains("knocking").any()
    with pytest.raises(ValueError, match=r"unknown perturbation_type 'crisprx'.*'crispra'"):
        build_task(simulator, ["P0"], ["gene00000"], perturbation_type="crisprx", **common)
    with pytest.raises(ValueError, match="unknown perturbation_type 'rnai'"):
        TaskConfig(model="m", perturbation_type="rnai")
    assert TaskConfig(model="m", perturbation_type="knockout").perturbation_type == "knockout"


def test_the_perturbation_type_is_read_from_the_cells(screen):
    from bioreason.sim import perturbation_type_of

    assert perturbation_type_of(screen) is None  # the simulated screen records none
    cells = screen.copy()
    cells.obs["perturbation_type"] = "CRISPRa"
    assert perturbation_type_of(cells) == "crispra"
    cells.obs["perturbation_type"] = ["CRISPRa", "CRISPRi"] * (cells.n_obs // 2) + ["CRISPRa"] * (
        cells.n_obs % 2
    )
    assert perturbation_type_of(cells) is None  # two types: the caller's default
    assert TaskConfig(model="m").perturbation_type == "auto"


def test_a_task_configs_library_sizes_reach_the_simulator(saved, tmp_path):
    """The same config and seed with each condition's own library sizes draws other
    cells (the sizes come from another stream), so p* moves; the manifest records the
    choice, and an unknown rule is refused by both ways of building a config."""
    pooled = build_task_from_config(_config(saved))
    config = TaskConfig.from_dict({**_config(saved).to_dict(), "library_sizes": "per_condition"})
    own = build_task_from_config(config, out=tmp_path / "task.parquet")
    assert not np.allclose(own["p_star"], pooled["p_star"])
    manifest = json.loads((tmp_path / "task.parquet.manifest.json").read_text())
    assert manifest["config"]["library_sizes"] == "per_condition"
    # the model's training cells given: the pair's sizes are composed from its parts'
    # (tests/test_sim.py checks the sizes; here, that train_cells reaches them: ignored,
    # the same config and seed would give the same table)
    import anndata as ad

    labels = ad.read_h5ad(saved["adata"]).obs["perturbation"].astype(str).to_numpy()
    train = np.flatnonzero(labels != "P0+P1")
    composed = build_task_from_config(config, train_cells=train)
    pair = (own["condition"] == "P0+P1").to_numpy()
    assert not np.allclose(composed["p_star"][pair], own["p_star"][pair])
    pd.testing.assert_frame_equal(build_task_from_config(config, train_cells=None), own)
    with pytest.raises(ValueError, match="train_cells must index the"):
        build_task_from_config(config, train_cells=np.array([len(labels)]))
    with pytest.raises(TypeError, match=r"TaskConfig.library_sizes must be one of"):
        TaskConfig.from_dict({"model": "m", "library_sizes": "per_cell"})
    with pytest.raises(ValueError, match="library_sizes must be one of"):
        TaskConfig(model="m", library_sizes="per_cell")


def test_check_on_cells_joins_p_star_to_the_held_out_cells_reference(saved):
    """The task's questions about the held-out pair get p_obs from the pair's cells
    outside the training cells and the additive baseline from its parts; questions about
    other conditions are left out, and a task about none of them gives an empty frame."""
    import anndata as ad

    from bioreason.sim.baselines import heldout_reference
    from bioreason.sim.outcomes import make_outcome
    from bioreason.sim.task_config import check_on_cells

    config = _config(saved)
    table = build_task_from_config(config)
    cells = ad.read_h5ad(saved["adata"])
    labels = cells.obs["perturbation"].astype(str).to_numpy()
    train = np.flatnonzero(labels != "P0+P1")
    got = check_on_cells(config, table, ["P0+P1"], train)
    asked = table[table["condition"] == "P0+P1"]
    assert sorted(got["readout"]) == sorted(asked["readout"])
    np.testing.assert_allclose(
        got.set_index("readout")["p_star"], asked.set_index("readout")["p_star"][got["readout"]]
    )
    outcome = make_outcome(json.loads(asked["outcome_definition"].iloc[0]))
    direct = heldout_reference(outcome, cells, list(asked["readout"]), ["P0+P1"], train)
    np.testing.assert_allclose(
        got.set_index("readout")["p_obs"], direct.set_index("readout")["p_obs"][got["readout"]]
    )
    assert check_on_cells(config, table, ["P2+P3"], train).empty
    # the held-out pair spelled the other way round names the same questions
    pd.testing.assert_frame_equal(check_on_cells(config, table, ["P1+P0"], train), got)
