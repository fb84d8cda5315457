"""Small shared fixtures for the model tests (not collected: no test_ prefix)."""

from __future__ import annotations

import torch

from bioreason.data import simulate_screen


def tiny_screen(seed: int = 0, **overrides):
    settings = dict(
        n_cells_per_condition=30,
        n_genes=40,
        n_latent=3,
        n_perturbations=5,
        n_combinations=3,
        library_log_mean=6.0,
        seed=seed,
    )
    settings.update(overrides)
    return simulate_screen(**settings)


def tiny_batch(n_cells: int = 8, n_genes: int = 30, n_perturbations: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    counts = torch.poisson(
        torch.rand(n_cells, n_genes, generator=generator) * 5, generator=generator
    )
    counts[:, 0] += 1.0  # no empty cell
    dosage = torch.zeros(n_cells, n_perturbations)
    dosage[torch.arange(n_cells), torch.arange(n_cells) % n_perturbations] = 1.0
    dosage[0] = 0.0  # a control cell
    dosage[1, :2] = 1.0  # a combination
    library = counts.sum(-1)
    category = torch.arange(n_cells) % (n_perturbations + 1)
    return counts, dosage, library, category
