"""Paths to the real data in ../shared and helpers that skip cleanly without it."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
NORMAN_PATH = SHARED_DATA / "perturbench_devel.h5ad"
REPLOGLE_TASK = SHARED_DATA / "replogle_k562_cnmf_task"


def require_norman() -> Path:
    """Path of the real Norman/McFaline AnnData, or skip the test when it is absent."""
    if not NORMAN_PATH.exists():
        pytest.skip(f"real data not present: {NORMAN_PATH}")
    return NORMAN_PATH


def require_replogle_task() -> Path:
    """Folder of the Replogle task tables, or skip the test when it is absent."""
    if not (REPLOGLE_TASK / "train.pq").exists():
        pytest.skip(f"real data not present: {REPLOGLE_TASK}")
    return REPLOGLE_TASK


#: a pipeline config small enough for tests (seconds per stage on one thread)
TINY_PIPELINE = {
    "name": "tiny",
    "data": {
        "screen": {
            "n_cells_per_condition": 30,
            "n_genes": 100,
            "n_perturbations": 6,
            "n_combinations": 4,
        }
    },
    "vae": {
        "options": {"n_latent": 4, "n_hidden": 32},
        "train": {"max_steps": 30, "device": "cpu"},
        "evaluation": {"ate_cells": 100},
    },
    "task": {
        "options": {
            "n_programs": 3,
            "outcome_options": {"threshold": None, "n_cells": 50},
            "test_fraction": 0.3,
            "val_fraction": 0.0,
            "budget": {"max_draws": 200, "target_se": 0.05},
        }
    },
    "lm": {"warm_start_steps": 3},
    "finetune": {
        "methods": ["grpo", "rloo"],
        "rl": {
            "steps": 4,
            "questions_per_step": 4,
            "group_size": 4,
            "lr": 3e-4,
            "outcomes": "live",
            "eval_split": "test",
            "eval_samples": 4,
            "device": "cpu",
        },
    },
    "calibration": {"n_boot": 20},
}
