"""The NUTS posterior of the linear SAMS model: the collapsed NumPyro model (embeddings
and masks summed out exactly), :func:`fit_nuts_reference`, and p* from its draws.

**Inference.** The decoder (W, b) is *fixed*: to the data-generating values for a screen
from :func:`~bioreason.sim.reference.simulate_reference_screen`, or to a decoder the user
passes (e.g. a fitted linear SAMS-VAE's). Learning W as well would make the posterior
rotation-invariant in z (W -> R^T W, z -> z R) and NUTS would wander along that ridge;
SAMS-VAE itself keeps the decoder a point estimate, so the posterior of interest is
p(E, M, z_basal | x, W, b).

NUTS cannot move discrete masks, and the product of E and M makes a spike-and-slab prior
that mixes badly under Gibbs updates. Both are avoided by sampling the per-cell
*perturbed* latents z_i (not z_basal) with NUTS and integrating E and M out of their
prior exactly: given z, each latent dimension d is a linear-Gaussian regression
``z_:,d = D beta_d + eps`` with ``beta_t,d = E_t,d M_t,d``, so

    p(z_:,d) = sum_S pi^|S| (1 - pi)^(P - |S|) N(z_:,d; 0, I + s^2 D_S D_S^T)

over the active sets S of mask entries. The sum factorizes over groups of
perturbations that share cells (a pair A+B joins A and B), so it enumerates 2^m sets
for a group of m perturbations (m <= 10 here; a screen of singles and disjoint pairs has
m <= 2). The Gaussian terms use the determinant lemma and Woodbury's identity with
``D_S^T D_S`` and ``D_S^T z``. The NUTS target is therefore the exact marginal posterior
p(z | x); for each NUTS draw of z, M is then drawn from its exact conditional (the
enumerated weights) and E from its Gaussian conditional (the prior where M = 0). The
pairs (E, M) are exact posterior draws up to MCMC error, which ``diagnostics`` reports
(split R-hat, effective sample size, divergences).

Since ``sum_g softmax(.)_g = 1``, the Poisson likelihood with l_i = the cell's observed
total is, as a function of the latents, exactly the multinomial likelihood of the counts
given their total, whatever distribution generated the library sizes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from bioreason.sim.budget import SimulationBudget
from bioreason.sim.reference.model import LinearSAMSModel, _check_decoder
from bioreason.sim.reference.screen import (
    TRUTH_KEY,
    ReferenceTruth,
    _control_label,
    _data,
    _dense,
    _truth_of,
)
from bioreason.sim.simulator import OutcomeSimulator

__all__ = ["MAX_ENUMERATED", "fit_nuts_reference", "reference_probability"]

#: largest group of perturbations sharing cells whose 2^m mask sets are enumerated
MAX_ENUMERATED = 10


# ---------------------------------------------------------------- exact marginalization
@dataclass
class _MaskGroups:
    """Constants of the exact sum over mask sets, for groups of equal size m.

    For group k with members T_k (m perturbations) and mask set S (a 0/1 vector over
    T_k): ``A_S = diag(S) D^T D diag(S) + I / s^2`` (D: the dosage columns of T_k),
    ``log_weight = log prior(S) - 1/2 log det(I + s^2 diag(S) D^T D diag(S))`` and
    ``quad = diag(S) A_S^{-1} diag(S)``; ``chol`` is the Cholesky factor of A_S^{-1}
    (the covariance of E_T | z, S).
    """

    members: np.ndarray  # (n, m) int
    sets: np.ndarray  # (2^m, m) 0/1
    log_weight: np.ndarray  # (n, 2^m)
    quad: np.ndarray  # (n, 2^m, m, m)
    covariance: np.ndarray  # (n, 2^m, m, m)
    chol: np.ndarray  # (n, 2^m, m, m)


def _components(dosage: np.ndarray) -> list[list[int]]:
    """Groups of perturbations that share cells (connected through combinations)."""
    n_pert = dosage.shape[1]
    parent = list(range(n_pert))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    rows = {tuple(np.flatnonzero(row)) for row in dosage if np.count_nonzero(row) > 1}
    for row in rows:
        for j in row[1:]:
            parent[root(j)] = root(row[0])
    groups: dict[int, list[int]] = {}
    for j in range(n_pert):
        groups.setdefault(root(j), []).append(j)
    return list(groups.values())


def _mask_groups(
    dosage: np.ndarray,
    mask_probability: float,
    embedding_scale: float,
    perturbation_names: Sequence[str] = (),
) -> list[_MaskGroups]:
    """Constants of the exact marginal prior of z, one entry per group size."""
    components = _components(dosage)
    largest = max(components, key=len)
    if len(largest) > MAX_ENUMERATED:
        names = [perturbation_names[j] for j in largest] if perturbation_names else largest
        raise ValueError(
            f"{len(largest)} perturbations share cells through combinations ({names[:12]}); "
            f"the NUTS reference enumerates 2^m mask sets of such a group and allows "
            f"m <= {MAX_ENUMERATED}. Use fewer overlapping combinations."
        )
    gram = dosage.T @ dosage
    variance = embedding_scale**2
    log_on, log_off = np.log(mask_probability), np.log1p(-mask_probability)
    out = []
    for size in sorted({len(c) for c in components}):
        members = np.array([c for c in components if len(c) == size], dtype=np.int64)
        sets = np.array(list(itertools.product((0.0, 1.0), repeat=size)))
        n, n_sets = len(members), len(sets)
        log_weight = np.empty((n, n_sets))
        quad = np.empty((n, n_sets, size, size))
        covariance = np.empty_like(quad)
        for k, member in enumerate(members):
            block = gram[np.ix_(member, member)]
            for s, active in enumerate(sets):
                masked = block * np.outer(active, active)
                precision = masked + np.eye(size) / variance
                cov = np.linalg.inv(precision)
                _, logdet = np.linalg.slogdet(np.eye(size) + variance * masked)
                prior = active.sum() * log_on + (size - active.sum()) * log_off
                log_weight[k, s] = prior - 0.5 * logdet
                quad[k, s] = cov * np.outer(active, active)
                covariance[k, s] = 0.5 * (cov + cov.T)
        out.append(
            _MaskGroups(
                members=members,
                sets=sets,
                log_weight=log_weight,
                quad=quad,
                covariance=covariance,
                chol=np.linalg.cholesky(covariance),
            )
        )
    return out


def _set_logits(projection: Any, group: _MaskGroups, xp: Any = np) -> Any:
    """log p(S) p(z | S) up to a constant, per group member, mask set and latent dimension.

    Parameters
    ----------
    projection : array, shape (..., P, L) -- D^T z
    group : _MaskGroups
    xp : numpy or jax.numpy

    Returns
    -------
    array, shape (..., n, 2^m, L)
    """
    block = projection[..., group.members, :]  # (..., n, m, L)
    quad = xp.einsum("...nmd,nsmk,...nkd->...nsd", block, xp.asarray(group.quad), block)
    return xp.asarray(group.log_weight)[..., None] + 0.5 * quad


def _log_latent_prior(z: Any, dosage: Any, groups: list[_MaskGroups], xp: Any = np) -> Any:
    """log p(z) with E and M integrated out exactly (the module docstring's sum).

    Parameters
    ----------
    z : array, shape (..., N, L) -- perturbed latents of the N cells
    dosage : array, shape (N, P)
    groups : from :func:`_mask_groups` on the same dosage
    xp : numpy or jax.numpy

    Returns
    -------
    array, shape (...)
    """
    if xp is np:
        from scipy.special import logsumexp
    else:
        from jax.scipy.special import logsumexp
    n_cells, n_latent = z.shape[-2], z.shape[-1]
    total = -0.5 * (z**2).sum(axis=(-2, -1)) - 0.5 * n_cells * n_latent * np.log(2 * np.pi)
    projection = xp.asarray(dosage).T @ z  # (..., P, L)
    for group in groups:
        total = total + logsumexp(_set_logits(projection, group, xp), axis=-2).sum(axis=(-2, -1))
    return total


def _draw_globals(
    z: np.ndarray, dosage: np.ndarray, groups: list[_MaskGroups], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Exact draws of (M, E) given each draw of z: masks (S, P, L) bool, embeddings (S, P, L)."""
    n_draws, _, n_latent = z.shape
    projection = np.einsum("np,snl->spl", dosage, z)  # (S, P, L)
    masks = np.zeros((n_draws, dosage.shape[1], n_latent), dtype=bool)
    embeddings = np.zeros((n_draws, dosage.shape[1], n_latent))
    for group in groups:
        logits = _set_logits(projection, group)  # (S, n, 2^m, L)
        gumbel = -np.log(-np.log(rng.uniform(1e-300, 1.0, logits.shape)))
        chosen = np.argmax(logits + gumbel, axis=-2)  # (S, n, L)
        active = group.sets[chosen]  # (S, n, L, m)
        n_index = np.arange(len(group.members))[None, :, None]
        cov_chol = group.chol[n_index, chosen]  # (S, n, L, m, m)
        covariance = group.covariance[n_index, chosen]
        block = projection[:, group.members, :].transpose(0, 1, 3, 2)  # (S, n, L, m)
        mean = np.einsum("snlmk,snlk->snlm", covariance, active * block)
        noise = rng.standard_normal(mean.shape)
        value = mean + np.einsum("snlmk,snlk->snlm", cov_chol, noise)
        for j in range(group.members.shape[1]):
            column = group.members[:, j]
            masks[:, column, :] = active[..., j] > 0.5
            embeddings[:, column, :] = value[..., j]
    return masks, embeddings


def _collapsed_model(
    counts: Any, library_size: Any, *, dosage: Any, weight: Any, bias: Any, groups: list
) -> None:
    """p(z, x): the NUTS target (z: perturbed latents; E and M summed out exactly)."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    n_cells, n_latent = dosage.shape[0], weight.shape[0]
    z = numpyro.sample(
        "z", dist.ImproperUniform(constraints.real, (), event_shape=(n_cells, n_latent))
    )
    numpyro.factor("latent_prior", _log_latent_prior(z, dosage, groups, xp=jnp))
    rate = library_size[:, None] * jax.nn.softmax(z @ weight + bias, axis=-1)
    numpyro.sample("counts", dist.Poisson(rate).to_event(2), obs=counts)


def _initial_latents(counts: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Least-squares z per cell from log proportions (softmax's free constant as an
    intercept): a starting point near the posterior, shape (N, L)."""
    log_prop = np.log(counts + 0.5) - np.log((counts + 0.5).sum(axis=1, keepdims=True))
    design = np.vstack([weight, np.ones((1, weight.shape[1]))])  # (L + 1, G)
    solution, *_ = np.linalg.lstsq(design.T, (log_prop - bias).T, rcond=None)
    return solution[:-1].T


# ---------------------------------------------------------------- NUTS and p*
def fit_nuts_reference(
    adata: Any,
    *,
    decoder: Any = None,
    mask_probability: float | None = None,
    embedding_scale: float | None = None,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 1,
    target_accept_prob: float = 0.8,
    seed: int = 0,
    progress: bool = False,
) -> LinearSAMSModel:
    """Sample the posterior of the linear-decoder Poisson SAMS model with NUTS.

    Parameters
    ----------
    adata : AnnData
        Counts in ``layers["counts"]``, labels in ``obs["perturbation"]`` (control
        ``"control"``, combinations ``A+B``); e.g. from :func:`simulate_reference_screen`.
    decoder : None, (weight, bias) or a fitted linear model of :mod:`bioreason.models`
        The fixed decoder: ``weight`` (L, G), ``bias`` (G,). None: the data-generating
        decoder in ``adata.uns["reference_truth"]``. A fitted SAMS-VAE with
        ``n_layers=0`` gives its learned decoder.
    mask_probability, embedding_scale : float, optional
        pi and s of the prior; default: the data-generating values when ``adata`` has
        them, else the fitted model's, else :class:`~bioreason.models.VAEConfig`'s.
    num_warmup, num_samples, num_chains : int
        NUTS settings (chains run one after another).
    target_accept_prob : float
    seed : int
    progress : bool
        NumPyro's progress bar.

    Returns
    -------
    LinearSAMSModel
        ``num_chains * num_samples`` draws of (E, M); its ``diagnostics`` dict holds
        ``r_hat_max`` (split R-hat) and ``n_eff_min`` (effective sample size) over the
        cells' latents z and the effects E * M (also each alone: ``*_latent``,
        ``*_effects``; entries with NaN or negative n_eff are left out), ``divergences``,
        ``mean_tree_depth``, ``num_warmup``, ``num_samples``, ``num_chains``,
        ``mask_probability``, ``embedding_scale`` and ``seconds``.
    """
    import jax
    import jax.numpy as jnp
    from numpyro.diagnostics import summary
    from numpyro.infer import MCMC, NUTS
    from numpyro.infer.util import potential_energy

    start = time.perf_counter()
    for name, value, low in (
        ("num_warmup", num_warmup, 1),
        ("num_samples", num_samples, 4),
        ("num_chains", num_chains, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not 0.0 < target_accept_prob < 1.0:
        raise ValueError(f"target_accept_prob must be in (0, 1), got {target_accept_prob}")
    data = _data(adata)
    truth = _truth_of(adata, required=False)
    weight, bias, prior = _resolve_decoder(decoder, truth, data.n_genes)
    mask_probability = prior[0] if mask_probability is None else float(mask_probability)
    embedding_scale = prior[1] if embedding_scale is None else float(embedding_scale)
    if not 0.0 < mask_probability < 1.0:
        raise ValueError(f"mask_probability must be in (0, 1), got {mask_probability}")
    if not embedding_scale > 0:
        raise ValueError(f"embedding_scale must be > 0, got {embedding_scale}")
    counts = _dense(data.get_counts(np.arange(data.n_cells))).astype(np.float64)
    dosage = np.asarray(data.dosage.toarray(), dtype=np.float64)
    groups = _mask_groups(dosage, mask_probability, embedding_scale, data.perturbation_names)
    library = counts.sum(axis=1)

    rng = np.random.default_rng(seed)
    z_start = _initial_latents(counts, weight, bias)
    init = z_start[None] + 0.05 * rng.standard_normal((num_chains, *z_start.shape))
    as32 = lambda x: jnp.asarray(x, dtype=jnp.float32)  # noqa: E731
    model = partial(
        _collapsed_model, dosage=as32(dosage), weight=as32(weight), bias=as32(bias), groups=groups
    )
    observed = (as32(counts), as32(library))

    @jax.jit
    def potential(params: dict) -> Any:
        # the model's potential energy, compiled as one function: giving NUTS ``model=``
        # runs the model eagerly op by op at initialization, compiling each operation
        # separately, which took most of a small fit's time (docs/simulator_reference.md)
        return potential_energy(model, observed, {}, params)

    kernel = NUTS(potential_fn=potential, target_accept_prob=target_accept_prob)
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method="sequential",
        progress_bar=progress,
    )
    mcmc.run(
        jax.random.PRNGKey(seed),
        init_params={"z": as32(init if num_chains > 1 else init[0])},
        extra_fields=("diverging", "num_steps"),
    )
    z = np.asarray(mcmc.get_samples(group_by_chain=True)["z"], dtype=np.float64)  # (C, S, N, L)
    flat = z.reshape(-1, *z.shape[2:])
    masks, embeddings = _draw_globals(flat, dosage, groups, rng)
    effects = (masks * embeddings).reshape(num_chains, num_samples, *masks.shape[1:])
    stats = summary({"z": z, "effects": effects}, group_by_chain=True)
    r_hat = {k: float(np.nanmax(v["r_hat"])) for k, v in stats.items()}
    # n_eff is NaN for an effect that is 0 in every draw, and negative (a sum of
    # autocorrelations below 1/2) for strongly anticorrelated NUTS draws: more efficient
    # than independent ones, so neither limits the precision of p*
    n_eff = {
        k: float(np.nanmin(np.where(v["n_eff"] > 0, v["n_eff"], np.inf))) for k, v in stats.items()
    }
    extra = mcmc.get_extra_fields()
    diagnostics = {
        "r_hat_max": max(r_hat.values()),
        "n_eff_min": min(n_eff.values()),
        "r_hat_max_latent": r_hat["z"],
        "n_eff_min_latent": n_eff["z"],
        "r_hat_max_effects": r_hat["effects"],
        "n_eff_min_effects": n_eff["effects"],
        "divergences": int(np.asarray(extra["diverging"]).sum()),
        "mean_tree_depth": float(np.log2(np.asarray(extra["num_steps"]) + 1).mean()),
        "num_warmup": int(num_warmup),
        "num_samples": int(num_samples),
        "num_chains": int(num_chains),
        "mask_probability": mask_probability,
        "embedding_scale": embedding_scale,
        "seconds": time.perf_counter() - start,
    }
    return LinearSAMSModel(
        data.perturbation_names,
        [str(g) for g in data.gene_names],
        masks,
        embeddings,
        weight,
        bias,
        library_sizes=library,
        control_label=_control_label(data),
        delimiter=data.setup.delimiter,
        adata=adata,
        diagnostics=diagnostics,
    )


def _resolve_decoder(
    decoder: Any, truth: ReferenceTruth | None, n_genes: int
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(weight (L, G), bias (G,), (pi, s) defaults) from the decoder argument."""
    from bioreason.models import VAEConfig

    defaults = VAEConfig()
    prior = (defaults.mask_prior_probability, defaults.embedding_prior_scale)
    if truth is not None:
        prior = (truth.mask_probability, truth.embedding_scale)
    if decoder is None:
        if truth is None:
            raise ValueError(
                f"adata has no uns['{TRUTH_KEY}'] (not from simulate_reference_screen), so "
                "the decoder is unknown: pass decoder=(weight (L, G), bias (G,)) or a fitted "
                "SAMS-VAE with n_layers=0"
            )
        weight, bias = truth.decoder_weight, truth.decoder_bias
    elif hasattr(decoder, "module") and hasattr(decoder, "config"):
        if getattr(decoder.config, "n_layers", None) != 0:
            raise ValueError(
                "the NUTS reference needs a linear decoder: the fitted model has "
                f"n_layers={decoder.config.n_layers}; fit it with n_layers=0"
            )
        layer = decoder.module.decoder.output
        weight = layer.weight.detach().cpu().numpy().T
        bias = layer.bias.detach().cpu().numpy()
        if truth is None:
            prior = (decoder.config.mask_prior_probability, decoder.config.embedding_prior_scale)
    elif isinstance(decoder, (tuple, list)) and len(decoder) == 2:
        weight, bias = decoder
    else:
        raise TypeError(
            "decoder must be None, (weight, bias) or a fitted linear SAMS-VAE, got "
            f"{type(decoder).__name__}"
        )
    weight = np.asarray(weight, dtype=np.float64)
    bias = np.asarray(bias, dtype=np.float64)
    _check_decoder(weight, bias, weight.shape[0] if weight.ndim == 2 else -1, n_genes)
    return weight, bias, prior


def reference_probability(
    adata: Any,
    questions: Any,
    outcome: Any = "screen_hit",
    *,
    readouts: Sequence[Any] = (),
    reference: LinearSAMSModel | None = None,
    nuts_options: Mapping[str, Any] | None = None,
    budget: SimulationBudget | None = None,
    seed: int = 0,
    **outcome_options: Any,
) -> pd.DataFrame:
    """p* of ``questions`` under the NUTS posterior of the linear SAMS model.

    The same two-level estimator as :class:`~bioreason.sim.OutcomeSimulator` (it is that
    class, run on :class:`LinearSAMSModel` with the NUTS draws): for each posterior draw
    of the globals, simulate cells and compute P(outcome | globals); p* is their mean.

    Parameters
    ----------
    adata : AnnData
        The observed cells (see :func:`fit_nuts_reference`).
    questions : (condition, readout) pairs, mappings or a DataFrame
    outcome : str, Outcome or mapping
        A registered outcome (``"screen_hit"`` ...), options as keyword arguments.
    readouts : Readouts or gene names the questions may name (genes always may)
    reference : LinearSAMSModel, optional
        A fitted reference (from :func:`fit_nuts_reference`); default: fit one with
        ``nuts_options`` (keyword arguments of :func:`fit_nuts_reference`).
    budget : SimulationBudget, optional
        The Monte Carlo budget of p* (default ``SimulationBudget()``).
    seed : int
        As for :meth:`OutcomeSimulator.probability`.
    **outcome_options
        e.g. ``threshold=0.2, n_cells=20``.

    Returns
    -------
    DataFrame, one row per question in the given order: ``condition``, ``readout``,
    ``p_star_nuts``, ``p_star_se``, ``p_star_spread``, ``n_draws``, ``converged``,
    ``method``. ``attrs``: the NUTS diagnostics (``r_hat_max``, ``n_eff_min``,
    ``divergences``, ...; see :func:`fit_nuts_reference`), ``nuts_seconds``,
    ``pstar_seconds`` and ``outcome`` (JSON).
    """
    if reference is None:
        reference = fit_nuts_reference(adata, **dict(nuts_options or {}))
    elif not isinstance(reference, LinearSAMSModel):
        raise TypeError(
            f"reference must be a LinearSAMSModel from fit_nuts_reference, got "
            f"{type(reference).__name__}"
        )
    elif nuts_options:
        raise ValueError("nuts_options are for fitting; pass either reference or nuts_options")
    simulator = OutcomeSimulator(
        reference, outcome, readouts=readouts, observed=adata, budget=budget, **outcome_options
    )
    result = simulator.probability(questions, seed=seed)
    attrs = dict(result.attrs)
    result = result.rename(columns={"p_star": "p_star_nuts"})
    result.attrs.update({k: v for k, v in reference.diagnostics.items() if k != "seconds"})
    result.attrs["nuts_seconds"] = reference.diagnostics.get("seconds", float("nan"))
    result.attrs["pstar_seconds"] = attrs.get("seconds", float("nan"))
    result.attrs["outcome"] = attrs.get("outcome")
    return result
