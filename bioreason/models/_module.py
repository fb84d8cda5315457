"""Shared pieces of the Pyro modules: config, plates, encoder/decoder, mask distribution.

Every module defines ``model(counts, dosage, library_size, category, n_total)`` and a
``guide`` with the same signature. ``counts`` (B, G) may be ``None`` to generate cells.
Sample sites outside the ``"cells"`` plate are *global* (shared by all cells); sites
inside it are *local* (one per cell). Plates: ``"cells"`` (dim -2, subsampled with
scale ``n_total / B``), ``"perturbations"`` (dim -2) and ``"latent"`` (dim -1).
Vectorized ELBO particles therefore live at dim -3 (``MAX_PLATE_NESTING = 2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from bioreason.config import Config
from bioreason.models._nn import MLP, Standardize
from bioreason.models.likelihoods import LIKELIHOODS

MAX_PLATE_NESTING = 2
CELLS_PLATE = "cells"

_EMPTY = torch.Size()


@dataclass
class VAEConfig(Config):
    """Architecture and prior settings shared by the four models.

    Attributes
    ----------
    n_latent : int, default 20
        Latent dimensions L.
    n_hidden : int, default 400
        Width of the encoder and decoder MLPs (LeakyReLU).
    n_layers : int, default 1
        Hidden layers of the encoder and decoder (0: the decoder is linear).
    residual : bool, default False
        Residual connections between the encoder/decoder hidden layers.
    encoder_input : str, default "log1p"
        Input of the basal encoder: ``"log1p"`` (log1p counts, as scvi-tools does) or
        ``"standardize"`` (log1p counts minus each gene's mean, divided by its standard
        deviation over the cells given to the constructor). Standardizing divides a gene
        seen in one training cell of 2,700 by about 0.013, so one count of it in a new
        cell becomes an input near 50: on the Norman subset the encoder then maps new
        cells far from the prior and their validation IWELBO falls from -71 to -125
        nats per cell between steps 500 and 3,000, while log1p stays at -52.
    leaky_slope : float, default 0.2
        Negative slope of every LeakyReLU (encoder, decoder, q(E | M)); the SAMS-VAE
        reference uses torch's default 0.01.
    likelihood : str, default "nb"
        ``"nb"`` (negative binomial, learned per-gene concentration), ``"poisson"`` or
        ``"lognormal"``.
    guide : str, default "correlated"
        ``"correlated"`` (q(E | M) from an MLP on [M_t, one-hot(t)]) or ``"mean_field"``.
    embedding_n_hidden : int or None, default None
        Width of the correlated guide's q(E | M) network (None: ``n_hidden``).
    embedding_n_layers : int, default 1
        Hidden layers of q(E | M); layers after the first are residual (the SAMS-VAE
        paper's Norman configuration uses 4 of 400 units).
    embedding_prior_scale : float, default 1.0
        s in E_t ~ N(0, s^2 I).
    mask_prior_probability : float, default 0.01
        pi in M_t,d ~ Bernoulli(pi) (SAMS-VAE).
    learn_mask_prior : bool, default False
        SAMS-VAE only: choose pi from the data (empirical Bayes) instead of fixing it.
        At every step pi is set to the value that maximizes the ELBO given the current
        q(M): the mean of q(M_t,d = 1) over the perturbations with training cells
        (``mask_prior_probability`` is used while no perturbation has any). A fixed
        sparse pi below the share of latent dimensions the perturbations really move
        shrinks the fitted effects (docs/simulator.md, issue 21); the held-out IWELBO
        barely tells priors apart, so it cannot be used to pick pi.
    mask_temperature : float, default 1.0
        Temperature of the straight-through relaxed Bernoulli in q(M).
    mask_init_probability : float, default 0.5
        Initial q(M = 1). Starting at the sparse prior leaves the masks off, so the
        embeddings get no gradient and the encoder absorbs the perturbation effects into
        z_basal; starting at 0.5 lets E learn first and the masks prune.
    encode_offset : bool, default True
        Feed the sampled latent offset D (E * M) to the basal encoder (SAMS-VAE and
        CPA-VAE), so that it can infer z_basal as what the offset does not explain.
    basal_guide : str, default "residual"
        How q(z_basal | x, D(E * M)) is located (SAMS-VAE and CPA-VAE). ``"residual"``:
        the encoder outputs the location of the whole latent z and z_basal's is that
        minus the offset D(E * M), so every cell's prior term on z_basal pulls its
        perturbation's embedding toward the cells' encoded shift. ``"direct"`` (the
        SAMS-VAE paper's guide): the encoder outputs z_basal's location; it can then
        explain an effect by moving the perturbed cells' basal states, which generation
        (basal states drawn from the prior) lacks, so simulated effects come out too
        small after short training (docs/simulator.md, issue 21).
    svae_beta : float, default 1.0
        beta in the SVAE+ prior mask probability ~ Beta(1, beta).
    """

    n_latent: int = 20
    n_hidden: int = 400
    n_layers: int = 1
    residual: bool = False
    encoder_input: Literal["standardize", "log1p"] = "log1p"
    leaky_slope: float = 0.2
    likelihood: Literal["nb", "poisson", "lognormal"] = "nb"
    guide: Literal["correlated", "mean_field"] = "correlated"
    embedding_n_hidden: int | None = None
    embedding_n_layers: int = 1
    embedding_prior_scale: float = 1.0
    mask_prior_probability: float = 0.01
    learn_mask_prior: bool = False
    mask_temperature: float = 1.0
    mask_init_probability: float = 0.5
    encode_offset: bool = True
    basal_guide: Literal["direct", "residual"] = "residual"
    svae_beta: float = 1.0

    def __post_init__(self) -> None:
        for name in ("n_latent", "n_hidden"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.embedding_n_hidden is not None and self.embedding_n_hidden <= 0:
            raise ValueError(f"embedding_n_hidden must be positive, got {self.embedding_n_hidden}")
        if self.embedding_n_layers < 1:
            raise ValueError(f"embedding_n_layers must be >= 1, got {self.embedding_n_layers}")
        if self.n_layers < 0:
            raise ValueError(f"n_layers must be >= 0, got {self.n_layers}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(
                f"likelihood must be one of {sorted(LIKELIHOODS)}, got {self.likelihood!r}"
            )
        if self.guide not in ("correlated", "mean_field"):
            raise ValueError(f"guide must be 'correlated' or 'mean_field', got {self.guide!r}")
        if not 0.0 < self.mask_prior_probability < 1.0:
            raise ValueError(
                f"mask_prior_probability must be in (0, 1), got {self.mask_prior_probability}"
            )
        if not 0.0 < self.mask_init_probability < 1.0:
            raise ValueError(
                f"mask_init_probability must be in (0, 1), got {self.mask_init_probability}"
            )
        if self.basal_guide not in ("direct", "residual"):
            raise ValueError(
                f"basal_guide must be 'direct' or 'residual', got {self.basal_guide!r}"
            )
        if self.encoder_input not in ("standardize", "log1p"):
            raise ValueError(
                f"encoder_input must be 'standardize' or 'log1p', got {self.encoder_input!r}"
            )
        if not 0.0 <= self.leaky_slope < 1.0:
            raise ValueError(f"leaky_slope must be in [0, 1), got {self.leaky_slope}")
        for name in ("embedding_prior_scale", "mask_temperature", "svae_beta"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class StraightThroughBernoulli(dist.TorchDistribution):
    """Bernoulli whose ``rsample`` is a hard 0/1 draw with the gradient of a relaxed
    (concrete) Bernoulli at ``temperature`` (straight-through estimator).

    Unlike :class:`pyro.distributions.RelaxedBernoulliStraightThrough`, ``log_prob`` is
    the exact Bernoulli mass of the hard value, so ELBO and IWELBO estimates stay valid
    bounds; only the gradient is approximate.
    """

    arg_constraints = {"logits": constraints.real}
    support = constraints.boolean
    has_rsample = True

    def __init__(self, logits: torch.Tensor, temperature: float = 1.0, validate_args=None):
        self.logits = logits
        self.temperature = temperature
        super().__init__(logits.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return StraightThroughBernoulli(self.logits.expand(batch_shape), self.temperature)

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def rsample(self, sample_shape=_EMPTY) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        uniform = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        uniform = uniform.clamp(1e-6, 1 - 1e-6)
        noise = torch.log(uniform) - torch.log1p(-uniform)
        soft = torch.sigmoid((self.logits + noise) / self.temperature)
        hard = (self.logits + noise > 0).to(soft.dtype)
        # (soft - soft.detach()) is exactly 0: the value stays 0/1, the gradient is soft's.
        return hard + (soft - soft.detach())

    def sample(self, sample_shape=_EMPTY) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # log Bernoulli(value | logits) = value * logits - softplus(logits)
        return value * self.logits - nn.functional.softplus(self.logits)


def cells_plate(n_total: int, batch_size: int, device: torch.device) -> pyro.plate:
    """Plate over cells: a batch of ``batch_size`` out of ``n_total`` (scale n_total / B)."""
    return pyro.plate(
        CELLS_PLATE, n_total, subsample=torch.arange(batch_size, device=device), dim=-2
    )


def _inverse_softplus(value: float) -> float:
    import math

    return value + math.log(-math.expm1(-value))


class PerturbationVAEModule(nn.Module):
    """Encoder, decoder and likelihood shared by the modules.

    Parameters
    ----------
    n_genes, n_perturbations : int
    config : VAEConfig
    input_mean, input_std : Tensor, shape (n_genes,)
        Moments of log1p(counts) for the encoder's input standardization.
    encoder_extra, decoder_extra : int
        Width of an extra input (the dosage row, for the conditional VAE) added to the
        first layer of the encoder / decoder.
    """

    #: names of global sample sites, in sampling order
    global_sites: tuple[str, ...] = ()
    #: per-cell latent site drawn from N(0, I) independently of the condition (a cell's
    #: basal state, shared by counterfactual generation); None when the cell latent's
    #: distribution depends on the condition
    basal_site: str | None = None

    def __init__(
        self,
        n_genes: int,
        n_perturbations: int,
        config: VAEConfig,
        input_mean: torch.Tensor,
        input_std: torch.Tensor,
        encoder_extra: int = 0,
        decoder_extra: int = 0,
    ) -> None:
        super().__init__()
        self.config = config
        self.n_genes = n_genes
        self.n_perturbations = n_perturbations
        L, H = config.n_latent, config.n_hidden
        if config.encoder_input == "log1p":
            # scvi-tools' encoder input: log1p counts, no per-gene scaling
            input_mean, input_std = torch.zeros_like(input_mean), torch.ones_like(input_std)
        self.standardize = Standardize(input_mean, input_std)
        slope = config.leaky_slope
        self.encoder = MLP(n_genes, 2 * L, H, max(config.n_layers, 1), config.residual, slope)
        self.decoder = MLP(L, n_genes, H, config.n_layers, config.residual, slope)
        first = H if config.n_layers > 0 else n_genes
        self.encoder_extra = nn.Linear(encoder_extra, H, bias=False) if encoder_extra else None
        self.decoder_extra = nn.Linear(decoder_extra, first, bias=False) if decoder_extra else None
        init = 2.0 if config.likelihood == "nb" else 1.0
        self.gene_parameter = nn.Parameter(torch.full((n_genes,), _inverse_softplus(init)))
        self.register_buffer("_zero", torch.zeros(()))
        # Which perturbations had training cells. The guide of one that had none is its
        # prior: with no data its posterior is the prior, and a guide that was never
        # fitted (only pulled toward the prior by Adam's small steps) is not.
        self.register_buffer("perturbation_observed", torch.ones(n_perturbations, dtype=torch.bool))

    # ----------------------------------------------------------------- networks
    def encode(
        self, counts: torch.Tensor, first_layer: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loc and scale of q(z | x), each shape (..., B, L)."""
        out = self.encoder(self.standardize(counts), first_layer)
        loc, raw_scale = out.split(self.config.n_latent, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + 1e-4

    def decode(self, z: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Gene logits, shape (..., B, G), for latents (..., B, L)."""
        first = None if extra is None or self.decoder_extra is None else self.decoder_extra(extra)
        if self.config.n_layers == 0:
            out = self.decoder(z)
            return out if first is None else out + first
        return self.decoder(z, first)

    def likelihood(self, logits: torch.Tensor, library_size: torch.Tensor):
        """Count distribution of each cell; batch shape (..., B, 1), event shape (G,)."""
        return LIKELIHOODS[self.config.likelihood](
            logits.unsqueeze(-2), library_size.unsqueeze(-1), self.gene_parameter
        )

    def observe(self, logits, library_size, counts, cells: pyro.plate) -> None:
        """The observation site ``counts`` inside the (already created) cells plate."""
        with cells:
            pyro.sample(
                "counts",
                self.likelihood(logits, library_size),
                obs=None if counts is None else counts.unsqueeze(-2),
            )

    def standard_normal(self) -> dist.Normal:
        return dist.Normal(self._zero, self._zero + 1.0)

    def latent_plate(self) -> pyro.plate:
        return pyro.plate("latent", self.config.n_latent, dim=-1)

    def perturbation_plate(self, size: int | None = None) -> pyro.plate:
        return pyro.plate("perturbations", size or self.n_perturbations, dim=-2)

    # ----------------------------------------------------------------- hooks
    def model(
        self,
        counts: torch.Tensor | None,
        dosage: torch.Tensor,
        library_size: torch.Tensor,
        category: torch.Tensor,
        n_total: int,
    ) -> None:  # pragma: no cover - abstract
        """The generative model p(x, z, globals).

        Parameters
        ----------
        counts : Tensor, shape (B, G), or None
            Observed counts of a minibatch of B cells; None generates them.
        dosage : Tensor, shape (B, P) (or (k, B, P): one block of cells per global draw)
            Dosage rows D of the cells.
        library_size : Tensor, shape (B,) (or (k, B))
            Total counts per cell.
        category : Tensor, shape (B,), int64
            Category of each cell (SVAE+; ignored by the other models).
        n_total : int
            Cells the cells plate stands for (minibatch scale n_total / B).
        """
        raise NotImplementedError

    def guide(
        self,
        counts: torch.Tensor | None,
        dosage: torch.Tensor,
        library_size: torch.Tensor,
        category: torch.Tensor,
        n_total: int,
    ) -> None:  # pragma: no cover - abstract
        """The variational posterior q(z, globals | x); same arguments as :meth:`model`."""
        raise NotImplementedError

    def guide_globals(self, latent: pyro.plate | None = None) -> dict[str, torch.Tensor]:
        """Sample the global sites of the guide; returns name -> value, e.g. (..., P, L)."""
        return {}

    def perturbation_effects(self, n_draws: int = 200) -> dict[str, torch.Tensor]:
        """Posterior summaries, each a Tensor of shape (P or C, L) (see
        :meth:`~bioreason.models.PerturbationModel.get_perturbation_effects`)."""
        return {}

    def latent_mean(
        self,
        counts: torch.Tensor,
        dosage: torch.Tensor,
        category: torch.Tensor,
        kind: str,
        effect: torch.Tensor | None,
    ) -> torch.Tensor:  # pragma: no cover - abstract
        """Posterior mean latent of B cells, shape (B, L).

        Parameters
        ----------
        counts : Tensor, shape (B, G)
        dosage : Tensor, shape (B, P)
        category : Tensor, shape (B,), int64
        kind : ``"basal"`` or ``"perturbed"``
        effect : Tensor, shape (P or C, L), or None
            Posterior mean effects ``perturbation_effects()["effect"]``.
        """
        raise NotImplementedError
