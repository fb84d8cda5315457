"""SAMS-VAE's mask prior chosen from the data (``learn_mask_prior``, issue 21)."""

import numpy as np
import pyro
import pytest
import torch
from _models_util import tiny_screen

from bioreason.models import CPAVAE, SAMSVAE
from bioreason.models._sampling import draw_globals


@pytest.fixture(scope="module")
def screen():
    return tiny_screen()


def _model(adata, **kwargs):
    SAMSVAE.setup_anndata(adata)
    return SAMSVAE(adata, n_latent=3, n_hidden=16, **kwargs)


def _bernoulli_kl(q: np.ndarray, pi: float) -> float:
    return float(np.sum(q * np.log(q / pi) + (1 - q) * np.log((1 - q) / (1 - pi))))


def test_learned_pi_is_the_mean_of_q_over_observed_perturbations_and_maximizes_the_elbo(screen):
    model = _model(screen.copy(), learn_mask_prior=True)
    module = model.module
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        module.mask_logits.copy_(torch.randn(module.mask_logits.shape, generator=generator))
        module.perturbation_observed[-1] = False  # a perturbation without training cells
    q = torch.sigmoid(module.mask_logits[:-1]).detach().numpy().astype(float)
    pi = model.get_mask_prior_probability()
    assert pi == pytest.approx(float(q.mean()), rel=1e-6)
    # the global KL in pi (the only ELBO term that depends on it) is smallest there
    grid = np.linspace(0.02, 0.98, 97)
    kls = [_bernoulli_kl(q, p) for p in grid]
    assert abs(grid[int(np.argmin(kls))] - pi) <= 0.01
    assert _bernoulli_kl(q, pi) < min(_bernoulli_kl(q, pi - 0.02), _bernoulli_kl(q, pi + 0.02))
    # the model samples M from it, and the unobserved perturbation's q(M) is that prior
    trace = pyro.poutine.trace(module.model_globals).get_trace(module.latent_plate())
    fn = trace.nodes["mask"]["fn"]
    probs = getattr(fn, "base_dist", fn).probs
    assert torch.allclose(probs, torch.tensor(pi))
    draws = draw_globals(module, 4000)["mask"][:, -1].numpy()
    assert abs(draws.mean() - pi) < 4 * np.sqrt(pi * (1 - pi) / draws.size)


def test_the_prior_is_fixed_by_default_and_learning_it_needs_masks(screen):
    model = _model(screen.copy(), mask_prior_probability=0.05)
    with torch.no_grad():
        model.module.mask_logits.fill_(3.0)
    assert model.get_mask_prior_probability() == pytest.approx(0.05)
    adata = screen.copy()
    CPAVAE.setup_anndata(adata)
    with pytest.raises(ValueError, match="learn_mask_prior needs a model with masks"):
        CPAVAE(adata, n_latent=3, n_hidden=16, learn_mask_prior=True)


def test_training_moves_the_learned_prior_and_save_load_keeps_it(screen, tmp_path):
    adata = screen.copy()
    model = _model(adata, learn_mask_prior=True)
    start = model.get_mask_prior_probability()
    assert start == pytest.approx(0.5)  # q(M) starts at mask_init_probability
    model.train(max_steps=40, batch_size=64, progress=False, device="cpu", lr=0.01)
    pi = model.get_mask_prior_probability()
    assert pi != pytest.approx(start, abs=1e-3) and 0.0 < pi < 1.0
    model.save(tmp_path / "m")
    loaded = SAMSVAE.load(tmp_path / "m", adata=adata)
    assert loaded.config.learn_mask_prior
    assert loaded.get_mask_prior_probability() == pi
    assert loaded.iwelbo(adata, n_particles=3, seed=1) == model.iwelbo(adata, n_particles=3, seed=1)
