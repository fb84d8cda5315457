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
        Cells to iterate over (e.g. ``split.train``); all cells by default. A boolean
        mask raises a ``TypeError`` (pass ``np.flatnonzero(mask)``).
    batch_size : int
    shuffle : bool
    seed : int
    device : str or torch.device
        ``"auto"`` picks CUDA when present.
    drop_last : bool
        Drop a final batch smaller than ``batch_size`` (an error when that would leave
        no batch at all).
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
        if not isinstance(data, PerturbationData):
            raise TypeError(
                f"MinibatchLoader: data must be a PerturbationData, got {type(data).__name__}; "
                "parse an AnnData with PerturbationData.from_anndata(adata) first"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
            raise TypeError(f"batch_size must be a positive integer, got {batch_size!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self.data = data
        self.indices = np.arange(data.n_cells) if indices is None else _as_indices(indices)
        if self.indices.size == 0:
            raise ValueError("MinibatchLoader got no cells to iterate over")
        if self.indices.min() < 0 or self.indices.max() >= data.n_cells:
            raise ValueError(f"indices must lie in [0, {data.n_cells})")
        if drop_last and self.indices.size < batch_size:
            raise ValueError(
                f"drop_last=True with {self.indices.size} cells and batch_size {batch_size} "
                "yields no batch; lower batch_size or pass drop_last=False"
            )
        self.batch_size = int(batch_size)
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


def _as_indices(indices: object) -> np.ndarray:
    """Cell indices as a 1-D int64 array; a boolean mask or non-integers raise a TypeError."""
    array = np.asarray(indices)
    if array.dtype == bool:
        raise TypeError(
            "indices is a boolean mask; MinibatchLoader takes cell indices: pass "
            "np.flatnonzero(mask)"
        )
    if array.ndim != 1:
        raise ValueError(f"indices must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        whole = np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array))
        if not whole:
            raise TypeError(f"indices must be integers (cell indices), got {array.dtype} values")
    return array.astype(np.int64)
