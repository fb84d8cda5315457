"""The user object shared by the four models (scvi-tools conventions).

``Model.setup_anndata(adata, ...)`` records how to read an AnnData, ``Model(adata, ...)``
builds the Pyro module, ``model.train(...)`` fits it, and the remaining methods return
numpy / pandas / AnnData results. The behaviour lives in mixins, one file each:

* :class:`~bioreason.models._setup_mixin.SetupMixin`: ``setup_anndata``, ``data_for``,
  ``categories_for``, condition parsing, devices;
* :class:`~bioreason.models._training_mixin.TrainingMixin`: ``train``;
* :class:`~bioreason.models._predictive_mixin.PredictiveMixin`:
  ``posterior_predictive``, ``sample``, ``replicate_cells``;
* :class:`~bioreason.models._analysis_mixin.AnalysisMixin`: effects, latents, IWELBO, ATE;
* :class:`~bioreason.models._save_mixin.SaveMixin`: ``save`` / ``load``;
* :class:`~bioreason.models._scvi_mixin.ScviHabitsMixin`: scvi-tools' names
  (``get_normalized_expression``, ``differential_expression``, ``get_elbo``,
  ``get_marginal_ll``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from bioreason.data import PerturbationData, PerturbationSetup
from bioreason.models._analysis_mixin import AnalysisMixin
from bioreason.models._module import PerturbationVAEModule, VAEConfig
from bioreason.models._nn import log1p_moments
from bioreason.models._predictive_mixin import PredictiveMixin
from bioreason.models._save_mixin import SaveMixin
from bioreason.models._scvi_mixin import ScviHabitsMixin
from bioreason.models._setup_mixin import SetupMixin
from bioreason.models._training_mixin import TrainingMixin

#: library sizes kept from the training cells to draw generated cells' sizes from
_N_LIBRARY_KEPT = 10_000

#: names other libraries give the history's columns (scvi-tools' ``elbo_train``, ...)
_HISTORY_ALIASES = {
    "elbo_train": "train_loss",
    "train_loss_epoch": "train_loss",
    "elbo_validation": "validation_loss",
    "validation_loss_epoch": "validation_loss",
    "loss": "train_loss",
}


class LossHistory(pd.DataFrame):
    """``model.history``: a DataFrame whose missing-column error lists the columns it
    has (and, for scvi-tools' names such as ``elbo_train``, the one to use)."""

    @property
    def _constructor(self) -> type[pd.DataFrame]:
        return pd.DataFrame

    def __getitem__(self, key: Any) -> Any:
        try:
            return super().__getitem__(key)
        except KeyError:
            keys = [key] if isinstance(key, str) else None
            if keys is None:
                raise
            alias = _HISTORY_ALIASES.get(key)
            hint = f"; {key!r} is called {alias!r} here" if alias else ""
            raise KeyError(
                f"model.history has no column {key!r}: its columns are {list(self.columns)} "
                f"(losses in nats per cell){hint}"
            ) from None


class PerturbationModel(
    SetupMixin, TrainingMixin, PredictiveMixin, AnalysisMixin, ScviHabitsMixin, SaveMixin
):
    """Base class of :class:`SAMSVAE`, :class:`CPAVAE`, :class:`ConditionalVAE`,
    :class:`SVAEPlus`.

    Parameters
    ----------
    adata : AnnData
        Registered with ``setup_anndata``. The input standardization (mean and standard
        deviation of log1p counts per gene) is computed from its cells: pass the training
        cells only when the remaining cells are held out.
    n_latent : int
        Latent dimensions.
    guide : ``"correlated"`` or ``"mean_field"``
    likelihood : ``"nb"``, ``"poisson"`` or ``"lognormal"``
    seed : int
        Seed of the initial network weights.
    perturbation_names : list of str, optional
        Every perturbation the model should know, in order; perturbations without cells
        in ``adata`` get a dosage column too, so that held-out combinations whose parts
        are measured only there can be evaluated later. Default: those in ``adata``.
    **config
        Further fields of :class:`~bioreason.models.VAEConfig` (``n_hidden``,
        ``n_layers``, ``residual``, ``mask_prior_probability``, ``encode_offset`` ...).
    """

    #: the Pyro module class (set by subclasses)
    module_class: type[PerturbationVAEModule]
    #: whether unseen combinations of seen perturbations can be generated
    composes: bool = True

    def __init__(
        self,
        adata: Any,
        n_latent: int = 20,
        guide: str = "correlated",
        likelihood: str = "nb",
        seed: int = 0,
        perturbation_names: Sequence[str] | None = None,
        **config: Any,
    ) -> None:
        if not all(hasattr(adata, name) for name in ("obs", "var_names", "uns")):
            raise TypeError(f"adata must be an AnnData (cells x genes), got {type(adata).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        setup = PerturbationSetup.read(adata)
        if setup is None:
            raise ValueError(
                f"adata is not set up: call {type(self).__name__}.setup_anndata(adata, "
                "perturbation_key=..., control=..., layer=...) first"
            )
        self.config = VAEConfig.from_dict(
            {"n_latent": n_latent, "guide": guide, "likelihood": likelihood, **config}
        )
        self.setup = setup
        data = PerturbationData.from_anndata(
            adata,
            setup=setup,
            perturbation_names=None if perturbation_names is None else list(perturbation_names),
        )
        self.adata = adata
        self.gene_names = [str(g) for g in data.gene_names]
        self.perturbation_names = list(data.perturbation_names)
        self.categories = self._init_categories(data)
        mean, std = log1p_moments(data, np.arange(data.n_cells))
        library = data.library_size
        if library.size > _N_LIBRARY_KEPT:
            library = np.random.default_rng(0).choice(library, _N_LIBRARY_KEPT, replace=False)
        self.library_sizes = np.asarray(library, dtype=np.float32)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # reproducible initial weights, global RNG untouched
            self.module = self._build_module(mean, std)
        self.history = pd.DataFrame(columns=["step", "epoch", "train_loss", "validation_loss"])
        self.is_trained = False
        self.device = torch.device("cpu")

    @property
    def history(self) -> pd.DataFrame:
        """The loss history: ``step``, ``epoch``, ``train_loss``, ``validation_loss``
        (nats per cell), one row per logged step; a missing column's ``KeyError`` lists
        the columns there are."""
        return self._history

    @history.setter
    def history(self, value: pd.DataFrame) -> None:
        self._history = value if isinstance(value, LossHistory) else LossHistory(value)

    def _init_categories(self, data: PerturbationData) -> list[str]:
        """Categories of the cells (SVAE+: one per training condition; else none)."""
        return []

    def _build_module(self, mean: torch.Tensor, std: torch.Tensor) -> PerturbationVAEModule:
        return self.module_class(
            len(self.gene_names), len(self.perturbation_names), self.config, mean, std
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self.gene_names)} genes, {len(self.perturbation_names)} "
            f"perturbations, n_latent={self.config.n_latent}, guide={self.config.guide!r}, "
            f"likelihood={self.config.likelihood!r}, trained={self.is_trained})"
        )
