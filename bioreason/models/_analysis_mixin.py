"""Posterior summaries and evaluation of a fitted model: perturbation effects,
per-cell latents, held-out IWELBO and the model's average treatment effects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from bioreason.models._sampling import check_count, seeded


class AnalysisMixin:
    """Summaries for a model with ``self.module`` and :class:`SetupMixin`'s data access."""

    @torch.no_grad()
    def get_perturbation_effects(
        self, n_draws: int = 200, seed: int = 0
    ) -> dict[str, pd.DataFrame]:
        """Posterior summaries per perturbation (or category) and latent dimension.

        Returns
        -------
        dict of str -> DataFrame (perturbations x latent dimensions)
            SAMS-VAE: ``embedding`` (E_q[E]), ``mask_probability`` (q(M = 1)),
            ``effect`` (E_q[E * M]); CPA-VAE: ``embedding``, ``effect``; SVAE+: per
            category ``shift``, ``mask_probability``, ``effect``; conditional VAE:
            ``decoder_weight`` (perturbations x hidden units).
        """
        check_count("n_draws", n_draws)
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

    @torch.no_grad()
    def get_latent_representation(
        self, adata: Any | None = None, kind: str = "basal", batch_size: int = 1024
    ) -> np.ndarray:
        """Posterior mean latent of every cell.

        Parameters
        ----------
        adata : AnnData, optional
            Cells to embed (default: the model's AnnData).
        kind : ``"basal"`` or ``"perturbed"``
            The perturbation-free state z_basal, or z_basal plus the cell's posterior
            mean shift (for the conditional VAE both are z).
        batch_size : int

        Returns
        -------
        ndarray, shape (n_cells, n_latent), float32
        """
        if kind not in ("basal", "perturbed"):
            raise ValueError(f"kind must be 'basal' or 'perturbed', got {kind!r}")
        check_count("batch_size", batch_size)
        data = self._cells_for(adata, "get_latent_representation")
        categories = self.categories_for(data)
        with seeded(0):
            effect = self.module.perturbation_effects(200).get("effect")
        out = []
        for batch in self._loader(data, batch_size):
            out.append(
                self.module.latent_mean(
                    batch.counts, batch.dosage, categories[batch.index], kind, effect
                ).cpu()
            )
        return torch.cat(out).numpy()

    def iwelbo(
        self,
        adata: Any | None = None,
        n_particles: int = 100,
        batch_size: int = 256,
        seed: int = 0,
        return_per_cell: bool = False,
    ) -> float | np.ndarray:
        """Importance-weighted ELBO of the cells of ``adata`` in nats per cell (see
        :func:`bioreason.models.evaluation.iwelbo`).

        Returns
        -------
        float (the mean over cells), or ndarray of shape (n_cells,) with
        ``return_per_cell=True``.
        """
        from bioreason.models.evaluation import iwelbo

        check_count("n_particles", n_particles)
        check_count("batch_size", batch_size)
        data = self._cells_for(adata, "iwelbo")
        per_cell, _ = iwelbo(
            self.module,
            self._loader(data, batch_size),
            self.categories_for(data),
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
        """The model's average treatment effects on log2(1 + counts normalized to 10,000):
        mean of generated perturbed cells minus mean of generated control cells.

        Parameters
        ----------
        perturbations : str or list of str, optional
            Conditions, each once (default: every non-control condition of the training
            data; a model loaded without its AnnData needs them listed).
        n_cells : int
            Generated cells per condition (control included).
        seed : int
        library_size : float, optional
            Fixed library size (default: drawn from the training cells').

        Returns
        -------
        DataFrame (conditions x genes)
        """
        from bioreason.data.expression import average_treatment_effect

        if perturbations is None:
            if getattr(self, "adata", None) is None:
                example = (self.perturbation_names or ["A"])[0]
                raise ValueError(
                    "this model was loaded without an AnnData, so it does not know its "
                    "training conditions; pass the conditions: "
                    f"average_treatment_effect(perturbations=[{example!r}, ...]), or load the "
                    f"model with {type(self).__name__}.load(folder, adata=adata)"
                )
            perturbations = self.training_conditions()
        elif isinstance(perturbations, str):
            perturbations = [perturbations]
        else:
            perturbations = list(perturbations)
        if not perturbations:
            raise ValueError(
                "no conditions given; pass at least one condition label to "
                "average_treatment_effect, or None for every training condition"
            )
        control = self.control_label
        # the control cells are generated once, also when the control is asked for
        others = [p for p in perturbations if p != control]
        generated = self.sample(
            [control, *others], n_cells=n_cells, seed=seed, library_size=library_size
        )
        return average_treatment_effect(generated, control=control, conditions=list(perturbations))
