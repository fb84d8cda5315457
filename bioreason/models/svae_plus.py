"""SVAE+ (Lopez et al. 2022, sparse mechanism shift VAE) as the baseline of Bereket &
Karaletsos 2023: one perturbation category per cell.

    pi_d ~ Beta(1, beta)                       d = 1..L
    M_c,d ~ Bernoulli(pi_d)                    c = 1..C categories (conditions)
    z_i ~ N(M_c(i) * a_c(i), I)                a_c: learned shift per category
    x_i ~ NB(l_i softmax(decoder(z_i)), theta)

Every condition seen in training (a single perturbation or a combination such as
``A+B``) is its own category; control cells have z ~ N(0, I). An unseen combination has
no category, so SVAE+ cannot predict it: asking raises a ``ValueError``.
"""

from __future__ import annotations

import numpy as np
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


class SVAEPlusModule(PerturbationVAEModule):
    """``category`` (B,) indexes ``categories``; the value ``n_categories`` means control."""

    global_sites = ("mask_probability", "mask")

    def __init__(
        self,
        n_genes: int,
        n_perturbations: int,
        config: VAEConfig,
        input_mean: torch.Tensor,
        input_std: torch.Tensor,
        n_categories: int,
    ) -> None:
        super().__init__(n_genes, n_perturbations, config, input_mean, input_std)
        C, L = n_categories, config.n_latent
        self.n_categories = C
        self.shift = nn.Parameter(0.1 * torch.randn(C, L))
        init_logit = torch.logit(torch.tensor(config.mask_init_probability))
        self.mask_logits = nn.Parameter(torch.full((C, L), float(init_logit)))
        self.pi_raw_alpha = nn.Parameter(torch.zeros(L))
        self.pi_raw_beta = nn.Parameter(torch.full((L,), 1.0))

    def _one_hot(self, category: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(category, self.n_categories + 1).to(self._zero.dtype)

    def shift_table(self, mask: torch.Tensor) -> torch.Tensor:
        """M * a with a zero row appended for control, shape (..., C + 1, L)."""
        table = mask * self.shift
        zeros = torch.zeros_like(table[..., :1, :])
        return torch.cat([table, zeros], dim=-2)

    def model_globals(self, latent: pyro.plate) -> torch.Tensor:
        with latent:
            pi = pyro.sample(
                "mask_probability", dist.Beta(self._zero + 1.0, self._zero + self.config.svae_beta)
            )
            with self.perturbation_plate(self.n_categories):
                mask = pyro.sample("mask", dist.Bernoulli(pi))
        return mask

    def model(
        self,
        counts: torch.Tensor | None,
        dosage: torch.Tensor,
        library_size: torch.Tensor,
        category: torch.Tensor,
        n_total: int,
    ) -> None:
        latent = self.latent_plate()
        mask = self.model_globals(latent)
        loc = self._one_hot(category) @ self.shift_table(mask)
        batch = library_size.shape[-1]
        cells = cells_plate(n_total, batch, library_size.device)
        with cells, latent:
            z = pyro.sample("z", dist.Normal(loc, 1.0))
        self.observe(self.decode(z), library_size, counts, cells)

    def guide_globals(self, latent: pyro.plate | None = None) -> dict[str, torch.Tensor]:
        softplus = nn.functional.softplus
        with latent or self.latent_plate():
            pi = pyro.sample(
                "mask_probability",
                dist.Beta(softplus(self.pi_raw_alpha) + 1e-3, softplus(self.pi_raw_beta) + 1e-3),
            )
            with self.perturbation_plate(self.n_categories):
                mask = pyro.sample(
                    "mask", StraightThroughBernoulli(self.mask_logits, self.config.mask_temperature)
                )
        return {"mask_probability": pi, "mask": mask}

    def guide(
        self,
        counts: torch.Tensor | None,
        dosage: torch.Tensor,
        library_size: torch.Tensor,
        category: torch.Tensor,
        n_total: int,
    ) -> None:
        latent = self.latent_plate()
        self.guide_globals(latent)
        loc, scale = self.encode(counts)
        batch = library_size.shape[-1]
        cells = cells_plate(n_total, batch, library_size.device)
        with cells, latent:
            pyro.sample("z", dist.Normal(loc, scale))

    def perturbation_effects(self, n_draws: int = 200) -> dict[str, torch.Tensor]:
        probs = torch.sigmoid(self.mask_logits).detach()
        return {
            "shift": self.shift.detach(),
            "mask_probability": probs,
            "effect": probs * self.shift.detach(),
        }

    def latent_mean(
        self,
        counts: torch.Tensor,
        dosage: torch.Tensor,
        category: torch.Tensor,
        kind: str,
        effect: torch.Tensor | None,
    ) -> torch.Tensor:
        """Posterior mean of z (``perturbed``), or z minus E_q[M_c] a_c (``basal``), (B, L)."""
        loc = self.encode(counts)[0]
        if kind == "perturbed":
            return loc
        table = torch.cat([effect, torch.zeros_like(effect[:1])], dim=0)
        return loc - self._one_hot(category) @ table


class SVAEPlus(PerturbationModel):
    """SVAE+ with the API of :class:`~bioreason.models.SAMSVAE`; each training
    condition is a category, and unseen combinations raise a ``ValueError``."""

    module_class = SVAEPlusModule
    composes = False

    def _init_categories(self, data) -> list[str]:
        table = data.condition_table()
        return [str(c) for c in table.index if table.loc[c, "n_perturbations"] > 0]

    def _build_module(self, mean, std):
        return SVAEPlusModule(
            len(self.gene_names),
            len(self.perturbation_names),
            self.config,
            mean,
            std,
            n_categories=len(self.categories),
        )

    def _cell_categories(self, condition_names, is_control):
        index = {name: i for i, name in enumerate(self.categories)}
        names = np.asarray(condition_names, dtype=object)
        control = np.asarray(is_control, dtype=bool)
        unknown = sorted({str(n) for n in names[~control] if n not in index})
        if unknown:
            raise ValueError(
                f"SVAE+ cannot predict {unknown[:10]}: it encodes each training condition as "
                "its own category and cannot compose unseen combinations of perturbations. "
                f"Its categories include {self.categories[:10]}; "
                "use SAMSVAE or CPAVAE to predict unseen combinations."
            )
        codes = np.array([index.get(n, len(self.categories)) for n in names], dtype=np.int64)
        codes[control] = len(self.categories)
        return codes
