"""What an LM trainer's evaluation computes from its predictions, and how they are saved.

:meth:`bioreason.rl.LMTrainer.predict` gives each held-out question's ``q_sampled`` (mean
of the valid sampled answers) and, when the grid's answers are single tokens,
``q_exact`` (the mean of the policy's answer distribution right after ``answer_prefix``,
given a valid answer: :func:`bioreason.lm.answer_protocol.exact_answers`).
:func:`evaluation_row` turns those predictions into one row of the evaluation log:
calibration against the outcomes, p* and p_true, and the theory's drift beside the
measured one. The probability judged is :func:`bioreason.run_layout.judged_probability`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from bioreason.calibration import METRICS, REFERENCE_METRICS, summarize
from bioreason.lm.answer_protocol import (
    ANSWER_PARSERS,
    AnswerGrid,
    exact_answers,
    prompt_spread,
)
from bioreason.rl.lm.rollout import answer_distribution_at
from bioreason.rl.loop import write_csv_log
from bioreason.rl.theory import predict_grpo_drift, theory_target
from bioreason.run_layout import PREDICTION_COLUMNS, judged_probability

__all__ = ["evaluation_row", "save_predictions"]

_DRIFT = (
    "grpo_predicted_outward",
    "method_predicted_outward",
    "measured_outward",
    "measured_outward_change",
)


def evaluation_row(
    predictions: pd.DataFrame,
    distribution: Tensor | None,
    *,
    step: int,
    n_samples: int,
    grid: AnswerGrid,
    reward: str,
    method: str,
    estimator_options: Mapping[str, Any],
    previous_outward: float | None = None,
) -> dict[str, Any]:
    """One evaluation of a policy: calibration of its predictions and its drift.

    Parameters
    ----------
    predictions : pandas.DataFrame
        :data:`bioreason.run_layout.PREDICTION_COLUMNS`, one row per question.
    distribution : Tensor of float64, shape (n_questions, grid.size), or None
        The answer distribution given a valid answer at the answer position (None when
        the answers are not single tokens).
    step : int
        The training step evaluated.
    n_samples : int
        Sampled completions per question (for the invalid-answer rate).
    grid : AnswerGrid
    reward : str
        The scoring rule trained on (the theory's drift depends on it).
    method : str
        The advantage estimator (for ``method_predicted_outward``).
    estimator_options : mapping
        The estimator's options (its registry ``options``).
    previous_outward : float, optional
        ``measured_outward`` of the previous evaluation (for the change).

    Returns
    -------
    dict
        ``step``, ``n_questions``, ``n_scored``, ``q_source``, ``invalid_rate``, every
        metric of :func:`bioreason.calibration.summarize` against the outcomes, the
        reference metrics against ``p_star`` (no suffix) and ``p_true`` (suffix
        ``_p_true``) when known for every scored question (NaN otherwise), and the
        drift figures (see :meth:`bioreason.rl.LMTrainer.evaluate`).
    """
    q, source = judged_probability(predictions)
    outcome = predictions["outcome"].to_numpy()
    keep = np.isfinite(q) & np.isin(outcome, (0.0, 1.0))
    n_questions = len(predictions)
    row: dict[str, Any] = {
        "step": step,
        "n_questions": n_questions,
        "n_scored": int(keep.sum()),
        "q_source": source,
        "invalid_rate": float(1 - predictions["n_valid"].sum() / (n_questions * n_samples)),
    }
    references = {}
    for column in ("p_star", "p_true"):
        reference = predictions[column].to_numpy()
        if keep.any() and np.isfinite(reference[keep]).all():
            references[column] = reference
    metrics: dict[str, float] = {}
    if keep.any():
        metrics = summarize(
            outcome[keep],
            q[keep],
            p_star=references["p_star"][keep] if "p_star" in references else None,
            references={"p_true": references["p_true"][keep]} if "p_true" in references else None,
        )
    row.update(_metric_template())
    row.update(metrics)
    reference = references.get("p_star", references.get("p_true"))
    row.update(
        _drift(
            q,
            distribution,
            reference,
            grid=grid,
            reward=reward,
            method=method,
            estimator_options=estimator_options,
            previous_outward=previous_outward,
        )
    )
    return row


def _drift(
    q: np.ndarray,
    distribution: Tensor | None,
    reference: np.ndarray | None,
    *,
    grid: AnswerGrid,
    reward: str,
    method: str,
    estimator_options: Mapping[str, Any],
    previous_outward: float | None,
) -> dict[str, float]:
    """The outward drift, measured and predicted by the theory (NaN when unknown)."""
    out = dict.fromkeys(_DRIFT, math.nan)
    if reference is None:
        return out
    p = torch.as_tensor(reference, dtype=torch.float64)
    sign = torch.sign(p - 0.5)
    q_t = torch.as_tensor(q, dtype=torch.float64)
    finite = torch.isfinite(q_t)
    if finite.any():
        out["measured_outward"] = float((sign * (q_t - p))[finite].mean())
        if previous_outward is not None and math.isfinite(previous_outward):
            out["measured_outward_change"] = out["measured_outward"] - previous_outward
    if distribution is not None:
        answers = grid.probabilities(torch.float64)
        drift = predict_grpo_drift(distribution, answers, p, rule=reward)
        out["grpo_predicted_outward"] = float(drift.outward.mean())
        target = theory_target(
            method, distribution, answers, p, rule=reward, options=dict(estimator_options)
        )
        out["method_predicted_outward"] = float((sign * (target - p)).mean())
    return out


def _metric_template() -> dict[str, float]:
    """Every metric key an evaluation row has, NaN (so that CSV rows share columns)."""
    keys = ["sharpness", *METRICS]
    for suffix in ("", "_p_true"):
        keys += [f"{name}{suffix}" for name in REFERENCE_METRICS]
    return dict.fromkeys(keys, math.nan)


def save_predictions(frame: pd.DataFrame, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write a predictions table (:meth:`bioreason.rl.LMTrainer.predict`) as parquet,
    atomically.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        The table lacks a column of :data:`bioreason.run_layout.PREDICTION_COLUMNS`.
    """
    from bioreason._io import atomic_write

    missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"save_predictions: the table lacks column(s) {missing}")
    path = Path(path)
    atomic_write(path, lambda tmp: frame.to_parquet(tmp, index=False), overwrite=overwrite)
    return path


class _PredictionMixin:
    """Predictions and evaluation of :class:`bioreason.rl.LMTrainer` (which provides
    ``config``, ``model``, ``grid``, ``answer_token_ids``, ``eval_rows``, ``step`` and the
    helpers ``_prompts``, ``_sample``, ``_decode`` and ``_autocast``)."""

    def _question_rows(self, questions: Any) -> np.ndarray:
        if questions is None:
            return self.eval_rows if len(self.eval_rows) else np.arange(len(self._table))
        if isinstance(questions, str):
            if "split" not in self._table:
                raise ValueError(f"questions={questions!r} names a split, but the table has none")
            rows = np.flatnonzero(self._table["split"].astype(str).to_numpy() == questions)
            if len(rows) == 0:
                raise ValueError(f"no questions with split == {questions!r}")
            return rows
        rows = np.asarray(questions)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise TypeError("questions must be None, a split name or 1-d integer row positions")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self._table)):
            raise ValueError(f"question rows must lie in [0, {len(self._table)})")
        return rows.astype(np.int64)

    def _predict(
        self, rows: np.ndarray, n_samples: int, seed: int
    ) -> tuple[pd.DataFrame, Tensor | None]:
        config = self.config
        generator = torch.Generator(device=self.device).manual_seed(seed)
        sampled, valid_counts, exact, distributions, states = [], [], [], [], []
        for start in range(0, len(rows), config.predict_batch_questions):
            batch = rows[start : start + config.predict_batch_questions].tolist()
            prompts = self._prompts(batch)
            sample = self._sample(prompts, n_samples, generator)
            parsed = ANSWER_PARSERS[config.answer_format](
                self._decode(sample.tokens, sample.mask), self.grid
            )
            answers = parsed.probabilities.view(len(batch), n_samples)
            valid = ~torch.isnan(answers)
            counts = valid.sum(1)
            total = torch.nan_to_num(answers, nan=0.0).sum(1)
            sampled.append(torch.where(counts > 0, total / counts.clamp(min=1), math.nan))
            valid_counts.append(counts)
            if self.answer_token_ids is not None:
                distribution, state = answer_distribution_at(
                    self.model,
                    self._prompts(batch, with_prefix=True),
                    self.answer_token_ids,
                    temperature=config.temperature,
                    autocast=self._autocast(),
                    fast=self.config.fast_forward,
                    hidden=True,
                )
                states.append(state.cpu())
                distribution, q_exact = exact_answers(distribution.cpu(), self.grid)
                distributions.append(distribution)
                exact.append(q_exact)
        table = self._table.iloc[rows]
        columns = {
            "question_id": table["question_id"].to_numpy(),
            "method": config.method,
            "seed": config.seed,
            "step": self.step,
            "q_sampled": torch.cat(sampled).numpy(),
            "q_exact": torch.cat(exact).numpy() if exact else np.full(len(rows), math.nan),
            "p_star": _column(table, "p_star"),
            "p_true": _column(table, "p_true"),
            "outcome": _column(table, "outcome"),
            "split": table["split"].astype(str).to_numpy() if "split" in table else "",
            "n_valid": torch.cat(valid_counts).numpy(),
        }
        frame = pd.DataFrame({name: columns[name] for name in PREDICTION_COLUMNS})
        # how much the state the answer is read from depends on the question
        self._prompt_spread = prompt_spread(torch.cat(states)) if states else math.nan
        return frame, (torch.cat(distributions) if distributions else None)

    def predict(
        self,
        questions: Any = None,
        *,
        n_samples: int | None = None,
        seed: int | None = None,
    ) -> pd.DataFrame:
        """Each question's probability under the current policy.

        Parameters
        ----------
        questions : None, str or sequence of int
            None: the evaluation split (all questions when there is none); a split name;
            or row positions in the task table.
        n_samples : int, optional
            Completions per question for ``q_sampled`` (default ``eval_samples``).
        seed : int, optional
            Seed of the sampling (default: from the config's seed and the step); the
            training random state is not touched.

        Returns
        -------
        pandas.DataFrame
            One row per question with :data:`PREDICTION_COLUMNS`: ``q_sampled`` (mean of
            the valid sampled answers, NaN when none is valid), ``q_exact`` (mean of the
            answer distribution at the answer position given a valid answer; NaN when
            the answers are not single tokens), ``p_star``, ``p_true``, ``outcome`` (NaN
            when the table lacks them), ``n_valid`` (valid sampled answers).
        """
        rows = self._question_rows(questions)
        n_samples = self.config.eval_samples if n_samples is None else int(n_samples)
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        seed = self._eval_seed() if seed is None else int(seed)
        frame, _ = self._predict(rows, n_samples, seed)
        return frame

    def _eval_seed(self) -> int:
        return (self.config.seed * 1_000_003 + self.step * 7_919 + 17) % (2**62)

    def evaluate(self, questions: Any = None) -> dict[str, Any]:
        """Calibration of the current policy on held-out questions (default: the
        ``eval_split`` rows), appended to :attr:`eval_rows_log` and returned.

        The probability judged is :func:`bioreason.run_layout.judged_probability`'s:
        ``q_exact`` when available, else ``q_sampled`` (questions without a valid
        sampled answer are left out). Metrics: every metric
        of :func:`bioreason.calibration.summarize` against the outcomes, the reference
        metrics against ``p_star`` (no suffix) and ``p_true`` (suffix ``_p_true``) when
        the table has them for every question (NaN otherwise); and the theory's drift
        (:mod:`bioreason.rl.theory`) at the current answer distribution when answers
        are single tokens, beside the measured one:

        - ``grpo_predicted_outward``: mean over questions of ``sign(p - 1/2) (p~ - p)``,
          where GRPO's expected update is unbiased for ``p~`` (positive: pushed toward
          0/1); ``p`` is ``p_star`` (``p_true`` when p* is unknown);
        - ``method_predicted_outward``: the same for ``config.method``'s theory target
          (0 for unbiased estimators, NaN where the estimator declares no theory);
        - ``measured_outward``: mean of ``sign(p - 1/2) (q - p)`` now, and
          ``measured_outward_change`` since the previous evaluation.

        Returns
        -------
        dict
            ``step``, ``n_questions``, ``n_scored``, ``q_source``, ``invalid_rate``, the
            metrics and the drift figures, and ``prompt_spread``
            (:func:`bioreason.lm.answer_protocol.prompt_spread` of the final hidden state
            at the answer position over the evaluated questions: near 0, the answer
            cannot depend on the question).
        """
        config = self.config
        rows = self._question_rows(questions)
        frame, distribution = self._predict(rows, config.eval_samples, self._eval_seed())
        row = evaluation_row(
            frame,
            distribution,
            step=self.step,
            n_samples=config.eval_samples,
            grid=self.grid,
            reward=config.reward,
            method=config.method,
            estimator_options=self.estimator.options,
            previous_outward=self.eval_rows_log[-1]["measured_outward"]
            if self.eval_rows_log
            else None,
        )
        row["prompt_spread"] = self._prompt_spread
        self.eval_rows_log.append(row)
        if self._eval_log_path is not None:
            write_csv_log(self._eval_log_path, self.eval_rows_log)
        if self._predictions_path is not None:
            self._predictions.append(frame)
            save_predictions(
                pd.concat(self._predictions, ignore_index=True), self._predictions_path
            )
        for callback in getattr(self, "callbacks", ()):
            if callable(getattr(callback, "on_evaluate", None)):
                callback.on_evaluate(self, row)
        return row

    def _resume_predictions(self) -> None:
        """Keep the saved predictions of the evaluations up to the resumed step."""
        path = self._predictions_path
        self._predictions = []
        if path is not None and path.exists():
            earlier = pd.read_parquet(path)
            self._predictions = [earlier[earlier["step"] <= self.step]]


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    if name not in table:
        return np.full(len(table), math.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(np.float64)
