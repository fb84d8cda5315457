"""The dataset registry (data/datasets.yaml): named real datasets and their keys."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pandas as pd

from bioreason.config import Config, read_yaml
from bioreason.data.setup import PerturbationSetup

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_PATH = REPO_ROOT / "data" / "datasets.yaml"


@dataclass
class DatasetEntry(Config):
    """One entry of the dataset registry (``data/datasets.yaml``).

    Parameters
    ----------
    path : str
        The ``.h5ad`` file, relative to the repository root or absolute. Required.
    description : str, default ``""``
        One line on what the data set is.
    obs_filter : dict, default ``{}``
        Keep only cells whose ``obs`` columns equal these values
        (``{dataset: norman19}``); empty keeps all cells.
    setup : PerturbationSetup, default ``PerturbationSetup()``
        How the cells returned by :func:`load_dataset` are read: perturbation column,
        control label(s), counts layer, delimiter, dosage column. In YAML a mapping of
        those fields (``setup: {control: ctrl}``); the fields may also be written at
        the top level of the entry, as older registry files do.
    recover_counts : bool, default ``False``
        ``X`` holds log1p-normalized values and integer counts must be rebuilt with
        :func:`~bioreason.data.recover_counts` (written to ``layers["counts"]``, so
        ``setup.layer`` stays ``"counts"``).
    library_key : str or None, default ``None``
        ``obs`` column with each cell's total count before normalization, used by
        ``recover_counts``; ``None`` recovers without it.
    """

    path: str
    description: str = ""
    obs_filter: dict[str, Any] = field(default_factory=dict)
    setup: PerturbationSetup = field(default_factory=PerturbationSetup)
    recover_counts: bool = False
    library_key: str | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str | None = None) -> DatasetEntry:
        """As :meth:`Config.from_dict`; setup fields written at the top level of the
        entry are moved into ``setup`` (both places at once is an error)."""
        if isinstance(values, dict):
            names = {f.name for f in fields(PerturbationSetup)}
            flat = {k: v for k, v in values.items() if k in names}
            if flat:
                if "setup" in values:
                    raise ValueError(
                        f"{where or cls.__name__}: write {sorted(flat)} inside setup:, "
                        "not beside it"
                    )
                values = {k: v for k, v in values.items() if k not in names}
                values["setup"] = flat
        return super().from_dict(values, where=where)


def dataset_registry(path: str | Path = REGISTRY_PATH) -> dict[str, DatasetEntry]:
    """All entries of the registry file.

    Raises ``FileNotFoundError`` / ``IsADirectoryError`` naming the path, and
    ``ValueError`` naming the file and the line and column of a YAML syntax error.
    """
    path = Path(path)
    # errors name the file; a syntax error also its line and column
    raw = read_yaml(path, what="dataset registry") or {}
    if not isinstance(raw, dict):
        raise ValueError(
            f"dataset registry {path} must map dataset names to entries, got {type(raw).__name__}"
        )
    return {name: DatasetEntry.from_dict(v, where=f"{path}:{name}") for name, v in raw.items()}


def load_dataset(name: str, *, registry: str | Path = REGISTRY_PATH, backed: bool = False) -> Any:
    """Read a registered dataset as AnnData with raw counts in ``layers["counts"]``.

    Parse it with the entry's setup:
    ``PerturbationData.from_anndata(adata, dataset_registry()[name].setup)``.
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
            raise ValueError(
                f"dataset {name!r}: obs_filter column {column!r} not in obs; columns are "
                f"{list(adata.obs.columns)}"
            )
        kept = adata[adata.obs[column] == value]
        if kept.n_obs == 0:
            present = sorted(map(str, pd.unique(adata.obs[column].dropna())))[:10]
            raise ValueError(
                f"dataset {name!r}: obs_filter keeps no cells: no cell has "
                f"obs[{column!r}] == {value!r}; its values are {present}. Fix obs_filter in "
                f"{registry}."
            )
        adata = kept
    adata = adata.to_memory() if adata.isbacked and entry.obs_filter else adata.copy()
    if entry.recover_counts:
        try:
            adata, _ = recover_counts(adata, library_key=entry.library_key)
        except ValueError as err:
            if entry.library_key is None or "disagrees with" not in str(err):
                raise
            raise ValueError(
                f"dataset {name!r}: {err} In the registry ({registry}), "
                "library_key: null in this entry recovers every cell from its values alone."
            ) from None
    return adata
