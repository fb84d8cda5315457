"""CPA-VAE: SAMS-VAE without masks, z = z_basal + D E (the compositional baseline of
Bereket & Karaletsos 2023, after CPA, Lotfollahi et al. 2023)."""

from __future__ import annotations

from bioreason.models._base import PerturbationModel
from bioreason.models.sams_vae import SAMSVAEModule


class CPAVAEModule(SAMSVAEModule):
    """E_t ~ N(0, s^2 I); z_i = z_basal_i + d_i E. The ``correlated`` guide is q(E_t) from
    an MLP on one-hot(t) (there is no mask to condition on)."""

    use_masks = False


class CPAVAE(PerturbationModel):
    """CPA-VAE (additive embeddings, no masks) with the API of :class:`SAMSVAE`."""

    module_class = CPAVAEModule
