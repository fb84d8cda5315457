"""Synthetic Perturb-seq screens with known ground truth (the SAMS-VAE generative story).

For cell i with dosage row d_i (control, one perturbation or a combination):

    z_basal_i ~ N(0, I_L)
    z_i = z_basal_i + d_i (E * M)             E: (P, L) embeddings, M: (P, L) binary masks
    rho_i = softmax(decoder(z_i))             random LeakyReLU MLP to gene proportions
    l_i ~ LogNormal(library_log_mean, library_log_sd)
    x_ig ~ NegativeBinomial(mean = l_i rho_ig, concentration = theta_g)

(Bereket & Karaletsos, NeurIPS 2023, Sec. 3: the additive mechanism-shift model.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioreason.config import Config

_LEAKY_SLOPE = 0.2
_CHUNK_CELLS = 4096


@dataclass
class ScreenConfig(Config):
    """Settings of :func:`simulate_screen`; every field has a default.

    Parameters
    ----------
    n_cells_per_condition : int, default ``200``
        Cells in each non-control condition (single perturbation or combination).
    n_control_cells : int or None, default ``None``
        Control cells; ``None`` uses ``n_cells_per_condition``.
    n_genes : int, default ``500``
        Genes G.
    n_latent : int, default ``10``
        Latent dimensions L of the true model.
    n_perturbations : int, default ``20``
        Single perturbations P, named ``P00``, ``P01``, ...
    n_combinations : int, default ``10``
        Distinct two-perturbation combinations, drawn among the P (P - 1) / 2 pairs.
    mask_probability : float, default ``0.1``
        Probability that a perturbation acts on a latent dimension (the masks M).
    embedding_scale : float, default ``1.5``
        Standard deviation of the perturbation embeddings E.
    ensure_effect : bool, default ``True``
        Give every perturbation at least one active latent dimension (a perturbation
        whose mask came out empty gets one dimension at random).
    decoder_hidden : int, default ``64``
        Width of the true decoder's hidden layer.
    decoder_scale : float, default ``1.5``
        Scale of the decoder's output weights: the effect size on log gene proportions.
    gene_log_abundance_sd : float, default ``1.0``
        Spread of the genes' baseline log abundance (the output bias).
    library_log_mean : float, default ``log(5000)``
        Mean of the log library size (log-normal).
    library_log_sd : float, default ``0.3``
        Standard deviation of the log library size.
    dispersion_log_mean : float, default ``log(5)``
        Mean of the log negative-binomial concentration theta_g (log-normal per gene;
        larger theta is closer to Poisson).
    dispersion_log_sd : float, default ``0.5``
        Standard deviation of the log concentration.
    seed : int, default ``0``
        Seeds every draw (parameters and cells).
    """

    n_cells_per_condition: int = 200
    n_control_cells: int | None = None
    n_genes: int = 500
    n_latent: int = 10
    n_perturbations: int = 20
    n_combinations: int = 10
    mask_probability: float = 0.1
    embedding_scale: float = 1.5
    ensure_effect: bool = True
    decoder_hidden: int = 64
    decoder_scale: float = 1.5
    gene_log_abundance_sd: float = 1.0
    library_log_mean: float = float(np.log(5000.0))
    library_log_sd: float = 0.3
    dispersion_log_mean: float = float(np.log(5.0))
    dispersion_log_sd: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        integers = (
            "n_cells_per_condition",
            "n_genes",
            "n_latent",
            "n_perturbations",
            "n_combinations",
            "decoder_hidden",
            "seed",
        )
        for name in (*integers, "n_control_cells"):
            value = getattr(self, name)
            if name == "n_control_cells" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        for name in (
            "mask_probability",
            "embedding_scale",
            "decoder_scale",
            "gene_log_abundance_sd",
            "library_log_mean",
            "library_log_sd",
            "dispersion_log_mean",
            "dispersion_log_sd",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not np.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        positive = ("n_cells_per_condition", "n_genes", "n_latent", "decoder_hidden")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_control_cells is not None and self.n_control_cells < 0:
            raise ValueError(f"n_control_cells must be >= 0, got {self.n_control_cells}")
        if self.n_perturbations < 1:
            raise ValueError(f"n_perturbations must be >= 1, got {self.n_perturbations}")
        max_pairs = self.n_perturbations * (self.n_perturbations - 1) // 2
        if not 0 <= self.n_combinations <= max_pairs:
            raise ValueError(
                f"n_combinations must be in [0, {max_pairs}] for {self.n_perturbations} "
                f"perturbations, got {self.n_combinations}"
            )
        if not 0.0 <= self.mask_probability <= 1.0:
            raise ValueError(f"mask_probability must be in [0, 1], got {self.mask_probability}")
        for name in (
            "embedding_scale",
            "library_log_sd",
            "dispersion_log_sd",
            "decoder_scale",
            "gene_log_abundance_sd",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class ScreenGroundTruth:
    """The parameters that generated a synthetic screen.

    Attributes
    ----------
    perturbation_names : list of str, length P
    masks : ndarray of bool, shape (P, L)
    embeddings : ndarray, shape (P, L)
    decoder : dict of ndarrays: ``w1`` (L, H), ``b1`` (H,), ``w2`` (H, G), ``b2`` (G,)
    dispersion : ndarray, shape (G,) -- negative-binomial concentration theta_g
    library_log_mean, library_log_sd : float
    """

    perturbation_names: list[str]
    masks: np.ndarray
    embeddings: np.ndarray
    decoder: dict[str, np.ndarray]
    dispersion: np.ndarray
    library_log_mean: float
    library_log_sd: float
    gene_names: list[str] = field(default_factory=list)

    @property
    def effects(self) -> np.ndarray:
        """Masked embeddings E * M, shape (P, L)."""
        return self.embeddings * self.masks

    def dosage_of(self, conditions: list[str] | np.ndarray, delimiter: str = "+") -> np.ndarray:
        """Dense dosage rows, shape (len(conditions), P), for labels like ``A`` or ``A+B``."""
        column = {name: j for j, name in enumerate(self.perturbation_names)}
        out = np.zeros((len(conditions), len(self.perturbation_names)))
        for i, label in enumerate(conditions):
            if label == "control":
                continue
            for part in str(label).split(delimiter):
                if part not in column:
                    raise ValueError(f"unknown perturbation {part!r} in condition {label!r}")
                out[i, column[part]] += 1.0
        return out

    def latent_shift(self, dosage: np.ndarray) -> np.ndarray:
        """D (E * M), shape (n, L) for dosage of shape (n, P)."""
        return np.asarray(dosage @ self.effects)

    def proportions(self, z: np.ndarray) -> np.ndarray:
        """Gene proportions softmax(decoder(z)), shape (n, G) for z of shape (n, L)."""
        hidden = z @ self.decoder["w1"] + self.decoder["b1"]
        hidden = np.where(hidden > 0, hidden, _LEAKY_SLOPE * hidden)
        logits = hidden @ self.decoder["w2"] + self.decoder["b2"]
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits

    def expected_counts(self, z: np.ndarray, library_size: np.ndarray) -> np.ndarray:
        """E[x | z, l] = l * rho(z), shape (n, G)."""
        return self.proportions(z) * library_size[:, None]

    def expected_condition_proportions(
        self, conditions: list[str], n_samples: int = 20_000, seed: int = 0
    ) -> np.ndarray:
        """E_z[rho(z)] per condition by Monte Carlo over z_basal, shape (n_conditions, G).

        The standard error of each entry is at most ``max(rho) / sqrt(n_samples)``.
        """
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
            raise TypeError(f"n_samples must be a positive integer, got {n_samples!r}")
        if n_samples <= 0:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples}")
        if isinstance(conditions, str) or len(conditions) == 0:
            raise ValueError(f"conditions must be a non-empty list of labels, got {conditions!r}")
        rng = np.random.default_rng(seed)
        shifts = self.latent_shift(self.dosage_of(conditions))
        basal = rng.standard_normal((n_samples, self.masks.shape[1]))
        return np.stack([self.proportions(basal + shift).mean(axis=0) for shift in shifts])

    def sample_counts(
        self, dosage: np.ndarray, rng: np.random.Generator
    ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
        """Draw cells for dosage rows (n, P): (counts CSR, z_basal, z, library_size)."""
        dosage = np.asarray(dosage, dtype=np.float64)
        n_perturbations = len(self.perturbation_names)
        if dosage.ndim != 2 or dosage.shape[1] != n_perturbations:
            raise ValueError(
                f"dosage must have shape (n_cells, {n_perturbations}), got {dosage.shape}; "
                "build it with dosage_of(conditions)"
            )
        if not np.isfinite(dosage).all():
            raise ValueError("dosage holds NaN or inf")
        n_cells = dosage.shape[0]
        n_latent = self.masks.shape[1]
        z_basal = rng.standard_normal((n_cells, n_latent))
        z = z_basal + self.latent_shift(dosage)
        library = np.exp(rng.normal(self.library_log_mean, self.library_log_sd, n_cells))
        blocks = []
        theta = self.dispersion[None, :]
        for start in range(0, n_cells, _CHUNK_CELLS):
            stop = min(start + _CHUNK_CELLS, n_cells)
            mean = self.expected_counts(z[start:stop], library[start:stop])
            # Gamma-Poisson mixture: rate ~ Gamma(theta, theta / mean), x ~ Poisson(rate).
            rate = rng.standard_gamma(np.broadcast_to(theta, mean.shape)) * (mean / theta)
            blocks.append(sp.csr_matrix(rng.poisson(rate).astype(np.float32)))
        counts = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, theta.size))
        return counts, z_basal, z, library

    def to_uns(self) -> dict[str, Any]:
        return {
            "perturbation_names": np.asarray(self.perturbation_names, dtype=object),
            "masks": self.masks.astype(np.int8),
            "embeddings": self.embeddings,
            "decoder": dict(self.decoder),
            "dispersion": self.dispersion,
            "library_log_mean": float(self.library_log_mean),
            "library_log_sd": float(self.library_log_sd),
        }

    @classmethod
    def from_uns(cls, uns: dict[str, Any]) -> ScreenGroundTruth:
        """Rebuild from ``adata.uns["ground_truth"]`` (also after an h5ad round trip)."""
        missing = {"perturbation_names", "masks", "embeddings", "decoder", "dispersion"} - set(uns)
        if missing:
            raise ValueError(
                f"uns['ground_truth'] lacks {sorted(missing)}; not a simulated screen?"
            )
        return cls(
            perturbation_names=[str(n) for n in uns["perturbation_names"]],
            masks=np.asarray(uns["masks"]).astype(bool),
            embeddings=np.asarray(uns["embeddings"], dtype=np.float64),
            decoder={k: np.asarray(v, dtype=np.float64) for k, v in uns["decoder"].items()},
            dispersion=np.asarray(uns["dispersion"], dtype=np.float64),
            library_log_mean=float(uns["library_log_mean"]),
            library_log_sd=float(uns["library_log_sd"]),
        )


def _draw_ground_truth(config: ScreenConfig, rng: np.random.Generator) -> ScreenGroundTruth:
    n_pert, n_latent, n_hidden, n_genes = (
        config.n_perturbations,
        config.n_latent,
        config.decoder_hidden,
        config.n_genes,
    )
    width = len(str(n_pert - 1))
    names = [f"P{j:0{width}d}" for j in range(n_pert)]
    masks = rng.random((n_pert, n_latent)) < config.mask_probability
    if config.ensure_effect:
        empty = ~masks.any(axis=1)
        masks[np.flatnonzero(empty), rng.integers(0, n_latent, empty.sum())] = True
    embeddings = rng.normal(0.0, config.embedding_scale, (n_pert, n_latent))
    decoder = {
        "w1": rng.normal(0.0, 1.0 / np.sqrt(n_latent), (n_latent, n_hidden)),
        "b1": rng.normal(0.0, 0.1, n_hidden),
        "w2": rng.normal(0.0, config.decoder_scale / np.sqrt(n_hidden), (n_hidden, n_genes)),
        "b2": rng.normal(0.0, config.gene_log_abundance_sd, n_genes),
    }
    dispersion = np.exp(rng.normal(config.dispersion_log_mean, config.dispersion_log_sd, n_genes))
    return ScreenGroundTruth(
        perturbation_names=names,
        masks=masks,
        embeddings=embeddings,
        decoder=decoder,
        dispersion=dispersion,
        library_log_mean=config.library_log_mean,
        library_log_sd=config.library_log_sd,
    )


def simulate_screen(config: ScreenConfig | None = None, **overrides: Any) -> Any:
    """Simulate a Perturb-seq-like screen with known ground truth.

    Parameters
    ----------
    config : ScreenConfig or dict, optional
    **overrides
        Fields of :class:`ScreenConfig` (e.g. ``n_genes=2000, seed=1``).

    Returns
    -------
    AnnData
        ``layers["counts"]`` (and ``X``): CSR float32 counts;
        ``obs["perturbation"]``: ``control``, ``P03`` or ``P03+P11``;
        ``obs["n_perturbations"]``, ``obs["library_size_true"]``;
        ``obsm["z_basal_true"]``, ``obsm["z_true"]``: the cells' latent states;
        ``uns["ground_truth"]``: masks, embeddings, decoder, dispersion (see
        :class:`ScreenGroundTruth`), ``uns["simulation_config"]``.
    """
    import anndata as ad

    if isinstance(config, dict):
        config = ScreenConfig.from_dict({**config, **overrides})
        overrides = {}
    if config is None:
        config = ScreenConfig.from_dict(overrides)
    elif not isinstance(config, ScreenConfig):
        raise TypeError(
            f"config must be a ScreenConfig, a dict of its fields or None, got "
            f"{type(config).__name__}"
        )
    elif overrides:
        config = ScreenConfig.from_dict({**config.to_dict(), **overrides})
    rng = np.random.default_rng(config.seed)
    truth = _draw_ground_truth(config, rng)
    n_pert = config.n_perturbations
    pair_index = np.array([(a, b) for a in range(n_pert) for b in range(a + 1, n_pert)]).reshape(
        -1, 2
    )
    chosen = pair_index[np.sort(rng.choice(len(pair_index), config.n_combinations, replace=False))]

    names = truth.perturbation_names
    labels = ["control"] + names + [f"{names[a]}+{names[b]}" for a, b in chosen]
    n_control = (
        config.n_cells_per_condition if config.n_control_cells is None else config.n_control_cells
    )
    cells_per_label = np.array([n_control] + [config.n_cells_per_condition] * (len(labels) - 1))
    condition_dosage = np.zeros((len(labels), n_pert))
    condition_dosage[np.arange(1, n_pert + 1), np.arange(n_pert)] = 1.0
    for row, (a, b) in enumerate(chosen, start=n_pert + 1):
        condition_dosage[row, [a, b]] = 1.0
    cell_condition = np.repeat(np.arange(len(labels)), cells_per_label)
    counts, z_basal, z, library = truth.sample_counts(condition_dosage[cell_condition], rng)

    n_cells = cell_condition.size
    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(
                np.asarray(labels, dtype=object)[cell_condition], categories=labels
            ),
            "n_perturbations": condition_dosage.sum(axis=1)[cell_condition].astype(np.int64),
            "library_size_true": library,
        },
        index=pd.Index([f"cell{i:07d}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=pd.Index([f"gene{j:05d}" for j in range(config.n_genes)]))
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    adata.layers["counts"] = counts
    adata.obsm["z_basal_true"] = z_basal
    adata.obsm["z_true"] = z
    adata.uns["ground_truth"] = truth.to_uns()
    adata.uns["simulation_config"] = {
        k: ("none" if v is None else v) for k, v in config.to_dict().items()
    }
    return adata
