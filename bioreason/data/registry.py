"""The dataset registry (data/datasets.yaml): named real datasets and their keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bioreason.config import Config

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_PATH = REPO_ROOT / "data" / "datasets.yaml"


@dataclass
class DatasetEntry(Config):
    """One registry entry.

    path: the .h5ad file, relative to the repository root or absolute.
    obs_filter: keep cells whose obs columns equal these values.
    perturbation_key, control, delimiter: how labels are written.
    recover_counts: X is log1p-normalized and counts must be rebuilt.
    library_key: obs column with each cell's total count (for recover_counts).
    layer: raw-count layer when recover_counts is false.
    """

    path: str
    description: str = ""
    obs_filter: dict[str, Any] = field(default_factory=dict)
    perturbation_key: str = "perturbation"
    control: str = "control"
    delimiter: str = "+"
    recover_counts: bool = False
    library_key: str | None = None
    layer: str | None = "counts"


def dataset_registry(path: str | Path = REGISTRY_PATH) -> dict[str, DatasetEntry]:
    """All entries of the registry file."""
    with Path(path).open() as handle:
        raw = yaml.safe_load(handle) or {}
    return {name: DatasetEntry.from_dict(v, where=f"{path}:{name}") for name, v in raw.items()}


def load_dataset(name: str, *, registry: str | Path = REGISTRY_PATH, backed: bool = False) -> Any:
    """Read a registered dataset as AnnData with raw counts in ``layers["counts"]``.

    Raises ``FileNotFoundError`` naming the expected path when the file is absent.
    """
    import anndata as ad

    from bioreason.data.recover import recover_counts

    entries = dataset_registry(registry)
    if name not in entries:
        raise ValueError(f"unknown dataset {name!r}; registered: {sorted(entries)}")
    entry = entries[name]
    path = Path(entry.path)
    if not path.is_absolute():
        path = REPO_ROOT / path
    if not path.exists():
        raise FileNotFoundError(f"dataset {name!r} expects its file at {path}, which is absent")
    adata = ad.read_h5ad(path, backed="r" if backed and not entry.recover_counts else None)
    for column, value in entry.obs_filter.items():
        if column not in adata.obs.columns:
            raise ValueError(f"dataset {name!r}: obs_filter column {column!r} not in obs")
        adata = adata[adata.obs[column] == value]
    adata = adata.to_memory() if adata.isbacked and entry.obs_filter else adata.copy()
    if entry.recover_counts:
        adata, _ = recover_counts(adata, library_key=entry.library_key)
    return adata
