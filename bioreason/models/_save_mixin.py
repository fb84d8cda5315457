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
        into ``directory``, which must be new or empty unless ``overwrite=True``.

        With ``overwrite=True`` only those four files are replaced (each atomically);
        other files in the folder are left alone.
        """
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise FileExistsError(
                f"{directory} is a file, not a folder; save needs a folder (the file was "
                "left alone)"
            )
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
            Must have the model's genes and only perturbations the model knows. Without
            it, methods that read cells need them passed (``adata=``), and ``train``
            needs the model loaded with them.
        device : str

        Returns
        -------
        An instance of ``cls`` (the class that saved it; another class raises).

        Raises
        ------
        FileNotFoundError
            The folder or one of its files is missing.
        ValueError
            A file is damaged, from another version, or does not match the others;
            the message names the file. ``model.pt`` is read with
            ``torch.load(..., weights_only=True)``: tensors only, never arbitrary objects.
        """
        directory = Path(directory)
        if not directory.exists():
            raise FileNotFoundError(
                f"model folder {directory} does not exist: not a saved model folder (check "
                "the path)"
            )
        if not directory.is_dir():
            raise ValueError(
                f"{directory} is a file, not a folder; Model.load expects the folder "
                "written by model.save"
            )
        for name in _FILES:
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory / name} not found; not a saved model folder?")
        attributes = _read_attributes(directory / "attributes.json")
        if attributes["model_class"] != cls.__name__:
            raise ValueError(
                f"{directory} holds a {attributes['model_class']}, not a {cls.__name__}; "
                f"load it with {attributes['model_class']}.load"
            )
        self = cls.__new__(cls)
        self.config = _read_config(directory / "config.yaml")
        self.gene_names = attributes["gene_names"]
        self.perturbation_names = attributes["perturbation_names"]
        self.categories = attributes["categories"]
        # folders saved before PerturbationSetup wrote None as the string "__none__"
        setup = {k: (None if v == "__none__" else v) for k, v in attributes["setup"].items()}
        try:
            self.setup = PerturbationSetup.from_dict(setup)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{directory / 'attributes.json'} is damaged or from another version: its "
                f"setup cannot be read ({err})"
            ) from None
        self.is_trained = attributes["is_trained"]
        state = _read_weights(directory / "model.pt")
        self.library_sizes = state["library_sizes"].numpy()
        n_genes = len(self.gene_names)
        self.module = self._build_module(torch.zeros(n_genes), torch.ones(n_genes))
        weights = state["state_dict"]
        # folders saved before the buffer existed: every perturbation counts as observed
        weights.setdefault("perturbation_observed", self.module.perturbation_observed)
        try:
            self.module.load_state_dict(weights)
        except RuntimeError as err:
            problems = [
                line.strip()
                for line in str(err).splitlines()[1:]
                if line.strip() and "weights_only" not in line
            ]
            raise ValueError(
                f"{directory}: model.pt does not match config.yaml / attributes.json (the "
                "folder is damaged, mixes files of different models, or is from another "
                f"version): {'; '.join(problems[:3])}"
            ) from None
        self.module.eval()
        self.history = _read_history(directory / "history.csv")
        self.device = torch.device("cpu")
        self.adata = None
        if adata is not None:
            self.data_for(adata)  # checks genes and perturbations
            self.adata = adata
        return self.to_device(device)


_ATTRIBUTES = {
    "model_class": str,
    "gene_names": list,
    "perturbation_names": list,
    "categories": list,
    "setup": dict,
    "is_trained": bool,
}


def _read_attributes(path: Path) -> dict[str, Any]:
    try:
        attributes = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is damaged or was not written by bioreason: not valid JSON ({err}); "
            "save the model again"
        ) from None
    if not isinstance(attributes, dict):
        raise ValueError(
            f"{path} is damaged or from another version: expected a JSON object of model "
            f"attributes, got {type(attributes).__name__}"
        )
    wrong = [
        name
        for name, kind in _ATTRIBUTES.items()
        if name not in attributes or not isinstance(attributes[name], kind)
    ]
    if wrong:
        raise ValueError(
            f"{path} is damaged or from another version: missing or malformed fields {wrong}"
        )
    return attributes


def _read_config(path: Path) -> VAEConfig:
    import yaml

    from bioreason.config import read_yaml

    try:
        values = read_yaml(path, what="config file")
        if isinstance(values, dict) and "basal_guide" not in values:
            # saved before the field existed: those models were trained with this guide
            values = {**values, "basal_guide": "direct"}
        return VAEConfig.from_dict({} if values is None else values, where=f"VAEConfig ({path})")
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ValueError(f"{path} is damaged: not valid YAML{line}; save the model again") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is damaged: not a text file; save the model again") from None


def _read_weights(path: Path) -> dict[str, Any]:
    from bioreason.stage import safe_torch_load

    state = safe_torch_load(path, "Save the model again, or load a folder written by model.save.")
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("state_dict"), dict)
        or not isinstance(state.get("library_sizes"), torch.Tensor)
    ):
        raise ValueError(
            f"{path} is damaged or was not written by this version of bioreason: it lacks "
            "the model weights ('state_dict') or 'library_sizes'"
        )
    return state


def _read_history(path: Path) -> pd.DataFrame:
    """The loss history; a damaged one is reported and left out (the model loads)."""
    import warnings

    if not path.exists():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError) as err:
        warnings.warn(
            f"{path} is damaged ({type(err).__name__}); the model loads without its "
            "training history",
            stacklevel=3,
        )
        return pd.DataFrame()
