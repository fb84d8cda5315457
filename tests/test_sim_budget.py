"""The simulation budget (bioreason.sim.SimulationBudget): validated fields that name
themselves, given whole to the simulator or to one call, and its fields changing the draws
of p* as documented."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import bioreason.data as bd
from bioreason.cli._options import undocumented_fields
from bioreason.sim import GroundTruthSimulator, OutcomeSimulator, SimulationBudget

QUESTIONS = [("P0", "gene00000"), ("P1", "gene00001")]


@pytest.fixture(scope="module")
def screen():
    return bd.simulate_screen(
        n_cells_per_condition=20, n_genes=30, n_perturbations=3, n_combinations=1, seed=0
    )


def test_the_defaults_are_the_simulators_and_every_field_is_documented():
    budget = SimulationBudget()
    assert dataclasses.asdict(budget) == {
        "target_se": 0.01,
        "max_draws": 2000,
        "min_draws": None,
        "draws_per_round": 16,
        "cells_per_draw": None,
        "replicates_per_draw": 8,
        "method": "auto",
    }
    assert budget.draws_at_least == 16
    assert SimulationBudget(max_draws=5).draws_at_least == 5
    assert undocumented_fields(SimulationBudget) == []


@pytest.mark.parametrize(
    "field, value, error, message",
    [
        ("target_se", 0.0, ValueError, "target_se must be > 0, got 0.0"),
        ("target_se", "small", TypeError, "target_se must be a number"),
        ("max_draws", 0, ValueError, "max_draws must be >= 1, got 0"),
        ("max_draws", 2.5, TypeError, "max_draws must be an integer"),
        ("min_draws", 0, ValueError, r"min_draws must be >= 1 \(or None\), got 0"),
        ("min_draws", 3000, ValueError, r"min_draws must be between 1 and max_draws \(2000\)"),
        ("draws_per_round", 0, ValueError, "draws_per_round must be >= 1, got 0"),
        ("cells_per_draw", 0, ValueError, r"cells_per_draw must be >= 1 \(or None\)"),
        ("replicates_per_draw", True, TypeError, "replicates_per_draw must be an integer"),
        ("method", "exact", ValueError, "method must be 'auto', 'fast' or 'brute'"),
    ],
)
def test_a_bad_field_is_named(field, value, error, message):
    with pytest.raises(error, match=message):
        SimulationBudget(**{field: value})


def test_from_a_mapping_and_replace_name_the_field():
    with pytest.raises(ValueError, match=r"budget: unknown field\(s\) \['max_draw'\]"):
        SimulationBudget.from_dict({"max_draw": 3}, where="budget")
    with pytest.raises(TypeError, match=r"budget.method must be one of \['auto', 'fast'"):
        SimulationBudget.from_dict({"method": "exact"}, where="budget")
    budget = SimulationBudget(max_draws=40)
    assert budget.replace(target_se=0.2) == SimulationBudget(max_draws=40, target_se=0.2)
    with pytest.raises(TypeError, match=r"\['target'\] is not a field of SimulationBudget"):
        budget.replace(target=0.2)
    with pytest.raises(ValueError, match="min_draws must be between 1 and max_draws"):
        budget.replace(min_draws=41)


def test_the_simulators_budget_sets_the_draws_and_a_call_may_replace_it(screen):
    loose = SimulationBudget(target_se=0.5, min_draws=10, draws_per_round=7, method="brute")
    simulator = GroundTruthSimulator(screen, "screen_hit", threshold=0.1, n_cells=30, budget=loose)
    result = simulator.probability(QUESTIONS, seed=0)
    # rounds of 7 draws until at least min_draws: 14
    assert result["n_draws"].tolist() == [14, 14] and set(result["method"]) == {"brute"}
    # a budget given to the call replaces the simulator's whole; changes apply on top
    other = simulator.probability(QUESTIONS, SimulationBudget(target_se=0.5), seed=0)
    assert other["n_draws"].tolist() == [16, 16] and set(other["method"]) == {"fast"}
    changed = simulator.probability(QUESTIONS, seed=0, draws_per_round=4)
    assert changed["n_draws"].tolist() == [12, 12]
    # the same budget given as changes of the default gives the same numbers
    same = GroundTruthSimulator(screen, "screen_hit", threshold=0.1, n_cells=30).probability(
        QUESTIONS, seed=0, target_se=0.5, min_draws=10, draws_per_round=7, method="brute"
    )
    np.testing.assert_array_equal(same["p_star"], result["p_star"])
    assert simulator.budget == loose  # a call's budget is not kept


def test_cells_and_replicates_per_draw_come_from_the_budget(screen):
    options = {"threshold": 0.1, "n_cells": 30}
    few = GroundTruthSimulator(
        screen, "screen_hit", budget=SimulationBudget(cells_per_draw=60), **options
    )
    many = GroundTruthSimulator(
        screen, "screen_hit", budget=SimulationBudget(cells_per_draw=600), **options
    )
    changes = {"target_se": 0.5, "min_draws": 32, "max_draws": 32, "method": "fast"}
    spread_few = few.probability(QUESTIONS, seed=0, **changes)["p_star_spread"]
    spread_many = many.probability(QUESTIONS, seed=0, **changes)["p_star_spread"]
    # the truth has no epistemic spread: what spreads P_k is the cells' noise, less with more
    assert (spread_many < spread_few / 2).all(), (spread_many, spread_few)
    # a budget given to the call replaces the simulator's whole (its cells_per_draw too)
    whole = SimulationBudget(**changes)
    np.testing.assert_array_equal(
        few.probability(QUESTIONS, whole, seed=0)["p_star"],
        many.probability(QUESTIONS, whole, seed=0)["p_star"],
    )
    brute = whole.replace(method="brute")
    one = few.probability(QUESTIONS, brute.replace(replicates_per_draw=1), seed=0)
    eight = few.probability(QUESTIONS, brute.replace(replicates_per_draw=8), seed=0)
    # one replicate per draw: each P_k is 0 or 1
    assert set(np.unique(one["p_star"] * 32 % 1)) == {0.0}
    assert (eight["p_star_spread"] < one["p_star_spread"] / 2).all(), (eight, one)


def test_misplaced_or_too_small_budgets_are_named(screen):
    with pytest.raises(TypeError, match=r"\['cells_per_draw'\] belong to the simulation budget"):
        GroundTruthSimulator(screen, "screen_hit", threshold=0.1, cells_per_draw=64)
    with pytest.raises(TypeError, match="budget must be a SimulationBudget"):
        GroundTruthSimulator(screen, "screen_hit", threshold=0.1, budget={"target_se": 0.1})
    # the ground truth pairs cells (counterfactual): at least the replicate size
    with pytest.raises(ValueError, match=r"cells_per_draw must be at least the replicate size"):
        GroundTruthSimulator(
            screen, "screen_hit", n_cells=30, budget=SimulationBudget(cells_per_draw=10)
        )
    simulator = GroundTruthSimulator(screen, "screen_hit", threshold=0.1, n_cells=30)
    with pytest.raises(ValueError, match=r"\(30\), got 10"):
        simulator.probability(QUESTIONS, cells_per_draw=10)


def test_an_outcome_simulator_keeps_the_budget_it_was_given(screen):
    model = GroundTruthSimulator(screen).model
    budget = SimulationBudget(max_draws=64)
    assert OutcomeSimulator(model, "direction", budget=budget).budget is budget
    assert OutcomeSimulator(model, "direction").budget == SimulationBudget()
