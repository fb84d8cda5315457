"""Persistence of the user-facing models: ``save`` and ``load`` of a model folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bioreason._io import atomic_path, atomic_write_text
from bioreason.data import PerturbationSetup
from bioreason.models._module import VAEConfig

#: files of a saved model folder
_FILES = ("config.yaml", "attributes.json", "model.pt")


class SaveMixin:
    """``save`` / ``load`` for a :class:`~bioreason.models.PerturbationModel`."""

    def save(self, directory: str | Path, overwrite: bool = False) -> None:
        """Write ``config.yaml``, ``attributes.json``, ``model.pt`` and ``history.csv``
        into ``directory``, which must be new or empty unless ``overwrite=True``."""
        directory = Path(directory)
        if directory.exists() and any(directory.iterdir()) and not overwrite:
            raise FileExistsError(
                f"{directory} exists and is not empty; choose another folder or pass overwrite=True"
            )
        directory.mkdir(parents=True, exist_ok=True)
        self.config.to_yaml(directory / "config.yaml")
        attributes = {
            "model_class": type(self).__name__,
            "gene_names": self.gene_names,
            "perturbation_names": self.perturbation_names,
            "categories": self.categories,
            "setup": self.setup.to_dict(),
            "is_trained": self.is_trained,
        }
        atomic_write_text(directory / "attributes.json", json.dumps(attributes, indent=1))
        state = {
            "state_dict": {k: v.cpu() for k, v in self.module.state_dict().items()},
            "library_sizes": torch.as_tensor(self.library_sizes),
        }
        with atomic_path(directory / "model.pt") as tmp:
            torch.save(state, tmp)
        with atomic_path(directory / "history.csv") as tmp:
            self.history.to_csv(tmp, index=False)

    @classmethod
    def load(cls, directory: str | Path, adata: Any | None = None, device: str = "cpu") -> Any:
        """Load a model saved by :meth:`save`.

        Parameters
        ----------
        directory : path
        adata : AnnData, optional
            Must have the model's genes and only perturbations the model knows.
        device : str

        Returns
        -------
        An instance of ``cls`` (the class that saved it; another class raises).
        """
        directory = Path(directory)
        for name in _FILES:
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory / name} not found; not a saved model folder?")
        attributes = json.loads((directory / "attributes.json").read_text())
        if attributes["model_class"] != cls.__name__:
            raise ValueError(
                f"{directory} holds a {attributes['model_class']}, not a {cls.__name__}; "
                f"load it with {attributes['model_class']}.load"
            )
        self = cls.__new__(cls)
        self.config = VAEConfig.from_yaml(directory / "config.yaml")
        self.gene_names = attributes["gene_names"]
        self.perturbation_names = attributes["perturbation_names"]
        self.categories = attributes["categories"]
        # folders saved before PerturbationSetup wrote None as the string "__none__"
        setup = {k: (None if v == "__none__" else v) for k, v in attributes["setup"].items()}
        self.setup = PerturbationSetup.from_dict(setup)
        self.is_trained = attributes["is_trained"]
        state = torch.load(directory / "model.pt", weights_only=True)
        self.library_sizes = state["library_sizes"].numpy()
        n_genes = len(self.gene_names)
        self.module = self._build_module(torch.zeros(n_genes), torch.ones(n_genes))
        weights = state["state_dict"]
        # folders saved before the buffer existed: every perturbation counts as observed
        weights.setdefault("perturbation_observed", self.module.perturbation_observed)
        self.module.load_state_dict(weights)
        self.module.eval()
        history = directory / "history.csv"
        self.history = pd.read_csv(history) if history.exists() else pd.DataFrame()
        self.device = torch.device("cpu")
        self.adata = None
        if adata is not None:
            self.data_for(adata)  # checks genes and perturbations
            self.adata = adata
        return self.to_device(device)
