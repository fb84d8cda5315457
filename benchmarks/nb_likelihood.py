"""Speed and precision of the negative-binomial log-likelihood, the hot path of VAE training.

Three figures, each beside its baseline in the same run:

* forward + backward of ``NegativeBinomialCounts.log_prob`` on float32 inputs of the
  training shape (5 particles, 512 cells, 2000 genes, ~75 % zero counts), median over
  repeats, beside the previous form (``x log mu`` and ``(theta + x) log1p(mu / theta)``
  summed separately over genes) and Pyro's stock ``GammaPoisson``; the three are timed in
  alternation, so that load on the machine hits them alike;
* SAMS-VAE training throughput (``benchmarks/vae_throughput.py``'s configuration) with
  the likelihood and with the previous form, alternating, and the relative cost;
* the largest per-cell error of the float32 likelihood (and of the previous form)
  against scipy's float64 ``nbinom`` at the same float32 inputs, for concentrations 1 to
  1e5 and libraries of 1e5 to 2e5 counts over 2,000 genes, the counts drawn around a
  mean 30 % away from the model's (a residual that is not ~0).

One ``name: value unit`` line per figure.

    python benchmarks/nb_likelihood.py --threads 2 --repeats 30
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import numpy as np
import torch
from pyro.distributions import GammaPoisson

from bioreason.models import LIKELIHOODS
from bioreason.models.likelihoods import NegativeBinomialCounts


def previous_log_prob(logits, library, theta, counts) -> torch.Tensor:
    """The form used before issue 21 (the baseline): ``sum_g x log mu`` and
    ``sum_g (theta + x) log1p(mu / theta)`` accumulated separately in float32, then
    the count-only term in float64."""
    log_rho = torch.log_softmax(logits, -1)
    offset = torch.log(library).unsqueeze(-1) - torch.log(theta)
    log1p_ratio = torch.nn.functional.softplus(log_rho + offset)
    per_particle = (
        (counts * log_rho).sum(-1)
        + counts.sum(-1) * torch.log(library)
        - ((theta + counts) * log1p_ratio).sum(-1)
    )
    # the count-only term of that form: lgamma(x + theta) - lgamma(theta)
    # - x log theta - lgamma(x + 1), in float64 on the nonzero entries
    wide = counts.to(torch.float64)
    th = theta.to(torch.float64).expand_as(wide)
    nonzero = wide > 0
    term = torch.where(
        nonzero,
        torch.lgamma(wide + th) - torch.lgamma(th) - wide * torch.log(th) - torch.lgamma(wide + 1),
        torch.zeros_like(wide),
    ).sum(-1)
    return term.to(counts.dtype) + per_particle


class _PreviousNB(NegativeBinomialCounts):
    def log_prob(self, value):
        return previous_log_prob(self.logits, self.library_size, self.concentration, value)


def _previous_nb(logits, library_size, gene_parameter):
    theta = torch.nn.functional.softplus(gene_parameter) + 1e-4
    return _PreviousNB(logits, library_size, theta)


def time_log_prob(args) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(args.particles, args.cells, args.genes, generator=g)
    library = torch.rand(args.cells, generator=g) * 9000 + 1000
    counts = torch.poisson(torch.rand(args.cells, args.genes, generator=g) * 0.6).pow(2)
    gene_parameter = torch.randn(args.genes, generator=g)
    logits.requires_grad_(True)
    gene_parameter.requires_grad_(True)

    def nb(theta):
        return NegativeBinomialCounts(logits, library, theta).log_prob(counts)

    def previous(theta):
        return previous_log_prob(logits, library, theta, counts)

    def stock(theta):
        mu = torch.softmax(logits, -1) * library.unsqueeze(-1)
        return GammaPoisson(theta, theta / mu).log_prob(counts).sum(-1)

    forms = {
        "nb_forward_backward": nb,
        "previous_form_baseline": previous,
        "gammapoisson_baseline": stock,
    }

    def step(fn) -> None:
        theta = torch.nn.functional.softplus(gene_parameter) + 1e-4
        (-fn(theta).sum()).backward()
        logits.grad = gene_parameter.grad = None

    for fn in forms.values():
        for _ in range(3):
            step(fn)
    times: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(args.repeats):
        for name, fn in forms.items():
            start = time.perf_counter()
            step(fn)
            times[name].append(time.perf_counter() - start)
    zeros = float((counts == 0).float().mean())
    shape = f"{args.particles}x{args.cells}x{args.genes}, {zeros:.0%} zeros"
    medians = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    for name, value in medians.items():
        print(f"{name}_median ({shape}, {args.threads} threads): {value:.1f} ms")
    return medians


def time_training(args) -> None:
    """SAMS-VAE steps with the likelihood and with the previous form, in alternation."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from vae_throughput import time_training as vae_rate

    LIKELIHOODS.register("nb_previous_form", _previous_nb, overwrite=True)
    try:
        settings = SimpleNamespace(n_perturbations=100, warmup=2, repeats=1, steps=args.train_steps)
        rates: dict[str, list[float]] = {"nb": [], "nb_previous_form": []}
        for _ in range(args.train_repeats):
            for name in rates:
                rates[name].append(vae_rate(settings, name))
    finally:
        LIKELIHOODS.unregister("nb_previous_form")
    new, old = (statistics.median(rates[k]) for k in ("nb", "nb_previous_form"))
    print(f"train_throughput_nb: {new:.0f} cells/s")
    print(f"train_throughput_previous_form_baseline: {old:.0f} cells/s")
    print(f"train_cost_vs_previous_form: {100 * (old / new - 1):+.1f} %")


def accuracy(n_cells: int = 16, n_genes: int = 2000) -> dict[tuple[float, float], float]:
    """Largest per-cell |float32 - scipy float64| of the log-likelihood, per theta and
    library; scipy is evaluated at the float32 inputs. Returns the new form's errors."""
    from scipy.stats import nbinom

    errors = {}
    for library_high in (1e5, 2e5):
        for theta in (1.0, 10.0, 1e3, 1e4, 1e5):
            rng = np.random.default_rng(int(theta) + int(library_high))
            logits = rng.normal(size=(n_cells, n_genes)).astype(np.float32)
            library = rng.uniform(library_high / 2, library_high, size=n_cells).astype(np.float32)
            x64 = logits.astype(np.float64)
            mu = library[:, None] * np.exp(x64) / np.exp(x64).sum(-1, keepdims=True)
            near = mu * np.exp(rng.normal(scale=0.3, size=mu.shape))
            counts = rng.negative_binomial(theta, theta / (theta + near)).astype(np.float64)
            exact = nbinom.logpmf(counts, theta, theta / (theta + mu)).sum(-1)
            inputs = (
                torch.tensor(logits),
                torch.tensor(library),
                torch.full((n_genes,), theta, dtype=torch.float32),
            )
            x = torch.tensor(counts, dtype=torch.float32)
            new = NegativeBinomialCounts(*inputs).log_prob(x).double().numpy()
            old = previous_log_prob(*inputs, x).double().numpy()
            errors[(theta, library_high)] = float(np.abs(new - exact).max())
            label = f"theta_{theta:g}_library_{library_high:g}"
            print(f"nb_float32_max_error_{label}: {errors[(theta, library_high)]:.3f} nats/cell")
            print(f"previous_form_max_error_{label}: {np.abs(old - exact).max():.3f} nats/cell")
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--particles", type=int, default=5)
    parser.add_argument("--cells", type=int, default=512)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=10, help="timed steps per turn")
    parser.add_argument("--train-repeats", type=int, default=5, help="alternating turns")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    time_log_prob(args)
    if not args.skip_training:
        time_training(args)
    accuracy()


if __name__ == "__main__":
    main()
