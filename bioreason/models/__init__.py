"""Pyro perturbation VAEs: SAMS-VAE and its baselines, with an scvi-style API.

>>> from bioreason.models import SAMSVAE, CPAVAE, ConditionalVAE, SVAEPlus
"""

from bioreason.models._base import PerturbationModel
from bioreason.models._module import StraightThroughBernoulli, VAEConfig
from bioreason.models.conditional_vae import ConditionalVAE, ConditionalVAEModule
from bioreason.models.cpa_vae import CPAVAE, CPAVAEModule
from bioreason.models.likelihoods import (
    LIKELIHOODS,
    LogNormalCounts,
    NegativeBinomialCounts,
    PoissonCounts,
)
from bioreason.models.sams_vae import SAMSVAE, SAMSVAEModule
from bioreason.models.svae_plus import SVAEPlus, SVAEPlusModule
from bioreason.models.training import TrainConfig, TrainingDivergedError

#: registry name -> model class
MODELS = {
    "sams_vae": SAMSVAE,
    "cpa_vae": CPAVAE,
    "conditional_vae": ConditionalVAE,
    "svae_plus": SVAEPlus,
}

__all__ = [
    "CPAVAE",
    "LIKELIHOODS",
    "MODELS",
    "SAMSVAE",
    "CPAVAEModule",
    "ConditionalVAE",
    "ConditionalVAEModule",
    "LogNormalCounts",
    "NegativeBinomialCounts",
    "PerturbationModel",
    "PoissonCounts",
    "SAMSVAEModule",
    "SVAEPlus",
    "SVAEPlusModule",
    "StraightThroughBernoulli",
    "TrainConfig",
    "TrainingDivergedError",
    "VAEConfig",
]
