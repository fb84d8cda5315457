"""SAMS-VAE (Bereket & Karaletsos, NeurIPS 2023): sparse additive mechanism shifts.

Generative model (paper Sec. 3)::

    E_t,d ~ N(0, s^2)            t = 1..P perturbations, d = 1..L latent dimensions
    M_t,d ~ Bernoulli(pi)
    z_basal_i ~ N(0, I_L)
    z_i = z_basal_i + d_i (E * M)
    x_i ~ NB(l_i softmax(decoder(z_i)), theta)

Guides: ``mean_field`` q(M) q(E) with free parameters, or ``correlated`` q(M) q(E | M)
(an MLP on [M_t, one-hot(t)]); both with an amortized basal encoder q(z_basal | x[, D(E*M)]).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from bioreason.models._base import PerturbationModel
from bioreason.models._module import (
    PerturbationVAEModule,
    StraightThroughBernoulli,
    VAEConfig,
    cells_plate,
)
from bioreason.models._sampling import draw_globals

__all__ = ["SAMSVAE", "SAMSVAEModule"]


class SAMSVAEModule(PerturbationVAEModule):
    """Model and guides of SAMS-VAE; ``use_masks=False`` gives CPA-VAE.

    Parameters
    ----------
    n_genes, n_perturbations : int
    config : VAEConfig
    input_mean, input_std : Tensor, shape (n_genes,)
        Moments of log1p(counts) for the encoder's input standardization.
    """

    use_masks = True
    basal_site = "z_basal"

    def __init__(
        self,
        n_genes: int,
        n_perturbations: int,
        config: VAEConfig,
        input_mean: torch.Tensor,
        input_std: torch.Tensor,
    ) -> None:
        super().__init__(n_genes, n_perturbations, config, input_mean, input_std)
        P, L = n_perturbations, config.n_latent
        H = config.embedding_n_hidden or config.n_hidden
        self.global_sites = ("mask", "embedding") if self.use_masks else ("embedding",)
        if config.learn_mask_prior and not self.use_masks:
            raise ValueError(
                "learn_mask_prior needs a model with masks (SAMS-VAE); "
                f"{type(self).__name__} has none"
            )
        if self.use_masks:
            init_logit = torch.logit(torch.tensor(config.mask_init_probability))
            self.mask_logits = nn.Parameter(torch.full((P, L), float(init_logit)))
        if config.guide == "mean_field":
            self.embedding_loc = nn.Parameter(0.1 * torch.randn(P, L))
            self.embedding_raw_scale = nn.Parameter(torch.full((P, L), -2.0))
        else:
            # A linear layer on [M_t, one-hot(t)] = W_M M_t + (column t of W_onehot):
            # the one-hot half is stored as a per-perturbation table.
            self.embedding_mask_layer = nn.Linear(L, H, bias=False) if self.use_masks else None
            self.embedding_table = nn.Parameter(0.1 * torch.randn(P, H))
            # further hidden layers of q(E | M), residual (h <- h + act(W h + b))
            self.embedding_hidden = nn.ModuleList(
                nn.Linear(H, H) for _ in range(config.embedding_n_layers - 1)
            )
            self.embedding_output = nn.Linear(H, 2 * L)
            with torch.no_grad():
                self.embedding_output.bias[L:].fill_(-2.0)
        if config.encode_offset:
            self.offset_layer = nn.Linear(L, config.n_hidden, bias=False)

    # ------------------------------------------------------------------ model
    def model_globals(self, latent: pyro.plate) -> torch.Tensor:
        """Sample E (and M) from the prior; returns the effects E * M, shape (..., P, L)."""
        cfg = self.config
        with self.perturbation_plate(), latent:
            embedding = pyro.sample(
                "embedding", dist.Normal(self._zero, self._zero + cfg.embedding_prior_scale)
            )
            if not self.use_masks:
                return embedding
            mask = pyro.sample("mask", dist.Bernoulli(self.mask_prior()))
        return embedding * mask

    def model(
        self,
        counts: torch.Tensor | None,
        dosage: torch.Tensor,
        library_size: torch.Tensor,
        category: torch.Tensor,
        n_total: int,
    ) -> None:
        latent = self.latent_plate()
        effects = self.model_globals(latent)
        batch = library_size.shape[-1]
        cells = cells_plate(n_total, batch, library_size.device)
        with cells, latent:
            z_basal = pyro.sample("z_basal", self.standard_normal())
        z = z_basal + dosage @ effects
        self.observe(self.decode(z), library_size, counts, cells)

    # ------------------------------------------------------------------ guide
    def guide_globals(self, latent: pyro.plate | None = None) -> dict[str, torch.Tensor]:
        out = {}
        observed = self.perturbation_observed.unsqueeze(-1)  # (P, 1)
        with self.perturbation_plate(), latent or self.latent_plate():
            mask = None
            if self.use_masks:
                logits = torch.where(observed, self.mask_logits, self._prior_mask_logit())
                mask = pyro.sample(
                    "mask", StraightThroughBernoulli(logits, self.config.mask_temperature)
                )
                out["mask"] = mask
            loc, scale = self.embedding_posterior(mask)
            loc = torch.where(observed, loc, self._zero)
            scale = torch.where(observed, scale, self._zero + self.config.embedding_prior_scale)
            out["embedding"] = pyro.sample("embedding", dist.Normal(loc, scale))
        return out

    def mask_prior(self) -> torch.Tensor:
        """pi of the prior M ~ Bernoulli(pi), a 0-d tensor.

        ``config.mask_prior_probability``, or with ``config.learn_mask_prior`` the
        ELBO's maximizer given q(M): the KL terms sum_t,d KL(Bern(q_td) || Bern(pi)) over
        the observed perturbations are smallest at pi = mean(q_td). It is detached: at
        the maximizer the ELBO's derivative in pi is zero, so its total gradient in q
        is the partial one (envelope theorem).
        """
        fixed = self._zero + self.config.mask_prior_probability
        if not self.config.learn_mask_prior:
            return fixed
        observed = self.perturbation_observed
        if not bool(observed.any()):
            return fixed
        pi = torch.sigmoid(self.mask_logits.detach()[observed]).mean()
        return pi.clamp(1e-4, 1.0 - 1e-4)

    def _prior_mask_logit(self) -> torch.Tensor:
        return torch.logit(self.mask_prior())

    def embedding_posterior(self, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Loc and scale of q(E | M), shape (..., P, L)."""
        if self.config.guide == "mean_field":
            return self.embedding_loc, nn.functional.softplus(self.embedding_raw_scale) + 1e-4
        pre = self.embedding_table
        if mask is not None:
            pre = pre + self.embedding_mask_layer(mask)
        slope = self.config.leaky_slope
        hidden = nn.functional.leaky_relu(pre, slope)
        for layer in self.embedding_hidden:
            hidden = hidden + nn.functional.leaky_relu(layer(hidden), slope)
        out = self.embedding_output(hidden)
        loc, raw = out.split(self.config.n_latent, dim=-1)
        return loc, nn.functional.softplus(raw) + 1e-4

    def guide(
        self,
        counts: torch.Tensor | None,
        dosage: torch.Tensor,
        library_size: torch.Tensor,
        category: torch.Tensor,
        n_total: int,
    ) -> None:
        latent = self.latent_plate()
        values = self.guide_globals(latent)
        effects = values["embedding"] * values["mask"] if self.use_masks else values["embedding"]
        first_layer = None
        if self.config.encode_offset:
            # W (D (E*M))^T = D ((E*M) W^T): the offset enters the encoder's first layer
            # through a (P, H) product instead of a (B, L) -> (B, H) one per particle.
            first_layer = dosage @ self.offset_layer(effects)
        loc, scale = self.encode(counts, first_layer)
        if self.config.basal_guide == "residual":
            loc = loc - dosage @ effects
        batch = library_size.shape[-1]
        cells = cells_plate(n_total, batch, library_size.device)
        with cells, latent:
            pyro.sample("z_basal", dist.Normal(loc, scale))

    # ------------------------------------------------------------ summaries
    def perturbation_effects(self, n_draws: int = 200) -> dict[str, torch.Tensor]:
        draws = draw_globals(self, n_draws)
        embedding = draws["embedding"]
        out = {"embedding": embedding.mean(0)}
        if self.use_masks:
            logits = torch.where(
                self.perturbation_observed.unsqueeze(-1), self.mask_logits, self._prior_mask_logit()
            )
            out["mask_probability"] = torch.sigmoid(logits).detach()
            out["effect"] = (embedding * draws["mask"]).mean(0)
        else:
            out["effect"] = out["embedding"]
        return out

    def latent_mean(
        self,
        counts: torch.Tensor,
        dosage: torch.Tensor,
        category: torch.Tensor,
        kind: str,
        effect: torch.Tensor | None,
    ) -> torch.Tensor:
        """Posterior mean latent (B, L): basal, or basal + d E_q[E * M] (``perturbed``)."""
        first = dosage @ self.offset_layer(effect) if self.config.encode_offset else None
        loc, _ = self.encode(counts, first)
        if self.config.basal_guide == "residual":
            loc = loc - dosage @ effect
        return loc if kind == "basal" else loc + dosage @ effect


class SAMSVAE(PerturbationModel):
    """SAMS-VAE for a Perturb-seq AnnData.

    Examples
    --------
    >>> SAMSVAE.setup_anndata(adata, perturbation_key="perturbation", control="control")
    >>> model = SAMSVAE(adata, n_latent=20, guide="correlated")
    >>> model.train(max_steps=3000)
    >>> model.get_perturbation_effects()["mask_probability"]
    """

    module_class = SAMSVAEModule

    def get_mask_prior_probability(self) -> float:
        """pi of the mask prior M ~ Bernoulli(pi): ``mask_prior_probability``, or the
        value chosen from the data with ``learn_mask_prior=True``.

        Returns
        -------
        float
        """
        return float(self.module.mask_prior())
