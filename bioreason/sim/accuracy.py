"""How close a model's p* comes to the true probability p_true of the same questions.

On a synthetic screen the ground truth (:class:`~bioreason.sim.GroundTruthSimulator`)
gives p_true for the questions a fitted model answers with p*;
:func:`compare_to_truth` joins the two on (condition, readout) and summarizes the error
per group of questions (e.g. seen conditions and held-out combinations) with the
reference metrics of :mod:`bioreason.calibration.metrics`:

* ``mean_abs_error``: mean |p* - p_true|;
* ``ece_to_reference``: equal-width bins of p*, ``sum_b (n_b / n) |mean p*_b - mean p_true_b|``;
* ``overconfidence``: ``mean |p* - 1/2| - mean |p_true - 1/2|`` (> 0: p* more extreme);
* ``fraction_off``: the share of questions with |p* - p_true| > ``tolerance``;
* ``bias``: mean p* - mean p_true (< 0: the model's probabilities are too low overall);
* ``interval_coverage``: the share of questions whose p_true lies in the central 90 %
  interval of the per-draw probabilities (``p_star_low`` .. ``p_star_high``, when the
  frame has them): near 0.9 when the posterior's uncertainty is honest;
* ``mean_spread``: mean across-draw spread of the model's per-draw probabilities
  (its epistemic uncertainty, when the frame has ``p_star_spread``);
* ``noise_floor``: the mean |p* - p_true| that Monte Carlo error alone would give,
  ``sqrt(2 / pi) * sqrt(se*^2 + se_true^2)`` averaged over questions (when both frames
  have ``p_star_se``).

With ``n_boot > 0`` the mean absolute error gets a percentile bootstrap interval
(:func:`~bioreason.calibration.metrics.bootstrap_ci`) that resamples *conditions*, not
questions: the questions of one condition share its simulated cells and its errors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bioreason.calibration.metrics import (
    bootstrap_ci,
    ece_to_reference,
    mean_absolute_error_to_reference,
    overconfidence,
)

__all__ = ["METRIC_UNITS", "compare_to_truth", "interval_coverage", "join_truth"]

#: the unit of each column of :func:`compare_to_truth` (for ``name: value unit`` lines)
METRIC_UNITS = {
    "n_questions": "questions",
    "n_conditions": "conditions",
    "mean_abs_error": "probability",
    "mean_abs_error_low": "probability",
    "mean_abs_error_high": "probability",
    "ece_to_reference": "probability",
    "overconfidence": "probability",
    "fraction_off": "fraction",
    "bias": "probability",
    "interval_coverage": "fraction",
    "mean_spread": "probability",
    "noise_floor": "probability",
    "mean_p_star": "probability",
    "mean_p_true": "probability",
}


def join_truth(predicted: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """``predicted`` with ``p_true`` (and ``p_true_se``) of the same (condition, readout).

    ``truth`` has ``p_true`` or ``p_star`` (the output of
    ``GroundTruthSimulator.probability``) and optionally ``p_star_se`` / ``p_true_se``.
    Every question of ``predicted`` must be in ``truth``; a question twice in ``truth``
    is an error.
    """
    for name, frame in (("predicted", predicted), ("truth", truth)):
        missing = {"condition", "readout"} - set(frame.columns)
        if missing:
            raise ValueError(f"{name} needs columns condition and readout; missing {missing}")
    if "p_star" not in predicted.columns:
        raise ValueError(f"predicted needs a p_star column; got {list(predicted.columns)}")
    value = "p_true" if "p_true" in truth.columns else "p_star"
    if value not in truth.columns:
        raise ValueError(f"truth needs a p_true or p_star column; got {list(truth.columns)}")
    se = "p_true_se" if "p_true_se" in truth.columns else "p_star_se"
    keep = {value: "p_true"} | ({se: "p_true_se"} if se in truth.columns else {})
    table = truth[["condition", "readout", *keep]].rename(columns=keep)
    if table.duplicated(["condition", "readout"]).any():
        raise ValueError("truth holds a (condition, readout) question twice")
    joined = predicted.drop(columns=["p_true", "p_true_se"], errors="ignore").merge(
        table, on=["condition", "readout"], how="left", validate="many_to_one"
    )
    absent = joined["p_true"].isna()
    if absent.any():
        first = joined.loc[absent, ["condition", "readout"]].iloc[0].tolist()
        raise ValueError(
            f"{int(absent.sum())} predicted questions have no p_true, e.g. {tuple(first)}"
        )
    return joined


def interval_coverage(low: np.ndarray, high: np.ndarray, reference: np.ndarray) -> float:
    """The share of questions whose reference probability (p_true, or p_obs on real
    cells) lies inside p*'s interval ``low`` .. ``high`` (both ends included).

    Parameters
    ----------
    low, high, reference : array-like of float, one value per question
        The interval (``p_star_low`` / ``p_star_high``) and the reference.

    Returns
    -------
    float
        The share, over the questions where all three are finite; NaN when none is.

    Raises
    ------
    ValueError
        Arrays of different lengths.
    """
    low, high, reference = (np.asarray(a, dtype=np.float64).ravel() for a in (low, high, reference))
    if not low.size == high.size == reference.size:
        raise ValueError(
            f"interval_coverage needs one low, high and reference per question, got "
            f"{low.size}, {high.size} and {reference.size}"
        )
    known = np.isfinite(low) & np.isfinite(high) & np.isfinite(reference)
    if not known.any():
        return float("nan")
    inside = (low[known] <= reference[known]) & (reference[known] <= high[known])
    return float(inside.mean())


def _clip(values: pd.Series) -> np.ndarray:
    # Monte Carlo means of probabilities are in [0, 1] up to float rounding
    return np.clip(values.to_numpy(dtype=np.float64), 0.0, 1.0)


def _mae_by_condition(abs_error_sum: np.ndarray, count: np.ndarray) -> float:
    return float(abs_error_sum.sum() / count.sum())


def _summary(
    rows: pd.DataFrame, n_bins: int, tolerance: float, n_boot: int, level: float, seed: int
) -> dict[str, float]:
    p_star, p_true = _clip(rows["p_star"]), _clip(rows["p_true"])
    error = np.abs(p_star - p_true)
    out = {
        "n_questions": float(len(rows)),
        "n_conditions": float(rows["condition"].nunique()),
        "mean_abs_error": mean_absolute_error_to_reference(p_star, p_true),
        "ece_to_reference": ece_to_reference(p_star, p_true, n_bins=n_bins),
        "overconfidence": overconfidence(p_star, p_true),
        "fraction_off": float(np.mean(error > tolerance)),
        "mean_spread": (
            float(rows["p_star_spread"].mean()) if "p_star_spread" in rows else float("nan")
        ),
        "bias": float(p_star.mean() - p_true.mean()),
        "interval_coverage": float("nan"),
        "noise_floor": float("nan"),
        "mean_p_star": float(p_star.mean()),
        "mean_p_true": float(p_true.mean()),
    }
    if "p_star_low" in rows and "p_star_high" in rows:
        out["interval_coverage"] = interval_coverage(
            rows["p_star_low"].to_numpy(float), rows["p_star_high"].to_numpy(float), p_true
        )
    if "p_star_se" in rows and "p_true_se" in rows:
        se = np.hypot(rows["p_star_se"].to_numpy(float), rows["p_true_se"].to_numpy(float))
        out["noise_floor"] = float(np.sqrt(2 / np.pi) * se.mean())
    if n_boot > 0:
        per_condition = (
            pd.DataFrame({"condition": rows["condition"].to_numpy(), "error": error})
            .groupby("condition", sort=True)["error"]
            .agg(["sum", "count"])
        )
        _, low, high = bootstrap_ci(
            _mae_by_condition,
            per_condition["sum"].to_numpy(),
            per_condition["count"].to_numpy(),
            n_boot=n_boot,
            level=level,
            seed=seed,
        )
        out["mean_abs_error_low"], out["mean_abs_error_high"] = low, high
    return out


def compare_to_truth(
    predicted: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    by: str | None = "group",
    n_bins: int = 10,
    tolerance: float = 0.1,
    n_boot: int = 0,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Error of p* against p_true, one row per group of questions.

    Parameters
    ----------
    predicted : DataFrame with ``condition``, ``readout``, ``p_star`` and optionally
        ``p_star_se``, ``p_star_spread`` and the grouping column ``by`` (the output of
        :meth:`~bioreason.sim.OutcomeSimulator.probability`, a group column added)
    truth : DataFrame with ``condition``, ``readout`` and ``p_true`` or ``p_star``
        (``GroundTruthSimulator.probability``), optionally ``p_true_se`` / ``p_star_se``
    by : the column that groups the questions; None (or absent from ``predicted``):
        one group ``"all"``
    n_bins : equal-width bins of p* for ``ece_to_reference``
    tolerance : |p* - p_true| above which a question counts in ``fraction_off``
    n_boot, level, seed : bootstrap of the mean absolute error over conditions
        (columns ``mean_abs_error_low`` / ``_high``; none when ``n_boot`` is 0)

    Returns
    -------
    DataFrame indexed by group (in order of first appearance), columns as in
    :data:`METRIC_UNITS` (see the module docstring); ``attrs["tolerance"]``.
    """
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    joined = join_truth(predicted, truth)
    if len(joined) == 0:
        raise ValueError("no questions to compare")
    if by is None or by not in joined.columns:
        groups = pd.Series("all", index=joined.index)
    else:
        groups = joined[by].astype(str)
    summary = {
        name: _summary(joined[groups == name], n_bins, tolerance, n_boot, level, seed)
        for name in dict.fromkeys(groups)
    }
    table = pd.DataFrame.from_dict(summary, orient="index")
    table.index.name = by or "group"
    table.attrs["tolerance"] = tolerance
    return table
