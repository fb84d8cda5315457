"""ELBO objectives of the perturbation VAEs, shared by training and evaluation.

* :func:`make_elbo` / :class:`ELBOLoss`: the minibatch ELBO that SVI maximizes
  (``Trace_ELBO`` with vectorized particles, cells plate scaled by ``n_total / B``).
* :func:`log_importance_weights`: per-cell, per-particle log weights
  ``log p(x_i, z_ik | g_k) - log q(z_ik | x_i, g_k)`` with the global latents ``g_k``
  drawn from the guide; the validation loss of training and the held-out IWELBO of
  :mod:`bioreason.models.evaluation` are both read off them.

Neither training nor evaluation imports the other: both import this module.
"""

from __future__ import annotations

from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn

from bioreason.models._module import CELLS_PLATE, MAX_PLATE_NESTING
from bioreason.models._sampling import PARTICLE_DIM, draw_globals, seeded

__all__ = [
    "ELBOLoss",
    "batch_arguments",
    "local_log_prob",
    "log_importance_weights",
    "make_elbo",
]


def make_elbo(n_particles: int) -> Trace_ELBO:
    """``Trace_ELBO`` with ``n_particles`` vectorized particles (particle dim -3)."""
    return Trace_ELBO(
        num_particles=n_particles, vectorize_particles=True, max_plate_nesting=MAX_PLATE_NESTING
    )


class ELBOLoss(nn.Module):
    """Negative ELBO of a module on one minibatch, as an ``nn.Module`` (so it can be
    wrapped by DistributedDataParallel / ``accelerate``).

    ``forward(counts, dosage, library_size, category, n_total)`` returns a scalar
    Tensor: the loss summed over the data set's ``n_total`` cells (divide by
    ``n_total`` for nats per cell).
    """

    def __init__(self, module: nn.Module, n_particles: int = 5) -> None:
        super().__init__()
        self.module = module
        self.elbo = make_elbo(n_particles)

    def forward(
        self,
        counts: torch.Tensor,
        dosage: torch.Tensor,
        library_size: torch.Tensor,
        category: torch.Tensor,
        n_total: int,
    ) -> torch.Tensor:
        with pyro.validation_enabled(False):
            return self.elbo.differentiable_loss(
                self.module.model,
                self.module.guide,
                counts,
                dosage,
                library_size,
                category,
                n_total,
            )


def batch_arguments(batch: Any, categories: torch.Tensor, n_total: int) -> tuple:
    """``(counts, dosage, library_size, category, n_total)`` for a module's model/guide.

    Parameters
    ----------
    batch : :class:`~bioreason.data.loader.Batch`
        ``counts`` (B, G), ``dosage`` (B, P), ``library_size`` (B,), ``index`` (B,).
    categories : Tensor, shape (n_cells,), int64
        Category of every cell of the data set (SVAE+; zeros otherwise).
    n_total : int
        Cells the cells plate stands for (the scale of the minibatch is n_total / B).
    """
    return (batch.counts, batch.dosage, batch.library_size, categories[batch.index], n_total)


def local_log_prob(trace: Any, n_particles: int, n_cells: int) -> torch.Tensor:
    """Sum of the log-probabilities of the per-cell sites of ``trace`` (those inside
    the cells plate), shape (n_particles, n_cells), float64 on the CPU."""
    total = torch.zeros(n_particles, n_cells, dtype=torch.float64)
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        if not any(frame.name == CELLS_PLATE for frame in site["cond_indep_stack"]):
            continue
        log_prob = site["fn"].log_prob(site["value"])
        # per-cell sites have shape (..., B, L) or (..., B, 1): sum the last dimension
        total = total + log_prob.sum(-1).expand(n_particles, n_cells).double().cpu()
    return total


@torch.no_grad()
def log_importance_weights(
    module: Any,
    loader: Any,
    categories: torch.Tensor,
    n_particles: int = 100,
    particle_chunk: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``log p(x_i, z_ik | g_k) - log q(z_ik | x_i, g_k)``, shape (n_particles, n_cells).

    The global latents g_k (embeddings, masks, ...) are drawn once per particle from the
    guide -- the posterior approximation fitted on the training cells -- and shared by
    all cells; the local latents z_ik are drawn per cell and particle. No prior / guide
    density of g_k enters: conditional on the training data, q(g) stands in for the
    posterior predictive of the globals.

    Parameters
    ----------
    module : PerturbationVAEModule
    loader : MinibatchLoader
        Yields the cells to score, in order (``shuffle=False``).
    categories : Tensor, shape (n_cells_of_data,), int64
    n_particles : int
        Importance samples K per cell.
    particle_chunk : int, optional
        Particles per vectorized pass (default: bounded by memory).
    seed : int
        Seeds the draws; the caller's random streams are restored afterwards.
    """
    with seeded(seed):
        globals_ = draw_globals(module, n_particles)
        out = []
        for batch in loader:
            n_cells = batch.counts.shape[0]
            args = batch_arguments(batch, categories, n_cells)
            chunk = particle_chunk or max(
                1, min(n_particles, (1 << 22) // (n_cells * batch.counts.shape[1]))
            )
            weights = []
            for start in range(0, n_particles, chunk):
                stop = min(start + chunk, n_particles)
                values = {name: value[start:stop] for name, value in globals_.items()}
                with (
                    pyro.plate("particles", stop - start, dim=PARTICLE_DIM),
                    pyro.validation_enabled(False),
                ):
                    guide_trace = poutine.trace(
                        poutine.condition(module.guide, data=values)
                    ).get_trace(*args)
                    drawn = {
                        name: site["value"]
                        for name, site in guide_trace.nodes.items()
                        if site["type"] == "sample"
                    }
                    model_trace = poutine.trace(
                        poutine.condition(module.model, data=drawn)
                    ).get_trace(*args)
                weights.append(
                    local_log_prob(model_trace, stop - start, n_cells)
                    - local_log_prob(guide_trace, stop - start, n_cells)
                )
            out.append(torch.cat(weights, dim=0))
    return torch.cat(out, dim=1)
