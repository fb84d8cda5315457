"""Speed of the synthetic screen generator and the minibatch loader.

Prints one ``name: value unit`` line per figure. Target (issue 2): a 50,000 cell x
2,000 gene screen in under 30 s on a 2-core machine.

    python benchmarks/data_simulate.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from bioreason.data import MinibatchLoader, PerturbationData, simulate_screen

# 250 conditions x 200 cells = 50,000 cells.
SCREEN = {
    "n_cells_per_condition": 200,
    "n_genes": 2000,
    "n_perturbations": 150,
    "n_combinations": 99,
    "n_latent": 10,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)

    simulate_screen(**{**SCREEN, "n_cells_per_condition": 5})  # warm-up
    times = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        adata = simulate_screen(**SCREEN, seed=repeat)
        times.append(time.perf_counter() - start)
    n_cells = adata.n_obs
    print(f"simulate_cells: {n_cells} cells")
    print(f"simulate_{n_cells}x{adata.n_vars}_median: {statistics.median(times):.2f} s")
    print("simulate_target: 30.00 s")

    start = time.perf_counter()
    data = PerturbationData.from_anndata(adata)
    print(f"parse_and_validate: {time.perf_counter() - start:.2f} s")

    loader = MinibatchLoader(data, batch_size=512, seed=0)
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        total = sum(batch.counts.shape[0] for batch in loader)
        rates.append(total / (time.perf_counter() - start))
    print(f"loader_throughput_2000_genes: {statistics.median(rates):.0f} cells/s")
    print(f"nonzero_fraction: {adata.layers['counts'].nnz / np.prod(adata.shape):.3f} fraction")


if __name__ == "__main__":
    main()
