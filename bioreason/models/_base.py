"""The user object shared by the four models (scvi-tools conventions).

``Model.setup_anndata(adata, ...)`` records how to read an AnnData, ``Model(adata, ...)``
builds the Pyro module, ``model.train(...)`` fits it, and the remaining methods return
numpy / pandas / AnnData results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine

from bioreason._device import resolve_device
from bioreason.data import MinibatchLoader, PerturbationData, parse_perturbation_labels
from bioreason.models._module import VAEConfig
from bioreason.models._nn import log1p_moments
from bioreason.models._sampling import PARTICLE_DIM, seeded
from bioreason.models.training import TrainConfig, fit

SETUP_KEY = "_bioreason_setup"
_N_LIBRARY_KEPT = 10_000
_GENERATE_ROWS = 16_384


def _differences(expected: Sequence[str], got: Sequence[str], what: str) -> str:
    missing = [g for g in expected if g not in set(got)]
    extra = [g for g in got if g not in set(expected)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} {what} missing from adata (e.g. {missing[:5]})")
    if extra:
        parts.append(f"{len(extra)} {what} not known to the model (e.g. {extra[:5]})")
    if not parts:
        parts.append(f"same {what} in a different order")
    return "; ".join(parts)


class PerturbationModel:
    """Base class of :class:`SAMSVAE`, :class:`CPAVAE`, :class:`ConditionalVAE`,
    :class:`SVAEPlus`.

    Parameters
    ----------
    adata : AnnData
        Registered with ``setup_anndata``.
    n_latent : int
    guide : ``"correlated"`` or ``"mean_field"``
    likelihood : ``"nb"``, ``"poisson"`` or ``"lognormal"``
    seed : int
        Seed of the initial network weights.
    **config
        Further fields of :class:`~bioreason.models.VAEConfig` (``n_hidden``,
        ``n_layers``, ``residual``, ``mask_prior_probability``, ``encode_offset`` ...).

    The input standardization (mean and standard deviation of log1p counts per gene)
    is computed from the cells of ``adata``; pass the training cells only when the
    remaining cells are held out.
    """

    module_class: type = None  # set by subclasses
    #: whether unseen combinations of seen perturbations can be generated
    composes: bool = True

    # ----------------------------------------------------------------- setup
    @classmethod
    def setup_anndata(
        cls,
        adata: Any,
        perturbation_key: str = "perturbation",
        control: str | Sequence[str] = "control",
        layer: str | None = "counts",
        delimiter: str = "+",
        dosage_key: str | None = None,
    ) -> None:
        """Check ``adata`` and record how to read it in ``adata.uns["_bioreason_setup"]``.

        Parameters
        ----------
        perturbation_key : obs column with ``control``, ``A`` or ``A+B`` labels
        control : label(s) of control cells
        layer : layer with raw counts (``None`` = ``X``)
        delimiter : joins the perturbations of a combination
        dosage_key : optional obs column of doses
        """
        settings = {
            "perturbation_key": perturbation_key,
            "control": control if isinstance(control, str) else list(control),
            "layer": layer,
            "delimiter": delimiter,
            "dosage_key": dosage_key,
        }
        PerturbationData.from_anndata(adata, **settings)  # raises on bad input
        adata.uns[SETUP_KEY] = {k: ("__none__" if v is None else v) for k, v in settings.items()}

    @staticmethod
    def _settings_of(adata: Any) -> dict[str, Any] | None:
        stored = adata.uns.get(SETUP_KEY)
        if stored is None:
            return None
        return {
            k: (None if isinstance(v, str) and v == "__none__" else v) for k, v in stored.items()
        }

    def __init__(
        self,
        adata: Any,
        n_latent: int = 20,
        guide: str = "correlated",
        likelihood: str = "nb",
        seed: int = 0,
        **config: Any,
    ) -> None:
        settings = self._settings_of(adata)
        if settings is None:
            raise ValueError(
                f"adata is not set up: call {type(self).__name__}.setup_anndata(adata, "
                "perturbation_key=..., control=..., layer=...) first"
            )
        self.config = VAEConfig.from_dict(
            {"n_latent": n_latent, "guide": guide, "likelihood": likelihood, **config}
        )
        self.setup = settings
        data = PerturbationData.from_anndata(adata, **settings)
        self.adata = adata
        self.gene_names = [str(g) for g in data.gene_names]
        self.perturbation_names = list(data.perturbation_names)
        self.categories = self._init_categories(data)
        mean, std = log1p_moments(data, np.arange(data.n_cells))
        rng = np.random.default_rng(0)
        library = data.library_size
        if library.size > _N_LIBRARY_KEPT:
            library = rng.choice(library, _N_LIBRARY_KEPT, replace=False)
        self.library_sizes = np.asarray(library, dtype=np.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # reproducible initial weights, global RNG untouched
            self.module = self._build_module(mean, std)
        self.history = pd.DataFrame(columns=["step", "epoch", "train_loss", "validation_loss"])
        self.is_trained = False
        self.device = torch.device("cpu")

    # --------------------------------------------------------------- helpers
    def _init_categories(self, data: PerturbationData) -> list[str]:
        return []

    def _build_module(self, mean: torch.Tensor, std: torch.Tensor):
        return self.module_class(
            len(self.gene_names), len(self.perturbation_names), self.config, mean, std
        )

    def _cell_categories(
        self, condition_names: Sequence[str], is_control: np.ndarray
    ) -> np.ndarray:
        """Category index per cell (only SVAE+ uses it), shape (n,), int64."""
        return np.zeros(len(condition_names), dtype=np.int64)

    def _data_for(self, adata: Any | None) -> PerturbationData:
        """Parse ``adata`` with the model's setup, checking genes and perturbations."""
        if adata is None:
            adata = self.adata
        if adata is None:
            raise ValueError("this model was loaded without an AnnData; pass adata=")
        self._check_genes(list(map(str, adata.var_names)))
        settings = {**self.setup, **(self._settings_of(adata) or {})}
        try:
            return PerturbationData.from_anndata(
                adata,
                **settings,
                perturbation_names=self.perturbation_names,
                require_control=False,
            )
        except ValueError as err:
            if "not among the" in str(err):
                raise ValueError(
                    f"adata has perturbations the model was not trained on: {err}. The model "
                    f"knows {len(self.perturbation_names)} perturbations "
                    f"(e.g. {self.perturbation_names[:5]}); remove those cells or retrain."
                ) from None
            raise

    def _check_genes(self, genes: list[str]) -> None:
        if genes != self.gene_names:
            raise ValueError(
                f"adata's genes differ from the model's ({len(genes)} vs {len(self.gene_names)}): "
                f"{_differences(self.gene_names, genes, 'genes')}. Subset adata to the model's "
                "genes in the same order (adata[:, model.gene_names])."
            )

    def _categories_tensor(self, data: PerturbationData) -> torch.Tensor:
        codes = self._cell_categories(data.cell_condition, data.is_control)
        return torch.as_tensor(codes, dtype=torch.int64, device=self.device)

    def _loader(self, data: PerturbationData, batch_size: int, indices=None) -> MinibatchLoader:
        return MinibatchLoader(
            data, indices, batch_size=batch_size, shuffle=False, device=self.device
        )

    def to_device(self, device: str | torch.device) -> PerturbationModel:
        self.device = resolve_device(device)
        self.module.to(self.device)
        return self

    # --------------------------------------------------------------- training
    def train(
        self,
        max_epochs: int | None = None,
        max_steps: int | None = None,
        batch_size: int = 512,
        lr: float = 1e-3,
        n_particles: int = 5,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        device: str = "auto",
        seed: int = 0,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every: int | None = None,
        resume: bool = False,
        train_indices: np.ndarray | None = None,
        validation_indices: np.ndarray | None = None,
        **kwargs: Any,
    ) -> pd.DataFrame:
        """Fit by SVI; returns (and stores in ``self.history``) the loss history.

        Parameters
        ----------
        max_epochs, max_steps : int, optional
            Length of training (``max_steps`` wins). Default: scvi's heuristic
            ``min(400, 20000 / n_cells * 400)`` epochs.
        batch_size, lr, n_particles : minibatch size, Adam learning rate, ELBO particles
        early_stopping : stop on the validation ELBO and keep the best parameters
        validation_fraction : random share of cells held out for validation, unless
            ``train_indices`` / ``validation_indices`` are given
        device : ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``
        seed : makes training deterministic on CPU
        checkpoint_dir, checkpoint_every, resume : checkpoint every N steps; continue
            from the last checkpoint with ``resume=True``
        **kwargs : further fields of :class:`~bioreason.models.training.TrainConfig`
            (``patience``, ``eval_every``, ``grad_clip``, ``engine``, ``progress``).
        """
        config = TrainConfig.from_dict(
            {
                "max_epochs": max_epochs,
                "max_steps": max_steps,
                "batch_size": batch_size,
                "lr": lr,
                "n_particles": n_particles,
                "early_stopping": early_stopping,
                "device": str(device),
                "seed": seed,
                "checkpoint_every": checkpoint_every,
                **kwargs,
            }
        )
        data = self._data_for(None)
        if train_indices is None:
            if not 0.0 <= validation_fraction < 1.0:
                raise ValueError(
                    f"validation_fraction must be in [0, 1), got {validation_fraction}"
                )
            order = np.random.default_rng(seed).permutation(data.n_cells)
            n_val = int(round(validation_fraction * data.n_cells))
            validation_indices, train_indices = np.sort(order[:n_val]), np.sort(order[n_val:])
        self.to_device(config.device)
        categories = self._categories_tensor(data)
        self.module.train()
        history = fit(
            self.module,
            data,
            np.asarray(train_indices),
            None if validation_indices is None else np.asarray(validation_indices),
            categories,
            config,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
        self.module.eval()
        self.history = history
        self.is_trained = True
        return history

    # ------------------------------------------------------------- inference
    @torch.no_grad()
    def get_perturbation_effects(
        self, n_draws: int = 200, seed: int = 0
    ) -> dict[str, pd.DataFrame]:
        """Posterior summaries as DataFrames (perturbation x latent dimension).

        SAMS-VAE: ``embedding`` (E_q[E]), ``mask_probability`` (q(M = 1)), ``effect``
        (E_q[E * M]); CPA-VAE: ``embedding``, ``effect``; SVAE+: per category ``shift``,
        ``mask_probability``, ``effect``; conditional VAE: ``decoder_weight``.
        """
        with seeded(seed):
            effects = self.module.perturbation_effects(n_draws)
        index = self.categories or self.perturbation_names
        out = {}
        for name, value in effects.items():
            value = value.detach().cpu().numpy()
            prefix = "hidden" if name == "decoder_weight" else "latent"
            columns = [f"{prefix}_{d}" for d in range(value.shape[1])]
            out[name] = pd.DataFrame(
                value, index=pd.Index(index, name="perturbation"), columns=columns
            )
        return out

    def _effect_mean(self) -> torch.Tensor | None:
        effects = self.module.perturbation_effects(200)
        return effects.get("effect")

    @torch.no_grad()
    def get_latent_representation(
        self, adata: Any | None = None, kind: str = "basal", batch_size: int = 1024
    ) -> np.ndarray:
        """Posterior mean latent per cell, shape (n_cells, n_latent).

        ``kind="basal"``: the perturbation-free state z_basal; ``"perturbed"``: z_basal
        plus the cell's posterior mean shift (for the conditional VAE both are z).
        """
        if kind not in ("basal", "perturbed"):
            raise ValueError(f"kind must be 'basal' or 'perturbed', got {kind!r}")
        data = self._data_for(adata)
        categories = self._categories_tensor(data)
        with seeded(0):
            effect = self._effect_mean()
        out = []
        for batch in self._loader(data, batch_size):
            out.append(
                self.module.latent_mean(
                    batch.counts, batch.dosage, categories[batch.index], kind, effect
                ).cpu()
            )
        return torch.cat(out).numpy()

    def _parse_conditions(
        self, perturbations: Sequence[str]
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Dosage rows (n, P), canonical labels and control flags of condition labels."""
        if isinstance(perturbations, str):
            perturbations = [perturbations]
        try:
            parsed = parse_perturbation_labels(
                list(perturbations),
                control=self.setup["control"],
                delimiter=self.setup["delimiter"],
                perturbation_names=self.perturbation_names,
                key="perturbations",
            )
        except ValueError as err:
            raise ValueError(
                f"{err}. The model can only generate conditions built from its "
                f"{len(self.perturbation_names)} perturbations "
                f"(e.g. {self.perturbation_names[:5]})."
            ) from None
        labels = list(np.asarray(parsed.condition_names, dtype=object)[parsed.condition_codes])
        return parsed.dosage.toarray(), labels, parsed.is_control

    @torch.no_grad()
    def _generate(
        self,
        dosage: np.ndarray,
        library_size: np.ndarray,
        category: np.ndarray,
        n_global_draws: int,
    ) -> np.ndarray:
        """Counts (N, G) for N cells: global latents from the guide (``n_global_draws``
        draws, each shared by a block of cells), z from the prior, counts from the
        likelihood."""
        out = []
        module = self.module
        for start in range(0, len(library_size), _GENERATE_ROWS):
            rows = slice(start, start + _GENERATE_ROWS)
            n = len(library_size[rows])
            draws = max(1, min(n_global_draws, n))
            per_draw = math.ceil(n / draws)
            pad = draws * per_draw - n

            def block(x, dtype, pad=pad, draws=draws, per_draw=per_draw):
                x = np.concatenate([x, x[:pad]]) if pad else x
                t = torch.as_tensor(x, dtype=dtype, device=self.device)
                return t.reshape(draws, per_draw, *t.shape[1:])

            args = (
                None,
                block(dosage[rows], torch.float32),
                block(library_size[rows], torch.float32),
                block(category[rows], torch.int64),
                per_draw,
            )
            with pyro.plate("draws", draws, dim=PARTICLE_DIM), pyro.validation_enabled(False):
                guide_trace = poutine.trace(module.guide_globals).get_trace()
                model_trace = poutine.trace(
                    poutine.replay(module.model, trace=guide_trace)
                ).get_trace(*args)
            counts = model_trace.nodes["counts"]["value"]
            counts = counts.reshape(-1, counts.shape[-1])[:n]
            out.append(counts.cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def _library_for(self, n: int, library_size, rng: np.random.Generator) -> np.ndarray:
        if library_size is None:
            return rng.choice(self.library_sizes, n, replace=True).astype(np.float32)
        library = np.broadcast_to(np.asarray(library_size, dtype=np.float32), (n,)).copy()
        if not (library > 0).all():
            raise ValueError("library_size must be positive")
        return library

    def sample(
        self,
        perturbations: Sequence[str],
        n_cells: int = 100,
        library_size: float | np.ndarray | None = None,
        seed: int | None = 0,
        n_global_draws: int = 50,
    ) -> Any:
        """Generate cells of the given conditions (e.g. ``["control", "A", "A+B"]``).

        Parameters
        ----------
        perturbations : list of condition labels; combinations of perturbations seen in
            training may be new (not SVAE+)
        n_cells : cells per condition
        library_size : None (drawn from the training library sizes), a number, or an
            array of shape (n_cells,)
        seed : random seed (``None``: do not reseed)
        n_global_draws : posterior draws of the global latents; each is shared by a block
            of generated cells

        Returns
        -------
        AnnData with counts in ``X`` and ``layers["counts"]``; ``obs["perturbation"]``,
        ``obs["library_size"]``.
        """
        import anndata as ad
        import scipy.sparse as sp

        if n_cells <= 0:
            raise ValueError(f"n_cells must be positive, got {n_cells}")
        dosage, labels, is_control = self._parse_conditions(perturbations)
        category = self._cell_categories(labels, is_control)
        rng = np.random.default_rng(seed)
        n_conditions = len(labels)
        # Interleave conditions so every global draw serves every condition.
        condition_of_cell = np.tile(np.arange(n_conditions), n_cells)
        library = self._library_for(n_cells, library_size, rng)
        library_of_cell = np.repeat(library, n_conditions)
        with seeded(seed):
            counts = self._generate(
                dosage[condition_of_cell],
                library_of_cell,
                category[condition_of_cell],
                n_global_draws,
            )
        order = np.argsort(condition_of_cell, kind="stable")
        counts = counts[order]
        obs = pd.DataFrame(
            {
                "perturbation": pd.Categorical(
                    np.asarray(labels, dtype=object)[condition_of_cell[order]],
                    categories=list(dict.fromkeys(labels)),
                ),
                "library_size": library_of_cell[order],
            },
            index=pd.Index([f"generated{i}" for i in range(counts.shape[0])]),
        )
        matrix = sp.csr_matrix(counts)
        out = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=pd.Index(self.gene_names)))
        out.layers["counts"] = matrix.copy()
        return out

    def iwelbo(
        self,
        adata: Any | None = None,
        n_particles: int = 100,
        batch_size: int = 256,
        seed: int = 0,
        return_per_cell: bool = False,
    ) -> float | np.ndarray:
        """Importance-weighted ELBO in nats per cell (see
        :func:`bioreason.models.evaluation.iwelbo`)."""
        from bioreason.models.evaluation import iwelbo

        data = self._data_for(adata)
        per_cell, _ = iwelbo(
            self.module,
            self._loader(data, batch_size),
            self._categories_tensor(data),
            n_particles=n_particles,
            seed=seed,
        )
        return per_cell if return_per_cell else float(per_cell.mean())

    def average_treatment_effect(
        self,
        perturbations: Sequence[str] | None = None,
        n_cells: int = 2500,
        seed: int = 0,
        library_size: float | None = None,
    ) -> pd.DataFrame:
        """Model ATE (perturbation x gene) on log2(1 + counts normalized to 10,000):
        mean of generated perturbed cells minus mean of generated control cells.

        ``perturbations`` defaults to every non-control condition of the training data.
        """
        from bioreason.models.evaluation import average_treatment_effect

        if perturbations is None:
            perturbations = self.training_conditions()
        control = self.setup["control"]
        control = control if isinstance(control, str) else control[0]
        generated = self.sample(
            [control, *perturbations], n_cells=n_cells, seed=seed, library_size=library_size
        )
        return average_treatment_effect(generated, control=control, conditions=list(perturbations))

    def training_conditions(self) -> list[str]:
        data = self._data_for(None)
        table = data.condition_table()
        return [c for c in table.index if table.loc[c, "n_perturbations"] > 0]

    # ------------------------------------------------------------ persistence
    def save(self, directory: str | Path, overwrite: bool = False) -> None:
        """Write ``config.yaml``, ``attributes.json``, ``model.pt`` and ``history.csv``."""
        from bioreason._io import atomic_path, atomic_write_text

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
            "setup": self.setup,
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
    def load(cls, directory: str | Path, adata: Any | None = None, device: str = "cpu"):
        """Load a model saved by :meth:`save`; ``adata`` (optional) must have the same
        genes and only perturbations the model knows."""
        directory = Path(directory)
        for name in ("config.yaml", "attributes.json", "model.pt"):
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
        self.setup = attributes["setup"]
        self.is_trained = attributes["is_trained"]
        state = torch.load(directory / "model.pt", weights_only=True)
        self.library_sizes = state["library_sizes"].numpy()
        n_genes = len(self.gene_names)
        self.module = self._build_module(torch.zeros(n_genes), torch.ones(n_genes))
        self.module.load_state_dict(state["state_dict"])
        self.module.eval()
        history = directory / "history.csv"
        self.history = pd.read_csv(history) if history.exists() else pd.DataFrame()
        self.device = torch.device("cpu")
        self.adata = None
        if adata is not None:
            self._data_for(adata)  # checks genes and perturbations
            self.adata = adata
        return self.to_device(device)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.gene_names)} genes, {len(self.perturbation_names)} "
            f"perturbations, n_latent={self.config.n_latent}, guide={self.config.guide!r}, "
            f"likelihood={self.config.likelihood!r}, trained={self.is_trained})"
        )
