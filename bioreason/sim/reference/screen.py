"""The reference screen: a small screen simulated from the linear-decoder Poisson SAMS
model with known parameters, its questions, and reading its AnnData back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bioreason.config import Config

__all__ = [
    "TRUTH_KEY",
    "ReferenceScreenConfig",
    "ReferenceTruth",
    "reference_questions",
    "sams_reference_model",
    "simulate_reference_screen",
]

#: ``adata.uns`` key of the data-generating parameters of a reference screen
TRUTH_KEY = "reference_truth"


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


# ---------------------------------------------------------------- reading the AnnData
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
