"""Pyro perturbation VAEs: SAMS-VAE and its baselines, with an scvi-style API, and the
one train-and-evaluate function every caller uses (:func:`fit_vae`).

>>> from bioreason.models import SAMSVAE, CPAVAE, ConditionalVAE, SVAEPlus
"""

from bioreason.models._base import PerturbationModel
from bioreason.models._module import StraightThroughBernoulli, VAEConfig
from bioreason.models._predictive_mixin import PosteriorPredictive
from bioreason.models.conditional_vae import ConditionalVAE, ConditionalVAEModule
from bioreason.models.cpa_vae import CPAVAE, CPAVAEModule
from bioreason.models.fit import TrainVAEConfig, VAEFit, fit_vae
from bioreason.models.fit_evaluations import EVALUATIONS, EvaluationConfig, FitContext
from bioreason.models.job import run_train_vae
from bioreason.models.likelihoods import (
    LIKELIHOODS,
    LogNormalCounts,
    NegativeBinomialCounts,
    PoissonCounts,
)
from bioreason.models.objectives import ELBOLoss, log_importance_weights, make_elbo
from bioreason.models.sams_vae import SAMSVAE, SAMSVAEModule
from bioreason.models.svae_plus import SVAEPlus, SVAEPlusModule
from bioreason.models.training import TrainConfig, TrainingDivergedError
from bioreason.registry import Registry

#: registry name -> model class; metadata ``composes``: predicts unseen combinations
MODELS: Registry[type[PerturbationModel]] = Registry("perturbation model")
for _name, _cls in (
    ("sams_vae", SAMSVAE),
    ("cpa_vae", CPAVAE),
    ("conditional_vae", ConditionalVAE),
    ("svae_plus", SVAEPlus),
):
    MODELS.register(_name, _cls, composes=_cls.composes)

__all__ = [
    "CPAVAE",
    "EVALUATIONS",
    "LIKELIHOODS",
    "MODELS",
    "SAMSVAE",
    "CPAVAEModule",
    "ConditionalVAE",
    "ConditionalVAEModule",
    "ELBOLoss",
    "EvaluationConfig",
    "FitContext",
    "LogNormalCounts",
    "NegativeBinomialCounts",
    "PerturbationModel",
    "PoissonCounts",
    "PosteriorPredictive",
    "SAMSVAEModule",
    "SVAEPlus",
    "SVAEPlusModule",
    "StraightThroughBernoulli",
    "TrainConfig",
    "TrainVAEConfig",
    "TrainingDivergedError",
    "VAEConfig",
    "VAEFit",
    "fit_vae",
    "log_importance_weights",
    "make_elbo",
    "run_train_vae",
]
