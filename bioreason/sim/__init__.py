"""The outcome simulator: a fitted perturbation model as a stochastic experiment.

``OutcomeSimulator(model, "screen_hit", threshold=0.1)`` answers questions such as
"does knocking down A and B shift program P's score by more than 0.1 in a replicate
screen?" with the posterior predictive probability p* (``.probability``) and draws 0/1
outcomes of simulated experiments (``.sample``, the ``OutcomeSource`` protocol of
:mod:`bioreason.rl.outcomes`). ``GroundTruthSimulator`` does the same with a synthetic
screen's true parameters (p_true). Its Monte Carlo budget is one object,
``SimulationBudget``.

Task tables are built here: ``build_task(simulator, conditions, readouts)`` asks every
question and writes p*, outcomes and a split into the schema of
:mod:`bioreason.data.tasks`; ``build_task_from_config(TaskConfig)`` does it from a saved
model folder (what ``bioreason build-task`` runs).
"""

from bioreason.sim.budget import SimulationBudget
from bioreason.sim.ensemble import EnsembleSimulator, fit_spreads, pool_fits
from bioreason.sim.ground_truth import GroundTruthModel, GroundTruthSimulator
from bioreason.sim.outcomes import (
    OUTCOMES,
    CellExpression,
    CustomOutcome,
    Direction,
    Outcome,
    ScreenHit,
    make_outcome,
    register_outcome,
)
from bioreason.sim.prompts import PERTURBATION_VERBS, perturbation_type_of, perturbation_verb
from bioreason.sim.readouts import (
    Readout,
    ReadoutSet,
    cell_scores,
    gene_readout,
    learn_programs,
    log_normalize,
    program_readout,
)
from bioreason.sim.reference import (
    LinearSAMSModel,
    ReferenceScreenConfig,
    ReferenceTruth,
    compare_with_svi,
    fit_nuts_reference,
    reference_probability,
    reference_questions,
    sams_reference_model,
    simulate_reference_screen,
)
from bioreason.sim.simulator import (
    FAST_MIN_CELLS,
    OutcomeSimulator,
    describe_condition,
    questions_frame,
)
from bioreason.sim.task_config import (
    CONDITION_SETS,
    TaskConfig,
    build_task_from_config,
)
from bioreason.sim.tasks import OUTCOME_SAMPLING, build_task

__all__ = [
    # NumPyro NUTS reference (bioreason.sim.reference)
    "LinearSAMSModel",
    "ReferenceScreenConfig",
    "ReferenceTruth",
    "compare_with_svi",
    "fit_nuts_reference",
    "reference_probability",
    "reference_questions",
    "sams_reference_model",
    "simulate_reference_screen",
    # task tables (bioreason.sim.tasks, bioreason.sim.task_config)
    "CONDITION_SETS",
    "OUTCOME_SAMPLING",
    "TaskConfig",
    "build_task",
    "build_task_from_config",
    "FAST_MIN_CELLS",
    "OUTCOMES",
    "CellExpression",
    "CustomOutcome",
    "Direction",
    "GroundTruthModel",
    "GroundTruthSimulator",
    "Outcome",
    "OutcomeSimulator",
    "Readout",
    "ReadoutSet",
    "ScreenHit",
    "SimulationBudget",
    "cell_scores",
    "describe_condition",
    "PERTURBATION_VERBS",
    "perturbation_type_of",
    "perturbation_verb",
    "gene_readout",
    "learn_programs",
    "log_normalize",
    "make_outcome",
    "program_readout",
    "questions_frame",
    "pool_fits",
    "fit_spreads",
    "EnsembleSimulator",
    "register_outcome",
]
