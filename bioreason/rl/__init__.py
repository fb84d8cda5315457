"""RL for probability predictors: rewards, advantage estimators, policy losses, the
tabular policy and its trainer, and the theory of what each estimator optimises."""

from bioreason.rl.advantages import (
    ADVANTAGES,
    H_TARGETS,
    HTarget,
    gae,
    get_advantage,
    h_target_coefficients,
    register_advantage,
)
from bioreason.rl.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    aggregate,
    clipped_surrogate_loss,
    clipped_surrogate_weights,
    entropy_from_logits,
    kl_k1,
    kl_k3,
    policy_loss,
)
from bioreason.rl.outcomes import BernoulliOutcomes, OutcomeSource
from bioreason.rl.policies import TabularPolicy
from bioreason.rl.rewards import (
    FLOOR_REWARD,
    SCORING_RULES,
    AnswerGrid,
    parse_answers,
    score_answers,
)
from bioreason.rl.trainer import TabularRLConfig, TabularTrainer

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "FLOOR_REWARD",
    "H_TARGETS",
    "KL_ESTIMATORS",
    "SCORING_RULES",
    "AnswerGrid",
    "BernoulliOutcomes",
    "HTarget",
    "OutcomeSource",
    "TabularPolicy",
    "TabularRLConfig",
    "TabularTrainer",
    "aggregate",
    "clipped_surrogate_loss",
    "clipped_surrogate_weights",
    "entropy_from_logits",
    "gae",
    "get_advantage",
    "h_target_coefficients",
    "kl_k1",
    "kl_k3",
    "parse_answers",
    "policy_loss",
    "register_advantage",
    "score_answers",
]
