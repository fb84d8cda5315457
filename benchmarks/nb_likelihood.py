"""Speed of the negative-binomial log-likelihood, the hot path of VAE training.

Times forward + backward of ``NegativeBinomialCounts.log_prob`` on float32 inputs of
the training shape (5 particles, 512 cells, 2000 genes, ~75 % zero counts) and prints
the median over repeats, in milliseconds, beside Pyro's stock ``GammaPoisson`` on the
same inputs (the baseline); then the largest per-cell error of the float32 likelihood
against scipy's float64 ``nbinom`` for concentrations 1 to 1e5 (2,000 genes, library
sizes 1e4 to 1e5, counts up to a few thousand). One ``name: value unit`` line per figure.

    python benchmarks/nb_likelihood.py --threads 2 --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from pyro.distributions import GammaPoisson

from bioreason.models.likelihoods import NegativeBinomialCounts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--particles", type=int, default=5)
    parser.add_argument("--cells", type=int, default=512)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(args.particles, args.cells, args.genes, generator=g)
    library = torch.rand(args.cells, generator=g) * 9000 + 1000
    counts = torch.poisson(torch.rand(args.cells, args.genes, generator=g) * 0.6).pow(2)
    gene_parameter = torch.randn(args.genes, generator=g)
    logits.requires_grad_(True)
    gene_parameter.requires_grad_(True)

    def nb(theta: torch.Tensor) -> torch.Tensor:
        return NegativeBinomialCounts(logits, library, theta).log_prob(counts)

    def stock(theta: torch.Tensor) -> torch.Tensor:
        mu = torch.softmax(logits, -1) * library.unsqueeze(-1)
        return GammaPoisson(theta, theta / mu).log_prob(counts).sum(-1)

    zeros = float((counts == 0).float().mean())
    shape = f"{args.particles}x{args.cells}x{args.genes}, {zeros:.0%} zeros"
    for name, fn in (("nb_forward_backward", nb), ("gammapoisson_baseline", stock)):

        def step(fn=fn) -> None:
            theta = torch.nn.functional.softplus(gene_parameter) + 1e-4
            loss = -fn(theta).sum()
            loss.backward()
            logits.grad = gene_parameter.grad = None

        for _ in range(3):
            step()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        print(
            f"{name}_median ({shape}, {args.threads} threads): "
            f"{1e3 * statistics.median(times):.1f} ms"
        )
    accuracy()


def accuracy(n_cells: int = 16, n_genes: int = 2000) -> None:
    """Largest per-cell |float32 - scipy float64| of the log-likelihood, per theta."""
    from scipy.stats import nbinom

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n_cells, n_genes))
    library = rng.uniform(1e4, 1e5, size=n_cells)
    mu = library[:, None] * np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for theta in (1.0, 1e3, 1e4, 1e5):
        counts = rng.poisson(mu).astype(np.float64)
        exact = nbinom.logpmf(counts, theta, theta / (theta + mu)).sum(-1)
        value = NegativeBinomialCounts(
            torch.tensor(logits, dtype=torch.float32),
            torch.tensor(library, dtype=torch.float32),
            torch.full((n_genes,), theta, dtype=torch.float32),
        ).log_prob(torch.tensor(counts, dtype=torch.float32))
        error = np.abs(value.double().numpy() - exact).max()
        print(f"nb_float32_max_error_theta_{theta:g}: {error:.3f} nats/cell")


if __name__ == "__main__":
    main()
