"""Perturbation data: parsing AnnData (one PerturbationSetup), validation, count
recovery, splits, loaders, synthetic screens, expression summaries (condition means,
average treatment effects), and the task table schema with its loaders (tasks built from
a simulator: :func:`bioreason.sim.build_task`)."""

from bioreason.data.expression import (
    ate_agreement,
    average_treatment_effect,
    condition_means,
    differential_expression,
    ground_truth_ate,
    log_normalized,
    pooled_ate_agreement,
)
from bioreason.data.genes import prepare, select_genes
from bioreason.data.h5ad import read_h5ad
from bioreason.data.labels import ParsedLabels, canonical_conditions, parse_perturbation_labels
from bioreason.data.loader import Batch, MinibatchLoader
from bioreason.data.perturbation import PerturbationData
from bioreason.data.recover import RecoveryReport, recover_counts
from bioreason.data.registry import DatasetEntry, dataset_registry, load_dataset
from bioreason.data.setup import PerturbationSetup
from bioreason.data.simulate import ScreenConfig, ScreenGroundTruth, simulate_screen
from bioreason.data.splits import (
    SPLITS,
    Split,
    composable_combinations,
    make_split,
    parts_never_alone,
    split_data_efficiency,
    split_heldout_combinations,
    split_heldout_perturbations,
    split_norman_reference,
    split_random,
)
from bioreason.data.tasks import (
    DEFAULT_TEMPLATE,
    TASK_COLUMNS,
    describe_task,
    format_task_description,
    load_replogle_task,
    load_task,
    read_task,
    save_task,
    saved_task_summary,
    split_questions,
    task_summary,
)
from bioreason.data.validation import validate_counts

__all__ = [
    "DEFAULT_TEMPLATE",
    "SPLITS",
    "TASK_COLUMNS",
    "Batch",
    "DatasetEntry",
    "MinibatchLoader",
    "ParsedLabels",
    "PerturbationData",
    "PerturbationSetup",
    "RecoveryReport",
    "ScreenConfig",
    "ScreenGroundTruth",
    "Split",
    "ate_agreement",
    "average_treatment_effect",
    "canonical_conditions",
    "composable_combinations",
    "condition_means",
    "dataset_registry",
    "differential_expression",
    "ground_truth_ate",
    "load_dataset",
    "load_replogle_task",
    "load_task",
    "log_normalized",
    "make_split",
    "parse_perturbation_labels",
    "parts_never_alone",
    "pooled_ate_agreement",
    "prepare",
    "recover_counts",
    "save_task",
    "select_genes",
    "simulate_screen",
    "split_data_efficiency",
    "split_heldout_combinations",
    "split_heldout_perturbations",
    "split_norman_reference",
    "split_questions",
    "split_random",
    "task_summary",
    "validate_counts",
    "describe_task",
    "format_task_description",
    "read_h5ad",
    "read_task",
    "saved_task_summary",
]
