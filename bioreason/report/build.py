"""The report's sections, built from a :class:`~bioreason.report.load.RunFolder`, and
:func:`write_report`, which writes them as ``report.html`` and ``report.md``."""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bioreason._io import atomic_write, atomic_write_text
from bioreason.report import figures
from bioreason.report.document import (
    GENERATOR,
    MARKDOWN_MARK,
    Block,
    Callout,
    Code,
    Figure,
    Heading,
    Paragraph,
    Table,
    render_html,
    render_markdown,
)
from bioreason.report.load import RunFolder, load_run
from bioreason.run_layout import (
    INVALID_RATE_LIMIT,
    PREDICTIONS_FILE,
    REPORT_FILES_DIR,
    REPORT_HTML,
    REPORT_MD,
    SUMMARY_FILE,
    judged_probability,
)
from bioreason.stage import MANIFEST, file_sha256, read_manifest, write_manifest

#: targets of p* against p_true on seen conditions (issue 21): |mean p* - mean p_true|
#: and the ECE of p* against p_true
P_STAR_BIAS_TARGET = 0.03
P_STAR_ECE_TARGET = 0.10

__all__ = [
    "ReportFiles",
    "build_blocks",
    "check_report_writable",
    "format_interval",
    "format_value",
    "write_report",
]

HTML_NAME = REPORT_HTML
MARKDOWN_NAME = REPORT_MD
FIGURES_DIR = REPORT_FILES_DIR
_FIGURE_PREFIX = "figure-"

#: The calibration metrics of ``summary.csv``, with their labels, in table order.
OUTCOME_METRICS = {
    "ece": "ECE",
    "adaptive_ece": "adaptive ECE",
    "brier": "Brier",
    "log_loss": "log loss",
    "auroc": "AUROC vs y",
}
REFERENCE_METRICS = {
    "mae_p_star": "|q - p*|",
    "overconfidence_question": "overconfidence vs p* (per question)",
    "overconfidence_answer": "overconfidence vs p* (keyed on the answer)",
    "overconfidence": "average-level overconfidence vs p*",
    "mae_p_true": "|q - p_true|",
    "overconfidence_question_p_true": "overconfidence vs p_true (per question)",
    "overconfidence_answer_p_true": "overconfidence vs p_true (keyed on the answer)",
    "overconfidence_p_true": "average-level overconfidence vs p_true",
}
#: Question-level figures of ``summary.csv``: does q follow the questions?
QUESTION_METRICS = {
    "corr_p_star": "corr(q, p*)",
    "spearman_p_star": "Spearman(q, p*)",
    "sd_q": "sd of q",
    "auroc_p_star": "AUROC vs p* > 1/2",
}
#: The theory's fixed point against the measured end state (``summary.csv``).
FIXED_POINT_COLUMNS = {
    "fixed_point_pooled": "fixed point, one answer for all (at mean p*)",
    "mean_q": "measured mean q",
    "mae_fixed_point": "mean |q - fixed point|",
    "corr_fixed_point": "corr(q, fixed point)",
    "overconfidence_fixed_point": "overconfidence predicted (at the fixed point)",
    "overconfidence_question": "overconfidence measured",
}
#: The headline table's columns (``calibration/result.json``), in two tables: the sampled
#: invalid-answer rate beside the figures that score ``q_exact``, then the question level.
HEADLINE_CALIBRATION = {
    "invalid_rate": "invalid answers, sampled",
    "ece": "ECE vs y",
    "mae_p_star": "|q - p*|",
    "overconfidence_question": "overconfidence vs p*",
    "overconfidence_answer": "overconfidence vs p*, keyed on q",
    "overconfidence_question_p_true": "overconfidence vs p_true",
    "mae_p_true": "|q - p_true|",
    "overconfidence": "average-level overconfidence vs p*",
}
HEADLINE_QUESTIONS = {
    "invalid_rate": "invalid answers, sampled",
    "corr_p_star": "corr(q, p*)",
    "spearman_p_star": "Spearman(q, p*)",
    "sd_q": "sd of q",
    "q_spread": "sd of q",
    "auroc": "AUROC vs y",
    "auroc_p_star": "AUROC vs p* > 1/2",
}
#: What the intervals of a summary written before they covered seeds and conditions cover.
_OLD_INTERVAL = "95 % bootstrap over held-out questions, seeds pooled"
DRIFT_COLUMNS = {
    "drift_grpo_predicted_start": "GRPO predicted, at warm start",
    "drift_grpo_predicted": "GRPO predicted, final policy",
    "drift_method_predicted": "method predicted, final policy",
    "drift_measured": "measured, final policy",
}
_LIST_LIMIT = 20
#: The synthetic calibration's columns (``metrics.csv``), with their labels.
TABULAR_METRICS = {
    "ece": "ECE vs y",
    "brier": "Brier",
    "log_loss": "log loss",
    "auroc": "AUROC vs y",
    "mae_to_reference": "|q - p*|",
    "overconfidence_per_question": "overconfidence vs p* (per question)",
    "theory_overconfidence": "overconfidence, theory (fixed point)",
    "overconfidence": "average-level overconfidence",
    "correlation_to_reference": "corr(q, p*)",
    "steps": "steps",
}
_PROBLEMS_TITLE = "Files that could not be read"


@dataclass(frozen=True)
class ReportFiles:
    """The files :func:`write_report` wrote.

    Attributes
    ----------
    html : Path
        ``run_dir/report.html``, self-contained.
    markdown : Path
        ``run_dir/report.md``; its figures are in ``run_dir/report_files/``.
    n_figures : int
        The number of figures (``<img>`` elements in the HTML, PNG files for the Markdown).
    problems : tuple of str
        Files of the run folder that exist but could not be read or are malformed, each
        with the reason (the report's section "Files that could not be read").
        ``bioreason report`` exits with status 1 when there are any.
    """

    html: Path
    markdown: Path
    n_figures: int
    problems: tuple[str, ...] = ()


# --------------------------------------------------------------------------- formatting


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)


def format_value(value: Any) -> str:
    """A scalar as table text: integers as they are, floats to 3 decimals (1 decimal from
    100, scientific below 0.001), missing or non-finite values as ``n/a``.

    Returns
    -------
    str
    """
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if not math.isfinite(value):
            return "n/a"
        if abs(value) >= 100:
            return f"{value:.1f}"
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.3f}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(str(v) for v in value[:_LIST_LIMIT])
        more = f", ... ({len(value)} in all)" if len(value) > _LIST_LIMIT else ""
        return shown + more
    return str(value)


def format_interval(value: Any, low: Any, high: Any) -> str:
    """``0.197 [0.107, 0.297]``; the value alone when the interval is missing.

    Returns
    -------
    str
    """
    if not _finite(value):
        return "n/a"
    if _finite(low) and _finite(high):
        return f"{_fixed(value)} [{_fixed(low)}, {_fixed(high)}]"
    return _fixed(value)


def _fixed(value: float) -> str:
    """Three decimals, without a minus sign on a value that rounds to zero."""
    text = f"{value:.3f}"
    return text[1:] if text == "-0.000" else text


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _key_values(mapping: Mapping[str, Any], skip: Iterable[str] = ()) -> Table:
    kept = {key: value for key, value in mapping.items() if key not in set(skip)}
    rows = tuple((key, format_value(value)) for key, value in _flatten(kept))
    return Table(("quantity", "value"), rows)


# --------------------------------------------------------------------------- sections


class _Builder:
    """Collects blocks and figures; each ``section_*`` method adds one section."""

    def __init__(self, run: RunFolder) -> None:
        self.run = run
        self.blocks: list[Block] = []
        self.nav: list[tuple[str, str]] = []
        self.n_figures = 0

    def add(self, *blocks: Block) -> None:
        self.blocks.extend(blocks)

    def heading(self, text: str, anchor: str) -> None:
        self.blocks.append(Heading(text, 2, anchor))
        self.nav.append((anchor, text))

    def figure(self, png: bytes | None, caption: str) -> None:
        if png is None:
            return
        self.n_figures += 1
        self.blocks.append(Figure(f"{_FIGURE_PREFIX}{self.n_figures:02d}", png, caption))

    def stage_status(self, stage: str) -> str:
        entry = (self.run.pipeline.get("stages") or {}).get(stage)
        if entry is None and stage == "warm_start":
            entry = (self.run.pipeline.get("stages") or {}).get("warm")
        if isinstance(entry, Mapping):
            return str(entry.get("status", "not recorded"))
        return "not recorded" if entry is None else str(entry)

    def unread(self, stage: str, name: str, consequence: str) -> str:
        """Why a stage's file is not in the report: missing, or there but unreadable."""
        folder = self.run.stage_dirs.get(stage, self.run.path / stage)
        where = f"{folder.name}/{name}"
        if (folder / name).exists():
            return f"{where} is malformed or unreadable (see {_PROBLEMS_TITLE}): {consequence}."
        return f"{where} is missing: {consequence}."

    def require(self, stage: str) -> bool:
        """True when the stage folder exists; else add the "not run" note."""
        if stage in self.run.stage_dirs:
            return True
        status = self.stage_status(stage)
        why = "" if status in ("not run", "not recorded") else f" (pipeline.json: {status})"
        self.add(Callout(f"stage {stage}: not run{why}; its folder is missing.", "note"))
        return False

    # ---------------------------------------------------------------- header

    def section_header(self) -> None:
        pipeline = self.run.pipeline
        folder = self.run.path.resolve().name or str(self.run.path)
        name = str(pipeline.get("name") or folder)
        # the folder is what the user sees and names: it leads, the config's name follows
        title = folder if name == folder else f"{folder} (config name {name})"
        what = (
            "synthetic calibration report"
            if self.run.kind == "synthetic_calibration"
            else "bioreason run report"
        )
        self.add(Heading(f"{what}: {title}", 1))
        made = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        if self.run.kind == "synthetic_calibration":
            text = f"bioreason synthetic-calibration in {self.run.path}; report written {made}."
        else:
            started = pipeline.get("started") or "unknown"
            finished = pipeline.get("finished") or "not finished"
            text = (
                f"Run {name} in {self.run.path}. Started {started}, finished {finished}; "
                f"report written {made}."
            )
        self.add(Paragraph(text, muted=True))

    def section_tabular(self) -> None:
        """The synthetic calibration experiment with a tabular policy: one row per run of
        ``metrics.csv`` and its figures."""
        self.heading("Synthetic calibration (tabular policy)", "tabular")
        folder = self.run.tabular_dir
        metrics = self.run.tabular
        if folder is None or metrics is None:
            where = f"{folder}/metrics.csv" if folder is not None else "metrics.csv"
            state = (
                "malformed or unreadable"
                if folder and (folder / "metrics.csv").exists()
                else "missing"
            )
            self.add(
                Callout(
                    f"{where} is {state}: the experiment has not finished (rerun the "
                    "command that made it; a finished run is skipped).",
                    "warning",
                )
            )
            return
        self.add(
            Paragraph(
                "A tabular policy (one categorical over the answers per category) trained "
                "by each estimator with the log-score reward on stochastic outcomes of "
                "questions whose category has a known probability p* "
                "(bioreason.pipelines.synthetic_calibration). Against the outcomes: ECE, "
                "Brier, log loss, AUROC; against p*: the mean |q - p*| and the "
                "overconfidence per question, the mean of sign(p* - 1/2)(q - p*); the "
                "theory's overconfidence at its fixed point beside the measured one. "
                "[low, high]: 95 % bootstrap over questions."
            )
        )
        columns = {c: label for c, label in TABULAR_METRICS.items() if c in metrics}
        self.add(_interval_table(metrics, columns, caption="One row per run (metrics.csv)."))
        for _, row in metrics.iterrows():
            name = str(row["method"])
            safe = name.replace(":", "-").replace("=", "_").replace(",", "-")
            for path, caption in (
                (
                    folder / f"{safe}.png",
                    f"{name}: each category's mean prediction against its true p*.",
                ),
                (
                    folder / "runs" / safe / "reliability.png",
                    f"{name}: reliability diagram against the outcomes.",
                ),
            ):
                if path.is_file():
                    self.figure(path.read_bytes(), caption)

    def section_finding(self) -> None:
        result = self.run.results.get("calibration") or {}
        verdict = result.get("finding")
        if isinstance(verdict, Mapping) and verdict.get("text"):
            shown = bool(verdict.get("shown"))
            if not shown:
                title = "Finding not shown by this run"
            elif verdict.get("criterion") == "per_answer":
                title = (
                    "Finding shown against the answers: GRPO's answers more extreme than "
                    "the p* behind them, the others' not"
                )
            else:
                title = "Finding shown: GRPO overconfident question by question, the others not"
            self.add(Callout(str(verdict["text"]), "ok" if shown else "warning", title))
        else:
            self.add(
                Callout(
                    "No verdict: stage calibration: not run (or its result.json has no "
                    "finding), so this run says nothing yet about GRPO's calibration.",
                    "warning",
                    "Finding not available",
                )
            )
        headline = result.get("headline")
        if (
            isinstance(headline, list)
            and headline
            and all(isinstance(r, Mapping) for r in headline)
        ):
            frame = pd.DataFrame(headline)
            interval = result.get("interval") or _interval_text(frame)
            scored = _scored_text(frame)
            self.add(
                _interval_table(
                    frame,
                    HEADLINE_CALIBRATION,
                    caption=f"Headline: test questions, {scored}; metrics averaged over "
                    f"seeds; [low, high]: {interval}. Overconfidence vs p*: the mean of "
                    "sign(p* - 1/2)(q - p*) over questions, positive when answers are "
                    "pushed outward past p*; average-level: mean |q - 1/2| - mean "
                    "|p* - 1/2|.",
                )
            )
            if any(c in frame for c in ("corr_p_star", "sd_q", "auroc_p_star")):
                questions = dict(HEADLINE_QUESTIONS)
                questions.pop("q_spread" if "sd_q" in frame else "sd_q")
                self.add(
                    _interval_table(
                        frame,
                        questions,
                        caption="Headline, question by question: does q follow the "
                        "questions? A policy that gives one answer to every question has "
                        f"sd of q near 0 and AUROCs near 0.5. [low, high]: {interval}.",
                    )
                )

    def section_stages(self) -> None:
        self.heading("Stages", "stages")
        stages = self.run.pipeline.get("stages") or {}
        alias = {"warm": "warm_start"}  # the stage's older name
        recorded = {alias.get(s, s) for s in stages}
        names = list(stages) + [s for s in self.run.stage_dirs if s not in recorded]
        rows = []
        for stage in names:
            entry = stages.get(stage, {})
            entry = entry if isinstance(entry, Mapping) else {"status": entry}
            folder = self.run.stage_dirs.get(alias.get(stage, stage))
            rows.append(
                (
                    stage,
                    str(entry.get("status", "not recorded")),
                    format_value(entry.get("seconds")),
                    folder.name + "/" if folder else "missing",
                )
            )
        if rows:
            self.add(Table(("stage", "status", "seconds", "folder"), tuple(rows)))
        else:
            self.add(Paragraph("pipeline.json records no stages."))

    # ---------------------------------------------------------------- stages

    def stage_result(self, title: str, stage: str, missing: str) -> Mapping[str, Any] | None:
        """The section's heading, then the stage's result; None, with a note, when the
        stage did not run or its result is ``missing``."""
        self.heading(title, stage)
        if not self.require(stage):
            return None
        result = self.run.results.get(stage)
        if result is None:
            self.add(Paragraph(missing))
        return result

    def section_data(self) -> None:
        result = self.stage_result("Data", "data", "data/result.json is missing.")
        if result is not None:
            self.add(_key_values(result))

    def section_vae(self) -> None:
        result = self.stage_result("Perturbation model", "vae", "vae/result.json is missing.")
        if result is None:
            return
        self.add(
            Paragraph(
                "IWELBO: importance-weighted ELBO per cell (higher is better) on held-out and "
                "training cells; ATE Pearson: correlation of the model's average treatment "
                "effects with the observed ones, on seen and held-out conditions; mask "
                "AUROC: recovery of the true perturbation-gene masks (synthetic screens)."
            )
        )
        self.add(_key_values(result, skip=("loss_curve", "ppc")))
        ppc = result.get("ppc")
        if isinstance(ppc, Mapping) and ppc:
            self.add(Heading("Posterior predictive check", 3))
            self.add(_key_values(ppc))
        self.figure(
            figures.loss_curve(result.get("loss_curve")),
            "Training loss of the perturbation model against step.",
        )

    def section_task(self) -> None:
        self.heading("Simulator check", "task")
        if not self.require("task"):
            return
        result = self.run.results.get("task")
        if result is not None:
            summary = result.get("summary")
            if isinstance(summary, Mapping):  # the task table's summary: only what is new
                repeated = set(result) | ({"questions_per_split"} if "splits" in result else set())
                result = {
                    **result,
                    "summary": {k: v for k, v in summary.items() if k not in repeated},
                }
            self.add(_key_values(result))
        else:
            self.add(Paragraph("task/result.json is missing."))
        task = self.run.task
        if task is None:
            self.add(Paragraph("task/task.parquet is missing: no figures."))
            return
        has_true = "p_true" in task and np.isfinite(task["p_true"].to_numpy(float)).any()
        caption = (
            "Left: p* (the fitted model's posterior predictive probability) against p_true "
            "(the generating parameters), one point per question, by split. "
            if has_true
            else "No p_true (real data): p* cannot be checked against the truth. "
        )
        caption += "Then: the spread of p* over posterior draws, and p* over questions."
        self.figure(figures.simulator_check(task), caption)
        if has_true:
            n_fits = int((result or {}).get("n_fits") or 1)
            self.p_star_targets_callout(task, n_fits=n_fits)
        if result is not None and isinstance(result.get("check_on_cells"), Mapping):
            n_fits = int(result.get("n_fits") or 1)
            self.cells_check_callout(result["check_on_cells"], n_fits=n_fits)
        self.unseen_parts_callout(task)

    def cells_check_callout(self, check: Mapping[str, Any], n_fits: int = 1) -> None:
        """Real data: p* of the held-out conditions against their own cells (p_obs), beside
        the additive baseline and the floor that p_obs's own noise sets; ``n_fits``
        (``vae.fits``) says whether p* is one fit's or pooled."""
        try:
            mae, corr = float(check["mae_p_star_p_obs"]), float(check["corr_p_star_p_obs"])
            floor = float(check["p_obs_own_error"])
        except (KeyError, TypeError, ValueError):
            return
        try:
            additive = float(check["mae_additive_p_obs"])
        except (KeyError, TypeError, ValueError):
            additive = None  # no held-out condition had every part measured alone
        text = (
            f"On {len(check.get('heldout_conditions', []))} held-out conditions "
            f"({check.get('n_questions', '?')} questions) mean |p* - p_obs| is {mae:.3f} "
            f"(correlation {corr:.2f})"
            + (
                f", the additive baseline's {additive:.3f}"
                if additive is not None
                else "; the additive baseline answers none of them (a part never measured alone)"
            )
            + ". p_obs is the plug-in from the held-out cells against the training controls; "
            f"its own noise alone would give a perfect predictor {floor:.3f}."
        )
        coverage = check.get("p_obs_in_90pct_interval")
        if isinstance(coverage, (int, float)) and np.isfinite(coverage):
            text += (
                f" p_obs lies inside p*'s central 90 % interval for {coverage:.0%} of these "
                "questions (near 90 % when p*'s uncertainty is honest; p_obs's own noise "
                "widens the gap)."
            )
        better = additive is None or mae <= additive
        text += (
            ""
            if additive is None
            else " p* is at least as close as the additive baseline."
            if better
            else " The additive baseline is closer: here the model's p* is further from the "
            "held-out cells than adding its parts' observed effects (the two share the "
            "training control cells; docs/simulator.md, 'On real cells')."
        )
        text += (
            f" p* pools {n_fits} fits of the model (vae.fits)."
            if n_fits > 1
            else " p* is one fit's: on the Norman cells three fits pooled (vae.fits: 3) were "
            "closer to the held-out cells than each fit alone in benchmarks/"
            "simulator_real.py (0.159 and 0.181 against 0.181-0.216; docs/simulator.md, "
            "'Pooled fits on real cells')."
        )
        self.add(Callout(text, "ok" if better else "warning", "p* against held-out cells"))

    def p_star_targets_callout(self, task: pd.DataFrame, n_fits: int = 1) -> None:
        """p* against p_true on a simulated screen, judged against issue 21's targets for
        seen conditions (|mean p* - mean p_true| <= 0.03, ECE of p* against p_true <=
        0.10), with what to change when they are missed; ``n_fits`` (``vae.fits``) says
        whether p* is one fit's or the mixture of several."""
        from bioreason.calibration.metrics import (
            correlation_to_reference,
            ece_to_reference,
            mean_absolute_error_to_reference,
        )
        from bioreason.sim.accuracy import interval_coverage

        both = task[["p_star", "p_true"]].apply(pd.to_numeric, errors="coerce").dropna()
        if len(both) < 10:
            return
        p_star = both["p_star"].to_numpy(float).clip(0, 1)
        p_true = both["p_true"].to_numpy(float).clip(0, 1)
        bias = float(p_star.mean() - p_true.mean())
        ece = float(ece_to_reference(p_star, p_true))
        mae = mean_absolute_error_to_reference(p_star, p_true)
        corr = correlation_to_reference(p_star, p_true)
        figures_text = (
            f"mean p* {p_star.mean():.3f} against mean p_true {p_true.mean():.3f} (bias "
            f"{bias:+.3f}), ECE of p* against p_true {ece:.3f}, mean |p* - p_true| {mae:.3f}, "
            f"correlation {corr:.2f} over {len(both)} questions"
        )
        if {"p_star_low", "p_star_high"} <= set(task.columns):
            coverage = interval_coverage(
                task["p_star_low"].to_numpy(float),
                task["p_star_high"].to_numpy(float),
                pd.to_numeric(task["p_true"], errors="coerce").to_numpy(float),
            )
            if np.isfinite(coverage):
                figures_text += (
                    f"; p_true lies inside p*'s central 90 % interval for {coverage:.0%} of "
                    "the questions (near 90 % when p*'s uncertainty is honest)"
                )
        figures_text += (
            f"; p* pools {n_fits} fits of the model (vae.fits)"
            if n_fits > 1
            else "; p* is one fit's, and another seed's fit can land elsewhere (vae.fits: 3 "
            "pools three; docs/simulator.md, 'Honest uncertainty')"
        )
        if abs(bias) <= P_STAR_BIAS_TARGET and ece <= P_STAR_ECE_TARGET:
            self.add(Callout(f"p* tracks p_true: {figures_text}.", "ok", "p* against p_true"))
            return
        self.add(
            Callout(
                f"p* misses its targets (|bias| at most {P_STAR_BIAS_TARGET:.2f}, ECE at most "
                f"{P_STAR_ECE_TARGET:.2f}): {figures_text}. A negative bias means the fitted "
                "model's effects are too small: the encoder explained perturbed cells by "
                "their basal state instead of the perturbation's embedding, or a sparse mask "
                "prior shrank them. The residual basal guide (vae.options.basal_guide: "
                "residual, the default) and a mask prior chosen from the data "
                "(vae.options.learn_mask_prior: true) remove most of this; with both, three "
                "fits pooled (vae.fits: 3) on the demo's screen (benchmarks/"
                "simulator_accuracy.py --fits 3, seeds 0 and 1) gave bias -0.007 and -0.003, "
                "ECE 0.025 and 0.018, and seen-condition errors of 0.097 and 0.066 (the "
                "plug-in's 0.096 and 0.080). Otherwise train longer (vae.train.max_steps) "
                "and see docs/simulator.md, 'Why p* was low'.",
                "warning",
                "p* against p_true",
            )
        )

    def unseen_parts_callout(self, task: pd.DataFrame) -> None:
        """A warning naming the conditions whose parts were never measured alone (the
        task's ``unseen_parts`` column): their p* rests on the model's prior."""
        if "unseen_parts" not in task or "condition" not in task:
            return
        parts = task["unseen_parts"].fillna("").astype(str)
        flagged = task.loc[parts != "", "condition"].astype(str)
        if flagged.empty:
            return
        named = dict(zip(flagged, parts[parts != ""], strict=True))
        listed = "; ".join(f"{c} ({p})" for c, p in list(named.items())[:10])
        more = " ..." if len(named) > 10 else ""
        self.add(
            Callout(
                f"{len(flagged)} questions about {len(named)} conditions with parts never "
                f"measured alone: {listed}{more}. Their p* rests on the model's prior for "
                "those parts, not on measured effects (hold out composable_combinations to "
                "avoid this).",
                "warning",
                "Parts never measured alone",
            )
        )

    def section_warm(self) -> None:
        result = self.stage_result(
            "Warm start", "warm_start", "result.json of the warm start is missing."
        )
        if result is not None:
            self.add(_key_values(result))

    def section_finetune(self, methods: list[str]) -> None:
        self.heading("Fine-tuning", "finetune")
        if not self.require("finetune"):
            return
        order = {method: i for i, method in enumerate(methods)}
        runs = sorted(self.run.runs, key=lambda r: (order.get(r.method, len(order)), r.seed))
        if not runs:
            self.add(Paragraph("finetune/ holds no <method>_seed<S> folders."))
            return
        rows = []
        for run in runs:
            last_log = _last_row(run.log)
            last_eval = _last_row(run.eval)
            rows.append(
                (
                    run.method,
                    str(run.seed),
                    format_value(_as_int(last_log.get("step"))),
                    format_value(last_log.get("reward_mean")),
                    format_value(last_eval.get("ece")),
                    format_value(last_eval.get("brier")),
                    format_value(last_eval.get("mae_to_reference")),
                    format_value(last_eval.get("invalid_rate")),
                    format_value(last_eval.get("prompt_spread")),
                    _run_note(run.log is not None, last_eval.get("invalid_rate")),
                )
            )
        self.add(
            Table(
                (
                    "method",
                    "seed",
                    "last step",
                    "reward mean",
                    "ECE",
                    "Brier",
                    "|q - p*|",
                    "invalid rate",
                    "prompt spread",
                    "note",
                ),
                tuple(rows),
                caption="Each run at its last logged step and last evaluation (eval.csv). "
                "Prompt spread: the across-prompt share of the final hidden state at the "
                "answer position (0: the same state, so the same answer, for every question; "
                "the warm start's values are in its section and in calibration/runs.csv).",
            )
        )
        self.figure(
            figures.training_curves(runs, methods),
            "Training curves, one line per run coloured by method: mean reward, share of "
            "groups whose rewards all agree (zero std: no GRPO signal), policy entropy.",
        )
        self.figure(
            figures.eval_curves(runs, methods),
            "Evaluations during training: ECE against outcomes, error against p*, the "
            "share of answers that could not be read, and the prompt spread at the answer "
            "position.",
        )

    def section_calibration(self, methods: list[str]) -> None:
        self.heading("Calibration", "calibration")
        if not self.require("calibration"):
            return
        summary = self.run.summary
        if summary is not None and "method" in summary:
            n_seeds = summary["n_seeds"].max() if "n_seeds" in summary else "?"
            interval = _interval_text(summary)
            self.add(
                Paragraph(
                    f"Held-out (test) questions, {_scored_text(summary)}, metrics averaged "
                    f"over seeds (up to {format_value(n_seeds)} per method); in brackets "
                    f"[low, high]: {interval}. Overconfidence per question is the mean of "
                    "sign(p* - 1/2)(q - p*), positive when answers are pushed outward past "
                    "p*; the average-level one, mean |q - 1/2| - mean |p* - 1/2|, compares "
                    "two averages and cannot tell a question-level answer from one answer "
                    "for all. The invalid-answer rate is that of the sampled answers: "
                    "q_exact scores the answer distribution whatever the policy writes."
                )
            )
            self.add(
                _interval_table(
                    summary,
                    {"invalid_rate": "invalid answers, sampled", **OUTCOME_METRICS},
                    ("n_seeds", "n_test", "n_conditions"),
                    "Against the sampled outcomes.",
                )
            )
            self.add(
                _interval_table(
                    summary, REFERENCE_METRICS, caption="Against p* and (synthetic) p_true."
                )
            )
            if any(c in summary for c in QUESTION_METRICS):
                self.add(
                    _interval_table(
                        summary,
                        QUESTION_METRICS,
                        caption="Question by question: correlation of q with p* across "
                        "questions (NaN when q is constant), the spread of q, and how well "
                        "q ranks the questions p* calls likely (p* > 1/2) above the rest.",
                    )
                )
            sd = {
                f"{m}_seed_sd": label
                for m, label in {**OUTCOME_METRICS, **REFERENCE_METRICS, **QUESTION_METRICS}.items()
            }
            sd = {c: label for c, label in sd.items() if c in summary}
            several_seeds = "n_seeds" not in summary or (summary["n_seeds"] > 1).any()
            if sd and several_seeds:  # one seed per method: no spread to show
                self.add(_plain_table(summary, sd, "Standard deviation between seeds."))
            self.section_theory(summary)
        else:
            self.add(Paragraph(self.unread("calibration", SUMMARY_FILE, "no calibration table")))
        predictions = self.run.predictions
        if predictions is None or "method" not in predictions:
            self.add(Paragraph(self.unread("calibration", PREDICTIONS_FILE, "no figures")))
            return
        q, _ = judged_probability(predictions)
        self.figure(
            figures.question_reliability(predictions, q, methods),
            "Reliability question by question: q against p*, one grey point per test "
            "question (q averaged over seeds); the blue line is the mean q in bins of p* "
            "(width 0.1), its bars the 25th to 75th percentile of q in the bin. The "
            "diagonal is a predictor that knows each question's p*; steeper than it is "
            "overconfident, flatter is underconfident, and flat is one answer for all.",
        )
        self.figure(
            figures.fixed_point_scatter(predictions, q, methods),
            "Theory against measurement: the theory's fixed point at each question's p* "
            "(where the method's expected update, with the run's KL term, stops moving an "
            "answer) against the measured final q, one point per question (seeds "
            "averaged); the diagonal is agreement. Red star: one answer for every question, "
            "the fixed point at the mean p* against the mean q. No panel where the "
            "estimator declares no theory.",
        )
        self.figure(
            figures.reliability_diagrams(predictions, q, methods),
            "Reliability diagrams against outcomes (test questions, seeds pooled, 10 "
            "equal-width bins of q): observed outcome frequency against mean prediction; "
            "marker area ~ bin count.",
        )
        self.figure(
            figures.reference_scatter(predictions, q, methods),
            "Predicted probability against p*, one point per question and seed.",
        )
        self.figure(
            figures.answer_histograms(predictions, q, methods),
            "Histograms of the predicted probabilities (orange) and of p* for the same "
            "questions (black outline).",
        )

    def section_theory(self, summary: pd.DataFrame) -> None:
        """The theory's fixed point against the measured end state, then the one-step
        drift at the final policy (a direction, not an end state)."""
        fixed = {c: label for c, label in FIXED_POINT_COLUMNS.items() if c in summary}
        if "mae_fixed_point" in fixed:
            self.add(Heading("Theory against measurement: fixed points", 3))
            self.add(
                Paragraph(
                    "The theory's end state for each question is the fixed point of the "
                    "method's expected update started at a calibrated answer "
                    "(bioreason.rl.theory.theory_fixed_point at the question's p*): p* for "
                    "unbiased estimators, near the edge of the answer grid on p*'s side for "
                    "GRPO. With a KL term to the warm start it is where the KL holds a "
                    "policy started at the warm start's uniform answers "
                    "(bioreason.rl.theory.kl_fixed_points, the run's final KL weight): "
                    "inside p* for unbiased estimators, outward for GRPO. A policy that gives "
                    "one answer to every question sees the pooled "
                    "outcome rate, so its end state is the fixed point at the mean p*. "
                    "Overconfidence predicted: the per-question overconfidence of the "
                    "fixed points; measured: that of the final answers."
                )
            )
            self.add(_interval_table(summary, fixed))
        drift = {c: label for c, label in DRIFT_COLUMNS.items() if c in summary}
        if drift:
            self.add(Heading("One-step drift at the final policy", 3))
            self.add(
                Paragraph(
                    "Outward drift: the mean over questions of sign(p - 1/2)(target - p), "
                    "where the theory's target is the probability the expected update at "
                    "the current policy points to, for GRPO and for each method's own "
                    "estimator (0 for unbiased estimators); the last column is where the "
                    "final answers are, sign(p - 1/2)(q - p). The first columns are a "
                    "direction of one step, the last a position, so they need not agree; "
                    "once a policy gives one answer to every question they agree only "
                    "mechanically. The fixed points above are the comparison of end states."
                )
            )
            self.add(_plain_table(summary, drift))

    def section_problems(self) -> None:
        if self.run.problems:
            self.heading(_PROBLEMS_TITLE, "problems")
            self.add(Code("\n".join(self.run.problems)))

    def section_provenance(self) -> None:
        pipeline = self.run.pipeline
        if self.run.kind == "synthetic_calibration":  # its pipeline.json is its config
            self.heading("Configuration", "provenance")
            self.add(Code(json.dumps(pipeline, indent=2, sort_keys=False, default=str)))
            return
        self.heading("Commands and versions", "provenance")
        commands = pipeline.get("commands") or []
        if isinstance(commands, str):
            commands = [commands]
        self.add(Heading("Commands", 3))
        if commands:
            self.add(Code("\n".join(str(c) for c in commands)))
        else:
            self.add(Paragraph("pipeline.json records no commands."))
        versions = pipeline.get("versions") or {}
        self.add(Heading("Versions", 3))
        if isinstance(versions, Mapping) and versions:
            self.add(
                Table(("package", "version"), tuple((str(k), str(v)) for k, v in versions.items()))
            )
        else:
            self.add(Paragraph("pipeline.json records no versions."))
        config = pipeline.get("config")
        if config is not None:
            self.add(Heading("Configuration", 3))
            self.add(Code(json.dumps(config, indent=2, sort_keys=False, default=str)))


def _last_row(frame: pd.DataFrame | None) -> dict[str, Any]:
    if frame is None or frame.empty:
        return {}
    numeric = frame.apply(pd.to_numeric, errors="coerce")
    filled = numeric.dropna(how="all", subset=[c for c in numeric.columns if c != "step"])
    if filled.empty:
        return {}
    return filled.iloc[-1].to_dict()


def _interval_table(
    frame: pd.DataFrame,
    metrics: Mapping[str, str] | None = None,
    counts: tuple[str, ...] = (),
    caption: str = "",
) -> Table:
    """One row per method; each metric as ``value [low, high]``."""
    if metrics is None:
        metrics = {c: c for c in _metric_columns(frame)}
    metrics = {c: label for c, label in metrics.items() if c in frame}
    counts = tuple(c for c in counts if c in frame)
    rows = []
    for _, row in frame.iterrows():
        cells = [str(row.get("method", ""))]
        cells += [format_value(_scalar(row[c])) for c in counts]
        for column in metrics:
            low, high = row.get(f"{column}_low"), row.get(f"{column}_high")
            value = _scalar(row[column])
            if _finite(value) and (low is not None or high is not None):
                cells.append(format_interval(value, _scalar(low), _scalar(high)))
            else:
                cells.append(format_value(value))
        rows.append(tuple(cells))
    labels = [c.replace("_", " ") for c in counts] + list(metrics.values())
    return Table(("method", *labels), tuple(rows), caption)


def _interval_text(frame: pd.DataFrame) -> str:
    """What the intervals of a summary or headline table cover (its ``interval``
    column; a table written before it existed bootstrapped questions, seeds pooled)."""
    if "interval" not in frame:
        return _OLD_INTERVAL
    texts = [str(t) for t in pd.unique(frame["interval"].dropna()) if str(t)]
    return "; ".join(texts) or _OLD_INTERVAL


def _scored_text(frame: pd.DataFrame) -> str:
    """Which probability the table scores (its ``q_source``), in words."""
    sources = sorted({str(s) for s in frame["q_source"].dropna()}) if "q_source" in frame else []
    if not sources:
        return "q as judged_probability reads it"
    return " / ".join(f"q_{source}" for source in sources) + " scored"


def _run_note(has_log: bool, invalid_rate: Any) -> str:
    """The fine-tuning table's note on a run: a missing log, or a policy that stopped
    answering (its metrics then score a forced ``<answer>``, not what it writes)."""
    notes = [] if has_log else ["no log.csv"]
    rate = _scalar(invalid_rate)
    if _finite(rate) and rate > INVALID_RATE_LIMIT:
        notes.append("stopped answering validly: metrics score a forced <answer>")
    return "; ".join(notes)


def _metric_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of a table except ``method`` and the interval ends."""
    return [c for c in frame.columns if c != "method" and not c.endswith(("_low", "_high"))]


def _as_int(value: Any) -> Any:
    return int(value) if _finite(value) and float(value).is_integer() else value


def _plain_table(frame: pd.DataFrame, columns: Mapping[str, str], caption: str = "") -> Table:
    rows = tuple(
        (str(row.get("method", "")), *(format_value(_scalar(row[c])) for c in columns))
        for _, row in frame.iterrows()
    )
    return Table(("method", *columns.values()), rows, caption)


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_blocks(run: RunFolder) -> tuple[list[Block], list[tuple[str, str]], int]:
    """The report's blocks in order, its section links and its number of figures.

    Parameters
    ----------
    run : RunFolder

    Returns
    -------
    blocks : list of Block
    nav : list of (anchor, label)
    n_figures : int
    """
    builder = _Builder(run)
    methods = run.methods()
    builder.section_header()
    if run.tabular_dir is not None:  # the synthetic calibration: its own sections
        builder.section_tabular()
        if run.kind == "pipeline":
            builder.section_stages()
        builder.section_problems()
        builder.section_provenance()
        return builder.blocks, builder.nav, builder.n_figures
    builder.section_finding()
    builder.section_stages()
    builder.section_data()
    builder.section_vae()
    builder.section_task()
    builder.section_warm()
    builder.section_finetune(methods)
    builder.section_calibration(methods)
    builder.section_problems()
    builder.section_provenance()
    return builder.blocks, builder.nav, builder.n_figures


# --------------------------------------------------------------------------- writing


def _ours(path: Path, is_ours: Callable[[str], bool]) -> bool:
    try:
        with path.open(encoding="utf-8", errors="replace") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return is_ours(head)


def _check_replaceable(path: Path, is_ours: Callable[[str], bool], force: bool) -> None:
    if force or not (path.exists() or path.is_symlink()):
        return
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; move it away to write the report")
    if not _ours(path, is_ours):
        raise FileExistsError(
            f"{path} already exists and was not written by bioreason's write_report; "
            "move it away or pass --force (force=True in Python) to replace it"
        )


def _html_is_ours(head: str) -> bool:
    return GENERATOR in head


def _markdown_is_ours(head: str) -> bool:
    return head.splitlines()[:1] == [MARKDOWN_MARK]


def _check_figures_replaceable(figure_dir: Path, force: bool) -> None:
    """Refuse (unless ``force``) when ``report_files/`` holds a ``figure-*.png`` that
    write_report did not write, or that changed since it did: its manifest
    (``report_files/manifest.json``) records the hash of every figure it wrote, and any
    figure may be replaced or, when the new report has fewer, deleted."""
    if force or not figure_dir.exists():
        return
    if not figure_dir.is_dir():
        raise NotADirectoryError(
            f"{figure_dir} is a file; move it away to write the report's figures there"
        )
    manifest = figure_dir / MANIFEST
    saved = read_manifest(manifest) if manifest.exists() else None
    if manifest.exists() and not isinstance((saved or {}).get("outputs"), dict):
        raise FileExistsError(
            f"{manifest} is not a manifest of bioreason's write_report, so the figures in "
            f"{figure_dir} are not known to be bioreason's; move it away or pass --force "
            "(force=True in Python) to replace them"
        )
    recorded = (saved or {}).get("outputs") or {}
    for path in sorted(figure_dir.glob(f"{_FIGURE_PREFIX}*.png")):
        if path.name not in recorded:
            why = (
                f"no record of it in {manifest}"
                if manifest.exists()
                else f"{figure_dir} has no manifest.json: written by hand, or by a bioreason "
                "version that did not record its figures"
            )
            raise FileExistsError(
                f"{path} already exists and was not written by bioreason's write_report "
                f"({why}); move it away or pass --force (force=True in Python) to replace it"
            )
        digest = recorded[path.name]  # None: being written by an interrupted report
        if path.is_dir() or (digest is not None and file_sha256(path) != digest):
            raise FileExistsError(
                f"{path} has changed since bioreason's write_report wrote it (its hash differs "
                f"from the one in {manifest}); move it away or pass --force (force=True in "
                "Python) to replace it"
            )


def check_report_writable(run_dir: str | Path, *, force: bool = False) -> None:
    """Check, before any work, that :func:`write_report` may write into ``run_dir``.

    Every file the report writes is checked: ``report.html`` and ``report.md`` must be
    missing or written by write_report (its marks), and every ``report_files/figure-*.png``
    missing or recorded, unchanged, in ``report_files/manifest.json``. ``bioreason run``
    calls it before its first stage, so a file of yours stops the run before the work.

    Parameters
    ----------
    run_dir : str or Path
        The run folder.
    force : bool, default False
        Allow replacing them all (the check then passes).

    Raises
    ------
    FileExistsError
        Naming the first file that bioreason did not write, or that changed since.
    IsADirectoryError, NotADirectoryError
        A folder where a report file belongs, or a file where ``report_files/`` belongs.
    """
    run_dir = Path(run_dir)
    _check_replaceable(run_dir / HTML_NAME, _html_is_ours, force)
    _check_replaceable(run_dir / MARKDOWN_NAME, _markdown_is_ours, force)
    _check_figures_replaceable(run_dir / FIGURES_DIR, force)


def write_report(run_dir: str | Path, *, force: bool = False) -> ReportFiles:
    """Write ``run_dir/report.html`` and ``run_dir/report.md`` from a pipeline run folder.

    The HTML is self-contained (figures as base64 PNG, inline CSS, no network
    reference); the Markdown has the same content, its figures as PNG files in
    ``run_dir/report_files/``. Stages whose folder is missing are reported as
    "stage X: not run". Files are written atomically (temporary name, then rename).

    Parameters
    ----------
    run_dir : str or Path
        ``runs/<name>``, holding ``pipeline.json`` (see :mod:`bioreason.report`).
    force : bool, default False
        Replace a ``report.html`` / ``report.md`` / ``report_files/figure-*.png`` that
        write_report did not write (or a figure changed since it did).

    Returns
    -------
    ReportFiles
        The two paths, the number of figures, and the files of the run folder that exist
        but could not be read (``problems``; the report lists them too).

    Raises
    ------
    FileNotFoundError
        When ``run_dir`` or its ``pipeline.json`` is missing.
    ValueError
        When ``run_dir`` is a folder of another kind than the report knows (its
        ``pipeline.json`` says neither a pipeline run nor the synthetic calibration).
    FileExistsError
        When a file the report writes exists and write_report did not write it (or a
        figure changed since), and ``force`` is false (:func:`check_report_writable`);
        nothing is written.
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    html_path = run_dir / HTML_NAME
    md_path = run_dir / MARKDOWN_NAME
    check_report_writable(run_dir, force=force)

    blocks, nav, n_figures = build_blocks(run)
    title = next((b.text for b in blocks if isinstance(b, Heading)), "bioreason run report")
    figure_blocks = [b for b in blocks if isinstance(b, Figure)]
    figure_dir = run_dir / FIGURES_DIR
    figure_paths = {b.name: f"{FIGURES_DIR}/{b.name}.png" for b in figure_blocks}
    written = [figure_dir / f"{b.name}.png" for b in figure_blocks]
    if written or figure_dir.is_dir():
        figure_dir.mkdir(parents=True, exist_ok=True)
        # recorded as being written first: an interrupted report may be rewritten
        _write_figure_manifest(figure_dir, written, complete=False)
    for block, path in zip(figure_blocks, written):
        atomic_write(path, lambda tmp, b=block: tmp.write_bytes(b.png))
    if figure_dir.is_dir():  # figures of an earlier, longer report of ours (checked above)
        for stale in figure_dir.glob(f"{_FIGURE_PREFIX}*.png"):
            if stale not in written:
                stale.unlink()
        _write_figure_manifest(figure_dir, written, complete=True)
    atomic_write_text(md_path, render_markdown(blocks, figure_paths))
    atomic_write_text(html_path, render_html(title, blocks, nav))
    return ReportFiles(
        html=html_path, markdown=md_path, n_figures=n_figures, problems=tuple(run.problems)
    )


def _write_figure_manifest(figure_dir: Path, figures_written: list[Path], complete: bool) -> None:
    write_manifest(
        figure_dir,
        config={"written_by": "bioreason write_report"},
        seed=None,
        outputs=figures_written,
        complete=complete,
    )
