"""Speed of the negative-binomial log-likelihood, the hot path of VAE training.

Times forward + backward of ``NegativeBinomialCounts.log_prob`` on float32 inputs of
the training shape (5 particles, 512 cells, 2000 genes, ~75 % zero counts) and prints
the median over repeats, in milliseconds, on one line.

    python benchmarks/nb_likelihood.py --threads 2 --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

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

    def step() -> None:
        theta = torch.nn.functional.softplus(gene_parameter) + 1e-4
        loss = -NegativeBinomialCounts(logits, library, theta).log_prob(counts).sum()
        loss.backward()
        logits.grad = gene_parameter.grad = None

    for _ in range(3):
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    zeros = float((counts == 0).float().mean())
    print(
        f"nb forward+backward ({args.particles}x{args.cells}x{args.genes}, "
        f"{zeros:.0%} zeros, {args.threads} threads): "
        f"median {1e3 * statistics.median(times):.1f} ms "
        f"(min {1e3 * min(times):.1f}, max {1e3 * max(times):.1f})"
    )


if __name__ == "__main__":
    main()
