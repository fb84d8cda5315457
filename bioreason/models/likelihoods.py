"""Count likelihoods parameterized by decoder logits and library size, as Pyro distributions.

All three take ``logits`` (..., G) (gene proportions ``rho = softmax(logits)``), the
cell's ``library_size`` (...) and return exact log-probabilities summed over genes
(event shape ``(G,)``). They are written for the ELBO's hot path:

* the mean is never formed from ``softmax`` and then logged again: with
  ``mu = l * softmax(logits)``, ``log mu = log l + log_softmax(logits)``;
* terms that depend only on the observed counts (and the per-gene concentration)
  are computed on the counts' own shape. Under vectorized particles the observed
  counts have no particle dimension, so these terms are computed once per batch,
  not once per particle.

Negative binomial (mean ``mu``, concentration ``theta``), written per gene so that no
large terms cancel::

    log NB(x) = [lgamma(x + theta) - lgamma(theta) - x log theta - lgamma(x + 1)]
                + x log mu - (theta + x) log1p(mu / theta)

The textbook form ``theta log theta - (theta + x) log(theta + mu) + ...`` sums terms of
size ``theta log theta`` over genes that cancel afterwards; in float32 that loses about a
nat per cell at ``theta = 1e3`` and hundreds at ``theta = 1e5`` (2000 genes). Here the
per-particle part stays of the size of the result (``(theta + x) log1p(mu / theta)``
tends to ``mu + x mu / theta`` as ``theta`` grows: the Poisson limit), and the bracket,
which depends only on the counts and ``theta``, is evaluated in float64 -- once per
batch and only on nonzero entries (it is zero where ``x == 0``, most single-cell
entries) -- where ``lgamma(x + theta) - lgamma(theta)`` keeps its digits.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from bioreason.registry import Registry

_EMPTY = torch.Size()


def _batch_shape(logits: torch.Tensor, library_size: torch.Tensor) -> torch.Size:
    return torch.broadcast_shapes(logits.shape[:-1], library_size.shape)


def _nonzero_entries(counts: torch.Tensor):
    """Rows, columns and values of the nonzero entries of ``counts`` seen as (rows, G)."""
    flat = counts.reshape(-1, counts.shape[-1])
    rows, cols = torch.nonzero(flat, as_tuple=True)
    return flat.shape[0], rows, cols, flat[rows, cols]


def _sum_rows(n_rows: int, rows: torch.Tensor, term: torch.Tensor, shape) -> torch.Tensor:
    out = torch.zeros(n_rows, dtype=term.dtype, device=term.device).index_add(0, rows, term)
    return out.reshape(shape)


def nb_count_term(counts: torch.Tensor, concentration: torch.Tensor) -> torch.Tensor:
    """``sum_g lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)`` over nonzero entries.

    Parameters
    ----------
    counts : Tensor, shape (..., G)
    concentration : Tensor, shape (G,)

    Returns
    -------
    Tensor, shape (...)
    """
    n_rows, rows, cols, x = _nonzero_entries(counts)
    theta = concentration.expand(counts.shape[-1])[cols]
    term = torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0)
    return _sum_rows(n_rows, rows, term, counts.shape[:-1])


def nb_count_term_centered(counts: torch.Tensor, concentration: torch.Tensor) -> torch.Tensor:
    """``sum_g lgamma(x + theta) - lgamma(theta) - x log theta - lgamma(x + 1)`` over
    nonzero entries, computed in float64 and returned in the counts' dtype.

    Subtracting ``x log theta`` keeps the sum of the size of the log-probability for
    large ``theta`` (each entry tends to ``-lgamma(x + 1)``); float64 keeps the digits of
    ``lgamma(x + theta) - lgamma(theta)``, whose terms are about ``theta log theta``.

    Parameters
    ----------
    counts : Tensor, shape (..., G)
    concentration : Tensor, shape (G,)

    Returns
    -------
    Tensor, shape (...)
    """
    n_rows, rows, cols, x = _nonzero_entries(counts)
    # float64 is not available on every accelerator (MPS); there float32 is the best we have
    wide = torch.float32 if counts.device.type == "mps" else torch.float64
    theta = concentration.expand(counts.shape[-1]).to(wide)
    # per-gene pieces once per gene, then gathered; only lgamma(x + theta) is per entry
    lgamma_theta = torch.lgamma(theta)
    x_wide = x.to(wide)
    term = (
        torch.lgamma(x_wide + theta[cols])
        - lgamma_theta[cols]
        - x_wide * torch.log(theta)[cols]
        # float32 lgamma is off by several ulps: a nat at x = 2e4
        - torch.lgamma(x_wide + 1.0)
    )
    return _sum_rows(n_rows, rows, term, counts.shape[:-1]).to(counts.dtype)


#: entries from which :func:`gamma_poisson` samples on CPU in parallel chunks
_PARALLEL_ENTRIES = 1 << 16
#: chunks of a parallel draw (fixed, so that results do not depend on the thread count)
_CHUNKS = 4
_EXECUTOR: Any = None


def gamma_poisson(shape: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``Poisson(Gamma(shape, 1) * scale)`` elementwise: negative-binomial counts.

    On CPU, large draws use numpy's samplers (faster than torch's there) in
    ``_CHUNKS`` chunks on ``torch.get_num_threads()`` threads, each chunk with its own
    generator seeded from torch's global random stream, so a seeded caller gets the
    same counts whatever the thread count. Elsewhere (CUDA) torch samples directly.

    Returns
    -------
    Tensor of the broadcast shape of ``shape`` and ``scale``, float32.
    """
    shape, scale = torch.broadcast_tensors(shape, scale)
    if shape.device.type != "cpu" or shape.numel() < _PARALLEL_ENTRIES:
        return torch.poisson(torch._standard_gamma(shape.contiguous()) * scale)
    seeds = torch.randint(0, 2**62, (_CHUNKS,), dtype=torch.int64).tolist()
    shape_np = shape.reshape(-1).to(torch.float32).numpy()
    scale_np = scale.reshape(-1).to(torch.float32).numpy()
    bounds = np.linspace(0, shape_np.size, _CHUNKS + 1).astype(np.int64)
    out = np.empty(shape_np.size, dtype=np.float32)

    def work(i: int) -> None:
        rng = np.random.default_rng(seeds[i])
        part = slice(bounds[i], bounds[i + 1])
        rate = rng.standard_gamma(shape_np[part], dtype=np.float32) * scale_np[part]
        out[part] = rng.poisson(rate)

    workers = max(1, min(torch.get_num_threads(), _CHUNKS))
    if workers == 1:
        for i in range(_CHUNKS):
            work(i)
    else:
        global _EXECUTOR
        if _EXECUTOR is None or _EXECUTOR._max_workers != workers:
            _EXECUTOR = ThreadPoolExecutor(workers, thread_name_prefix="bioreason-nb")
        list(_EXECUTOR.map(work, range(_CHUNKS)))
    return torch.from_numpy(out).reshape(shape.shape)


class _CountLikelihood(TorchDistribution):
    arg_constraints = {"logits": constraints.real, "library_size": constraints.positive}
    support = constraints.independent(constraints.nonnegative_integer, 1)
    has_rsample = False

    def __init__(self, logits, library_size, validate_args=None) -> None:
        self.logits = logits
        self.library_size = torch.as_tensor(library_size, dtype=logits.dtype, device=logits.device)
        super().__init__(
            _batch_shape(logits, self.library_size), logits.shape[-1:], validate_args=validate_args
        )

    @property
    def log_proportions(self) -> torch.Tensor:
        return torch.log_softmax(self.logits, dim=-1)

    @property
    def mean(self) -> torch.Tensor:
        mean = torch.softmax(self.logits, -1) * self.library_size.unsqueeze(-1)
        return mean.expand(self.batch_shape + self.event_shape)

    def _expand_args(self, batch_shape):
        logits = self.logits.expand(batch_shape + self.logits.shape[-1:])
        return logits, self.library_size.expand(batch_shape)

    def sample_genes(
        self, genes: torch.Tensor, mean: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts of the genes ``genes`` (index tensor of length g) and every cell's total
        count over all G genes (``mean``: :attr:`mean`, when the caller has it).

        Returns
        -------
        counts : Tensor, shape (..., g)
        totals : Tensor, shape (...)

        The base class samples every gene; the count likelihoods below sample only the
        genes asked for and draw the other genes' total directly.
        """
        with torch.no_grad():
            counts = self.sample()
            return counts[..., genes], counts.sum(-1)

    def _rest_mask(self, genes: torch.Tensor) -> torch.Tensor:
        rest = torch.ones(self.event_shape[-1], dtype=torch.bool, device=self.logits.device)
        rest[genes] = False
        return rest

    def _log_mu_terms(self, value: torch.Tensor, log_rho: torch.Tensor) -> torch.Tensor:
        """``sum_g x log mu = sum_g x log rho + (sum_g x) log l``."""
        return (value * log_rho).sum(-1) + value.sum(-1) * torch.log(self.library_size)


class NegativeBinomialCounts(_CountLikelihood):
    """Negative binomial with mean ``library_size * softmax(logits)`` and per-gene
    ``concentration``; same density as ``GammaPoisson(theta, theta / mu)``.

    Parameters
    ----------
    logits : Tensor, shape (..., G)
    library_size : Tensor, shape (...)
    concentration : Tensor, shape (G,)
    """

    arg_constraints = {**_CountLikelihood.arg_constraints, "concentration": constraints.positive}

    def __init__(self, logits, library_size, concentration, validate_args=None) -> None:
        self.concentration = concentration
        super().__init__(logits, library_size, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        logits, library = self._expand_args(torch.Size(batch_shape))
        return NegativeBinomialCounts(logits, library, self.concentration)

    @property
    def variance(self) -> torch.Tensor:
        mean = self.mean
        return mean + mean**2 / self.concentration

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        theta = self.concentration
        log_rho = self.log_proportions
        # log1p(mu / theta) = softplus(log rho + log l - log theta): one fused, exact op
        # whose derivative is mu / (theta + mu); the offset has no particle dimension
        offset = torch.log(self.library_size).unsqueeze(-1) - torch.log(theta)
        log1p_ratio = torch.nn.functional.softplus(log_rho + offset)
        per_particle = self._log_mu_terms(value, log_rho) - ((theta + value) * log1p_ratio).sum(-1)
        return nb_count_term_centered(value, theta) + per_particle

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        with torch.no_grad():
            mean = self.mean.expand(torch.Size(sample_shape) + self.mean.shape)
            theta = self.concentration
            return gamma_poisson(theta.expand_as(mean), mean / theta)

    def sample_genes(
        self, genes: torch.Tensor, mean: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts of ``genes`` (gamma-Poisson, exact) and each cell's total over all genes.

        The other genes' total is ``Poisson(sum of their gamma rates)``, exact given the
        rates; the sum of their gamma rates is drawn as one gamma with the sum's mean
        ``sum mu_g`` and variance ``sum mu_g^2 / theta_g`` (two-moment match: the sum of
        hundreds of independent gammas, whose skewness the match changes by a fraction of
        a per cent of the total's spread). ``mean``: :attr:`mean`, when the caller has it.

        Returns
        -------
        counts : Tensor, shape (..., len(genes)); totals : Tensor, shape (...)
        """
        with torch.no_grad():
            mean = self.mean if mean is None else mean
            theta = self.concentration.expand(mean.shape[-1])
            picked, picked_theta = mean[..., genes], theta[genes]
            counts = gamma_poisson(picked_theta.expand_as(picked), picked / picked_theta)
            totals = counts.sum(-1)
            rest = self._rest_mask(genes).to(mean.dtype)
            if bool(rest.any()):
                # sums over the other genes as products with 0/1 (and 0/theta) weights:
                # no copy of the other genes' means
                first = (mean @ rest).clamp_min(1e-12)
                second = ((mean * mean) @ (rest / theta)).clamp_min(1e-12)
                shape = (first**2 / second).clamp_min(1e-6)
                rate_sum = torch._standard_gamma(shape) * (second / first)
                totals = totals + torch.poisson(rate_sum)
            return counts, totals


class PoissonCounts(_CountLikelihood):
    """Poisson with mean ``library_size * softmax(logits)``.

    Because ``sum_g mu_g = l``, ``log p = sum_g x log mu - l - sum_g lgamma(x + 1)``.
    """

    def expand(self, batch_shape, _instance=None):
        return PoissonCounts(*self._expand_args(torch.Size(batch_shape)))

    @property
    def variance(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        flat = value.reshape(-1, value.shape[-1])
        rows, cols = torch.nonzero(flat, as_tuple=True)
        factorial = torch.zeros(flat.shape[0], dtype=value.dtype, device=value.device).index_add(
            0, rows, torch.lgamma(flat[rows, cols] + 1.0)
        )
        return (
            self._log_mu_terms(value, self.log_proportions)
            - self.library_size
            - factorial.reshape(value.shape[:-1])
        )

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        with torch.no_grad():
            return torch.poisson(self.mean.expand(torch.Size(sample_shape) + self.mean.shape))

    def sample_genes(
        self, genes: torch.Tensor, mean: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts of ``genes`` and each cell's total over all genes, both exact (the other
        genes' total is Poisson with the sum of their means).

        Returns
        -------
        counts : Tensor, shape (..., len(genes)); totals : Tensor, shape (...)
        """
        with torch.no_grad():
            mean = self.mean if mean is None else mean
            counts = torch.poisson(mean[..., genes])
            others = mean @ self._rest_mask(genes).to(mean.dtype)
            return counts, counts.sum(-1) + torch.poisson(others)


class LogNormalCounts(_CountLikelihood):
    """``log(x + 1) ~ Normal(log(mu + 1), sigma_g)``: a continuous density on x >= 0.

    ``log p(x) = log N(log(x + 1); log(mu + 1), sigma) - log(x + 1)`` (change of variables).

    Parameters
    ----------
    scale : Tensor, shape (G,)
        Per-gene standard deviation sigma_g on the log scale.
    """

    arg_constraints = {**_CountLikelihood.arg_constraints, "scale": constraints.positive}
    support = constraints.independent(constraints.greater_than_eq(0.0), 1)

    def __init__(self, logits, library_size, scale, validate_args=None) -> None:
        self.scale = scale
        super().__init__(logits, library_size, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        logits, library = self._expand_args(torch.Size(batch_shape))
        return LogNormalCounts(logits, library, self.scale)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        log_x1 = torch.log1p(value)
        loc = torch.log1p(torch.softmax(self.logits, -1) * self.library_size.unsqueeze(-1))
        z = (log_x1 - loc) / self.scale
        log_norm = -0.5 * z**2 - torch.log(self.scale) - 0.5 * torch.log(torch.tensor(2 * torch.pi))
        return (log_norm - log_x1).sum(-1)

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        with torch.no_grad():
            loc = torch.log1p(self.mean)
            noise = torch.randn(torch.Size(sample_shape) + loc.shape, device=loc.device)
            return torch.clamp(torch.expm1(loc + self.scale * noise), min=0.0)


#: likelihood name -> ``f(logits, library_size, gene_parameter) -> distribution``;
#: ``gene_parameter`` (G,) is the unconstrained per-gene concentration / scale.
LIKELIHOODS: Registry = Registry("count likelihood")


@LIKELIHOODS.register("nb", gene_parameter="concentration")
def _nb(
    logits: torch.Tensor, library_size: torch.Tensor, gene_parameter: torch.Tensor
) -> NegativeBinomialCounts:
    return NegativeBinomialCounts(
        logits, library_size, torch.nn.functional.softplus(gene_parameter) + 1e-4
    )


@LIKELIHOODS.register("poisson", gene_parameter=None)
def _poisson(
    logits: torch.Tensor, library_size: torch.Tensor, gene_parameter: torch.Tensor
) -> PoissonCounts:
    return PoissonCounts(logits, library_size)


@LIKELIHOODS.register("lognormal", gene_parameter="scale")
def _lognormal(
    logits: torch.Tensor, library_size: torch.Tensor, gene_parameter: torch.Tensor
) -> LogNormalCounts:
    return LogNormalCounts(
        logits, library_size, torch.nn.functional.softplus(gene_parameter) + 1e-3
    )
