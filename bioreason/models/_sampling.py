"""Drawing global latents from a guide, vectorized over draws; seeding; the checks of
counts and seeds shared by the sampling methods."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np
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
    check_seed(seed)
    state = pyro.util.get_rng_state()
    pyro.set_rng_seed(seed)
    try:
        yield
    finally:
        pyro.util.set_rng_state(state)


def check_count(name: str, value: Any) -> None:
    """``value`` must be an integer >= 1 (not a bool, float or string)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be positive (an integer >= 1), got {value!r}")


def check_seed(seed: Any) -> None:
    """``seed`` must be None or an integer in [0, 2**32) (NumPy's and Pyro's range)."""
    if seed is None:
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer >= 0 or None, got {seed!r}")
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32) or None, got {seed}")
