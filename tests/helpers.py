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
