"""Perturbation data: parsing AnnData, validation, count recovery, splits, loaders,
synthetic screens."""

from bioreason.data.genes import prepare, select_genes
from bioreason.data.labels import ParsedLabels, parse_perturbation_labels
from bioreason.data.loader import Batch, MinibatchLoader
from bioreason.data.perturbation import PerturbationData
from bioreason.data.recover import RecoveryReport, recover_counts
from bioreason.data.registry import DatasetEntry, dataset_registry, load_dataset
from bioreason.data.setup import PerturbationSetup
from bioreason.data.simulate import ScreenConfig, ScreenGroundTruth, simulate_screen
from bioreason.data.splits import (
    SPLITS,
    Split,
    make_split,
    split_data_efficiency,
    split_heldout_combinations,
    split_heldout_perturbations,
    split_random,
)
from bioreason.data.validation import validate_counts

__all__ = [
    "SPLITS",
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
    "dataset_registry",
    "load_dataset",
    "make_split",
    "parse_perturbation_labels",
    "prepare",
    "recover_counts",
    "select_genes",
    "simulate_screen",
    "split_data_efficiency",
    "split_heldout_combinations",
    "split_heldout_perturbations",
    "split_random",
    "validate_counts",
]
