"""Minibatches of (counts, dosage, library size) for torch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from bioreason._device import resolve_device
from bioreason.data.perturbation import PerturbationData


class Batch(NamedTuple):
    """One minibatch.

    counts : Tensor, shape (batch, n_genes), float32
    dosage : Tensor, shape (batch, n_perturbations), float32
    library_size : Tensor, shape (batch,), float32
    index : Tensor, shape (batch,), int64 -- cell indices into the PerturbationData
    """

    counts: torch.Tensor
    dosage: torch.Tensor
    library_size: torch.Tensor
    index: torch.Tensor


class MinibatchLoader:
    """Iterate over minibatches of a :class:`PerturbationData`.

    Sparse rows are densified one batch at a time; a backed matrix is read from disk
    batch by batch, so memory stays flat. Each pass over the data (epoch) uses a new
    permutation drawn from ``seed`` and the epoch number, so runs are reproducible.

    Parameters
    ----------
    data : PerturbationData
    indices : array of int, optional
        Cells to iterate over (e.g. ``split.train``); all cells by default.
    batch_size : int
    shuffle : bool
    seed : int
    device : str or torch.device
        ``"auto"`` picks CUDA when present.
    drop_last : bool
        Drop a final batch smaller than ``batch_size``.
    """

    def __init__(
        self,
        data: PerturbationData,
        indices: np.ndarray | None = None,
        *,
        batch_size: int = 512,
        shuffle: bool = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
        drop_last: bool = False,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.data = data
        self.indices = (
            np.arange(data.n_cells) if indices is None else np.asarray(indices, dtype=np.int64)
        )
        if self.indices.size == 0:
            raise ValueError("MinibatchLoader got no cells to iterate over")
        if self.indices.min() < 0 or self.indices.max() >= data.n_cells:
            raise ValueError(f"indices must lie in [0, {data.n_cells})")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = resolve_device(device)
        self.drop_last = drop_last
        self.epoch = 0

    @property
    def n_cells(self) -> int:
        return int(self.indices.size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n_cells // self.batch_size
        return -(-self.n_cells // self.batch_size)

    def batch(self, rows: np.ndarray) -> Batch:
        """The batch of the given cell indices, on the loader's device."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = torch.from_numpy(self.data.get_counts(rows).toarray())
        dosage = torch.from_numpy(self.data.dosage[rows].toarray())
        library = torch.from_numpy(self.data.library_size[rows])
        index = torch.from_numpy(rows)
        non_blocking = self.device.type == "cuda"
        return Batch(
            counts.to(self.device, non_blocking=non_blocking),
            dosage.to(self.device, non_blocking=non_blocking),
            library.to(self.device, non_blocking=non_blocking),
            index.to(self.device, non_blocking=non_blocking),
        )

    def __iter__(self) -> Iterator[Batch]:
        order = self.indices
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        self.epoch += 1
        for start in range(0, order.size, self.batch_size):
            rows = order[start : start + self.batch_size]
            if self.drop_last and rows.size < self.batch_size:
                break
            yield self.batch(rows)
