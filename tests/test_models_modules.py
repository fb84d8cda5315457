"""Sites, shapes and ELBO scaling of every model and guide."""

import math

import pyro
import pytest
import torch
from _models_util import tiny_batch
from pyro import poutine

from bioreason.models import (
    ConditionalVAEModule,
    CPAVAEModule,
    SAMSVAEModule,
    SVAEPlusModule,
    VAEConfig,
)
from bioreason.models.objectives import make_elbo

G, P, B, L = 30, 4, 8, 5


def build(cls, guide="correlated", **config):
    torch.manual_seed(0)
    cfg = VAEConfig(n_latent=L, n_hidden=16, guide=guide, **config)
    extra = {"n_categories": P} if cls is SVAEPlusModule else {}
    return cls(G, P, cfg, torch.zeros(G), torch.ones(G), **extra)


# site -> shape, for a batch of B cells out of n_total (no particle dimension)
EXPECTED = {
    SAMSVAEModule: {"embedding": (P, L), "mask": (P, L), "z_basal": (B, L)},
    CPAVAEModule: {"embedding": (P, L), "z_basal": (B, L)},
    ConditionalVAEModule: {"z": (B, L)},
    SVAEPlusModule: {"mask_probability": (L,), "mask": (P, L), "z": (B, L)},
}
CASES = [(cls, guide) for cls in EXPECTED for guide in ("correlated", "mean_field")]


def sample_sites(trace):
    """Sample sites without the plates' own subsample sites."""
    return {
        n: s
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and type(s["fn"]).__name__ != "_Subsample"
    }


@pytest.mark.parametrize("cls,guide", CASES)
def test_model_and_guide_sites_shapes_and_scales(cls, guide):
    module = build(cls, guide, encode_offset=cls is SAMSVAEModule)
    counts, dosage, library, category = tiny_batch(B, G, P)
    n_total = 100
    guide_trace = poutine.trace(module.guide).get_trace(counts, dosage, library, category, n_total)
    model_trace = poutine.trace(poutine.replay(module.model, trace=guide_trace)).get_trace(
        counts, dosage, library, category, n_total
    )
    latent = {n: tuple(s["value"].shape) for n, s in sample_sites(guide_trace).items()}
    assert latent == EXPECTED[cls]
    sites = sample_sites(model_trace)
    assert set(sites) == set(EXPECTED[cls]) | {"counts"}
    assert sites["counts"]["is_observed"]
    assert sites["counts"]["value"].shape == (B, 1, G)
    for name, site in sites.items():
        local = name in ("z", "z_basal", "counts")
        frames = {f.name: f for f in site["cond_indep_stack"]}
        assert ("cells" in frames) == local
        # minibatch scaling: per-cell sites count n_total / B times, global ones once
        assert float(site["scale"]) == pytest.approx(n_total / B if local else 1.0)
        if name in ("embedding", "mask"):
            assert frames["perturbations"].size == P and frames["latent"].size == L
    model_trace.compute_log_prob()
    assert torch.isfinite(model_trace.log_prob_sum())


@pytest.mark.parametrize("cls,guide", CASES)
def test_vectorized_particles_have_a_leading_dimension(cls, guide):
    module = build(cls, guide)
    batch = tiny_batch(B, G, P)
    with pyro.plate("particles", 3, dim=-3):
        trace = poutine.trace(module.guide).get_trace(*batch, 100)
    for name, shape in EXPECTED[cls].items():
        value = trace.nodes[name]["value"]
        assert value.shape[0] == 3 and value.shape[-len(shape) :] == shape
    loss = make_elbo(3).differentiable_loss(module.model, module.guide, *batch, 100)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert len(grads) > 5 and all(torch.isfinite(g).all() for g in grads)


def _per_particle_elbo(module, batch, n_total, n_particles):
    """ELBO of each vectorized particle (the plate scale applied), shape (n_particles,)."""
    with pyro.plate("particles", n_particles, dim=-3), torch.no_grad():
        guide_trace = poutine.trace(module.guide).get_trace(*batch, n_total)
        model_trace = poutine.trace(poutine.replay(module.model, trace=guide_trace)).get_trace(
            *batch, n_total
        )
    total = torch.zeros(n_particles, dtype=torch.float64)
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for site in sample_sites(trace).values():
            lp = site["fn"].log_prob(site["value"]) * site["scale"]
            lp = lp.expand(n_particles, *lp.shape[1:]) if lp.dim() == 3 else lp
            total += sign * lp.reshape(n_particles, -1).sum(-1).double()
    return total


@pytest.mark.parametrize("cls", [SAMSVAEModule, SVAEPlusModule])
def test_minibatch_elbo_is_unbiased_for_the_full_batch_elbo(cls):
    """Averaged over a partition into minibatches, the scaled minibatch ELBO has the
    expectation of the full-data ELBO; compared within 4 Monte Carlo standard errors."""
    pyro.set_rng_seed(0)
    module = build(cls)
    n_cells, n_batches, k = 48, 4, 4000
    counts, dosage, library, category = tiny_batch(n_cells, G, P, seed=3)
    full = _per_particle_elbo(module, (counts, dosage, library, category), n_cells, k)
    size = n_cells // n_batches
    parts = [
        _per_particle_elbo(
            module,
            tuple(t[i * size : (i + 1) * size] for t in (counts, dosage, library, category)),
            n_cells,
            k,
        )
        for i in range(n_batches)
    ]
    average = torch.stack(parts).mean(0)  # one partition-average per particle
    se = math.sqrt(full.var().item() / k + average.var().item() / k)
    assert abs(full.mean().item() - average.mean().item()) < 4 * se
    # a wrong scale (no N / B factor) would be far off
    unscaled_gap = (n_batches - 1) / n_batches * abs(full.mean().item())
    assert unscaled_gap > 20 * se


def test_encode_offset_feeds_the_sampled_offset_to_the_encoder():
    module = build(SAMSVAEModule, encode_offset=True, basal_guide="direct")
    counts, dosage, library, category = tiny_batch(B, G, P)
    torch.manual_seed(1)
    trace = poutine.trace(module.guide).get_trace(counts, dosage, library, category, B)
    effects = trace.nodes["embedding"]["value"] * trace.nodes["mask"]["value"]
    offset = dosage @ effects
    first = dosage @ module.offset_layer(effects)
    direct = module.offset_layer(offset)  # W (D (E*M)) computed directly
    torch.testing.assert_close(first, direct, rtol=1e-5, atol=1e-6)
    loc, _ = module.encode(counts, first)
    fn = trace.nodes["z_basal"]["fn"]
    torch.testing.assert_close(getattr(fn, "base_dist", fn).loc.expand_as(loc), loc)


@pytest.mark.parametrize("cls", [SAMSVAEModule, CPAVAEModule])
def test_residual_basal_guide_centres_z_basal_on_the_encoded_latent_minus_the_offset(cls):
    module = build(cls, encode_offset=True, basal_guide="residual")
    counts, dosage, library, category = tiny_batch(B, G, P)
    torch.manual_seed(1)
    trace = poutine.trace(module.guide).get_trace(counts, dosage, library, category, B)
    effects = trace.nodes["embedding"]["value"]
    if module.use_masks:
        effects = effects * trace.nodes["mask"]["value"]
    encoded, _ = module.encode(counts, dosage @ module.offset_layer(effects))
    fn = trace.nodes["z_basal"]["fn"]
    loc = getattr(fn, "base_dist", fn).loc
    torch.testing.assert_close(loc, encoded - dosage @ effects)
    # so z = z_basal + D(E*M) is centred on the encoder's output whatever E is
    with torch.no_grad():
        basal = module.latent_mean(counts, dosage, category, "basal", effects)
        whole = module.latent_mean(counts, dosage, category, "perturbed", effects)
    torch.testing.assert_close(whole, encoded.detach())
    torch.testing.assert_close(basal, (encoded - dosage @ effects).detach())
    assert (dosage @ effects).abs().max() > 1e-3  # the offset is not trivially zero


def test_basal_guide_must_be_known():
    with pytest.raises(ValueError, match="basal_guide must be 'direct' or 'residual'"):
        VAEConfig(basal_guide="subtract")
