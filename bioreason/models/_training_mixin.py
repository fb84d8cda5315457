"""Training of the user-facing models: ``model.train(...)`` on top of
:func:`bioreason.models.training.fit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bioreason.models.training import TrainConfig, fit


class TrainingMixin:
    """``train`` for a model with ``self.module`` and :class:`SetupMixin`'s data access."""

    def train(
        self,
        max_epochs: int | None = None,
        max_steps: int | None = None,
        batch_size: int = 512,
        lr: float = 1e-3,
        n_particles: int = 5,
        early_stopping: bool = False,
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
        """Fit by SVI.

        Parameters
        ----------
        max_epochs, max_steps : int, optional
            Length of training (``max_steps`` wins). Default: scvi's heuristic
            ``min(400, 20000 / n_cells * 400)`` epochs.
        batch_size, lr, n_particles : int, float, int
            Minibatch size, Adam learning rate, ELBO particles.
        early_stopping : bool, default False
            Stop on the validation loss and keep the best parameters (see
            :class:`~bioreason.models.TrainConfig` for ``patience``, ``min_delta``,
            ``eval_every`` and ``validation_particles``). Off: exactly ``max_steps``.
        validation_fraction : float
            Random share of cells held out for validation, unless ``train_indices`` /
            ``validation_indices`` are given.
        device : str
            ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``.
        seed : int
            Makes training deterministic on CPU.
        checkpoint_dir, checkpoint_every, resume
            Checkpoint every N steps; continue from the last checkpoint with
            ``resume=True``.
        train_indices, validation_indices : int arrays, optional
            Cell indices (rows of the model's AnnData) to train and validate on. A
            perturbation that no training cell carries keeps its prior as its posterior
            (``module.perturbation_observed`` records which ones had cells).
        **kwargs
            Further fields of :class:`~bioreason.models.TrainConfig`.

        Returns
        -------
        DataFrame
            The loss history (``step, epoch, train_loss, validation_loss``, nats per
            cell), also stored in ``self.history``.
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
        data = self.data_for(None)
        if train_indices is None:
            if not 0.0 <= validation_fraction < 1.0:
                raise ValueError(
                    f"validation_fraction must be in [0, 1), got {validation_fraction}"
                )
            order = np.random.default_rng(seed).permutation(data.n_cells)
            n_val = int(round(validation_fraction * data.n_cells))
            validation_indices, train_indices = np.sort(order[:n_val]), np.sort(order[n_val:])
        self.to_device(config.device)
        categories = self.categories_for(data)
        observed = np.asarray(data.dosage[np.asarray(train_indices)].getnnz(axis=0) > 0)
        self.module.perturbation_observed.copy_(torch.as_tensor(observed))
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
