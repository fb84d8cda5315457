"""Calibration metrics and figures (numpy, pandas, scikit-learn, matplotlib only)."""

from bioreason.calibration.metrics import (
    METRICS,
    REFERENCE_METRICS,
    accuracy,
    adaptive_calibration_error,
    auroc,
    bootstrap_ci,
    brier_loss,
    calibration_bins,
    ece_to_reference,
    expected_calibration_error,
    log_loss,
    max_calibration_error,
    mean_absolute_error_to_reference,
    overconfidence,
    sharpness,
    summarize,
)
from bioreason.calibration.plots import (
    plot_prediction_histogram,
    plot_reference,
    plot_reliability_diagram,
)
from bioreason.calibration.table import (
    BOOTSTRAP_METRICS,
    answer_probabilities,
    calibration_table,
    format_calibration_table,
)

__all__ = [
    "BOOTSTRAP_METRICS",
    "METRICS",
    "REFERENCE_METRICS",
    "accuracy",
    "adaptive_calibration_error",
    "answer_probabilities",
    "auroc",
    "bootstrap_ci",
    "brier_loss",
    "calibration_bins",
    "calibration_table",
    "ece_to_reference",
    "expected_calibration_error",
    "format_calibration_table",
    "log_loss",
    "max_calibration_error",
    "mean_absolute_error_to_reference",
    "overconfidence",
    "plot_prediction_histogram",
    "plot_reference",
    "plot_reliability_diagram",
    "sharpness",
    "summarize",
]
