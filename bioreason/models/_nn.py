"""Shared network blocks: LeakyReLU MLPs (optionally residual) and safe input standardization."""

from __future__ import annotations

import torch
from torch import nn

#: default negative slope of the LeakyReLU activations
LEAKY_SLOPE = 0.2


class MLP(nn.Module):
    """``n_layers`` hidden layers of width ``n_hidden`` with LeakyReLU, then a linear output.

    With ``residual=True`` every hidden layer after the first adds its input
    (``h <- h + act(W h + b)``), which keeps deep decoders trainable.

    Parameters
    ----------
    n_input, n_output : int
    n_hidden : int
    n_layers : int
        Number of hidden layers (0 gives a single linear map).
    residual : bool
    negative_slope : float
        Slope of the LeakyReLU for negative inputs.
    """

    def __init__(
        self,
        n_input: int,
        n_output: int,
        n_hidden: int = 400,
        n_layers: int = 1,
        residual: bool = False,
        negative_slope: float = LEAKY_SLOPE,
    ) -> None:
        super().__init__()
        if n_layers < 0 or n_hidden <= 0:
            raise ValueError(f"need n_layers >= 0 and n_hidden > 0, got {n_layers}, {n_hidden}")
        widths = [n_input] + [n_hidden] * n_layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.output = nn.Linear(widths[-1], n_output)
        self.residual = residual
        self.negative_slope = negative_slope

    def forward_hidden(
        self, x: torch.Tensor, first_layer: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden activations, shape (..., n_hidden).

        ``first_layer`` (optional, broadcastable to the first layer's pre-activation) is
        added before the first nonlinearity: a cheap way to feed an extra input that is
        linear in something smaller (see :class:`~bioreason.models.sams_vae.SAMSVAEModule`).
        """
        h = x
        for i, layer in enumerate(self.hidden):
            pre = layer(h)
            if i == 0 and first_layer is not None:
                pre = pre + first_layer
            out = nn.functional.leaky_relu(pre, self.negative_slope)
            h = h + out if (self.residual and i > 0) else out
        return h

    def forward(self, x: torch.Tensor, first_layer: torch.Tensor | None = None) -> torch.Tensor:
        """Output, shape (..., n_output)."""
        return self.output(self.forward_hidden(x, first_layer))


class Standardize(nn.Module):
    """``(log1p(counts) - mean) / std`` with statistics fixed at construction.

    Genes with zero standard deviation (e.g. genes zero in every cell: 250 of the 500
    genes of the Norman 2019 subset) are divided by 1, not by 0, so they map to 0
    instead of NaN.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-6) -> None:
        super().__init__()
        safe = torch.where(std > eps, std, torch.ones_like(std))
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("inv_std", 1.0 / safe.float())

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return (torch.log1p(counts) - self.mean) * self.inv_std


def log1p_moments(data, indices, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of ``log1p(counts)`` per gene over ``indices``,
    read chunk by chunk (works for backed data). Returns two tensors of shape (n_genes,)."""
    import numpy as np

    indices = np.sort(np.asarray(indices, dtype=np.int64))
    total = np.zeros(data.n_genes)
    total_sq = np.zeros(data.n_genes)
    for start in range(0, indices.size, chunk):
        block = data.get_counts(indices[start : start + chunk]).astype(np.float64)
        block.data = np.log1p(block.data)
        total += np.asarray(block.sum(axis=0)).ravel()
        block.data **= 2
        total_sq += np.asarray(block.sum(axis=0)).ravel()
    n = max(indices.size, 1)
    mean = total / n
    var = np.maximum(total_sq / n - mean**2, 0.0)
    return torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(
        np.sqrt(var), dtype=torch.float32
    )
