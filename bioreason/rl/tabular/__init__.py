"""The tabular side of RL: a categorical policy per question category over the answer
grid (:class:`TabularPolicy`) and its trainer (:class:`TabularTrainer`, settings
:class:`TabularRLConfig`), the synthetic calibration experiment's setting."""

from bioreason.rl.tabular.policy import TabularPolicy
from bioreason.rl.tabular.trainer import TabularRLConfig, TabularTrainer

__all__ = ["TabularPolicy", "TabularRLConfig", "TabularTrainer"]
