"""Shared fixtures: small synthetic screens and the path to ../shared data."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_screen():
    """A small simulated screen (31 conditions x 60 cells, 200 genes); do not modify."""
    from bioreason.data import simulate_screen

    return simulate_screen(n_cells_per_condition=60, n_genes=200, n_perturbations=20, seed=3)


@pytest.fixture
def screen(small_screen):
    """A private copy of the small screen that a test may modify."""
    return small_screen.copy()
