"""The ``calibration`` stage: every job's held-out predictions scored against outcomes,
p* and p_true, per method, with 95 % bootstrap intervals over seeds and conditions
(questions of one condition share simulated cells); question-level figures (corr and
Spearman of q with p*, sd of q, AUROC against outcomes and against p* > 1/2,
overconfidence per question); the theory's fixed point per question beside the measured
end state; and the verdict on the paper's finding, judged question by question (GRPO
overconfident, the others not). Writes ``predictions.parquet`` (with ``condition``,
``fixed_point`` and ``fixed_point_pooled``), ``runs.csv``, ``summary.csv``,
``summary.md``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioreason.pipelines.config import PipelineConfig
from bioreason.pipelines.stages import Stage
from bioreason.run_layout import (
    INVALID_RATE_FLAG,
    INVALID_RATE_LIMIT,
    METRICS_FILE,
    PREDICTIONS_FILE,
    RUNS_FILE,
    SUMMARY_FILE,
    SUMMARY_MD,
    TASK_FILE,
    judged_probability,
)
from bioreason.stage import RESULT, StageResult

__all__ = [
    "CALIBRATED_ECE",
    "CALIBRATED_METHODS",
    "COLLAPSED_SD",
    "HEADLINE_METRICS",
    "calibration_stage",
    "finding",
    "headline_rows",
]

#: methods whose predictions the paper finds calibrated (the verdict compares GRPO to them)
CALIBRATED_METHODS = ("grpo_no_std", "rloo", "reinforce", "ppo", "grpo_batch_std")
#: ECE against outcomes at or below which a method counts as calibrated by ECE (kept
#: for callers; the verdict now judges overconfidence question by question)
CALIBRATED_ECE = 0.1
#: sd of q across held-out questions below which a run gives (almost) one answer to
#: every question: "calibrated" then describes only an average answer
COLLAPSED_SD = 0.01
#: the metrics of the headline (``calibration/result.json``), each with its interval:
#: against the outcomes and p*, and question by question (``overconfidence_question`` is
#: the headline's "overconfidence vs p*"; ``overconfidence`` the average-level one)
HEADLINE_METRICS = (
    "ece",
    "mae_p_star",
    "mae_p_true",
    "overconfidence_question",
    "overconfidence_question_p_true",
    "overconfidence_answer",
    "overconfidence_answer_p_true",
    "overconfidence",
    "corr_p_star",
    "spearman_p_star",
    "sd_q",
    "auroc",
    "auroc_p_star",
    "mae_fixed_point",
    "overconfidence_fixed_point",
)


def _figure(row: pd.Series, name: str) -> tuple[float, float, float]:
    """(value, low, high) of a summary metric; NaN where the row lacks it."""
    return tuple(float(row.get(f"{name}{suffix}", math.nan)) for suffix in ("", "_low", "_high"))


def _with_interval(value: float, low: float, high: float) -> str:
    if np.isfinite(low) and np.isfinite(high):
        return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"
    return f"{value:+.3f} (no interval)"


def finding(summary: pd.DataFrame, *, run_sd: pd.Series | None = None) -> dict[str, Any]:
    """The verdict on the paper's finding, question by question: GRPO overconfident, the
    others calibrated.

    Shown when GRPO's overconfidence per question (``overconfidence_question``: the mean
    of sign(p* - 1/2)(q - p*), against p_true where the table has no p*) is above 0 with
    its interval excluding 0, every method of :data:`CALIBRATED_METHODS` in the run has
    an interval that contains 0 or lies below it (lower end at most 0), none of these
    methods stops answering (held-out invalid-answer rate above
    :data:`INVALID_RATE_LIMIT`), and GRPO answers question by question (sd of q across
    questions at least :data:`COLLAPSED_SD`: one answer for every question can lie
    outward of most p*, and that is a biased average answer, not answers pushed past
    p* question by question). The text states GRPO's figure and every compared
    method's, with what the intervals cover (the summary's ``interval``), the ECE
    against outcomes beside them, a warning naming every method of the table that stops
    answering, a flag naming every method that still answers but writes more than
    :data:`INVALID_RATE_FLAG` invalid answers, and a note on runs whose answers collapsed
    to one (sd of q below :data:`COLLAPSED_SD`: there "calibrated" describes only an
    average answer).

    Also shown, "against the answers", when the same holds for the overconfidence keyed
    on the answer (``overconfidence_answer``: the mean of sign(q - 1/2)(q - p*)): GRPO's
    interval above 0, every compared method's containing 0 or below it. Keyed on p*,
    an answer that reads its question only partly regresses toward the mean p* and
    counts as cautious even when it is calibrated; keyed on the answer, any answer
    calibrated against p* (E[p* | q] = q) scores 0 in expectation, so this criterion
    asks whether GRPO's answers are more extreme than what they know supports. The text
    says which criterion held and gives both sets of figures.

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`bioreason.pipelines.lm_runs.summarize_methods`'s table.
    run_sd : pandas.Series, optional
        The sd of q across questions of each run (index: method and seed), for the
        note on collapsed runs; default the summary's ``sd_q`` per method.

    Returns
    -------
    dict
        ``shown`` (bool), ``text`` (one paragraph: the verdict and why),
        ``grpo_overconfidence`` / ``_low`` / ``_high``, ``others_overconfidence``
        (method -> [value, low, high]), ``reference`` (``"p*"`` or ``"p_true"``),
        ``interval`` (what the intervals cover), ``collapsed_runs`` (how many),
        ``flagged_invalid`` (method -> invalid-answer rate, for the methods above
        :data:`INVALID_RATE_FLAG` and at most :data:`INVALID_RATE_LIMIT`),
        ``grpo_ece`` and ``others_max_ece`` (NaN when the table has no ECE),
        ``grpo_overconfidence_answer`` / ``_low`` / ``_high`` and
        ``others_overconfidence_answer`` (keyed on the answer), ``criterion``
        (``"per_question"``, ``"per_answer"`` or None: which one showed the finding).
    """
    by_method = summary.set_index("method")
    if "grpo" not in by_method.index:
        return {"shown": False, "text": "GRPO was not run, so the finding cannot be checked."}
    others = [m for m in CALIBRATED_METHODS if m in by_method.index]
    if not others:
        return {
            "shown": False,
            "text": "None of " + ", ".join(CALIBRATED_METHODS) + " was run beside GRPO.",
        }
    grpo = by_method.loc["grpo"]
    metric, reference = "overconfidence_question", "p*"
    if not np.isfinite(_figure(grpo, metric)[0]):
        metric, reference = "overconfidence_question_p_true", "p_true"
    value, low, high = _figure(grpo, metric)
    other_figures = {m: _figure(by_method.loc[m], metric) for m in others}
    keyed = metric.replace("question", "answer")
    answer_value, answer_low, answer_high = _figure(grpo, keyed)
    other_answer = {m: _figure(by_method.loc[m], keyed) for m in others}
    interval = str(grpo.get("interval", "95 % bootstrap"))
    ece = by_method["ece"].astype(float) if "ece" in by_method else None
    result: dict[str, Any] = {
        "grpo_overconfidence": value,
        "grpo_overconfidence_low": low,
        "grpo_overconfidence_high": high,
        "others_overconfidence": {m: list(f) for m, f in other_figures.items()},
        "grpo_overconfidence_answer": answer_value,
        "grpo_overconfidence_answer_low": answer_low,
        "grpo_overconfidence_answer_high": answer_high,
        "others_overconfidence_answer": {m: list(f) for m, f in other_answer.items()},
        "reference": reference,
        "interval": interval,
        "grpo_ece": float(ece["grpo"]) if ece is not None else math.nan,
        "others_max_ece": float(ece[others].max()) if ece is not None else math.nan,
        "criterion": None,
    }
    invalid = (
        by_method["invalid_rate"].astype(float)
        if "invalid_rate" in by_method
        else pd.Series(0.0, index=by_method.index)
    )
    silent = [str(m) for m in by_method.index if invalid[m] > INVALID_RATE_LIMIT]
    silent_compared = [m for m in ["grpo", *others] if m in silent]
    grpo_sd = float(grpo.get("sd_q", math.nan))
    if not np.isfinite(value):
        shown = False
        text = (
            "Not shown by this run: the table has neither p* nor p_true, so overconfidence "
            "question by question (mean of sign(p* - 1/2)(q - p*)) cannot be measured."
        )
    else:
        grpo_text = f"GRPO {_with_interval(value, low, high)}"
        others_text = "; ".join(f"{m} {_with_interval(*f)}" for m, f in other_figures.items())
        over = [m for m, f in other_figures.items() if not f[1] <= 0]  # NaN: not shown
        no_interval = not (np.isfinite(low) and np.isfinite(high))
        collapsed_grpo = np.isfinite(grpo_sd) and grpo_sd < COLLAPSED_SD
        valid = not no_interval and not silent_compared and not collapsed_grpo
        per_question = bool(low > 0 and not over and valid)
        answer_over = [m for m, f in other_answer.items() if not f[1] <= 0]
        per_answer = bool(answer_low > 0 and np.isfinite(answer_high) and not answer_over and valid)
        shown = per_question or per_answer
        result["criterion"] = (
            "per_question" if per_question else "per_answer" if per_answer else None
        )
        figures = (
            f"Overconfidence vs {reference} per question, the mean of sign({reference} - "
            f"1/2)(q - {reference}): {grpo_text}; {others_text}. Intervals: {interval}."
        )
        answer_figures = ""
        if np.isfinite(answer_value):
            answer_figures = (
                f" Keyed on the answer, the mean of sign(q - 1/2)(q - {reference}) (0 for "
                f"answers calibrated against {reference}, however little they know of "
                f"each question): GRPO {_with_interval(answer_value, answer_low, answer_high)}; "
                + "; ".join(f"{m} {_with_interval(*f)}" for m, f in other_answer.items())
                + "."
            )
        if per_question:
            text = (
                f"Shown, question by question: GRPO pushes its answers outward past "
                f"{reference} (its interval excludes 0), while {', '.join(others)} do not "
                f"(their intervals contain 0 or lie below it). {figures}{answer_figures}"
            )
        elif per_answer:
            # the summary's correlation is with p*: name it only when judging against p*
            corr = float(grpo.get("corr_p_star", math.nan)) if reference == "p*" else math.nan
            corr_text = f" (GRPO's corr(q, {reference}) is {corr:.2f})" if np.isfinite(corr) else ""
            text = (
                f"Shown against the answers, not per question: GRPO's answers are more "
                f"extreme than the {reference} behind them (keyed on the answer its interval "
                f"excludes 0), while those of {', '.join(others)} are not (their intervals "
                f"contain 0 or lie below it).{answer_figures} Keyed on {reference}, "
                + (
                    "every method's answers are pulled in toward 1/2"
                    if all(f[2] < 0 for f in [(value, low, high), *other_figures.values()])
                    else "GRPO's interval does not exclude 0"
                )
                + f": an answer that reads its question only partly{corr_text} regresses "
                f"toward the mean {reference}, which counts as caution there even when the "
                f"answer is calibrated. {figures}"
            )
        else:
            reasons = []
            if no_interval:
                reasons.append("there are no bootstrap intervals (calibration.n_boot = 0)")
            elif low <= 0:
                reasons.append(
                    "GRPO's interval does not exclude 0"
                    if high >= 0
                    else "GRPO's answers are pulled in toward 1/2, not pushed outward"
                )
            if collapsed_grpo:
                reasons.append(
                    f"GRPO gives (almost) one answer to every question (sd of q {grpo_sd:.3f} "
                    f"< {COLLAPSED_SD}), so its figure measures how far one answer lies "
                    f"outward of each question's {reference}, not answers pushed past "
                    f"{reference} question by question"
                )
            for m in over:
                reasons.append(f"{m}'s interval lies above 0 too")
            if silent_compared:
                reasons.append(f"{', '.join(silent_compared)} stopped answering validly")
            text = (
                "Not shown by this run: "
                + "; ".join(reasons)
                + f". {figures}{answer_figures} The training budget may be too small for "
                "the methods to separate (more steps, more seeds or a larger learning rate)."
            )
        if ece is not None:
            text += (
                f" ECE against outcomes: GRPO {result['grpo_ece']:.3f}, the others at most "
                f"{result['others_max_ece']:.3f}."
            )
    if silent:
        rates = ", ".join(f"{m} {invalid[m]:.2f}" for m in silent)
        text += (
            f" Warning: {', '.join(silent)} stopped writing a valid answer on most held-out "
            f"questions (invalid-answer rate {rates}); {'its' if len(silent) == 1 else 'their'} "
            "metrics score the answer distribution after a forced <answer> tag, not "
            "anything the policy writes."
        )
    flagged = {
        str(m): float(invalid[m])
        for m in by_method.index
        if INVALID_RATE_FLAG < invalid[m] <= INVALID_RATE_LIMIT
    }
    result["flagged_invalid"] = flagged
    if flagged:
        rates = ", ".join(f"{m} {rate:.1%}" for m, rate in flagged.items())
        text += (
            f" Flagged: more than {INVALID_RATE_FLAG:.0%} of the sampled held-out answers "
            f"could not be read for {rates}; q_exact scores the answer distribution, not "
            "what the policy writes."
        )
    sd = run_sd if run_sd is not None else by_method.get("sd_q")
    result["collapsed_runs"] = 0
    if sd is not None:
        sd = pd.Series(sd, dtype=float)
        collapsed = sd[sd < COLLAPSED_SD]
        result["collapsed_runs"] = len(collapsed)
        if len(collapsed):
            what = "runs" if run_sd is not None else "methods"
            text += (
                f" Note: on {len(collapsed)} of {len(sd)} {what} the LM gives (almost) the same "
                f"answer to every held-out question (standard deviation of q below "
                f"{COLLAPSED_SD}), so there 'calibrated' describes only an average answer: "
                "correlations and AUROCs rank differences of q too small to matter, and the "
                "error against p* measures how far one answer is from question-level truth."
            )
    result.update({"shown": shown, "text": text})
    return result


def _final(predictions: pd.DataFrame) -> pd.DataFrame:
    """The rows of a job's last evaluation."""
    return predictions[predictions["step"] == predictions["step"].max()]


def _with_conditions(predictions: pd.DataFrame, task: pd.DataFrame) -> pd.DataFrame:
    """``predictions`` with each question's ``condition`` from the task table (questions
    of one condition share simulated cells: the summary resamples them together)."""
    if "condition" not in task:
        return predictions
    lookup = task.set_index(task["question_id"].astype(str))["condition"]
    return predictions.assign(condition=predictions["question_id"].astype(str).map(lookup))


def _with_warm_start_spread(runs: pd.DataFrame, warm_result: Mapping[str, Any]) -> pd.DataFrame:
    """``runs`` with each run's prompt spread before and after the warm start filled in
    from the ``warm_start`` stage's result (its ``prompt_spread`` per seed): a pipeline's
    job starts from the saved warm start, so its own metrics do not have them. Values a
    job measured itself are kept; a warm start that recorded none leaves NaN."""
    spreads = warm_result.get("prompt_spread") or {}
    runs = runs.copy()
    for when in ("before", "after"):
        column = f"prompt_spread_{when}_warm_start"
        by_seed = {
            int(seed): math.nan if values.get(when) is None else float(values[when])
            for seed, values in spreads.items()
        }
        filled = runs["seed"].astype(int).map(by_seed).astype(float)
        runs[column] = runs[column].astype(float).fillna(filled) if column in runs else filled
    return runs


def calibration_stage(config: PipelineConfig) -> Stage:
    """The ``calibration`` stage: every job's held-out predictions scored per method.

    Returns
    -------
    Stage
    """

    def compute(stage_dir: Path, upstream: Mapping[str, StageResult]) -> dict[str, Any]:
        from bioreason._io import atomic_write, atomic_write_text
        from bioreason.pipelines.lm_runs import (
            RUN_COLUMNS,
            add_fixed_points,
            markdown_table,
            read_job_row,
            summarize_methods,
        )

        folder = upstream["finetune"].path
        jobs = upstream["finetune"].result["jobs"]
        rows = [read_job_row(folder / job["folder"] / METRICS_FILE) for job in jobs]
        runs = _with_warm_start_spread(pd.DataFrame(rows), upstream["warm_start"].result)
        runs = runs[[*RUN_COLUMNS, *[c for c in runs.columns if c not in RUN_COLUMNS]]]
        # each job's predictions at its last evaluation (a job evaluating every
        # rl.eval_every steps keeps the earlier ones in its own file)
        predictions = pd.concat(
            [_final(pd.read_parquet(folder / job["folder"] / PREDICTIONS_FILE)) for job in jobs],
            ignore_index=True,
        )
        task = pd.read_parquet(upstream["task"].path / TASK_FILE)
        predictions = _with_conditions(predictions, task)
        rl = config.finetune.rl
        predictions = add_fixed_points(
            predictions,
            answers=rl.grid.probabilities(),
            rule=rl.reward,
            options=dict(rl.advantage_options),
            kl_coef=rl.kl_coef if rl.kl_coef_end is None else rl.kl_coef_end,
            kl_estimator=rl.kl_estimator,
        )
        summary = summarize_methods(
            predictions, runs, n_boot=config.calibration.n_boot, seed=config.calibration.seed
        )
        run_sd = (
            predictions.assign(q=judged_probability(predictions)[0])
            .groupby(["method", "seed"], sort=False)["q"]
            .std(ddof=0)
        )
        table = markdown_table(summary)
        verdict = finding(summary, run_sd=run_sd)
        for name, frame in ((RUNS_FILE, runs), (SUMMARY_FILE, summary)):
            atomic_write(stage_dir / name, lambda tmp, f=frame: f.to_csv(tmp, index=False))
        atomic_write(
            stage_dir / PREDICTIONS_FILE, lambda tmp: predictions.to_parquet(tmp, index=False)
        )
        atomic_write_text(stage_dir / SUMMARY_MD, table + "\n")
        return {
            "headline": headline_rows(summary),
            "interval": verdict.get("interval")
            or "; ".join(sorted(set(summary["interval"].astype(str)))),
            "finding": verdict,
            "n_jobs": len(jobs),
        }

    return Stage(
        "calibration",
        compute,
        config={"calibration": config.calibration},
        inputs=lambda up: {
            "finetune": up["finetune"].path / RESULT,
            "task": up["task"].path / TASK_FILE,
            "warm_start": up["warm_start"].path / RESULT,
        },
        outputs=[RUNS_FILE, SUMMARY_FILE, SUMMARY_MD, PREDICTIONS_FILE],
    )


def headline_rows(summary: pd.DataFrame) -> list[dict[str, Any]]:
    """The headline of ``calibration/result.json``: per method the scored probability
    and its sampled invalid-answer rate, each of :data:`HEADLINE_METRICS` with its
    interval, and what the intervals cover.

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`bioreason.pipelines.lm_runs.summarize_methods`'s table.

    Returns
    -------
    list of dict
        One per method: ``method``, ``q_source``, ``invalid_rate``, ``<metric>``,
        ``<metric>_low``, ``<metric>_high`` for each headline metric (NaN where the
        summary lacks it), ``q_spread`` (= ``sd_q``), ``mean_q``, ``fixed_point_pooled``,
        ``interval``.
    """
    rows = []
    for _, row in summary.iterrows():
        entry: dict[str, Any] = {
            "method": row["method"],
            "q_source": row.get("q_source", "exact"),
            "invalid_rate": float(row.get("invalid_rate", math.nan)),
        }
        for metric in HEADLINE_METRICS:
            for suffix in ("", "_low", "_high"):
                entry[f"{metric}{suffix}"] = float(row.get(f"{metric}{suffix}", math.nan))
        for column in ("q_spread", "mean_q", "fixed_point_pooled"):
            entry[column] = float(row.get(column, math.nan))
        entry["interval"] = str(row.get("interval", ""))
        rows.append(entry)
    return rows
