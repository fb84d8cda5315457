import math

import pyro.distributions as dist
import pytest
import torch

from bioreason.models import LogNormalCounts, NegativeBinomialCounts, PoissonCounts
from bioreason.models._module import StraightThroughBernoulli
from bioreason.models._nn import Standardize, log1p_moments
from bioreason.models.likelihoods import nb_count_term


def _inputs(seed=0, particles=3, cells=6, genes=25):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(particles, cells, 1, genes, generator=g, dtype=torch.float64)
    library = torch.rand(cells, 1, generator=g, dtype=torch.float64) * 900 + 100
    theta = torch.rand(genes, generator=g, dtype=torch.float64) * 5 + 0.05
    counts = torch.poisson(torch.rand(cells, 1, genes, generator=g, dtype=torch.float64) * 20)
    counts[counts < 8] = 0.0  # many zeros, as in single-cell data
    return logits, library, theta, counts


def test_nb_log_prob_equals_stock_gamma_poisson_with_gradients():
    logits, library, theta, counts = _inputs()
    assert (counts == 0).float().mean() > 0.2
    logits.requires_grad_(True)
    theta.requires_grad_(True)
    ours = NegativeBinomialCounts(logits, library, theta).log_prob(counts)
    mean = torch.softmax(logits, -1) * library.unsqueeze(-1)
    stock = dist.GammaPoisson(theta, theta / mean).log_prob(counts).sum(-1)
    assert ours.shape == stock.shape == (3, 6, 1)
    torch.testing.assert_close(ours, stock, rtol=1e-10, atol=1e-9)
    g_ours = torch.autograd.grad(ours.sum(), [logits, theta])
    g_stock = torch.autograd.grad(stock.sum(), [logits, theta])
    for a, b in zip(g_ours, g_stock):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8)


def test_nb_count_term_only_uses_nonzero_entries():
    counts = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    theta = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    expected = math.lgamma(3 + 2.0) - math.lgamma(2.0) - math.lgamma(4.0)
    torch.testing.assert_close(
        nb_count_term(counts, theta), torch.tensor([expected, 0.0], dtype=torch.float64)
    )


def test_poisson_and_lognormal_log_prob_match_closed_forms():
    logits, library, _, counts = _inputs(seed=1)
    mean = torch.softmax(logits, -1) * library.unsqueeze(-1)
    ours = PoissonCounts(logits, library).log_prob(counts)
    torch.testing.assert_close(ours, dist.Poisson(mean).log_prob(counts).sum(-1))
    scale = torch.linspace(0.3, 2.0, counts.shape[-1], dtype=torch.float64)
    ours = LogNormalCounts(logits, library, scale).log_prob(counts)
    normal = dist.Normal(torch.log1p(mean), scale).log_prob(torch.log1p(counts))
    torch.testing.assert_close(ours, (normal - torch.log1p(counts)).sum(-1))


def test_nb_samples_have_the_right_mean_and_variance():
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 1.0, -1.0]])
    theta = torch.tensor([2.0, 5.0, 0.5])
    d = NegativeBinomialCounts(logits, torch.tensor([300.0]), theta)
    n = 40_000
    x = d.sample((n,))
    assert x.shape == (n, 1, 3)
    assert torch.equal(x, x.round()) and (x >= 0).all()
    mean, var = d.mean[0], d.variance[0]
    # standard error of the sample mean: sqrt(var / n); five of them
    assert (x.mean((0, 1)) - mean).abs().le(5 * (var / n).sqrt()).all()
    # relative error of a sample variance is about sqrt(2 / n) (more for heavy tails)
    assert ((x.var((0, 1)) / var) - 1).abs().le(0.15).all()


def test_nb_expand_keeps_the_density():
    logits, library, theta, counts = _inputs(particles=1)
    d = NegativeBinomialCounts(logits[0], library, theta)
    e = d.expand(torch.Size([4, 6, 1]))
    assert e.batch_shape == (4, 6, 1)
    torch.testing.assert_close(e.log_prob(counts)[2], d.log_prob(counts))


def test_straight_through_bernoulli_is_hard_exact_and_differentiable():
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, 0.0, 1.5], requires_grad=True)
    d = StraightThroughBernoulli(logits, temperature=0.5)
    n = 20_000
    x = d.rsample((n,))
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    p = torch.sigmoid(logits.detach())
    assert (x.mean(0) - p).abs().le(5 * (p * (1 - p) / n).sqrt()).all()
    torch.testing.assert_close(d.log_prob(x[:5]), dist.Bernoulli(logits=logits).log_prob(x[:5]))
    (x * torch.arange(1.0, 4.0)).sum().backward()
    assert logits.grad is not None and (logits.grad.abs() > 0).all()


def test_standardize_never_divides_by_zero_std():
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    from bioreason.data import PerturbationData

    counts = np.array([[0, 1, 5], [0, 3, 5], [0, 2, 5]], dtype=np.float32)
    adata = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=pd.DataFrame({"perturbation": ["control", "A", "A"]}, index=["a", "b", "c"]),
    )
    data = PerturbationData.from_anndata(adata, layer=None)
    mean, std = log1p_moments(data, np.arange(3))
    torch.testing.assert_close(mean, torch.log1p(torch.tensor(counts)).mean(0))
    assert std[0] == 0 and std[2] == 0
    out = Standardize(mean, std)(torch.tensor(counts))
    assert torch.isfinite(out).all()
    assert (out[:, [0, 2]] == 0).all()
    torch.testing.assert_close(
        out[:, 1].std(unbiased=False), torch.tensor(1.0), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("cls", [NegativeBinomialCounts, PoissonCounts, LogNormalCounts])
def test_likelihood_mean_sums_to_library(cls):
    logits = torch.randn(2, 7)
    library = torch.tensor([10.0, 1000.0])
    d = cls(logits, library, torch.ones(7)) if cls is not PoissonCounts else cls(logits, library)
    torch.testing.assert_close(d.mean.sum(-1), library)


@pytest.mark.parametrize("library_size", [5e4, 2e5])
@pytest.mark.parametrize("theta", [0.1, 1.0, 10.0, 1e3, 1e4, 1e5])
def test_nb_float32_matches_scipy_for_large_libraries_concentrations_and_counts(
    theta, library_size
):
    """Per-cell float32 log-probabilities over 2000 genes stay within 0.05 nat of scipy
    (float64, at the same float32 inputs) for libraries up to 2e5 counts,
    concentrations up to 1e5 and counts up to 6e4. The textbook form, which sums
    theta*log(theta) over genes before it cancels, was off by ~2 nats at theta = 1e3,
    ~24 at 1e4 and ~800 at 1e5; the form that summed x log mu and
    (theta + x) log1p(mu / theta) separately, by 0.1-0.3 nats at 2e5 counts."""
    import numpy as np
    import scipy.stats

    rng = np.random.default_rng(0)
    n_cells, n_genes = 4, 2000
    logits32 = torch.randn(n_cells, n_genes, generator=torch.Generator().manual_seed(1))
    logits32[:, :5] += 8.5  # a few genes with counts around 1e4 (5e4 at 2e5 counts)
    library = torch.full((n_cells,), library_size)
    mean = (torch.softmax(logits32.double(), -1) * library.double().unsqueeze(-1)).numpy()
    # data from a nearby mean, not the model's own: the residual is not ~0
    data_mean = mean * np.exp(rng.normal(scale=0.3, size=mean.shape))
    counts = np.minimum(rng.negative_binomial(theta, theta / (theta + data_mean)), 6e4).astype(
        np.float64
    )
    assert counts.max() >= 1e4 and (counts == 0).mean() > 0.02
    expected = scipy.stats.nbinom.logpmf(counts, theta, theta / (theta + mean)).sum(-1)
    concentration = torch.full((n_genes,), theta)
    ours32 = NegativeBinomialCounts(logits32, library, concentration).log_prob(
        torch.tensor(counts, dtype=torch.float32)
    )
    assert ours32.dtype == torch.float32
    np.testing.assert_allclose(ours32.numpy(), expected, rtol=0, atol=0.05)
    ours64 = NegativeBinomialCounts(
        logits32.double(), library.double(), concentration.double()
    ).log_prob(torch.tensor(counts))
    np.testing.assert_allclose(ours64.numpy(), expected, rtol=1e-10, atol=1e-6)


def test_nb_float32_gradients_match_float64():
    logits, library, theta, counts = _inputs(seed=2, genes=400)
    theta = theta * 1e3  # large concentrations: near the Poisson limit
    grads = []
    for dtype in (torch.float32, torch.float64):
        lg = logits.to(dtype).requires_grad_(True)
        th = theta.to(dtype).requires_grad_(True)
        NegativeBinomialCounts(lg, library.to(dtype), th).log_prob(
            counts.to(dtype)
        ).sum().backward()
        grads.append((lg.grad, th.grad))
    torch.testing.assert_close(grads[0][0].double(), grads[1][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0][1].double(), grads[1][1], rtol=1e-3, atol=1e-5)


def test_nb_saturated_term_is_the_log_probability_at_mean_equal_to_the_count():
    import scipy.stats

    from bioreason.models.likelihoods import nb_saturated_term

    _, _, theta, counts = _inputs(seed=3)
    th, x = theta.numpy(), counts.numpy()
    expected = torch.tensor(scipy.stats.nbinom.logpmf(x, th, th / (th + x)).sum(-1))
    torch.testing.assert_close(nb_saturated_term(counts, theta), expected)
    as32 = nb_saturated_term(counts.float(), theta.float())
    assert as32.dtype == torch.float32
    torch.testing.assert_close(as32.double(), expected, rtol=1e-6, atol=1e-4)


def test_nb_centered_residual_is_never_positive_and_zero_at_the_saturated_mean():
    from bioreason.models.likelihoods import nb_centered_residual

    _, _, theta, counts = _inputs(seed=4, genes=40)
    counts = counts[:, 0]
    library = counts.sum(-1).clamp_min(1.0)
    residual = nb_centered_residual(counts, torch.randn(5, 6, 40).log_softmax(-1), library, theta)
    assert residual.shape == (5, 6) and (residual <= 1e-9).all()
    saturated = torch.log(counts.clamp_min(1e-30) / library.unsqueeze(-1))  # mu = x
    at_counts = nb_centered_residual(counts, saturated, library, theta)
    torch.testing.assert_close(at_counts, torch.zeros(6, dtype=torch.float64), atol=1e-9, rtol=0)


def test_gamma_poisson_has_negative_binomial_moments_and_ignores_the_thread_count():
    from bioreason.models.likelihoods import _PARALLEL_ENTRIES, gamma_poisson

    n = 4 * _PARALLEL_ENTRIES  # large enough for the parallel numpy path
    theta, mu = torch.full((n,), 2.0), torch.full((n,), 3.0)
    threads = torch.get_num_threads()
    try:
        draws = []
        for count in (1, 2):
            torch.set_num_threads(count)
            torch.manual_seed(5)
            draws.append(gamma_poisson(theta, mu / theta))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(draws[0], draws[1])
    x = draws[0].double()
    # NB(mean 3, theta 2): variance 3 + 9 / 2 = 7.5; tolerances of 6 Monte Carlo SE
    assert abs(x.mean() - 3.0) < 6 * (7.5 / n) ** 0.5
    # Var(sample variance) ~ (mu_4 - sigma^4) / n = (2 sigma^4 + kappa_4) / n, with the NB's
    # fourth cumulant kappa_4 = r (1 - p) (p^2 + 6 (1 - p)) / p^4, r = theta,
    # p = theta / (theta + mu)
    p = 2.0 / 5.0
    kappa_4 = 2.0 * (1 - p) * (p**2 + 6 * (1 - p)) / p**4
    assert abs(x.var() - 7.5) < 6 * ((2 * 7.5**2 + kappa_4) / n) ** 0.5
    torch.manual_seed(5)
    small = gamma_poisson(theta[:10], (mu / theta)[:10])  # the torch path
    assert small.shape == (10,) and (small >= 0).all()


def test_nb_centered_residual_closed_form_gradients_pass_gradcheck():
    from bioreason.models.likelihoods import nb_centered_residual

    g = torch.Generator().manual_seed(0)
    counts = torch.poisson(torch.rand(4, 7, generator=g, dtype=torch.float64) * 20)
    counts[counts < 5] = 0.0
    log_rho = torch.randn(3, 4, 7, generator=g, dtype=torch.float64).log_softmax(-1)
    theta = torch.rand(7, generator=g, dtype=torch.float64) * 3 + 0.1
    for library in (
        torch.rand(4, generator=g),
        torch.rand(3, 4, generator=g),
    ):  # per cell / particle
        inputs = (
            log_rho.clone().requires_grad_(True),
            (library.double() * 50 + 20).requires_grad_(True),
            theta.clone().requires_grad_(True),
        )
        assert torch.autograd.gradcheck(
            lambda a, b, c: nb_centered_residual(counts, a, b, c), inputs
        )
