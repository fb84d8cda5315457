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
            Write ``checkpoint_dir/checkpoint.pt`` every ``checkpoint_every`` steps
            (default with a folder: every 1,000 steps) and at the end. ``resume=True``
            continues from it: the folder must exist (an empty one starts a new run and
            logs a warning), and a checkpoint of other settings, another architecture or
            other data is refused, naming what differs. Without ``resume`` an existing
            checkpoint is never overwritten (an error says so). See
            :func:`bioreason.models.training.fit`.
        train_indices, validation_indices : int arrays or boolean masks, optional
            Cells (rows of the model's AnnData, each at most once; or boolean masks with
            one entry per cell) to train and validate on; the two sets must not share
            cells, and ``validation_indices`` needs ``train_indices``. A perturbation
            that no training cell carries keeps its prior as its posterior
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
        data = self._own_data(
            f"train() needs the training cells: load the model with "
            f"{type(self).__name__}.load(folder, adata=adata), then call train"
        )
        if train_indices is None:
            if validation_indices is not None:
                raise ValueError(
                    "validation_indices were given without train_indices; pass both (e.g. "
                    "train_indices = the cells not in validation_indices), or neither to "
                    "split by validation_fraction"
                )
            if isinstance(validation_fraction, bool) or not isinstance(
                validation_fraction, (int, float, np.integer, np.floating)
            ):
                raise TypeError(
                    f"validation_fraction must be a number in [0, 1), got {validation_fraction!r}"
                )
            if not 0.0 <= validation_fraction < 1.0:
                raise ValueError(
                    f"validation_fraction must be in [0, 1), got {validation_fraction}"
                )
            order = np.random.default_rng(seed).permutation(data.n_cells)
            n_val = int(round(validation_fraction * data.n_cells))
            validation_indices, train_indices = np.sort(order[:n_val]), np.sort(order[n_val:])
        else:
            train_indices = _cell_indices(train_indices, data.n_cells, "train_indices")
            if validation_indices is not None:
                validation_indices = _cell_indices(
                    validation_indices, data.n_cells, "validation_indices"
                )
                shared = np.intersect1d(train_indices, validation_indices)
                if shared.size:
                    raise ValueError(
                        f"train_indices and validation_indices share {shared.size} cells "
                        f"(e.g. {shared[:5].tolist()}); a cell is trained on or validated "
                        "on, not both"
                    )
        if len(train_indices) == 0:
            raise ValueError(
                f"train_indices selects no cells of the {data.n_cells}; pass at least one "
                "training cell"
            )
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


def check_rows_inside(array: np.ndarray, n_cells: int, name: str, rows_of: str) -> None:
    """Raise naming ``name`` when an index of ``array`` is not a row of ``rows_of``
    (outside ``[0, n_cells)``)."""
    outside = array[(array < 0) | (array >= n_cells)]
    if outside.size:
        raise ValueError(
            f"{name} holds {outside.size} indices outside [0, {n_cells}) "
            f"(e.g. {outside[:5].tolist()}); indices are rows of {rows_of}"
        )


def _cell_indices(indices: Any, n_cells: int, name: str) -> np.ndarray:
    """Cell indices as a 1-D int64 array; a boolean mask of length ``n_cells`` becomes
    the indices of its True entries. Anything else that is not a set of distinct rows
    of the AnnData raises, naming ``name``."""
    array = np.asarray(indices)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D array of cell indices (or a boolean mask with one entry "
            f"per cell), got shape {array.shape}"
        )
    if array.dtype == bool:
        if array.size != n_cells:
            raise ValueError(
                f"{name} is a boolean mask of length {array.size}, but the AnnData has "
                f"{n_cells} cells; a mask needs one entry per cell"
            )
        return np.flatnonzero(array)
    if array.size == 0:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(
            f"{name} must hold integer cell indices (rows of the AnnData) or be a boolean "
            f"mask, got dtype {array.dtype} (e.g. {array[:3].tolist()})"
        )
    check_rows_inside(array, n_cells, name, "the model's AnnData")
    values, counts = np.unique(array, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"{name} repeats cells (e.g. {values[counts > 1][:5].tolist()}); give each cell once"
        )
    return array.astype(np.int64)
