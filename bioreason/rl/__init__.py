"""RL for probability predictors: rewards, advantage estimators, policy losses (all
registries), the shared RL config and training loop, the tabular policy and its
trainer, the causal-LM trainer, and the theory of what each estimator optimises."""

from bioreason.rl.advantages import (
    ADVANTAGES,
    H_TARGETS,
    HTarget,
    gae,
    get_advantage,
    h_target_coefficients,
    parse_method,
    register_advantage,
)
from bioreason.rl.answer_formats import ANSWER_PARSERS
from bioreason.rl.lm_trainer import LMRLConfig, LMTrainer, save_predictions
from bioreason.rl.loop import RLConfig, run_training_loop
from bioreason.rl.losses import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
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
    brier_reward,
    log_score,
    parse_answers,
    score_answers,
)
from bioreason.rl.trainer import TabularRLConfig, TabularTrainer

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "ANSWER_PARSERS",
    "FLOOR_REWARD",
    "H_TARGETS",
    "KL_ESTIMATORS",
    "LMRLConfig",
    "LMTrainer",
    "POLICY_LOSSES",
    "SCORING_RULES",
    "AnswerGrid",
    "BernoulliOutcomes",
    "HTarget",
    "OutcomeSource",
    "RLConfig",
    "TabularPolicy",
    "TabularRLConfig",
    "TabularTrainer",
    "aggregate",
    "brier_reward",
    "clipped_surrogate_loss",
    "clipped_surrogate_weights",
    "entropy_from_logits",
    "gae",
    "get_advantage",
    "h_target_coefficients",
    "kl_k1",
    "kl_k3",
    "log_score",
    "parse_answers",
    "parse_method",
    "policy_loss",
    "register_advantage",
    "run_training_loop",
    "save_predictions",
    "score_answers",
]
