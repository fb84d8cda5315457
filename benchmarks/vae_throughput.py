"""Training throughput of SAMS-VAE and the time of a 100-particle IWELBO.

Configuration of the issue: batch 512, 5 vectorized particles, n_latent 200, one hidden
layer of 400 units, 500 genes, correlated guide, negative binomial likelihood,
torch.set_num_threads(2). Prints one ``name: value unit`` line per figure, medians over
``--repeats`` timed runs after a warm-up; the same run times a baseline that uses Pyro's
stock ``GammaPoisson`` likelihood (same model, guide and engine).

    flock /tmp/bioreason-cpu.lock python benchmarks/vae_throughput.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pyro.distributions as dist
import torch

from bioreason.data import MinibatchLoader, PerturbationData, simulate_screen
from bioreason.models import LIKELIHOODS, MODELS, VAEConfig
from bioreason.models._nn import log1p_moments
from bioreason.models.evaluation import iwelbo
from bioreason.models.objectives import batch_arguments
from bioreason.models.training import ENGINES, TrainConfig


def _stock_nb(logits, library_size, gene_parameter):
    """Pyro's GammaPoisson from the mean: the plain implementation."""
    theta = torch.nn.functional.softplus(gene_parameter) + 1e-4
    mean = torch.softmax(logits, -1) * library_size.unsqueeze(-1)
    return dist.GammaPoisson(theta, theta / mean).to_event(1)


def build(args, likelihood: str, guide: str, model: str = "sams_vae"):
    adata = simulate_screen(
        n_genes=500,
        n_latent=10,
        n_perturbations=args.n_perturbations,
        n_combinations=20,
        n_cells_per_condition=60,
        seed=0,
    )
    data = PerturbationData.from_anndata(adata)
    config = VAEConfig(n_latent=200, n_hidden=400, n_layers=1, guide=guide, likelihood=likelihood)
    mean, std = log1p_moments(data, np.arange(data.n_cells))
    module = MODELS[model].module_class(data.n_genes, data.n_perturbations, config, mean, std)
    return data, module


def time_training(args, likelihood, guide="correlated", engine="module", model="sams_vae"):
    torch.manual_seed(0)
    data, module = build(args, likelihood, guide, model)
    train_config = TrainConfig(n_particles=5, batch_size=512, engine=engine, lr=1e-3)
    runner = ENGINES[engine](module, train_config)
    loader = MinibatchLoader(data, batch_size=512, drop_last=True, seed=0)
    categories = torch.zeros(data.n_cells, dtype=torch.int64)
    batches = iter(())

    def next_batch():
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    for _ in range(args.warmup):
        runner.step(*batch_arguments(next_batch(), categories, data.n_cells))
    rates = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            runner.step(*batch_arguments(next_batch(), categories, data.n_cells))
        rates.append(args.steps * 512 / (time.perf_counter() - start))
    return statistics.median(rates)


def time_iwelbo(args):
    torch.manual_seed(0)
    data, module = build(args, "nb", "correlated")
    module.eval()
    loader = MinibatchLoader(data, np.arange(1000), batch_size=250, shuffle=False)
    categories = torch.zeros(data.n_cells, dtype=torch.int64)
    times = []
    for _ in range(args.iwelbo_repeats):
        start = time.perf_counter()
        iwelbo(module, loader, categories, n_particles=100)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iwelbo-repeats", type=int, default=3)
    parser.add_argument("--n-perturbations", type=int, default=100)
    parser.add_argument("--all", action="store_true", help="also mean-field, CPA-VAE, SVI engine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    LIKELIHOODS.register("nb_stock_gamma_poisson", _stock_nb, overwrite=True)

    rate = time_training(args, "nb")
    print(f"train_throughput: {rate:.0f} cells/s")
    baseline = time_training(args, "nb_stock_gamma_poisson")
    print(f"train_throughput_stock_gamma_poisson_baseline: {baseline:.0f} cells/s")
    print(f"speedup_vs_stock_gamma_poisson: {rate / baseline:.2f} x")
    if args.all:
        print(f"train_throughput_mean_field: {time_training(args, 'nb', 'mean_field'):.0f} cells/s")
        cpa = time_training(args, "nb", "mean_field", model="cpa_vae")
        print(f"train_throughput_cpa_vae: {cpa:.0f} cells/s")
        svi = time_training(args, "nb", engine="svi")
        print(f"train_throughput_svi_engine: {svi:.0f} cells/s")
    print(f"iwelbo_100_particles_1000_cells: {time_iwelbo(args):.2f} s")


if __name__ == "__main__":
    main()
