"""Names inside a run folder, read by the pipelines, the commands and the report alike:
the stage names, the files each stage and each fine-tuning job writes, the folder name of
a method, the columns of a predictions table, the one rule for which probability of a
prediction is judged, and the invalid-answer limit of the verdict.

This module imports no other project module (and nothing heavy), so the command-line
help and the report read it without importing torch.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = [
    "CHECKPOINT_FILE",
    "DATA_FILE",
    "EVAL_LOG_FILE",
    "INVALID_RATE_FLAG",
    "INVALID_RATE_LIMIT",
    "LOG_FILE",
    "METRICS_FILE",
    "MODEL_DIR",
    "fit_model_dir",
    "PIPELINE_RECORD",
    "PREDICTIONS_FILE",
    "PREDICTION_COLUMNS",
    "REPORT_FILES_DIR",
    "REPORT_HTML",
    "REPORT_MD",
    "RUNS_FILE",
    "SPLIT_FILE",
    "STAGES",
    "SUMMARY_FILE",
    "SUMMARY_MD",
    "TASK_FILE",
    "judged_probability",
    "job_folder_name",
    "method_slug",
]

#: the stage names, in order (a task from a file has only the last four)
STAGES = ("data", "vae", "task", "warm_start", "finetune", "calibration", "tabular")

# ---------------------------------------------------------------- files of the stages
#: ``data`` stage: the cells and the split of their indices
DATA_FILE = "data.h5ad"
SPLIT_FILE = "split.npz"
#: ``task`` stage (and ``bioreason build-task --out``): the task table
TASK_FILE = "task.parquet"
#: a fitted model's folder (``vae`` stage; a warm start's and a fine-tuning job's LM)
MODEL_DIR = "model"


def fit_model_dir(fit: int) -> str:
    """The ``vae`` stage's folder of fit ``fit`` (``vae.fits``): ``model`` for fit 0,
    ``model_fit<k>`` for the others."""
    return MODEL_DIR if fit == 0 else f"{MODEL_DIR}_fit{fit}"


#: ``calibration`` stage: one row per job, one row per method, as a table and markdown
RUNS_FILE = "runs.csv"
SUMMARY_FILE = "summary.csv"
SUMMARY_MD = "summary.md"
#: the run folder: the pipeline's record, and the report
PIPELINE_RECORD = "pipeline.json"
REPORT_HTML = "report.html"
REPORT_MD = "report.md"
REPORT_FILES_DIR = "report_files"

# ---------------------------------------------------------------- files of a fine-tuning job
#: held-out predictions of every evaluation (:data:`PREDICTION_COLUMNS`)
PREDICTIONS_FILE = "predictions.parquet"
#: the training log (one row every ``log_every`` steps) and the evaluations' log
LOG_FILE = "log.csv"
EVAL_LOG_FILE = "eval.csv"
#: the trainer's last checkpoint (resume)
CHECKPOINT_FILE = "checkpoint.pt"
#: the job's result: its settings, scores and timings (one schema, every caller)
METRICS_FILE = "metrics.json"

#: columns of a predictions table (``LMTrainer.predict``)
PREDICTION_COLUMNS = (
    "question_id",
    "method",
    "seed",
    "step",
    "q_sampled",
    "q_exact",
    "p_star",
    "p_true",
    "outcome",
    "split",
    "n_valid",
)

#: held-out invalid-answer rate above which a method counts as not answering: its
#: metrics then score the answer distribution after a forced ``<answer>`` (q_exact), not
#: anything the policy writes, and the verdict and the report say so
INVALID_RATE_LIMIT = 0.5
#: held-out invalid-answer rate above which a method still answers but is flagged: the
#: verdict names it with its rate (the project's target is at most 1 % invalid answers)
INVALID_RATE_FLAG = 0.01


def method_slug(method: str) -> str:
    """A folder name for a method (``seed_grpo:base=grpo`` -> ``seed_grpo-base-grpo``).

    Returns
    -------
    str
    """
    return re.sub(r"[^A-Za-z0-9_]+", "-", method).strip("-")


def job_folder_name(method: str, seed: int) -> str:
    """The folder of one fine-tuning job inside the ``finetune`` stage
    (``seed_grpo:base=grpo``, seed 1 -> ``seed_grpo-base-grpo_seed1``).

    Returns
    -------
    str
    """
    return f"{method_slug(method)}_seed{int(seed)}"


def judged_probability(predictions: Any) -> tuple[np.ndarray, str]:
    """The probability of each prediction that is scored, and its source.

    ``q_exact`` (the policy's mean answer at the answer position, no sampling noise)
    when every prediction has one, else ``q_sampled`` (the mean of the valid sampled
    answers; NaN where none was valid). One rule for the trainer's evaluation, a job's
    scores, the calibration stage and the report.

    Parameters
    ----------
    predictions : pandas.DataFrame or mapping
        With ``q_exact`` and/or ``q_sampled`` columns (a missing one counts as NaN).

    Returns
    -------
    q : ndarray of float, shape (n_predictions,)
    source : {"exact", "sampled"}
    """
    sampled = np.asarray(predictions["q_sampled"], dtype=float)
    if "q_exact" in predictions:
        exact = np.asarray(predictions["q_exact"], dtype=float)
        if np.isfinite(exact).all():
            return exact, "exact"
    return sampled, "sampled"
