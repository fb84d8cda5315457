"""Advantage estimators: one registry, one signature.

Every estimator maps ``rewards`` of shape ``(n_questions, group_size)`` (the rollouts
of a question form its group) to advantages of the same shape::

    estimator(rewards, *, values=None, answers=None, log_probs=None, **options) -> advantages

``values`` (a learned baseline, broadcastable to ``rewards``) is used by estimators
registered with ``requires_values``; ``answers`` (each rollout's answer, e.g. its
probability q) by those with ``requires_answers``; ``log_probs`` (each rollout's log
probability under the sampling policy) by those with ``requires_log_probs``. Every
estimator also registers ``theory``: what :mod:`bioreason.rl.theory` says its update
targets for a proper scoring-rule reward (``"unbiased"``, ``"group_std"`` or ``"none"``,
or a function of the estimator's options returning one of them). Look estimators up
with :func:`get_advantage`, which also understands ``"h_target:<target>"``.

**Validation.** :func:`register_advantage` wraps every estimator in one check, so a
registered estimator (the built-in ones and yours) never sees bad input: ``rewards``
must be a real-valued tensor of shape ``(n_questions, group_size)`` with at least one
question and one rollout, and finite; ``values`` must be finite and of shape
``(n_questions, 1)``, ``(n_questions, group_size)`` or a scalar; ``answers`` and
``log_probs`` finite and of the shape of ``rewards``; the advantages returned must
have the shape of ``rewards`` and be finite (huge rewards can overflow an estimator's
arithmetic). A violation raises a ValueError (TypeError for non-numbers) that names
the estimator and the first offending question (row). The checks are one vectorised
reduction per tensor; the row is located only on failure.

**Layout.** The names above are this package's; the code lives in private modules by
concern: ``_base`` (the registry, the signature and its checks), ``_group`` (the
group-baseline estimators, GRPO, PPO, rejection sampling), ``_h_target`` (the
h-targeted estimator and its Bernstein coefficients), ``_seed_grpo``, ``_lookup``
(method names with options, :func:`get_advantage`) and ``_gae`` (token-level GAE).
"""

from bioreason.rl.advantages._base import (
    ADVANTAGES,
    THEORY_KINDS,
    AdvantageEstimator,
    register_advantage,
)
from bioreason.rl.advantages._gae import gae
from bioreason.rl.advantages._group import (
    grpo,
    grpo_batch_std,
    grpo_no_std,
    ppo,
    reinforce,
    rejection_sampling,
    rloo,
)
from bioreason.rl.advantages._h_target import H_TARGETS, HTarget, h_target, h_target_coefficients
from bioreason.rl.advantages._lookup import get_advantage, parse_method
from bioreason.rl.advantages._seed_grpo import seed_grpo, semantic_entropy

__all__ = [
    "ADVANTAGES",
    "H_TARGETS",
    "THEORY_KINDS",
    "AdvantageEstimator",
    "HTarget",
    "gae",
    "get_advantage",
    "grpo",
    "grpo_batch_std",
    "grpo_no_std",
    "h_target",
    "h_target_coefficients",
    "parse_method",
    "ppo",
    "register_advantage",
    "reinforce",
    "rejection_sampling",
    "rloo",
    "seed_grpo",
    "semantic_entropy",
]
