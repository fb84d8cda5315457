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

Negative binomial (mean ``mu``, concentration ``theta``), split into a part that depends
only on the counts and a part of the size of the result::

    log NB(x | mu) = log NB(x | mu = x)                                  (saturated)
                     + sum_g [x log(mu / x) - (theta + x) log1p((mu - x) / (theta + x))]

The saturated term (the likelihood at the best possible mean) needs ``lgamma`` of large
arguments; it is evaluated in float64, once per batch (the observed counts carry no
particle dimension), and only on nonzero entries. The residual is at most 0 and 0 at
``mu = x``; each gene contributes a number of the size of its own misfit, so a cell of
200,000 counts over 2,000 genes sums terms of a few nats instead of terms of size
``x log mu`` or ``theta log theta`` that cancel afterwards. ``x log(mu / x)`` is written
``x (log rho + log(l / x))`` with ``log(l / x)`` precomputed in float64 without gradient.
The residual is an autograd Function with closed-form gradients
(``d/d log mu = x - (theta + x) mu / (theta + mu)``, ``d/d theta = (mu - x) / (theta + mu)
- log1p((mu - x) / (theta + x))``), so the backward pass is one fused expression.
Against scipy in float64 the per-cell error is at most a few hundredths of a nat for
libraries up to 200,000 and concentrations 1 to 1e5 (``benchmarks/nb_likelihood.py``
prints it); the textbook form, or the earlier ``x log mu - (theta + x) log1p(mu / theta)``
split, loses tenths of a nat and more there.
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


def nb_saturated_term(counts: torch.Tensor, concentration: torch.Tensor) -> torch.Tensor:
    """The negative binomial's log-probability at its saturated mean ``mu = x``, summed
    over nonzero entries, computed in float64 and returned in the counts' dtype::

        sum_g lgamma(x + theta) - lgamma(theta) - lgamma(x + 1)
              + x log(x / theta) - (theta + x) log1p(x / theta)

    (``log NB(x; mu = x, theta)``.) It depends only on the counts and ``theta`` (so it is
    computed once per batch, not per particle); :func:`nb_centered_residual` adds the
    rest of the exact log-probability.
    Each entry is the log-probability of the count under its best-fitting mean, a number
    of the size of ``-log(x) / 2``, so the sum over genes keeps its digits; float64 keeps
    the digits of ``lgamma(x + theta) - lgamma(theta)``, whose terms are about
    ``theta log theta``.

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
    # per-gene pieces once per gene, then gathered; the rest is per entry
    lgamma_theta = torch.lgamma(theta)
    log_theta = torch.log(theta)
    x_wide = x.to(wide)
    theta_x = theta[cols]
    term = (
        torch.lgamma(x_wide + theta_x)
        - lgamma_theta[cols]
        # float32 lgamma is off by several ulps: a nat at x = 2e4
        - torch.lgamma(x_wide + 1.0)
        + x_wide * (torch.log(x_wide) - log_theta[cols])
        - (theta_x + x_wide) * torch.log1p(x_wide / theta_x)
    )
    return _sum_rows(n_rows, rows, term, counts.shape[:-1]).to(counts.dtype)


class _CenteredResidual(torch.autograd.Function):
    """Forward and closed-form backward of :func:`nb_centered_residual`.

    With ``mu = l exp(log rho)``, ``u = (mu - x) / (theta + x)`` and
    ``sigma = mu / (theta + mu)``, the per-entry residual
    ``r = x (log rho + log(l / x)) - (theta + x) log1p(u)`` has

        dr / dlog rho = dr / dlog l = x - (theta + x) sigma
        dr / dtheta   = (mu - x) / (theta + mu) - log1p(u)

    One pass per elementwise op, in place where it can be: autograd through the same
    formula keeps a dozen intermediates and runs about twice the passes.
    """

    @staticmethod
    def forward(ctx, log_rho, library, theta, counts, counts_log_l_per_x):
        theta_plus_x = theta + counts
        mean = torch.exp(log_rho).mul_(library.unsqueeze(-1))
        log1p_u = (mean - counts).div_(theta_plus_x).log1p_()
        residual = torch.addcmul(counts_log_l_per_x, counts, log_rho)
        residual.addcmul_(theta_plus_x, log1p_u, value=-1.0)
        ctx.save_for_backward(library, theta, counts, mean, log1p_u)
        return residual.sum(-1)

    @staticmethod
    def backward(ctx, grad):
        library, theta, counts, mean, log1p_u = ctx.saved_tensors
        need_rho, need_library, need_theta = ctx.needs_input_grad[:3]
        grad = grad.unsqueeze(-1)
        theta_plus_mean = mean + theta
        grad_theta = None
        if need_theta:
            # (mu - x) / (theta + mu) - log1p(u), weighted by the incoming gradient
            local = (mean - counts).div_(theta_plus_mean).sub_(log1p_u).mul_(grad)
            grad_theta = local.reshape(-1, local.shape[-1]).sum(0).reshape(theta.shape)
        grad_rho = grad_library = None
        if need_rho or need_library:
            # x - (theta + x) mu / (theta + mu)
            local = torch.div(mean, theta_plus_mean, out=theta_plus_mean)
            local.mul_(theta + counts)
            local = torch.sub(counts, local, out=local).mul_(grad)
            if need_library:
                grad_library = (local.sum(-1) / library).sum_to_size(library.shape)
            grad_rho = local if need_rho else None
        return grad_rho, grad_library, grad_theta, None, None


def nb_centered_residual(
    counts: torch.Tensor,
    log_proportions: torch.Tensor,
    library_size: torch.Tensor,
    concentration: torch.Tensor,
) -> torch.Tensor:
    """``sum_g log NB(x; mu, theta) - log NB(x; x, theta)``, with ``mu = l rho``: the
    per-gene log-likelihood ratio against the saturated mean, summed over genes::

        x log(mu / x) - (theta + x) log1p((mu - x) / (theta + x))

    (the second factor is ``log((theta + mu) / (theta + x))``). Every entry is the
    distance of the mean from its count, of the size of a squared Pearson residual and
    never positive, so float32 sums over thousands of genes and libraries of hundreds
    of thousands of counts keep hundredths of a nat. The forms that add ``x log mu`` and
    ``(theta + x) log1p(mu / theta)`` separately (or subtract ``log1p(x / theta)`` from
    ``log1p(mu / theta)``) carry terms of ``x log(mu / theta)`` -- millions at such
    libraries, or ``4e4 x 13`` for one gene of 4e4 counts at ``theta = 1`` -- whose
    float32 rounding alone is 0.05-0.3 nats.

    ``x log(l / x)`` depends only on the counts and the library: it is formed on the
    counts' shape (no particle dimension) in float64 and rounded once. Where the fit is
    absurd (``mu`` a tiny fraction of a large count at a small ``theta``) the last factor
    loses relative digits: a few hundredths of a nat on a log-likelihood of minus
    hundreds of thousands. Gradients reach ``log_proportions``, ``library_size`` and
    ``concentration`` (closed form, see :class:`_CenteredResidual`).

    Parameters
    ----------
    counts : Tensor, shape (..., G)
    log_proportions : Tensor, shape (..., G)
        ``log rho``; may carry leading particle dimensions that ``counts`` lacks.
    library_size : Tensor, shape (...)
    concentration : Tensor, shape (G,)

    Returns
    -------
    Tensor, shape: the broadcast batch shape, in ``log_proportions``' dtype
    """
    dtype = log_proportions.dtype
    wide = torch.float32 if counts.device.type == "mps" else torch.float64
    with torch.no_grad():
        x_wide = counts.to(wide)
        log_l_per_x = torch.log(library_size.detach().to(wide)).unsqueeze(-1) - torch.log(
            x_wide.clamp_min(1.0)
        )
        counts_log_l_per_x = (x_wide * log_l_per_x).to(dtype)
    return _CenteredResidual.apply(
        log_proportions,
        library_size.to(dtype),
        concentration.to(dtype),
        counts.to(dtype),
        counts_log_l_per_x,
    )


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
        residual = nb_centered_residual(value, self.log_proportions, self.library_size, theta)
        return nb_saturated_term(value, theta) + residual

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
