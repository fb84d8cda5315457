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

**p\\*.** :class:`LinearSAMSModel` wraps draws of the globals (the NUTS draws, or the one
true set) behind the ``posterior_predictive`` interface of :mod:`bioreason.models`, so
:class:`~bioreason.sim.OutcomeSimulator` computes p* from NUTS, from SVI and p_true with
the same outcome code. :func:`compare_with_svi` fits SAMS-VAE with both guides on the same
cells and tabulates the three.

One module per concern:

* :mod:`~bioreason.sim.reference.screen`: the reference screen (its config, true
  parameters, simulation and questions);
* :mod:`~bioreason.sim.reference.model`: :class:`LinearSAMSModel`, the model behind p*;
* :mod:`~bioreason.sim.reference.nuts`: the collapsed NumPyro model, NUTS
  (:func:`fit_nuts_reference`, how inference works) and :func:`reference_probability`;
* :mod:`~bioreason.sim.reference.compare`: :func:`compare_with_svi`.
"""

from bioreason.sim.reference.compare import compare_with_svi
from bioreason.sim.reference.model import LinearSAMSModel
from bioreason.sim.reference.nuts import MAX_ENUMERATED, fit_nuts_reference, reference_probability
from bioreason.sim.reference.screen import (
    TRUTH_KEY,
    ReferenceScreenConfig,
    ReferenceTruth,
    reference_questions,
    sams_reference_model,
    simulate_reference_screen,
)

__all__ = [
    "MAX_ENUMERATED",
    "TRUTH_KEY",
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
