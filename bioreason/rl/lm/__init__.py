"""The LM side of RL: fine-tuning a causal LM that answers probabilities.

:class:`LMRLConfig` (settings) and :class:`LMTrainer` (the trainer), its grouped
rollouts (:mod:`~bioreason.rl.lm.rollout`), lean Llama forward
(:mod:`~bioreason.rl.lm.fast`), several processes (:mod:`~bioreason.rl.lm.distributed`),
and the one fine-tuning job (:func:`run_finetune`, settings :class:`FinetuneConfig`)
that ``bioreason finetune`` and every pipeline job run.
"""

from bioreason.rl.lm.callbacks import StopAfterSteps, TrainerCallback
from bioreason.rl.lm.config import TRL_NAMES, LMRLConfig
from bioreason.rl.lm.evaluation import save_predictions
from bioreason.rl.lm.job import FinetuneConfig, completed_finetune, run_finetune
from bioreason.rl.lm.task_checks import check_task_table
from bioreason.rl.lm.trainer import LMTrainer

__all__ = [
    "TRL_NAMES",
    "FinetuneConfig",
    "LMRLConfig",
    "LMTrainer",
    "StopAfterSteps",
    "TrainerCallback",
    "check_task_table",
    "completed_finetune",
    "run_finetune",
    "save_predictions",
]
