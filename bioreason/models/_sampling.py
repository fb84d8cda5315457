"""Drawing global latents from a guide, vectorized over draws."""

from __future__ import annotations

from contextlib import contextmanager

import pyro
import torch
from pyro import poutine

PARTICLE_DIM = -3


def draw_globals(module, n_draws: int) -> dict[str, torch.Tensor]:
    """``n_draws`` samples of every global site of ``module``'s guide.

    Returns
    -------
    dict of name -> Tensor, shape (n_draws, ...) (e.g. (n_draws, P, L))
    """
    if not module.global_sites:
        return {}
    with torch.no_grad(), pyro.plate("draws", n_draws, dim=PARTICLE_DIM):
        trace = poutine.trace(module.guide_globals).get_trace()
    return {name: trace.nodes[name]["value"].detach() for name in module.global_sites}


@contextmanager
def seeded(seed: int | None):
    """Seed torch / numpy / random for a block and restore the caller's RNG state after,
    so evaluating a model does not change the user's random streams. ``None``: no-op."""
    if seed is None:
        yield
        return
    state = pyro.util.get_rng_state()
    pyro.set_rng_seed(seed)
    try:
        yield
    finally:
        pyro.util.set_rng_state(state)
