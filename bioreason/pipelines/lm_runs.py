"""Language-model calibration runs: one fine-tuning job per method x seed from a shared
warm start, scored on held-out questions, and the per-method summary with bootstrap
intervals. Used by the pipeline's ``warm_start`` / ``finetune`` / ``calibration`` stages
(:mod:`bioreason.pipelines.run`) and by ``benchmarks/lm_calibration.py``.

A job is the fine-tuning job of ``bioreason finetune``
(:func:`bioreason.rl.lm.run_finetune`), described by a plain dict so that it crosses
process boundaries: ``task`` (parquet path), ``folder`` (the job's folder), ``config``
(a :class:`~bioreason.rl.lm.FinetuneConfig` or its ``to_dict()``: the model is the
seed's warm start folder), and optionally ``force`` and ``progress``. :func:`run_jobs`
runs jobs in worker processes; :func:`warm_start_folder` writes a seed's warm start
(through the stage helper, :func:`bioreason.stage.run_stage`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioreason.run_layout import MODEL_DIR, judged_probability

__all__ = [
    "METHODS",
    "RUN_COLUMNS",
    "SUMMARY_METRICS",
    "add_fixed_points",
    "interval_coverage",
    "job_config",
    "markdown_table",
    "prepare_job_folder",
    "read_job_row",
    "run_job",
    "run_jobs",
    "summarize_methods",
    "warm_start_folder",
]

METHODS = (
    "grpo",
    "grpo_no_std",
    "grpo_batch_std",
    "rloo",
    "reinforce",
    "ppo",
    "seed_grpo",
    "seed_grpo:base=grpo",
    "h_target:log",
)
#: columns of ``runs.csv`` besides the metrics of ``bioreason.calibration.summarize``
RUN_COLUMNS = (
    "method",
    "critic",
    "seed",
    "steps",
    "n_test",
    "q_source",
    "invalid_rate",
    "drift_grpo_predicted_start",
    "drift_method_predicted_start",
    "drift_measured_start",
    "drift_grpo_predicted",
    "drift_method_predicted",
    "drift_measured",
    "reward_mean_last",
    "train_seconds",
    "seconds_per_step",
)
#: metrics of ``summary.csv``, each with ``_low`` / ``_high`` and ``_seed_sd``: against
#: the outcomes, against p* and p_true; question by question (``overconfidence_question``:
#: mean of sign(p* - 1/2)(q - p*); ``overconfidence`` stays the average-level
#: mean |q - 1/2| - mean |p* - 1/2|; ``overconfidence_answer``: mean of
#: sign(q - 1/2)(q - p*), 0 for any answer calibrated against p*; corr and Spearman of
#: q with p*, sd of q across questions, AUROC against the outcomes and against
#: p* > 1/2); and the theory's fixed point against the measured end state
#: (``mae_fixed_point``, ``corr_fixed_point``, and the overconfidence the fixed point
#: predicts, ``overconfidence_fixed_point``)
SUMMARY_METRICS = (
    "ece",
    "adaptive_ece",
    "brier",
    "log_loss",
    "mae_p_star",
    "mae_p_true",
    "overconfidence",
    "overconfidence_p_true",
    "overconfidence_question",
    "overconfidence_question_p_true",
    "overconfidence_answer",
    "overconfidence_answer_p_true",
    "corr_p_star",
    "spearman_p_star",
    "sd_q",
    "auroc",
    "auroc_p_star",
    "mae_fixed_point",
    "corr_fixed_point",
    "overconfidence_fixed_point",
)


def job_config(job: dict[str, Any]) -> Any:
    """The :class:`~bioreason.rl.lm.FinetuneConfig` of a job dict: its ``config`` (a
    FinetuneConfig, or a mapping of its fields).

    Returns
    -------
    FinetuneConfig
    """
    from bioreason.rl.lm import FinetuneConfig

    config = job["config"]
    return config if isinstance(config, FinetuneConfig) else FinetuneConfig.from_dict(config)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job (:func:`bioreason.rl.lm.run_finetune`) into its folder.

    Parameters
    ----------
    job : dict
        ``task``, ``folder``, ``config`` (see :func:`job_config`), and optionally
        ``force`` (replace files the job did not write) and ``progress``.

    Returns
    -------
    dict
        The job's ``metrics.json`` (one row of ``runs.csv``).
    """
    from bioreason.rl.lm import run_finetune

    return run_finetune(
        job["task"],
        job["folder"],
        job_config(job),
        force=job.get("force", False),
        progress=job.get("progress", False),
        log=None,
    )


def prepare_job_folder(folder: Path, job: dict[str, Any], force: bool) -> bool:
    """True when the job is finished and up to date in ``folder`` (skip it); otherwise
    False, and the job (``job["force"]``, set here) replaces files it did not write only
    when ``force``.

    Returns
    -------
    bool

    Raises
    ------
    FileExistsError
        ``folder`` holds files but no manifest (bioreason did not write them), and
        ``force`` is false: refused before any job runs.
    """
    from bioreason.rl.lm import completed_finetune
    from bioreason.stage import preflight_stage

    if completed_finetune(job["task"], folder, job_config(job)) is not None:
        return True
    preflight_stage(folder, force=force)
    job["force"] = force
    return False


# ----------------------------------------------------------------------------- summary


def _metric_functions(n_bins: int = 10) -> dict[str, tuple[Callable[..., float], tuple[str, ...]]]:
    """Summary metric -> (function of (q, *columns), the prediction columns it reads)."""
    from bioreason.calibration import (
        adaptive_calibration_error,
        auroc,
        auroc_to_reference,
        brier_loss,
        correlation_to_reference,
        expected_calibration_error,
        log_loss,
        mean_absolute_error_to_reference,
        overconfidence,
        overconfidence_per_answer,
        overconfidence_per_question,
        prediction_sd,
        rank_correlation_to_reference,
    )

    return {
        "ece": (lambda q, y: expected_calibration_error(y, q, n_bins=n_bins), ("outcome",)),
        "adaptive_ece": (
            lambda q, y: adaptive_calibration_error(y, q, n_bins=n_bins),
            ("outcome",),
        ),
        "brier": (lambda q, y: brier_loss(y, q), ("outcome",)),
        "log_loss": (lambda q, y: log_loss(y, q), ("outcome",)),
        "mae_p_star": (mean_absolute_error_to_reference, ("p_star",)),
        "mae_p_true": (mean_absolute_error_to_reference, ("p_true",)),
        "overconfidence": (overconfidence, ("p_star",)),
        "overconfidence_p_true": (overconfidence, ("p_true",)),
        "overconfidence_question": (overconfidence_per_question, ("p_star",)),
        "overconfidence_question_p_true": (overconfidence_per_question, ("p_true",)),
        "overconfidence_answer": (overconfidence_per_answer, ("p_star",)),
        "overconfidence_answer_p_true": (overconfidence_per_answer, ("p_true",)),
        "corr_p_star": (correlation_to_reference, ("p_star",)),
        "spearman_p_star": (rank_correlation_to_reference, ("p_star",)),
        "sd_q": (lambda q: prediction_sd(q), ()),
        "auroc": (lambda q, y: auroc(y, q), ("outcome",)),
        "auroc_p_star": (auroc_to_reference, ("p_star",)),
        "mae_fixed_point": (mean_absolute_error_to_reference, ("fixed_point",)),
        "corr_fixed_point": (correlation_to_reference, ("fixed_point",)),
        # the theory's per-question overconfidence at its fixed point: a prediction, the
        # same for every seed (its interval covers the conditions only)
        "overconfidence_fixed_point": (
            lambda q, fixed, p: overconfidence_per_question(fixed, p),
            ("fixed_point", "p_star"),
        ),
    }


#: columns of a predictions table that hold one value per question (the same for every
#: seed of a method): what a metric is judged against, and the question's condition
_QUESTION_COLUMNS = ("outcome", "p_star", "p_true", "fixed_point", "fixed_point_pooled")


def interval_coverage(n_seeds: int, clusters: str | None, n_boot: int) -> str:
    """What a summary interval covers, in words (the tables and the verdict say it).

    Parameters
    ----------
    n_seeds : int
        Seeds of the method (more than one: the seeds are resampled).
    clusters : str or None
        What is resampled as a whole (``"conditions"``), None for single questions.
    n_boot : int
        Bootstrap replicates (0: no interval).

    Returns
    -------
    str
        E.g. ``"95 % bootstrap over seeds and conditions"``.
    """
    if n_boot == 0:
        return "no interval (n_boot = 0)"
    unit = clusters or "questions"
    if n_seeds > 1:
        return f"95 % bootstrap over seeds and {unit}"
    return f"95 % bootstrap over {unit}; one seed, so the variation between seeds is not covered"


def summarize_methods(
    predictions: pd.DataFrame, runs: pd.DataFrame, *, n_boot: int, seed: int = 0
) -> pd.DataFrame:
    """One row per method: metrics averaged over seeds with 95 % bootstrap intervals
    over what varies, the seeds and the conditions.

    A replicate resamples, independently, the method's seeds and the test questions'
    conditions (every question of a drawn condition: questions of one condition share
    simulated cells, so they are not independent), and averages the metric over the
    drawn seeds on the drawn questions (:func:`bioreason.calibration.cluster_bootstrap_ci`,
    one generator seed for every metric and method, so every row sees the same
    resamples). Without a ``condition`` column every question is its own cluster;
    with one seed the interval covers the conditions only. The column ``interval``
    says which (:func:`interval_coverage`). ``<metric>_seed_sd`` is the spread across
    seeds.

    Parameters
    ----------
    predictions : pandas.DataFrame
        Every run's test predictions (``method``, ``seed``, ``question_id``,
        ``q_exact`` / ``q_sampled``, ``outcome``, ``p_star``, ``p_true``; optionally
        ``condition``, and ``fixed_point`` / ``fixed_point_pooled`` from
        :func:`add_fixed_points`).
    runs : pandas.DataFrame
        ``runs.csv`` (for ``q_source``, ``invalid_rate``, the drift columns and timings).
    n_boot : int
        Bootstrap replicates (0: no intervals).
    seed : int
        The bootstrap generator's seed.

    Returns
    -------
    pandas.DataFrame
        ``method``, ``n_seeds``, ``n_test``, ``n_conditions``, ``interval``;
        ``q_source`` (which probability is scored) and ``invalid_rate`` (the sampled
        invalid-answer rate, seed mean); for each of :data:`SUMMARY_METRICS` the value,
        ``_low``, ``_high``, ``_seed_sd`` (NaN when a column it needs is missing or not
        finite, or where it is undefined, e.g. a correlation of a constant q);
        ``q_spread`` (= ``sd_q``, its earlier name), ``mean_q``, ``mean_p_star``,
        ``fixed_point_pooled`` (the theory's end state of one answer for all, at the
        mean p*); the seed means of the drift columns and ``seconds_per_step``.
    """
    from bioreason.calibration import cluster_bootstrap_ci

    functions = _metric_functions()
    clustered = "condition" in predictions and predictions["condition"].notna().all()
    rows = []
    for method in dict.fromkeys(runs["method"]):
        mine = predictions[predictions["method"] == method]
        frame = pd.concat(
            [part.assign(q=judged_probability(part)[0]) for _, part in mine.groupby("seed")]
        )
        wide = frame.pivot(index="question_id", columns="seed", values="q").dropna()
        first = frame.drop_duplicates("question_id").set_index("question_id").loc[wide.index]
        outcome = first["outcome"].to_numpy(dtype=float)
        keep = np.isin(outcome, (0.0, 1.0))
        q = wide.to_numpy(dtype=float)[keep]
        first = first[keep]
        clusters = first["condition"].astype(str).to_numpy() if clustered else None
        n_seeds = q.shape[1]
        row: dict[str, Any] = {
            "method": method,
            "n_seeds": n_seeds,
            "n_test": len(q),
            "n_conditions": len(set(clusters)) if clusters is not None else len(q),
            "interval": interval_coverage(n_seeds, "conditions" if clustered else None, n_boot),
        }
        columns = {
            c: first[c].to_numpy(dtype=float) for c in _QUESTION_COLUMNS if c in first.columns
        }
        for name, (fn, needs) in functions.items():
            arrays = [columns.get(c) for c in needs]
            known = all(a is not None and np.isfinite(a).all() for a in arrays)
            if len(q) == 0 or not known:
                row.update(dict.fromkeys((name, f"{name}_low", f"{name}_high"), math.nan))
                row[f"{name}_seed_sd"] = math.nan
                continue
            per_seed = [fn(q[:, s], *arrays) for s in range(n_seeds)]
            if n_boot:
                value, low, high = cluster_bootstrap_ci(
                    fn, q, *arrays, clusters=clusters, n_boot=n_boot, seed=seed
                )
            else:
                value, low, high = float(np.mean(per_seed)), math.nan, math.nan
            row.update({name: value, f"{name}_low": low, f"{name}_high": high})
            row[f"{name}_seed_sd"] = float(np.std(per_seed, ddof=1)) if n_seeds > 1 else 0.0
        row["q_spread"] = row["sd_q"]
        row["mean_q"] = float(q.mean()) if len(q) else math.nan
        p_star = columns.get("p_star")
        row["mean_p_star"] = float(p_star.mean()) if p_star is not None and len(q) else math.nan
        pooled = columns.get("fixed_point_pooled")
        row["fixed_point_pooled"] = float(pooled[0]) if pooled is not None and len(q) else math.nan
        mine_runs = runs[runs["method"] == method]
        if "q_source" in mine_runs:
            row["q_source"] = "/".join(sorted(set(mine_runs["q_source"].astype(str))))
        for column in (
            "invalid_rate",
            "drift_grpo_predicted_start",
            "drift_method_predicted",
            "drift_grpo_predicted",
            "drift_measured",
            "seconds_per_step",
        ):
            row[column] = float(mine_runs[column].mean()) if column in mine_runs else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def add_fixed_points(
    predictions: pd.DataFrame,
    *,
    answers: Any,
    rule: str = "log",
    options: dict[str, Any] | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k2",
) -> pd.DataFrame:
    """The theory's end state of each prediction's question, as two new columns.

    For each method, :func:`bioreason.rl.theory.question_fixed_points` at each test
    question's p* (p_true where the table has no p*): ``fixed_point``, where the theory
    says a method that answers question by question ends, and ``fixed_point_pooled``,
    where it says one answer for every question ends (the fixed point at the mean
    p*). With a KL term (``kl_coef`` > 0) the end state is that of a policy held by the
    KL to a uniform reference (the warm start's answers):
    :func:`bioreason.rl.theory.kl_fixed_points`, GRPO's normalisation for estimators
    whose theory is ``group_std``, computed at 101 probabilities and interpolated. NaN
    where the estimator declares no theory, or without a reference. Methods that share
    a theory (e.g. ``grpo`` and ``seed_grpo:base=grpo``) are computed once.

    Parameters
    ----------
    predictions : pandas.DataFrame
        ``method``, ``question_id``, ``p_star`` and/or ``p_true``, one row per method x
        seed x question.
    answers : Tensor or array, shape (n_answers,)
        The answer grid's probabilities (``LMRLConfig.grid.probabilities()``).
    rule : str
        The reward's scoring rule (``LMRLConfig.reward``).
    options : dict, optional
        The estimators' options (``LMRLConfig.advantage_options``).
    kl_coef, kl_estimator
        The KL weight at the end of training and its estimator (``LMRLConfig``); 0: the
        fixed points without a KL term.

    Returns
    -------
    pandas.DataFrame
        A copy of ``predictions`` with ``fixed_point`` and ``fixed_point_pooled``.
    """
    import torch

    from bioreason.rl.theory import kl_fixed_points, question_fixed_points, theory_kind

    def fixed_points(method: str, kind: str, p: np.ndarray) -> tuple[np.ndarray, float]:
        if kl_coef <= 0 or kind == "none":
            per_question, pooled = question_fixed_points(
                method, torch.as_tensor(p), answers, rule, options=options
            )
            return per_question.numpy(), float(pooled)
        # on a grid of 101 probabilities, interpolated: the ascent costs ~30 ms a question
        grid = np.linspace(0.0, 1.0, 101)
        at_grid = kl_fixed_points(
            torch.as_tensor(grid),
            answers,
            kl_coef,
            grpo=kind == "group_std",
            rule=rule,
            estimator=kl_estimator,
        ).numpy()
        return np.interp(p, grid, at_grid), float(np.interp(p.mean(), grid, at_grid))

    answers = torch.as_tensor(answers, dtype=torch.float64)
    out = predictions.copy()
    out["fixed_point"] = math.nan
    out["fixed_point_pooled"] = math.nan
    reference = None
    for column in ("p_star", "p_true"):
        if column in out and np.isfinite(out[column].to_numpy(dtype=float)).all():
            reference = column
            break
    if reference is None or out.empty:
        return out
    done: dict[tuple[str, tuple[float, ...]], tuple[np.ndarray, float]] = {}
    for method, rows in out.groupby("method", sort=False).groups.items():
        questions = out.loc[rows].drop_duplicates("question_id")
        p = np.clip(questions[reference].to_numpy(dtype=float), 0.0, 1.0)
        kind = theory_kind(str(method), options)
        key = (kind, tuple(p))
        if key not in done:
            done[key] = fixed_points(str(method), kind, p)
        per_question, pooled = done[key]
        lookup = dict(zip(questions["question_id"], per_question))
        out.loc[rows, "fixed_point"] = out.loc[rows, "question_id"].map(lookup).to_numpy()
        out.loc[rows, "fixed_point_pooled"] = pooled
    return out


def _cell(row: pd.Series, name: str) -> str:
    value = row.get(name, math.nan)
    if not np.isfinite(value):
        return "n/a"
    low, high = row.get(f"{name}_low", math.nan), row.get(f"{name}_high", math.nan)
    if np.isfinite(low) and np.isfinite(high):
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"
    return f"{value:.3f}"


def _number(value: float, digits: int = 3) -> str:
    return f"{value:+.{digits}f}" if np.isfinite(value) else "n/a"


def _invalid(row: pd.Series) -> str:
    rate = row.get("invalid_rate", math.nan)
    source = row.get("q_source", "")
    text = f"{rate:.3f}" if np.isfinite(rate) else "n/a"
    return f"{text} (q_{source})" if isinstance(source, str) and source else text


def _reference_cell(row: pd.Series, name: str) -> str:
    """``name`` against p* when the row has it, else against p_true (said in the cell)."""
    if np.isfinite(row.get(name, math.nan)) or not np.isfinite(row.get(f"{name}_p_true", math.nan)):
        return _cell(row, name)
    return _cell(row, f"{name}_p_true") + " (vs p_true)"


def markdown_table(summary: pd.DataFrame) -> str:
    """The summary as a markdown table: per method the sampled invalid-answer rate
    beside the scored probability, the calibration figures, the question-level figures
    and the theory's fixed point against the measured end state, each with its interval.

    Returns
    -------
    str
        One header, one separator and one line per method; then a blank line and a line
        saying what the intervals cover (the ``interval`` column).
    """
    header = [
        "method",
        "seeds",
        "invalid answers, sampled (q scored)",
        "ECE vs y [CI]",
        "mean \\|q - p*\\| [CI]",
        "mean \\|q - p_true\\| [CI]",
        "overconfidence vs p*, per question [CI]",
        "overconfidence vs p*, keyed on q [CI]",
        "corr(q, p*) [CI]",
        "Spearman(q, p*) [CI]",
        "sd of q [CI]",
        "AUROC vs y [CI]",
        "AUROC vs p* > 1/2 [CI]",
        "average-level overconfidence [CI]",
        "Brier [CI]",
        "log loss [CI]",
        "theory fixed point: mean \\|q - fp\\| [CI] / overconfidence predicted / measured",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for _, row in summary.iterrows():
        theory = " / ".join(
            (
                _cell(row, "mae_fixed_point"),
                _number(row.get("overconfidence_fixed_point", math.nan)),
                _number(row.get("overconfidence_question", math.nan)),
            )
        )
        cells = [
            str(row["method"]),
            str(int(row["n_seeds"])),
            _invalid(row),
            _cell(row, "ece"),
            _cell(row, "mae_p_star"),
            _cell(row, "mae_p_true"),
            _reference_cell(row, "overconfidence_question"),
            _reference_cell(row, "overconfidence_answer"),
            _cell(row, "corr_p_star"),
            _cell(row, "spearman_p_star"),
            _cell(row, "sd_q"),
            _cell(row, "auroc"),
            _cell(row, "auroc_p_star"),
            _reference_cell(row, "overconfidence"),
            _cell(row, "brier"),
            _cell(row, "log_loss"),
            theory,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    coverage = sorted(set(summary["interval"].astype(str))) if "interval" in summary else []
    lines += [
        "",
        "[CI]: "
        + ("; ".join(coverage) or "95 % bootstrap")
        + ". Overconfidence per question: mean of sign(p* - 1/2)(q - p*), positive when "
        "answers are pushed outward past p*; average-level: mean |q - 1/2| - mean "
        "|p* - 1/2|. Invalid answers: the share of sampled answers that could not be "
        "read (q_exact scores the answer distribution whatever the policy writes).",
    ]
    return "\n".join(lines)


def read_job_row(path: Path) -> dict[str, Any]:
    """A finished job's ``metrics.json`` as a row (``None`` read back as NaN).

    Returns
    -------
    dict of str to Any
    """
    row = json.loads(path.read_text())
    return {k: (math.nan if v is None else v) for k, v in row.items()}


# ----------------------------------------------------------------------------- jobs


def warm_start_folder(
    task_path: str | Path,
    folder: str | Path,
    seed: int,
    *,
    model: str = "tiny",
    steps: int = 30,
    lr: float = 1e-3,
    device: str = "cpu",
    force: bool = False,
    trainable: str = "answer_rows",
    open_answer: bool = False,
) -> Path:
    """Warm-start a predictor on the task's train prompts and save it to
    ``folder/model``, through the stage helper (:func:`bioreason.stage.run_stage`:
    skipped when ``folder``'s manifest matches these settings and the task).

    ``model="tiny"`` builds the default small LM with a word-level tokenizer over every
    prompt of the task; any other value is loaded with :func:`bioreason.lm.load_predictor`
    (both by :func:`bioreason.rl.lm.job.prepare_predictor`, as a fine-tuning job's own
    warm start). The warm start (:func:`bioreason.lm.warm_start`) teaches the answer
    format with uniform answers, ``steps`` supervised steps at ``lr`` (0: none), training
    ``trainable`` (``"answer_rows"``: the rows of the tokens the model writes), on prompts
    that end with ``<answer>`` when ``open_answer``. The folder's ``result.json`` records
    the prompt spread at the answer position before and after it.

    Returns
    -------
    Path
        The saved predictor folder (``load_predictor`` reads it).
    """
    from bioreason.stage import run_stage

    folder = Path(folder)

    def compute(stage_dir: Path) -> dict[str, Any]:
        from bioreason.data.tasks import load_task
        from bioreason.rl.lm.job import prepare_predictor

        task = load_task(task_path)
        report: dict[str, float] = {}
        predictor = prepare_predictor(
            model,
            task,
            device=device,
            seed=seed,
            warm_start_steps=steps,
            warm_start_lr=lr,
            warm_start_trainable=trainable,
            open_answer=open_answer,
            progress=False,
            report=report,
        )
        predictor.save(stage_dir / MODEL_DIR, overwrite=True)
        return {"model": MODEL_DIR, "steps": steps, **report}

    run_stage(
        folder,
        {
            "model": model,
            "steps": steps,
            "lr": lr,
            "trainable": trainable,
            "open_answer": open_answer,
        },
        {"task": Path(task_path)},
        compute,
        seed=seed,
        force=force,
        outputs=[MODEL_DIR],
        log=None,
    )
    return folder / MODEL_DIR


def run_jobs(
    jobs: Sequence[dict[str, Any]],
    *,
    workers: int = 1,
    finished: Callable[[dict[str, Any]], Any] | None = None,
    function: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run jobs (:func:`run_job`), in ``workers`` spawned processes when above 1.

    An interruption (Ctrl-C, or any error of a job) stops the whole batch: jobs not yet
    started are cancelled, the worker processes are terminated (a running job stops
    where it is; its folder records it as unfinished, so a rerun resumes it from its last
    checkpoint), and the exception is raised once they are gone, within seconds.

    Parameters
    ----------
    jobs : sequence of dict
        Each job (module docstring); each runs alone in its folder.
    workers : int, default 1
        Parallel processes on this machine. Give each job's config ``threads`` so that
        ``workers * threads`` does not exceed the cores.
    finished : callable, optional
        Called with each job's row as it finishes (in completion order).
    function : callable, optional
        What runs a job (default :func:`run_job`); with ``workers > 1`` it must be a
        module-level function, which the spawned processes import.

    Returns
    -------
    list of dict
        The jobs' rows, in the order of ``jobs``.
    """
    function = function or run_job
    rows: list[dict[str, Any] | None] = [None] * len(jobs)
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        context = multiprocessing.get_context("spawn")
        # the workers leave Ctrl-C to this process, which stops them all (_stop_pool)
        pool = ProcessPoolExecutor(
            min(workers, len(jobs)), mp_context=context, initializer=_ignore_interrupt
        )
        try:
            futures = {pool.submit(function, dict(job)): i for i, job in enumerate(jobs)}
            for future in as_completed(futures):
                row = future.result()
                rows[futures[future]] = row
                if finished is not None:
                    finished(row)
        except BaseException:
            _stop_pool(pool)
            raise
        pool.shutdown(wait=True)
    else:
        for i, job in enumerate(jobs):
            rows[i] = function(dict(job))
            if finished is not None:
                finished(rows[i])
    return [row for row in rows if row is not None]


def _ignore_interrupt() -> None:
    """A worker process's initializer: SIGINT (Ctrl-C reaches the whole process group)
    is the main process's to handle."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_pool(pool: Any, timeout: float = 10.0) -> None:
    """Cancel a process pool's queued jobs and terminate its workers (running jobs too).

    ``ProcessPoolExecutor``'s own shutdown waits for the running jobs and, without
    ``cancel_futures``, for every queued one: a Ctrl-C would let the whole batch run on.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(timeout)
