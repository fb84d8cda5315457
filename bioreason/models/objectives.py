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
from bioreason.models._sampling import PARTICLE_DIM, check_count, draw_globals, seeded

__all__ = [
    "ELBOLoss",
    "batch_arguments",
    "global_kl",
    "local_log_prob",
    "local_terms",
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


def _site_log_probs(trace: Any, n_particles: int, n_cells: int) -> dict[str, torch.Tensor]:
    """Log-probability of every per-cell site of ``trace``, each (n_particles, n_cells)."""
    out = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        if not any(frame.name == CELLS_PLATE for frame in site["cond_indep_stack"]):
            continue
        log_prob = site["fn"].log_prob(site["value"])
        out[name] = log_prob.sum(-1).expand(n_particles, n_cells).double().cpu()
    return out


def local_log_prob(trace: Any, n_particles: int, n_cells: int) -> torch.Tensor:
    """Sum of the log-probabilities of the per-cell sites of ``trace`` (those inside
    the cells plate), shape (n_particles, n_cells), float64 on the CPU."""
    total = torch.zeros(n_particles, n_cells, dtype=torch.float64)
    for value in _site_log_probs(trace, n_particles, n_cells).values():
        total = total + value
    return total


@torch.no_grad()
def local_terms(
    module: Any,
    loader: Any,
    categories: torch.Tensor,
    n_particles: int = 100,
    particle_chunk: int | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Per-cell, per-particle log-probabilities of the local sites, each of shape
    (n_particles, n_cells): ``model:<site>`` (log p, e.g. ``model:counts`` is the
    reconstruction term log p(x | z), ``model:z_basal`` the prior of the basal state)
    and ``guide:<site>`` (log q). Global latents g_k are drawn once per particle from the
    guide and shared by all cells. ``log_importance_weights`` is the sum of the model
    terms minus the sum of the guide terms.

    Parameters are those of :func:`log_importance_weights`.
    """
    check_count("n_particles", n_particles)
    if particle_chunk is not None:
        check_count("particle_chunk", particle_chunk)
    with seeded(seed):
        globals_ = draw_globals(module, n_particles)
        batches: list[dict[str, torch.Tensor]] = []
        for batch in loader:
            n_cells = batch.counts.shape[0]
            args = batch_arguments(batch, categories, n_cells)
            chunk = particle_chunk or max(
                1, min(n_particles, (1 << 22) // (n_cells * batch.counts.shape[1]))
            )
            chunks: list[dict[str, torch.Tensor]] = []
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
                terms = {
                    f"model:{k}": v
                    for k, v in _site_log_probs(model_trace, stop - start, n_cells).items()
                }
                terms.update(
                    {
                        f"guide:{k}": v
                        for k, v in _site_log_probs(guide_trace, stop - start, n_cells).items()
                    }
                )
                chunks.append(terms)
            batches.append({k: torch.cat([c[k] for c in chunks], dim=0) for k in chunks[0]})
    return {k: torch.cat([b[k] for b in batches], dim=1) for k in batches[0]}


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
    terms = local_terms(module, loader, categories, n_particles, particle_chunk, seed)
    total = 0.0
    for name, value in terms.items():
        total = total + (value if name.startswith("model:") else -value)
    return total


@torch.no_grad()
def global_kl(module: Any, n_draws: int = 100, seed: int = 0) -> float:
    """Monte Carlo estimate of KL(q(g) || p(g)) of the global latents, in nats:
    the mean over ``n_draws`` guide draws of ``log q(g) - log p(g)``, summed over the
    global sites (0 for a model without global latents)."""
    if not module.global_sites:
        return 0.0
    with seeded(seed), pyro.plate("draws", n_draws, dim=PARTICLE_DIM):
        with pyro.validation_enabled(False):
            guide_trace = poutine.trace(module.guide_globals).get_trace()
            latent = module.latent_plate()
            model_globals = getattr(module, "model_globals", None)
            if model_globals is None:
                raise TypeError(f"{type(module).__name__} has no model_globals")
            model_trace = poutine.trace(poutine.replay(model_globals, trace=guide_trace)).get_trace(
                latent
            )
    total = torch.zeros(n_draws, dtype=torch.float64)
    for name in module.global_sites:
        for trace, sign in ((guide_trace, 1.0), (model_trace, -1.0)):
            site = trace.nodes[name]
            log_prob = site["fn"].log_prob(site["value"]).double()
            total = total + sign * log_prob.reshape(n_draws, -1).sum(-1).cpu()
    return float(total.mean())
