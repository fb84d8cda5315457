"""A NumPyro NUTS reference for p* on a small SAMS model where exact inference is feasible.

The model is SAMS-VAE's generative story (Bereket & Karaletsos, NeurIPS 2023, Sec. 3)
with a *linear* decoder and a Poisson likelihood::

    E_t,d ~ N(0, s^2)              t = 1..P perturbations, d = 1..L latent dimensions
    M_t,d ~ Bernoulli(pi)
    z_basal_i ~ N(0, I_L)
    z_i = z_basal_i + d_i (E * M)
    x_ig ~ Poisson(l_i softmax(z_i W + b)_g)       W: (L, G), b: (G,)

It is what :class:`bioreason.models.SAMSVAE` fits with ``n_layers=0,
likelihood="poisson"``; :func:`sams_reference_model` writes it in NumPyro.

**Inference.** The decoder (W, b) is *fixed*: to the data-generating values for a screen
from :func:`simulate_reference_screen`, or to a decoder the user passes (e.g. a fitted
linear SAMS-VAE's). Learning W as well would make the posterior rotation-invariant in z
(W -> R^T W, z -> z R) and NUTS would wander along that ridge; SAMS-VAE itself keeps the
decoder a point estimate, so the posterior of interest is p(E, M, z_basal | x, W, b).

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

**p\\*.** :class:`LinearSAMSModel` wraps draws of the globals (the NUTS draws, or the one
true set) behind the ``posterior_predictive`` interface of :mod:`bioreason.models`, so
:class:`~bioreason.sim.OutcomeSimulator` computes p* from NUTS, from SVI and p_true with
the same outcome code. :func:`compare_with_svi` fits SAMS-VAE with both guides on the same
cells and tabulates the three.
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

from bioreason.config import Config
from bioreason.models import PosteriorPredictive
from bioreason.sim.ground_truth import canonical_condition
from bioreason.sim.simulator import OutcomeSimulator, questions_frame

__all__ = [
    "LinearSAMSModel",
    "ReferenceScreenConfig",
    "ReferenceTruth",
    "compare_with_svi",
    "fit_nuts_reference",
    "reference_probability",
    "reference_questions",
    "sams_reference_model",
    "simulate_reference_screen",
]

#: ``adata.uns`` key of the data-generating parameters of a reference screen
TRUTH_KEY = "reference_truth"
#: largest group of perturbations sharing cells whose 2^m mask sets are enumerated
MAX_ENUMERATED = 10


# ---------------------------------------------------------------- the data set
@dataclass
class ReferenceScreenConfig(Config):
    """Settings of :func:`simulate_reference_screen`; every field has a default.

    Parameters
    ----------
    n_perturbations : int, default ``10``
        Single perturbations P, named ``P0``, ``P1``, ... (zero-padded from 10 on).
    n_combinations : int, default ``3``
        Two-perturbation combinations; their pairs are disjoint, so no perturbation is
        in two pairs (at most ``n_perturbations // 2``).
    n_genes : int, default ``50``
        Genes G.
    n_latent : int, default ``4``
        Latent dimensions L.
    n_cells_per_condition : int, default ``30``
        Cells in every non-control condition.
    n_control_cells : int or None, default ``None``
        Control cells; None uses ``n_cells_per_condition``.
    mask_probability : float, default ``0.3``
        pi: the prior probability that a perturbation acts on a latent dimension. The
        masks are drawn from this prior (no perturbation is forced to have an effect).
    embedding_scale : float, default ``1.0``
        s: the prior standard deviation of the embeddings E.
    decoder_scale : float, default ``1.0``
        W_dg ~ N(0, decoder_scale^2 / L): one unit of latent shift moves a gene's log
        proportion by about ``decoder_scale / sqrt(L)``.
    gene_log_abundance_sd : float, default ``1.0``
        b_g ~ N(0, gene_log_abundance_sd^2): the genes' baseline log abundance.
    library_log_mean : float, default ``log(2000)``
    library_log_sd : float, default ``0.3``
        l_i ~ LogNormal(library_log_mean, library_log_sd).
    seed : int, default ``0``
    """

    n_perturbations: int = 10
    n_combinations: int = 3
    n_genes: int = 50
    n_latent: int = 4
    n_cells_per_condition: int = 30
    n_control_cells: int | None = None
    mask_probability: float = 0.3
    embedding_scale: float = 1.0
    decoder_scale: float = 1.0
    gene_log_abundance_sd: float = 1.0
    library_log_mean: float = float(np.log(2000.0))
    library_log_sd: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_perturbations", "n_genes", "n_latent", "n_cells_per_condition"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= self.n_combinations <= self.n_perturbations // 2:
            raise ValueError(
                f"n_combinations must be in [0, {self.n_perturbations // 2}] (disjoint pairs of "
                f"{self.n_perturbations} perturbations), got {self.n_combinations}"
            )
        if self.n_control_cells is not None and self.n_control_cells < 1:
            raise ValueError(f"n_control_cells must be >= 1 or None, got {self.n_control_cells}")
        if not 0.0 < self.mask_probability < 1.0:
            raise ValueError(f"mask_probability must be in (0, 1), got {self.mask_probability}")
        for name in ("embedding_scale", "decoder_scale", "library_log_sd"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.gene_log_abundance_sd < 0:
            raise ValueError(
                f"gene_log_abundance_sd must be >= 0, got {self.gene_log_abundance_sd}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass
class ReferenceTruth:
    """The parameters that generated a reference screen (``adata.uns["reference_truth"]``).

    Attributes
    ----------
    perturbation_names : list of str, length P
    masks : ndarray of bool, shape (P, L)
    embeddings : ndarray, shape (P, L)
    decoder_weight : ndarray, shape (L, G)
    decoder_bias : ndarray, shape (G,)
    mask_probability, embedding_scale : float -- the prior's pi and s
    library_log_mean, library_log_sd : float
    """

    perturbation_names: list[str]
    masks: np.ndarray
    embeddings: np.ndarray
    decoder_weight: np.ndarray
    decoder_bias: np.ndarray
    mask_probability: float
    embedding_scale: float
    library_log_mean: float
    library_log_sd: float

    @property
    def effects(self) -> np.ndarray:
        """E * M, shape (P, L)."""
        return self.embeddings * self.masks

    def to_uns(self) -> dict[str, Any]:
        return {
            "perturbation_names": np.asarray(self.perturbation_names, dtype=object),
            "masks": self.masks.astype(np.int8),
            "embeddings": self.embeddings,
            "decoder_weight": self.decoder_weight,
            "decoder_bias": self.decoder_bias,
            "mask_probability": float(self.mask_probability),
            "embedding_scale": float(self.embedding_scale),
            "library_log_mean": float(self.library_log_mean),
            "library_log_sd": float(self.library_log_sd),
        }

    @classmethod
    def from_uns(cls, uns: Mapping[str, Any]) -> ReferenceTruth:
        """Rebuild from ``adata.uns["reference_truth"]`` (also after an h5ad round trip)."""
        needed = {
            "perturbation_names",
            "masks",
            "embeddings",
            "decoder_weight",
            "decoder_bias",
            "mask_probability",
            "embedding_scale",
            "library_log_mean",
            "library_log_sd",
        }
        missing = needed - set(uns)
        if missing:
            raise ValueError(
                f"uns['{TRUTH_KEY}'] lacks {sorted(missing)}; not made by "
                "simulate_reference_screen?"
            )
        return cls(
            perturbation_names=[str(n) for n in uns["perturbation_names"]],
            masks=np.asarray(uns["masks"]).astype(bool),
            embeddings=np.asarray(uns["embeddings"], dtype=np.float64),
            decoder_weight=np.asarray(uns["decoder_weight"], dtype=np.float64),
            decoder_bias=np.asarray(uns["decoder_bias"], dtype=np.float64),
            mask_probability=float(uns["mask_probability"]),
            embedding_scale=float(uns["embedding_scale"]),
            library_log_mean=float(uns["library_log_mean"]),
            library_log_sd=float(uns["library_log_sd"]),
        )


def sams_reference_model(
    dosage: Any,
    library_size: Any,
    decoder_weight: Any,
    decoder_bias: Any,
    mask_probability: float = 0.3,
    embedding_scale: float = 1.0,
    counts: Any = None,
) -> None:
    """The linear-decoder Poisson SAMS model as a NumPyro model (see the module docstring).

    Sites: ``embedding`` and ``mask`` (P, L) in plates ``perturbations`` x ``latent``;
    ``z_basal`` (N, L) in ``cells`` x ``latent``; ``counts`` (N, 1, G) in ``cells``
    (observed when ``counts`` is given). NUTS does not run on this form (``mask`` is
    discrete): :func:`fit_nuts_reference` samples its collapsed version.

    Parameters
    ----------
    dosage : array, shape (N, P)
    library_size : array, shape (N,)
    decoder_weight : array, shape (L, G)
    decoder_bias : array, shape (G,)
    mask_probability, embedding_scale : float -- pi and s of the prior
    counts : array, shape (N, G), optional
    """
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    dosage = jnp.asarray(dosage)
    n_cells, n_perturbations = dosage.shape
    n_latent = decoder_weight.shape[0]
    latent = numpyro.plate("latent", n_latent, dim=-1)
    cells = numpyro.plate("cells", n_cells, dim=-2)
    with numpyro.plate("perturbations", n_perturbations, dim=-2), latent:
        embedding = numpyro.sample("embedding", dist.Normal(0.0, embedding_scale))
        mask = numpyro.sample("mask", dist.Bernoulli(probs=mask_probability))
    with cells, latent:
        z_basal = numpyro.sample("z_basal", dist.Normal(0.0, 1.0))
    z = z_basal + dosage @ (embedding * mask)
    proportions = jax.nn.softmax(z @ decoder_weight + decoder_bias, axis=-1)
    rate = jnp.asarray(library_size)[:, None] * proportions
    with cells:
        numpyro.sample(
            "counts",
            dist.Poisson(rate[:, None, :]).to_event(1),
            obs=None if counts is None else jnp.asarray(counts)[:, None, :],
        )


def simulate_reference_screen(config: ReferenceScreenConfig | None = None, **overrides: Any) -> Any:
    """Simulate a small screen from :func:`sams_reference_model` with known parameters.

    Parameters
    ----------
    config : ReferenceScreenConfig or dict, optional
    **overrides
        Fields of :class:`ReferenceScreenConfig` (e.g. ``n_genes=30, seed=1``).

    Returns
    -------
    AnnData
        ``layers["counts"]`` (and ``X``): CSR float32 counts; ``obs["perturbation"]``:
        ``control``, ``P3`` or ``P1+P4``; ``obs["library_size_true"]``;
        ``obsm["z_basal_true"]``; ``var_names`` ``gene00``...;
        ``uns["reference_truth"]``: see :class:`ReferenceTruth`;
        ``uns["reference_config"]``: the config.
    """
    import anndata as ad
    import jax
    import scipy.sparse as sp
    from numpyro import handlers

    if isinstance(config, Mapping):
        config = ReferenceScreenConfig.from_dict({**config, **overrides})
    elif config is None:
        config = ReferenceScreenConfig.from_dict(overrides)
    elif isinstance(config, ReferenceScreenConfig):
        if overrides:
            config = ReferenceScreenConfig.from_dict({**config.to_dict(), **overrides})
    else:
        raise TypeError(
            "config must be a ReferenceScreenConfig, a dict of its fields or None, got "
            f"{type(config).__name__}"
        )
    rng = np.random.default_rng(config.seed)
    n_pert, n_latent, n_genes = config.n_perturbations, config.n_latent, config.n_genes
    width = len(str(n_pert - 1))
    names = [f"P{j:0{width}d}" for j in range(n_pert)]
    pairs = np.sort(rng.permutation(n_pert)[: 2 * config.n_combinations].reshape(-1, 2), axis=1)
    pairs = pairs[np.argsort(pairs[:, 0])]
    labels = ["control", *names, *(f"{names[a]}+{names[b]}" for a, b in pairs)]
    condition_dosage = np.zeros((len(labels), n_pert))
    condition_dosage[np.arange(1, n_pert + 1), np.arange(n_pert)] = 1.0
    for row, (a, b) in enumerate(pairs, start=n_pert + 1):
        condition_dosage[row, [a, b]] = 1.0
    n_control = config.n_control_cells or config.n_cells_per_condition
    per_label = [n_control] + [config.n_cells_per_condition] * (len(labels) - 1)
    cell_condition = np.repeat(np.arange(len(labels)), per_label)
    dosage = condition_dosage[cell_condition]

    weight = rng.normal(0.0, config.decoder_scale / np.sqrt(n_latent), (n_latent, n_genes))
    bias = rng.normal(0.0, config.gene_log_abundance_sd, n_genes)
    library = np.exp(rng.normal(config.library_log_mean, config.library_log_sd, dosage.shape[0]))
    key = jax.random.PRNGKey(int(rng.integers(2**31)))
    with handlers.seed(rng_seed=key):
        trace = handlers.trace(sams_reference_model).get_trace(
            dosage.astype(np.float32),
            library.astype(np.float32),
            weight.astype(np.float32),
            bias.astype(np.float32),
            config.mask_probability,
            config.embedding_scale,
        )
    truth = ReferenceTruth(
        perturbation_names=names,
        masks=np.asarray(trace["mask"]["value"]).astype(bool),
        embeddings=np.asarray(trace["embedding"]["value"], dtype=np.float64),
        decoder_weight=weight,
        decoder_bias=bias,
        mask_probability=config.mask_probability,
        embedding_scale=config.embedding_scale,
        library_log_mean=config.library_log_mean,
        library_log_sd=config.library_log_sd,
    )
    counts = sp.csr_matrix(np.asarray(trace["counts"]["value"])[:, 0, :].astype(np.float32))
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(
                np.asarray(labels, dtype=object)[cell_condition], categories=labels
            ),
            "library_size_true": library,
        },
        index=pd.Index([f"cell{i:05d}" for i in range(dosage.shape[0])]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene{g:02d}" for g in range(n_genes)]))
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    adata.layers["counts"] = counts.copy()
    adata.obsm["z_basal_true"] = np.asarray(trace["z_basal"]["value"], dtype=np.float64)
    adata.uns[TRUTH_KEY] = truth.to_uns()
    adata.uns["reference_config"] = {
        k: ("none" if v is None else v) for k, v in config.to_dict().items()
    }
    return adata


def reference_questions(adata: Any, n_readouts: int = 5) -> list[tuple[str, str]]:
    """Every non-control condition of ``adata`` x the ``n_readouts`` genes whose observed
    condition means (of log-normalized expression) vary most across conditions.

    Returns
    -------
    list of (condition, gene) pairs.
    """
    from bioreason.sim.readouts import log_normalize

    data = _data(adata)
    if isinstance(n_readouts, bool) or not isinstance(n_readouts, (int, np.integer)):
        raise TypeError(f"n_readouts must be an integer, got {n_readouts!r}")
    if not 1 <= n_readouts <= data.n_genes:
        raise ValueError(f"n_readouts must be in [1, {data.n_genes}], got {n_readouts}")
    expression = log_normalize(_dense(data.get_counts(np.arange(data.n_cells))))
    means = pd.DataFrame(expression).groupby(data.condition_codes).mean()
    top = np.argsort(-means.var(axis=0).to_numpy(), kind="stable")[:n_readouts]
    genes = [str(data.gene_names[g]) for g in top]
    control = _control_label(data)
    conditions = [str(c) for c in data.condition_names if str(c) != control]
    return [(c, g) for c in conditions for g in genes]


# ---------------------------------------------------------------- the model behind p*
class LinearSAMSModel:
    """Cells from the linear-decoder Poisson SAMS model under given draws of its globals.

    The duck-typed "model" of :class:`~bioreason.sim.OutcomeSimulator` (like
    :class:`~bioreason.sim.GroundTruthModel`): each posterior draw of
    ``posterior_predictive`` picks one of the K stored draws of (E, M) uniformly at
    random, then generates basal states, library sizes and Poisson counts. Built by
    :func:`fit_nuts_reference` (K NUTS draws) or :meth:`from_truth` (K = 1: the
    data-generating parameters, so p* is p_true).

    Parameters
    ----------
    perturbation_names : list of str, length P
    gene_names : list of str, length G
    masks : array of bool, shape (K, P, L)
    embeddings : array, shape (K, P, L)
    decoder_weight : array, shape (L, G)
    decoder_bias : array, shape (G,)
    library_sizes : array, shape (n,), optional
        Library sizes to resample (a fitted model's choice: the observed cells' totals).
    library_log_normal : (mean, sd), optional
        Or draw library sizes from LogNormal(mean, sd) (the truth's choice).
    control_label, delimiter : str
    adata : AnnData, optional
        The observed cells (for thresholds taken from observed control cells).
    diagnostics : dict, optional
        NUTS diagnostics (see :func:`fit_nuts_reference`).
    """

    def __init__(
        self,
        perturbation_names: Sequence[str],
        gene_names: Sequence[str],
        masks: np.ndarray,
        embeddings: np.ndarray,
        decoder_weight: np.ndarray,
        decoder_bias: np.ndarray,
        library_sizes: np.ndarray | None = None,
        library_log_normal: tuple[float, float] | None = None,
        control_label: str = "control",
        delimiter: str = "+",
        adata: Any = None,
        diagnostics: Mapping[str, Any] | None = None,
    ) -> None:
        self.perturbation_names = [str(p) for p in perturbation_names]
        self.gene_names = [str(g) for g in gene_names]
        self.masks = np.asarray(masks).astype(bool)
        self.embeddings = np.asarray(embeddings, dtype=np.float64)
        self.decoder_weight = np.asarray(decoder_weight, dtype=np.float64)
        self.decoder_bias = np.asarray(decoder_bias, dtype=np.float64)
        n_pert, n_genes = len(self.perturbation_names), len(self.gene_names)
        if self.masks.ndim != 3 or self.masks.shape != self.embeddings.shape:
            raise ValueError(
                f"masks and embeddings must share a shape (K, P, L); got {self.masks.shape} "
                f"and {self.embeddings.shape}"
            )
        if self.masks.shape[1] != n_pert:
            raise ValueError(f"masks have {self.masks.shape[1]} perturbations, names {n_pert}")
        _check_decoder(self.decoder_weight, self.decoder_bias, self.masks.shape[2], n_genes)
        if (library_sizes is None) == (library_log_normal is None):
            raise ValueError("give exactly one of library_sizes and library_log_normal")
        if library_sizes is not None:
            library_sizes = np.asarray(library_sizes, dtype=np.float64).ravel()
            if (
                library_sizes.size == 0
                or not (np.isfinite(library_sizes) & (library_sizes > 0)).all()
            ):
                raise ValueError("library_sizes must be non-empty, positive and finite")
        self.library_sizes = library_sizes
        self.library_log_normal = library_log_normal
        self.control_label = control_label
        self.delimiter = delimiter
        self.adata = adata
        self.diagnostics = dict(diagnostics or {})

    @classmethod
    def from_truth(cls, adata: Any) -> LinearSAMSModel:
        """The data-generating parameters of a :func:`simulate_reference_screen` AnnData
        as a one-draw model (p* of this model is p_true).

        Returns
        -------
        LinearSAMSModel with K = 1.
        """
        truth = _truth_of(adata, required=True)
        return cls(
            truth.perturbation_names,
            [str(g) for g in adata.var_names],
            truth.masks[None],
            truth.embeddings[None],
            truth.decoder_weight,
            truth.decoder_bias,
            library_log_normal=(truth.library_log_mean, truth.library_log_sd),
            adata=adata,
        )

    @property
    def n_samples(self) -> int:
        """K, the stored draws of the globals."""
        return int(self.masks.shape[0])

    @property
    def effects(self) -> np.ndarray:
        """E * M per draw, shape (K, P, L)."""
        return self.embeddings * self.masks

    def mask_probability(self) -> np.ndarray:
        """Posterior P(M = 1), shape (P, L): the share of draws with the mask on."""
        return self.masks.mean(axis=0)

    def canonical(self, condition: str) -> str:
        """The canonical label of ``condition`` (parts in perturbation order); raises a
        ValueError naming an unknown perturbation."""
        return canonical_condition(
            condition, self.perturbation_names, self.control_label, self.delimiter
        )

    def dosage_of(self, labels: Sequence[str]) -> np.ndarray:
        """Dosage rows of canonical labels, shape (len(labels), P)."""
        column = {name: j for j, name in enumerate(self.perturbation_names)}
        out = np.zeros((len(labels), len(self.perturbation_names)))
        for i, label in enumerate(labels):
            if label != self.control_label:
                for part in label.split(self.delimiter):
                    out[i, column[part]] += 1.0
        return out

    def data_for(self, adata: Any = None) -> Any:
        """The observed cells as :class:`~bioreason.data.PerturbationData`."""
        source = self.adata if adata is None else adata
        if source is None:
            raise ValueError("LinearSAMSModel was built without an AnnData; pass observed=adata")
        return _data(source, self.control_label)

    def posterior_predictive(
        self,
        conditions: Sequence[str] | str,
        n_cells: int = 100,
        n_draws: int = 100,
        library_size: Any = None,
        seed: int | None = 0,
        counterfactual: bool = False,
    ) -> PosteriorPredictive:
        """Cells of each condition, ``n_cells`` per condition for each of ``n_draws``
        draws of the globals (each drawn uniformly from the K stored draws).

        ``counterfactual=True``: cell ``i`` of every condition of a draw is the same
        basal cell (basal state and library size shared; counts drawn independently),
        as in :meth:`bioreason.models.PerturbationModel.posterior_predictive`.

        Returns
        -------
        PosteriorPredictive with ``counts`` and ``expected_counts`` of shape
        (n_draws, C, n_cells, G) and ``library_size`` (n_draws, C, n_cells).
        """
        if isinstance(conditions, str):
            conditions = [conditions]
        labels = [self.canonical(c) for c in conditions]
        if not labels:
            raise ValueError("no conditions given")
        for name, value in (("n_cells", n_cells), ("n_draws", n_draws)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        rng = np.random.default_rng(seed)
        shape = (n_draws, len(labels), n_cells)
        which = rng.integers(self.n_samples, size=n_draws)
        shift = np.einsum("cp,kpl->kcl", self.dosage_of(labels), self.effects[which])
        # one basal cell per slot shared by all conditions, or one per condition
        basal_shape = (n_draws, 1, n_cells) if counterfactual else shape
        z = rng.standard_normal((*basal_shape, self.masks.shape[2])) + shift[:, :, None, :]
        if library_size is not None:
            library = np.broadcast_to(np.asarray(library_size, dtype=np.float64), shape).copy()
            if not (np.isfinite(library) & (library > 0)).all():
                raise ValueError("library_size must be positive and finite")
        elif self.library_sizes is not None:
            library = rng.choice(self.library_sizes, basal_shape)
        else:
            mean, sd = self.library_log_normal
            library = np.exp(rng.normal(mean, sd, basal_shape))
        library = np.broadcast_to(library, shape)
        logits = z @ self.decoder_weight + self.decoder_bias
        logits -= logits.max(axis=-1, keepdims=True)
        proportions = np.exp(logits)
        proportions /= proportions.sum(axis=-1, keepdims=True)
        expected = library[..., None] * proportions
        counts = rng.poisson(expected)
        return PosteriorPredictive(
            conditions=labels,
            gene_names=list(self.gene_names),
            counts=counts.astype(np.float32),
            expected_counts=expected.astype(np.float32),
            library_size=library.astype(np.float32),
        )

    #: :meth:`posterior_predictive` takes ``counterfactual=True``
    supports_counterfactual = True

    def __repr__(self) -> str:
        return (
            f"LinearSAMSModel({len(self.gene_names)} genes, {len(self.perturbation_names)} "
            f"perturbations, n_latent={self.masks.shape[2]}, {self.n_samples} draws)"
        )


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
        # the model's potential energy, compiled as one function (giving NUTS ``model=``
        # runs the model eagerly op by op at initialization, compiling each operation
        # separately: ~25 s of a 40 s run on a busy 2-core CPU)
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


# ---------------------------------------------------------------- p* and the comparison
def reference_probability(
    adata: Any,
    questions: Any,
    outcome: Any = "screen_hit",
    *,
    readouts: Sequence[Any] = (),
    reference: LinearSAMSModel | None = None,
    nuts_options: Mapping[str, Any] | None = None,
    target_se: float = 0.01,
    max_draws: int = 2000,
    method: str = "auto",
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
    target_se, max_draws, method, seed
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
        reference, outcome, readouts=readouts, observed=adata, **outcome_options
    )
    result = simulator.probability(
        questions, target_se=target_se, max_draws=max_draws, method=method, seed=seed
    )
    attrs = dict(result.attrs)
    result = result.rename(columns={"p_star": "p_star_nuts"})
    result.attrs.update({k: v for k, v in reference.diagnostics.items() if k != "seconds"})
    result.attrs["nuts_seconds"] = reference.diagnostics.get("seconds", float("nan"))
    result.attrs["pstar_seconds"] = attrs.get("seconds", float("nan"))
    result.attrs["outcome"] = attrs.get("outcome")
    return result


@dataclass
class _Run:
    label: str
    frame: pd.DataFrame
    seconds: float


def compare_with_svi(
    adata: Any,
    questions: Any = None,
    outcome: Any = "screen_hit",
    *,
    readouts: Sequence[Any] = (),
    guides: Sequence[str] = ("correlated", "mean_field"),
    decoder: str = "fixed",
    svi_steps: int = 3000,
    svi_options: Mapping[str, Any] | None = None,
    train_options: Mapping[str, Any] | None = None,
    reference: LinearSAMSModel | None = None,
    nuts_options: Mapping[str, Any] | None = None,
    target_se: float = 0.01,
    max_draws: int = 2000,
    seed: int = 0,
    **outcome_options: Any,
) -> pd.DataFrame:
    """p* from NUTS, from SAMS-VAE fitted by SVI with each guide, and p_true, per question.

    SAMS-VAE is built with the reference model's settings (``n_layers=0``: a linear
    decoder; ``likelihood="poisson"``; the same n_latent, pi and s) and trained on every
    cell (no validation split). Its basal encoder is an amortized MLP (``n_hidden``
    units, changeable in ``svi_options``) -- the reference has no encoder: NUTS samples
    every cell's latent.

    Parameters
    ----------
    adata : AnnData, e.g. from :func:`simulate_reference_screen`
    questions : optional
        Default: :func:`reference_questions` (every non-control condition x 5 genes).
    outcome, readouts, **outcome_options
        As for :func:`reference_probability`. For ``screen_hit``, ``threshold=None``
        picks one threshold per readout: the median over the questions' conditions of
        the NUTS reference's expected |effect| (``OutcomeSimulator.suggest_thresholds``),
        fixed before any p* is computed and shared by all methods.
    guides : SAMS-VAE guides to fit (``"correlated"``, ``"mean_field"``)
    decoder : ``"fixed"`` or ``"learned"``
        ``"fixed"``: SAMS-VAE's decoder is set to the reference's decoder and frozen, so
        the guides differ from NUTS only in the variational approximation (and the
        amortized encoder). ``"learned"``: SAMS-VAE learns its decoder as usual.
    svi_steps : int
        SVI steps per guide.
    svi_options : mapping, optional
        Extra SAMSVAE constructor options (e.g. ``n_hidden=64``).
    train_options : mapping, optional
        ``model.train`` options over the defaults ``batch_size=512, lr=5e-3,
        validation_fraction=0.0`` (every cell trains, as every cell enters NUTS). At the
        library's default lr 1e-3, 1,000 steps on the default reference screen learn no
        effect at all (the basal encoder absorbs them into z_basal).
    reference, nuts_options
        A fitted NUTS reference, or options to fit one.
    target_se, max_draws, seed
        As for :meth:`OutcomeSimulator.probability`.

    Returns
    -------
    DataFrame, one row per question: ``condition``, ``readout``, ``p_true`` (when
    ``adata`` has the data-generating parameters), ``p_star_nuts``, and
    ``p_star_svi_<guide>`` per guide, each p column with its ``_se``. ``attrs
    ["summary"]``: dict of ``mean_abs_pstar_nuts_vs_true``,
    ``mean_abs_pstar_svi_<guide>_vs_nuts``, ``mean_abs_pstar_svi_<guide>_vs_true``,
    ``mean_pstar_spread_<method>`` (across-draw sd: epistemic spread plus per-draw
    noise), ``nuts_seconds``, ``svi_seconds_<guide>``, ``r_hat_max``, ``n_eff_min``,
    ``divergences``, ``n_questions``; ``attrs["thresholds"]``.
    """
    import torch

    from bioreason.models import SAMSVAE

    if decoder not in ("fixed", "learned"):
        raise ValueError(f"decoder must be 'fixed' or 'learned', got {decoder!r}")
    unknown = [g for g in guides if g not in ("correlated", "mean_field")]
    if unknown or not guides:
        raise ValueError(f"guides must be among 'correlated', 'mean_field'; got {list(guides)}")
    if isinstance(svi_steps, bool) or not isinstance(svi_steps, (int, np.integer)) or svi_steps < 1:
        raise ValueError(f"svi_steps must be an integer >= 1, got {svi_steps!r}")
    if reference is None:
        reference = fit_nuts_reference(adata, **{"seed": seed, **dict(nuts_options or {})})
    if questions is None:
        questions = reference_questions(adata)
    frame = questions_frame(questions)
    frame = frame.assign(condition=[reference.canonical(c) for c in frame["condition"]])
    options = dict(outcome_options)
    thresholds = None
    outcome_name = outcome if isinstance(outcome, str) else getattr(outcome, "name", None)
    if outcome_name == "screen_hit" and "threshold" in options and options["threshold"] is None:
        probe = OutcomeSimulator(reference, outcome, readouts=readouts, observed=adata, **options)
        thresholds = probe.suggest_thresholds(
            list(dict.fromkeys(frame["condition"])),
            list(dict.fromkeys(frame["readout"])),
            seed=seed,
        )
        options["threshold"] = thresholds

    def pstar(model: Any) -> pd.DataFrame:
        simulator = OutcomeSimulator(model, outcome, readouts=readouts, observed=adata, **options)
        return simulator.probability(frame, target_se=target_se, max_draws=max_draws, seed=seed)

    runs = [_Run("nuts", pstar(reference), reference.diagnostics.get("seconds", float("nan")))]
    truth = _truth_of(adata, required=False)
    if truth is not None:
        runs.append(_Run("true", pstar(LinearSAMSModel.from_truth(adata)), 0.0))
    setup_data = adata.copy()
    SAMSVAE.setup_anndata(setup_data)
    settings = {
        "n_latent": reference.masks.shape[2],
        "likelihood": "poisson",
        "n_layers": 0,
        "n_hidden": 64,
        "mask_prior_probability": reference.diagnostics.get(
            "mask_probability", truth.mask_probability if truth else 0.01
        ),
        "embedding_prior_scale": reference.diagnostics.get(
            "embedding_scale", truth.embedding_scale if truth else 1.0
        ),
        **dict(svi_options or {}),
    }
    for guide in guides:
        start = time.perf_counter()
        model = SAMSVAE(setup_data, guide=guide, seed=seed, **settings)
        if decoder == "fixed":
            _freeze_linear_decoder(model, reference.decoder_weight, reference.decoder_bias)
        with torch.random.fork_rng(devices=[]):
            model.train(
                **{
                    "max_steps": int(svi_steps),
                    "batch_size": 512,
                    "validation_fraction": 0.0,
                    "progress": False,
                    "device": "cpu",
                    "seed": seed,
                    "lr": 5e-3,
                    **dict(train_options or {}),
                }
            )
        seconds = time.perf_counter() - start
        runs.append(_Run(f"svi_{guide}", pstar(model), seconds))

    out = frame[["condition", "readout"]].copy()
    columns = {"true": "p_true", "nuts": "p_star_nuts"}
    for run in runs:
        name = columns.get(run.label, f"p_star_{run.label}")
        out[name] = run.frame["p_star"].to_numpy()
        out[f"{name}_se"] = run.frame["p_star_se"].to_numpy()
    nuts = out["p_star_nuts"].to_numpy()
    summary: dict[str, float] = {"n_questions": float(len(out))}
    if truth is not None:
        summary["mean_abs_pstar_nuts_vs_true"] = float(np.abs(nuts - out["p_true"]).mean())
    for run in runs:
        if run.label.startswith("svi_"):
            values = out[f"p_star_{run.label}"].to_numpy()
            summary[f"mean_abs_pstar_{run.label}_vs_nuts"] = float(np.abs(values - nuts).mean())
            if truth is not None:
                summary[f"mean_abs_pstar_{run.label}_vs_true"] = float(
                    np.abs(values - out["p_true"]).mean()
                )
            summary[f"svi_seconds_{run.label[4:]}"] = run.seconds
        summary[f"mean_pstar_spread_{run.label}"] = float(run.frame["p_star_spread"].mean())
    summary["nuts_seconds"] = float(runs[0].seconds)
    for key in ("r_hat_max", "n_eff_min", "divergences"):
        summary[key] = float(reference.diagnostics.get(key, float("nan")))
    out.attrs["summary"] = summary
    out.attrs["thresholds"] = thresholds
    out.attrs["decoder"] = decoder
    return out


# ---------------------------------------------------------------- helpers
def _freeze_linear_decoder(model: Any, weight: np.ndarray, bias: np.ndarray) -> None:
    """Set a linear SAMS-VAE decoder (``n_layers=0``) to (weight (L, G), bias (G,)) and
    exclude it from training."""
    import torch

    layer = model.module.decoder.output
    if model.config.n_layers != 0:
        raise ValueError("a fixed decoder needs a linear SAMS-VAE decoder (n_layers=0)")
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight.T, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)


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


def _check_decoder(weight: np.ndarray, bias: np.ndarray, n_latent: int, n_genes: int) -> None:
    if weight.ndim != 2 or weight.shape != (n_latent, n_genes):
        raise ValueError(
            f"decoder weight must have shape (n_latent, n_genes) = ({n_latent}, {n_genes}), "
            f"got {weight.shape}"
        )
    if bias.shape != (n_genes,):
        raise ValueError(f"decoder bias must have shape ({n_genes},), got {bias.shape}")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ValueError("decoder weight and bias must be finite")


def _truth_of(adata: Any, required: bool) -> ReferenceTruth | None:
    uns = getattr(adata, "uns", None)
    if uns is None:
        raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}")
    if TRUTH_KEY not in uns:
        if required:
            raise ValueError(
                f"adata has no uns['{TRUTH_KEY}']: the data-generating parameters are known "
                "only for screens from simulate_reference_screen"
            )
        return None
    return ReferenceTruth.from_uns(uns[TRUTH_KEY])


def _data(adata: Any, control: str = "control") -> Any:
    from bioreason.data import PerturbationData

    if not all(hasattr(adata, name) for name in ("obs", "var_names", "uns")):
        raise TypeError(f"adata must be an AnnData (cells x genes), got {type(adata).__name__}")
    return PerturbationData.from_anndata(
        adata, {"perturbation_key": "perturbation", "control": control}
    )


def _control_label(data: Any) -> str:
    control = data.setup.control
    return control if isinstance(control, str) else control[0]


def _dense(matrix: Any) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
