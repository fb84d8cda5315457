"""Conditional VAE baseline: the perturbation enters as an input, not as a latent.

    z_i ~ N(0, I);  x_i ~ NB(l_i softmax(decoder([z_i, d_i])), theta);  q(z_i | x_i, d_i)

The dosage row d_i of an unseen combination is the sum of its parts' rows, so the
decoder can be asked about it, though nothing in the model makes effects additive.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from bioreason.models._base import PerturbationModel
from bioreason.models._module import PerturbationVAEModule, VAEConfig, cells_plate


class ConditionalVAEModule(PerturbationVAEModule):
    """Decoder on [z, D], encoder on [x, D] (both as an extra first-layer input)."""

    basal_site = "z"

    def __init__(
        self,
        n_genes: int,
        n_perturbations: int,
        config: VAEConfig,
        input_mean: torch.Tensor,
        input_std: torch.Tensor,
    ) -> None:
        super().__init__(
            n_genes,
            n_perturbations,
            config,
            input_mean,
            input_std,
            encoder_extra=n_perturbations,
            decoder_extra=n_perturbations,
        )

    def model(
        self,
        counts: torch.Tensor | None,
        dosage: torch.Tensor,
        library_size: torch.Tensor,
        category: torch.Tensor,
        n_total: int,
    ) -> None:
        batch = library_size.shape[-1]
        cells = cells_plate(n_total, batch, library_size.device)
        with cells, self.latent_plate():
            z = pyro.sample("z", self.standard_normal())
        self.observe(self.decode(z, dosage), library_size, counts, cells)

    def guide(
        self,
        counts: torch.Tensor | None,
        dosage: torch.Tensor,
        library_size: torch.Tensor,
        category: torch.Tensor,
        n_total: int,
    ) -> None:
        loc, scale = self.encode(counts, self.encoder_extra(dosage))
        batch = library_size.shape[-1]
        cells = cells_plate(n_total, batch, library_size.device)
        with cells, self.latent_plate():
            pyro.sample("z", dist.Normal(loc, scale))

    def latent_mean(
        self,
        counts: torch.Tensor,
        dosage: torch.Tensor,
        category: torch.Tensor,
        kind: str,
        effect: torch.Tensor | None,
    ) -> torch.Tensor:
        """Posterior mean of z (B, L). z carries no perturbation here (the decoder gets
        d directly), so ``basal`` and ``perturbed`` coincide."""
        return self.encode(counts, self.encoder_extra(dosage))[0]

    def perturbation_effects(self, n_draws: int = 200) -> dict[str, torch.Tensor]:
        """The decoder's first-layer weights for each perturbation's dosage, (P, H)."""
        return {"decoder_weight": self.decoder_extra.weight.detach().T}


class ConditionalVAE(PerturbationModel):
    """Conditional VAE baseline with the API of :class:`~bioreason.models.SAMSVAE`."""

    module_class = ConditionalVAEModule
