"""RL for probability predictors: rewards, advantage estimators, policy losses (all
registries), the shared RL config and training loop, outcome sources, the theory of
what each estimator optimises; the tabular policy and its trainer
(:mod:`bioreason.rl.tabular`), and the causal-LM trainer with its fine-tuning job
(:mod:`bioreason.rl.lm`). The answer protocol (grid, parsers) is
:mod:`bioreason.lm.answer_protocol`'s, re-exported here."""

from bioreason.lm.answer_protocol import ANSWER_PARSERS, AnswerGrid, ParsedAnswers, parse_answers
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
from bioreason.rl.lm import (
    FinetuneConfig,
    LMRLConfig,
    LMTrainer,
    completed_finetune,
    run_finetune,
    save_predictions,
)
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
    kl_k2,
    kl_k3,
    policy_loss,
)
from bioreason.rl.outcomes import BernoulliOutcomes, OutcomeSource, TableOutcomes
from bioreason.rl.rewards import (
    FLOOR_REWARD,
    SCORING_RULES,
    brier_reward,
    log_score,
    score_answers,
)
from bioreason.rl.tabular import TabularPolicy, TabularRLConfig, TabularTrainer

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "ANSWER_PARSERS",
    "FLOOR_REWARD",
    "FinetuneConfig",
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
    "ParsedAnswers",
    "RLConfig",
    "TableOutcomes",
    "TabularPolicy",
    "TabularRLConfig",
    "TabularTrainer",
    "aggregate",
    "brier_reward",
    "clipped_surrogate_loss",
    "clipped_surrogate_weights",
    "completed_finetune",
    "entropy_from_logits",
    "gae",
    "get_advantage",
    "h_target_coefficients",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "log_score",
    "parse_answers",
    "parse_method",
    "policy_loss",
    "register_advantage",
    "run_finetune",
    "run_training_loop",
    "save_predictions",
    "score_answers",
]
