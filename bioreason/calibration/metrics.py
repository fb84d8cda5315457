"""Calibration metrics of probability predictions against binary outcomes (and, when
known, against the true probabilities ``p_star``). numpy only; pure functions.

Every metric here is a *loss or a summary*, never a reward: :func:`brier_loss` is the
mean squared error ``(q - y)^2`` (lower is better), the opposite sign of the RL reward
:func:`bioreason.rl.rewards.brier_reward`.

**Bin edges.** Equal-width binning takes ``right``: ``right=False`` (the default, and
what every table of this project uses) puts q in ``[b/B, (b+1)/B)`` with 1.0 in the
last bin; ``right=True`` puts q in ``(b/B, (b+1)/B]`` with 0.0 in the first bin, which
is ``pandas.cut(q, numpy.linspace(0, 1, B + 1), right=True, include_lowest=True)``,
the convention of the Uncalibrated Reasoning code. The two differ only for predictions
that sit exactly on an edge (on the default answer grid 0.01..0.99 with 10 bins: 0.1,
0.2, ..., 0.9).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from bioreason.registry import Registry

__all__ = [
    "METRICS",
    "REFERENCE_METRICS",
    "accuracy",
    "adaptive_calibration_error",
    "auroc",
    "bootstrap_ci",
    "brier_loss",
    "auroc_to_reference",
    "calibration_bins",
    "cluster_bootstrap_ci",
    "correlation_to_reference",
    "ece_to_reference",
    "expected_calibration_error",
    "log_loss",
    "max_calibration_error",
    "mean_absolute_error_to_reference",
    "overconfidence",
    "overconfidence_per_question",
    "overconfidence_per_answer",
    "prediction_sd",
    "rank_correlation_to_reference",
    "reference_bins",
    "sharpness",
    "summarize",
]

_EPS = 1e-12


def _vector(values: ArrayLike, name: str, where: str, kind: str) -> np.ndarray:
    """The one validator of every metric's inputs: a non-empty 1-d float64 array of
    probabilities in [0, 1] (``kind="probability"``) or 0/1 outcomes (``"outcome"``).

    Errors name the function (``where``), the argument and the first offending index.
    """
    try:
        array = np.asarray(values)
    except (TypeError, ValueError) as err:  # ragged nested lists
        raise TypeError(
            f"{where}: {name} must be numbers in a 1-d array of shape (n,), "
            f"got {type(values).__name__} ({err})"
        ) from None
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"{where}: {name} must be numbers in a 1-d array of shape (n,), got dtype {array.dtype}"
        )
    array = array.astype(np.float64, copy=False)
    if array.ndim != 1:
        raise ValueError(
            f"{where}: {name} must be a 1-d array of shape (n,), one value per question, "
            f"got shape {array.shape}; flatten it yourself (.ravel()) only if the "
            "values line up with the other argument"
        )
    if array.size == 0:
        raise ValueError(f"{where}: {name} is empty; need at least one prediction")
    if kind == "outcome":
        ok = (array == 0) | (array == 1)
        rule = "outcomes must be 0/1"
    else:
        ok = (array >= 0) & (array <= 1)  # False for NaN
        rule = "must be probabilities in [0, 1] (finite, no NaN)"
    if not ok.all():
        bad = np.flatnonzero(~ok)
        raise ValueError(
            f"{where}: {name}[{bad[0]}] = {float(array[bad[0]])!r}: {name} {rule} "
            f"({bad.size} of {array.size} values are not)"
        )
    return array


def _same_length(first: np.ndarray, second: np.ndarray, names: str, where: str) -> None:
    if first.shape != second.shape:
        raise ValueError(
            f"{where}: {names} must have the same length, got {first.size} and {second.size}"
        )


def _check(
    outcomes: ArrayLike, probs: ArrayLike, where: str = "metric"
) -> tuple[np.ndarray, np.ndarray]:
    outcomes = _vector(outcomes, "outcomes", where, "outcome")
    probs = _vector(probs, "probs", where, "probability")
    _same_length(outcomes, probs, "outcomes and probs", where)
    return outcomes, probs


def _check_right(right: Any, where: str) -> bool:
    if not isinstance(right, (bool, np.bool_)):
        raise TypeError(f"{where}: right must be True or False, got {right!r}")
    return bool(right)


def _check_n_bins(n_bins: Any, where: str) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"{where}: n_bins must be an integer >= 1, got {n_bins!r}")
    if n_bins < 1:
        raise ValueError(f"{where}: n_bins must be an integer >= 1, got {n_bins}")
    return int(n_bins)


def _equal_width_bin(probs: np.ndarray, n_bins: int, right: bool = False) -> np.ndarray:
    if not right:
        # bins [0, 1/B), ..., [(B-1)/B, 1]; 1.0 goes to the last bin
        return np.minimum((probs * n_bins).astype(np.int64), n_bins - 1)
    # bins [0, 1/B], (1/B, 2/B], ...: pandas.cut's edges and comparisons, exactly
    edges = np.linspace(0, 1, n_bins + 1)
    return np.clip(np.searchsorted(edges, probs, side="left") - 1, 0, n_bins - 1)


def _quantile_bin(probs: np.ndarray, n_bins: int) -> np.ndarray:
    # consecutive blocks of the sorted predictions; tied predictions share the bin of
    # the first of them, so a bin edge never splits a tie
    order = np.argsort(probs, kind="stable")
    ranked = probs[order]
    first_of_tie = np.searchsorted(ranked, ranked, side="left")
    index = np.empty(probs.size, dtype=np.int64)
    index[order] = first_of_tie * n_bins // probs.size
    return index


def calibration_bins(
    outcomes: ArrayLike,
    probs: ArrayLike,
    n_bins: int = 10,
    strategy: str = "uniform",
    right: bool = False,
) -> dict[str, np.ndarray]:
    """Per-bin count, mean prediction and mean outcome.

    Parameters
    ----------
    outcomes : array, shape (n,)
        0/1 outcomes.
    probs : array, shape (n,)
        Predicted probabilities.
    n_bins : int
    strategy : {"uniform", "quantile"}
        ``"uniform"``: equal-width bins on [0, 1]; ``"quantile"``: equal-mass bins
        (consecutive blocks of the sorted predictions, ties kept in one bin, so a bin
        may hold more than n / n_bins and another fewer or none).
    right : bool
        Edge convention of equal-width bins (module docstring): False ``[a, b)``,
        True ``(a, b]`` as ``pandas.cut``.

    Returns
    -------
    dict of arrays, each shape (n_bins,)
        ``count``, ``mean_prob``, ``mean_outcome``; empty bins have count 0 and NaN means.

    Raises
    ------
    ValueError, TypeError
        Inputs that are not 1-d arrays of one length, probabilities outside [0, 1]
        (NaN included), outcomes other than 0/1, no predictions, or ``n_bins`` not an
        integer >= 1; the message names the argument and the first bad index.
    """
    return _bins(outcomes, probs, n_bins, strategy, right, "calibration_bins")


def _bins(
    outcomes: ArrayLike, probs: ArrayLike, n_bins: int, strategy: str, right: bool, where: str
) -> dict[str, np.ndarray]:
    outcomes, probs = _check(outcomes, probs, where)
    n_bins = _check_n_bins(n_bins, where)
    right = _check_right(right, where)
    if strategy == "uniform":
        index = _equal_width_bin(probs, n_bins, right)
    elif strategy == "quantile":
        index = _quantile_bin(probs, n_bins)
    else:
        raise ValueError(f"{where}: strategy must be 'uniform' or 'quantile', got {strategy!r}")
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = np.bincount(index, probs, minlength=n_bins) / count
        mean_outcome = np.bincount(index, outcomes, minlength=n_bins) / count
    return {"count": count, "mean_prob": mean_prob, "mean_outcome": mean_outcome}


def _calibration_error(
    outcomes: ArrayLike,
    probs: ArrayLike,
    n_bins: int,
    strategy: str,
    reduce: str,
    right: bool,
    where: str,
) -> float:
    bins = _bins(outcomes, probs, n_bins, strategy, right, where)
    filled = bins["count"] > 0
    gap = np.abs(bins["mean_prob"][filled] - bins["mean_outcome"][filled])
    if reduce == "max":
        return float(gap.max())
    weight = bins["count"][filled] / bins["count"].sum()
    return float((weight * gap).sum())


def expected_calibration_error(
    outcomes: ArrayLike, probs: ArrayLike, n_bins: int = 10, right: bool = False
) -> float:
    """ECE with equal-width bins: ``sum_b (n_b / n) |mean q_b - mean y_b|``.

    ``outcomes``, ``probs``: arrays of shape (n,). ``right`` picks the bin-edge
    convention (module docstring).
    """
    return _calibration_error(
        outcomes, probs, n_bins, "uniform", "mean", right, "expected_calibration_error"
    )


def adaptive_calibration_error(outcomes: ArrayLike, probs: ArrayLike, n_bins: int = 10) -> float:
    """ECE with equal-mass bins (each holds ~n / n_bins predictions; ties share a bin).

    ``outcomes``, ``probs``: arrays of shape (n,).
    """
    return _calibration_error(
        outcomes, probs, n_bins, "quantile", "mean", False, "adaptive_calibration_error"
    )


def max_calibration_error(
    outcomes: ArrayLike, probs: ArrayLike, n_bins: int = 10, right: bool = False
) -> float:
    """MCE: the largest ``|mean q_b - mean y_b|`` over non-empty equal-width bins."""
    return _calibration_error(
        outcomes, probs, n_bins, "uniform", "max", right, "max_calibration_error"
    )


def brier_loss(outcomes: ArrayLike, probs: ArrayLike) -> float:
    """Brier *loss*: mean ``(q - y)^2``, lower is better (the RL reward
    :func:`bioreason.rl.rewards.brier_reward` is its negative).

    ``outcomes``, ``probs``: arrays of shape (n,).
    """
    outcomes, probs = _check(outcomes, probs, "brier_loss")
    return float(np.mean((probs - outcomes) ** 2))


def log_loss(outcomes: ArrayLike, probs: ArrayLike, eps: float = 1e-15) -> float:
    """Mean ``-[y log q + (1 - y) log(1 - q)]`` with q clipped to [eps, 1 - eps].

    ``outcomes``, ``probs``: arrays of shape (n,). ``eps`` in (0, 0.5): the clip keeps
    the loss finite (at most ``-log eps``) when a certain prediction is wrong.
    """
    outcomes, probs = _check(outcomes, probs, "log_loss")
    if not 0 < eps < 0.5:  # False for NaN
        raise ValueError(f"log_loss: eps must be in (0, 0.5), got {eps!r}")
    q = np.clip(probs, eps, 1 - eps)
    return float(-np.mean(outcomes * np.log(q) + (1 - outcomes) * np.log1p(-q)))


def _midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, shape (n,); every member of a tie block gets the
    block's average rank."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(values.size, dtype=np.float64)
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    return ranks


def auroc(outcomes: ArrayLike, probs: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with midranks for ties); NaN if one class.

    ``outcomes``, ``probs``: arrays of shape (n,).
    """
    outcomes, probs = _check(outcomes, probs, "auroc")
    n_pos = outcomes.sum()
    n_neg = outcomes.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _midranks(probs)
    u = ranks[outcomes == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def accuracy(outcomes: ArrayLike, probs: ArrayLike, threshold: float = 0.5) -> float:
    """Fraction of questions where ``q >= threshold`` agrees with ``y = 1``.

    ``outcomes``, ``probs``: arrays of shape (n,); ``threshold``: a finite number.
    """
    outcomes, probs = _check(outcomes, probs, "accuracy")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)):
        raise TypeError(f"accuracy: threshold must be a number, got {threshold!r}")
    if not np.isfinite(threshold):
        raise ValueError(f"accuracy: threshold must be a finite number, got {threshold!r}")
    return float(np.mean((probs >= threshold) == (outcomes == 1)))


def sharpness(probs: ArrayLike) -> float:
    """Variance of the predictions, shape (n,) (how far from a constant forecast they
    spread); in [0, 1/4]."""
    probs = _vector(probs, "probs", "sharpness", "probability")
    return float(np.var(probs))


def _check_reference(
    probs: ArrayLike, p_star: ArrayLike, where: str, reference_name: str = "p_star"
) -> tuple[np.ndarray, np.ndarray]:
    probs = _vector(probs, "probs", where, "probability")
    p_star = _vector(p_star, reference_name, where, "probability")
    _same_length(probs, p_star, f"probs and {reference_name}", where)
    return probs, p_star


def mean_absolute_error_to_reference(probs: ArrayLike, p_star: ArrayLike) -> float:
    """Mean ``|q - p*|``; ``probs``, ``p_star``: arrays of shape (n,) of probabilities."""
    probs, p_star = _check_reference(probs, p_star, "mean_absolute_error_to_reference")
    return float(np.mean(np.abs(probs - p_star)))


def ece_to_reference(
    probs: ArrayLike, p_star: ArrayLike, n_bins: int = 10, right: bool = False
) -> float:
    """ECE with the true probability in place of the outcome:
    ``sum_b (n_b / n) |mean q_b - mean p*_b|`` over equal-width bins of q.

    ``probs``, ``p_star``: arrays of shape (n,) of probabilities; ``right``: bin-edge
    convention.
    """
    probs, p_star = _check_reference(probs, p_star, "ece_to_reference")
    n_bins = _check_n_bins(n_bins, "ece_to_reference")
    right = _check_right(right, "ece_to_reference")
    index = _equal_width_bin(probs, n_bins, right)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    gap = np.abs(np.bincount(index, probs - p_star, minlength=n_bins))
    return float(gap.sum() / count.sum())


def overconfidence(probs: ArrayLike, p_star: ArrayLike) -> float:
    """``mean |q - 1/2| - mean |p* - 1/2|``: > 0 when predictions are more extreme than
    the truth. ``probs``, ``p_star``: arrays of shape (n,) of probabilities."""
    probs, p_star = _check_reference(probs, p_star, "overconfidence")
    return float(np.mean(np.abs(probs - 0.5)) - np.mean(np.abs(p_star - 0.5)))


def overconfidence_per_question(probs: ArrayLike, p_star: ArrayLike) -> float:
    """Overconfidence question by question: ``mean_i sign(p*_i - 1/2) (q_i - p*_i)``.

    Each answer's error against its own reference, signed so that an answer pushed
    outward past p* (further from 1/2 than p*, on p*'s side) counts positive and one
    pulled in toward 1/2 (or beyond it) counts negative; a question with p* exactly 1/2
    counts 0. Unlike :func:`overconfidence` (``mean |q - 1/2| - mean |p* - 1/2|``, a
    comparison of two averages), this needs each answer to be right for its question:
    a predictor that answers every question with the mean p* scores negative here
    (it is too cautious on every question away from the mean), however calibrated its
    average answer.

    Parameters
    ----------
    probs, p_star : arrays of probabilities, shape (n,)

    Returns
    -------
    float
        In [-1, 1]; 0 for ``probs == p_star``.
    """
    probs, p_star = _check_reference(probs, p_star, "overconfidence_per_question")
    return float(np.mean(np.sign(p_star - 0.5) * (probs - p_star)))


def overconfidence_per_answer(probs: ArrayLike, p_star: ArrayLike) -> float:
    """Overconfidence keyed on the answer: ``mean_i sign(q_i - 1/2) (q_i - p*_i)``.

    Positive when answers lie further from 1/2 than the probabilities behind them, on
    the answer's side. Its expectation is 0 for any predictor calibrated against the
    reference, E[p* | q] = q, however little it knows about each question. So it
    separates "too extreme for what the answer can support" from "knows too little":
    a predictor that reads the question only partly has its answers pulled toward the
    mean p*, so :func:`overconfidence_per_question` (keyed on p*) is negative for it
    even when it is calibrated, and this one is about 0. An answer of exactly 1/2
    counts 0.

    Parameters
    ----------
    probs, p_star : arrays of probabilities, shape (n,)

    Returns
    -------
    float
        In [-1, 1]; 0 for ``probs == p_star``.
    """
    probs, p_star = _check_reference(probs, p_star, "overconfidence_per_answer")
    return float(np.mean(np.sign(probs - 0.5) * (probs - p_star)))


def _constant(values: np.ndarray) -> bool:
    # exact test: the mean of equal floats need not equal them, so centring a constant
    # array can leave rounding residue of order 1e-17 that is not a spread
    return bool(values.min() == values.max())


def _pearson(first: np.ndarray, second: np.ndarray) -> float:
    if _constant(first) or _constant(second):
        return float("nan")
    first, second = first - first.mean(), second - second.mean()
    # rescale so that products of tiny spreads (e.g. 1e-300) do not underflow to 0
    first, second = first / np.abs(first).max(), second / np.abs(second).max()
    scale = math.sqrt(float(first @ first) * float(second @ second))
    if scale == 0.0:  # a constant array: the correlation is undefined
        return float("nan")
    return float(np.clip((first @ second) / scale, -1.0, 1.0))


def correlation_to_reference(probs: ArrayLike, p_star: ArrayLike) -> float:
    """Pearson correlation of the predictions with the reference across questions.

    Parameters
    ----------
    probs, p_star : arrays of probabilities, shape (n,)

    Returns
    -------
    float
        In [-1, 1]. NaN when ``probs`` or ``p_star`` is constant (one answer to every
        question carries no question-level information, and the correlation is 0/0),
        which includes n = 1.
    """
    probs, p_star = _check_reference(probs, p_star, "correlation_to_reference")
    return _pearson(probs, p_star)


def rank_correlation_to_reference(probs: ArrayLike, p_star: ArrayLike) -> float:
    """Spearman rank correlation of the predictions with the reference: the Pearson
    correlation of their midranks (ties share their average rank).

    Parameters
    ----------
    probs, p_star : arrays of probabilities, shape (n,)

    Returns
    -------
    float
        In [-1, 1]; NaN when either array is constant (as
        :func:`correlation_to_reference`).
    """
    probs, p_star = _check_reference(probs, p_star, "rank_correlation_to_reference")
    return _pearson(_midranks(probs), _midranks(p_star))


def auroc_to_reference(probs: ArrayLike, p_star: ArrayLike) -> float:
    """AUROC of the predictions for telling the questions with ``p* > 1/2`` from the rest.

    :func:`auroc` against the labels ``1[p* > 1/2]`` instead of sampled outcomes: does
    the predictor rank the questions the reference calls likely above those it calls
    unlikely, free of the outcomes' noise.

    Parameters
    ----------
    probs, p_star : arrays of probabilities, shape (n,)

    Returns
    -------
    float
        In [0, 1]; NaN when every p* lies on one side (all ``> 1/2`` or all ``<= 1/2``).
    """
    probs, p_star = _check_reference(probs, p_star, "auroc_to_reference")
    return auroc((p_star > 0.5).astype(np.float64), probs)


def prediction_sd(probs: ArrayLike) -> float:
    """Standard deviation of the predictions across questions (``ddof=0``), shape (n,):
    0 for a predictor that gives one answer to every question; the square root of
    :func:`sharpness`, in the probability's own units. In [0, 1/2]."""
    probs = _vector(probs, "probs", "prediction_sd", "probability")
    return 0.0 if _constant(probs) else float(np.std(probs))


def reference_bins(probs: ArrayLike, p_star: ArrayLike, n_bins: int = 10) -> dict[str, np.ndarray]:
    """The predictions binned by their reference: a reliability diagram question by
    question (bins of p*, the mean prediction in each).

    Parameters
    ----------
    probs, p_star : arrays of probabilities, shape (n,)
    n_bins : int
        Equal-width bins of p* on [0, 1], ``[b/B, (b+1)/B)`` with 1.0 in the last.

    Returns
    -------
    dict of arrays, each shape (n_bins,)
        ``count``; ``mean_reference`` and ``mean_prob`` (mean p* and mean q of the bin);
        ``prob_low`` / ``prob_high``, the 25th and 75th percentiles of q in the bin.
        Empty bins have count 0 and NaN elsewhere. A predictor that knows each question
        follows the diagonal; one that gives one answer to every question is flat.
    """
    probs, p_star = _check_reference(probs, p_star, "reference_bins")
    n_bins = _check_n_bins(n_bins, "reference_bins")
    index = _equal_width_bin(p_star, n_bins)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_reference = np.bincount(index, p_star, minlength=n_bins) / count
        mean_prob = np.bincount(index, probs, minlength=n_bins) / count
    low, high = np.full(n_bins, np.nan), np.full(n_bins, np.nan)
    for b in np.flatnonzero(count):
        low[b], high[b] = np.quantile(probs[index == b], [0.25, 0.75])
    return {
        "count": count,
        "mean_reference": mean_reference,
        "mean_prob": mean_prob,
        "prob_low": low,
        "prob_high": high,
    }


#: Metrics of (outcomes, probs), arrays of shape (n,). Metadata ``binned``: the metric
#: takes ``n_bins`` (and, for equal-width bins, ``right``).
METRICS: Registry[Callable[..., float]] = Registry("calibration metric")
METRICS.register("ece", expected_calibration_error, binned=True, edges=True)
METRICS.register("adaptive_ece", adaptive_calibration_error, binned=True, edges=False)
METRICS.register("mce", max_calibration_error, binned=True, edges=True)
METRICS.register("brier", brier_loss, binned=False, edges=False)
METRICS.register("log_loss", log_loss, binned=False, edges=False)
METRICS.register("auroc", auroc, binned=False, edges=False)
METRICS.register("accuracy", accuracy, binned=False, edges=False)

#: Metrics of (probs, reference probabilities), arrays of shape (n,); same metadata.
REFERENCE_METRICS: Registry[Callable[..., float]] = Registry("reference metric")
REFERENCE_METRICS.register(
    "mae_to_reference", mean_absolute_error_to_reference, binned=False, edges=False
)
REFERENCE_METRICS.register("ece_to_reference", ece_to_reference, binned=True, edges=True)
REFERENCE_METRICS.register("overconfidence", overconfidence, binned=False, edges=False)
REFERENCE_METRICS.register(
    "overconfidence_per_question", overconfidence_per_question, binned=False, edges=False
)
REFERENCE_METRICS.register(
    "overconfidence_per_answer", overconfidence_per_answer, binned=False, edges=False
)
REFERENCE_METRICS.register(
    "correlation_to_reference", correlation_to_reference, binned=False, edges=False
)
REFERENCE_METRICS.register(
    "rank_correlation_to_reference", rank_correlation_to_reference, binned=False, edges=False
)
REFERENCE_METRICS.register("auroc_to_reference", auroc_to_reference, binned=False, edges=False)


def _bin_options(registry: Registry, name: str, n_bins: int, right: bool) -> dict[str, Any]:
    meta = registry.metadata(name)
    options: dict[str, Any] = {"n_bins": n_bins} if meta["binned"] else {}
    if meta["edges"]:
        options["right"] = right
    return options


def _check_n_boot(n_boot: Any, where: str, minimum: int) -> int:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)):
        raise TypeError(f"{where}: n_boot must be an integer >= {minimum}, got {n_boot!r}")
    if n_boot < minimum:
        raise ValueError(f"{where}: n_boot must be an integer >= {minimum}, got {n_boot}")
    return int(n_boot)


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: ArrayLike,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap: ``(estimate, low, high)`` of ``metric(*arrays)``.

    Questions are resampled with replacement, the same indices for every array. The
    questions lie along the first axis (1-d arrays of shape (n,), or (n, ...)), and
    every array has the same n >= 1. Replicates where the metric is NaN (e.g. AUROC of
    a resample with one class) are left out of the quantiles; if all are NaN, ``low``
    and ``high`` are NaN.

    Raises
    ------
    TypeError
        ``metric`` not callable, ``n_boot`` not an integer.
    ValueError
        No arrays, arrays of different lengths or empty, ``n_boot < 1``, ``level``
        outside (0, 1).
    """
    n_boot = _check_bootstrap_options(metric, n_boot, level, seed, "bootstrap_ci")
    if not arrays:
        raise ValueError("bootstrap_ci: pass at least one array to resample")
    arrays = tuple(np.asarray(a) for a in arrays)
    if any(a.ndim == 0 for a in arrays):
        raise ValueError(
            "bootstrap_ci: arrays must hold one entry per question along their first axis, "
            f"got shapes {[a.shape for a in arrays]}"
        )
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(
            "bootstrap_ci: all arrays passed to bootstrap_ci must have the same length, "
            f"got {[len(a) for a in arrays]}"
        )
    if n == 0:
        raise ValueError("bootstrap_ci: the arrays are empty; need at least one question")
    rng = np.random.default_rng(seed)
    estimate = metric(*arrays)
    draws = np.empty(n_boot)
    for b in range(n_boot):  # loop over replicates; each metric call is vectorised
        index = rng.integers(0, n, n)
        draws[b] = metric(*(a[index] for a in arrays))
    return _percentile_interval(estimate, draws, level)


def _check_bootstrap_options(metric: Any, n_boot: Any, level: Any, seed: Any, where: str) -> int:
    if not callable(metric):
        raise TypeError(f"{where}: metric must be callable, got {metric!r}")
    n_boot = _check_n_boot(n_boot, where, 1)
    if isinstance(level, bool) or not isinstance(level, (int, float, np.number)):
        raise TypeError(f"{where}: level must be a number in (0, 1), got {level!r}")
    if not 0 < level < 1:  # False for NaN
        raise ValueError(f"{where}: level must be in (0, 1), got {level}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{where}: seed must be an integer >= 0, got {seed!r}")
    if seed < 0:
        raise ValueError(f"{where}: seed must be an integer >= 0, got {seed}")
    return n_boot


def _percentile_interval(
    estimate: float, draws: np.ndarray, level: float
) -> tuple[float, float, float]:
    draws = draws[~np.isnan(draws)]
    if draws.size == 0:
        return float(estimate), float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(estimate), float(low), float(high)


def cluster_bootstrap_ci(
    metric: Callable[..., float],
    per_seed: ArrayLike,
    *arrays: ArrayLike,
    clusters: ArrayLike | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile bootstrap over seeds and over clusters of questions.

    For predictions of several training seeds on one set of questions, where questions
    of a cluster (e.g. one perturbation condition, whose questions share simulated
    cells) are not independent of each other. The estimate is the mean over seeds of
    ``metric(per_seed[:, s], *arrays)``. A replicate draws, independently, ``n_seeds``
    seeds with replacement and ``n_clusters`` clusters with replacement (every question
    of a drawn cluster, once per draw), and averages the metric over the drawn seeds on
    the drawn questions; so the interval covers both the seed-to-seed variation of
    training and the variation of which clusters were asked. With one seed it covers
    the clusters only; with ``clusters=None`` every question is its own cluster, and with
    one seed it is then :func:`bootstrap_ci` exactly (same ``seed``, same draws).

    Parameters
    ----------
    metric : callable
        ``metric(q, *arrays) -> float`` on 1-d arrays of one length (a resample of the
        questions), e.g. ``lambda q, p: correlation_to_reference(q, p)``.
    per_seed : array, shape (n_questions, n_seeds)
        One column of predictions per seed.
    *arrays : arrays, shape (n_questions,)
        What the seeds share (outcomes, p*, ...).
    clusters : array, shape (n_questions,), optional
        A label per question; questions with one label are resampled together.
    n_boot, level, seed
        Replicates (>= 1), the interval's level in (0, 1), the generator's seed (>= 0).

    Returns
    -------
    (estimate, low, high) : tuple of float
        Replicates where the metric is NaN (e.g. a correlation on a resample where q is
        constant) are left out of the quantiles; if all are, ``low`` and ``high`` are
        NaN. The estimate is NaN when the metric is NaN for some seed.

    Raises
    ------
    TypeError
        ``metric`` not callable; ``n_boot``, ``seed`` not integers.
    ValueError
        ``per_seed`` not 2-d with at least one question and one seed, an array or
        ``clusters`` of another length, ``n_boot < 1``, ``level`` outside (0, 1).
    """
    where = "cluster_bootstrap_ci"
    n_boot = _check_bootstrap_options(metric, n_boot, level, seed, where)
    per_seed = np.asarray(per_seed)
    if per_seed.ndim != 2 or per_seed.shape[0] == 0 or per_seed.shape[1] == 0:
        raise ValueError(
            f"{where}: per_seed must have shape (n_questions, n_seeds) with at least one "
            f"of each, got shape {per_seed.shape}"
        )
    n, n_seeds = per_seed.shape
    arrays = tuple(np.asarray(a) for a in arrays)
    bad = [i for i, a in enumerate(arrays) if a.ndim == 0 or len(a) != n]
    if bad:
        raise ValueError(
            f"{where}: every array must have one entry per question, length {n} (the rows "
            f"of per_seed), got shapes {[a.shape for a in arrays]}"
        )
    if clusters is None:
        codes = np.arange(n)
    else:
        clusters = np.asarray(clusters)
        if clusters.shape != (n,):
            raise ValueError(
                f"{where}: clusters must have shape ({n},), one label per question, got "
                f"shape {clusters.shape}"
            )
        codes = np.unique(clusters, return_inverse=True)[1].ravel()
    order = np.argsort(codes, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    n_clusters = len(members)

    def averaged(rows: np.ndarray | None, seeds: np.ndarray, weights: np.ndarray) -> float:
        taken = arrays if rows is None else tuple(a[rows] for a in arrays)
        values = [
            metric(per_seed[:, s] if rows is None else per_seed[rows, s], *taken) for s in seeds
        ]
        return float(np.dot(weights, values) / weights.sum())

    everyone = np.arange(n_seeds)
    estimate = averaged(None, everyone, np.ones(n_seeds))
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):  # loop over replicates; each metric call is vectorised
        drawn = rng.integers(0, n_clusters, n_clusters)
        rows = np.concatenate([members[k] for k in drawn]) if clusters is not None else drawn
        if n_seeds > 1:
            seeds, counts = np.unique(rng.integers(0, n_seeds, n_seeds), return_counts=True)
        else:
            seeds, counts = everyone, np.ones(1)
        draws[b] = averaged(rows, seeds, counts.astype(np.float64))
    return _percentile_interval(estimate, draws, level)


def summarize(
    outcomes: ArrayLike,
    probs: ArrayLike,
    p_star: ArrayLike | None = None,
    n_bins: int = 10,
    n_boot: int = 0,
    seed: int = 0,
    *,
    right: bool = False,
    references: Mapping[str, ArrayLike] | None = None,
) -> dict[str, float]:
    """Every metric in one dict (plus ``*_low``/``*_high`` bootstrap bounds if n_boot > 0).

    Parameters
    ----------
    outcomes, probs : arrays, shape (n,)
    p_star : array, shape (n,), optional
        True probabilities: adds the :data:`REFERENCE_METRICS` under their own names.
    n_bins, right
        Binning of the binned metrics (``right``: bin-edge convention, module docstring).
    n_boot, seed
        Bootstrap replicates over questions and their seed.
    references : mapping of str to array of shape (n,), optional
        Further reference probabilities (e.g. ``{"empirical": rate}``): adds each
        reference metric as ``<metric>_<key>`` (e.g. ``mae_to_reference_empirical``).

    Raises
    ------
    ValueError, TypeError
        As the metrics (naming ``summarize`` and the argument, e.g.
        ``references['empirical']``), or ``n_boot`` not an integer >= 0.
    """
    outcomes, probs = _check(outcomes, probs, "summarize")
    n_boot = _check_n_boot(n_boot, "summarize", 0)
    if references is not None and not isinstance(references, Mapping):
        raise TypeError(
            f"summarize: references must be a mapping of name to array, got {references!r}"
        )
    _check_n_bins(n_bins, "summarize")
    # reference probabilities by column suffix, each checked against probs
    named: dict[str, np.ndarray] = {}
    if p_star is not None:
        _, named[""] = _check_reference(probs, p_star, "summarize")
    for key, reference in (references or {}).items():
        _, named[f"_{key}"] = _check_reference(
            probs, reference, "summarize", f"references[{key!r}]"
        )
    result: dict[str, float] = {"sharpness": sharpness(probs)}
    for name, fn in METRICS.items():
        args = (outcomes, probs)
        kwargs = _bin_options(METRICS, name, n_bins, right)
        result[name] = fn(*args, **kwargs)
        if n_boot:
            _, low, high = bootstrap_ci(
                lambda y, q, fn=fn, kw=kwargs: fn(y, q, **kw), *args, n_boot=n_boot, seed=seed
            )
            result[f"{name}_low"], result[f"{name}_high"] = low, high
    for suffix, reference in named.items():
        for name, fn in REFERENCE_METRICS.items():
            kwargs = _bin_options(REFERENCE_METRICS, name, n_bins, right)
            column = f"{name}{suffix}"
            result[column] = fn(probs, reference, **kwargs)
            if n_boot:
                _, low, high = bootstrap_ci(
                    lambda q, r, fn=fn, kw=kwargs: fn(q, r, **kw),
                    probs,
                    reference,
                    n_boot=n_boot,
                    seed=seed,
                )
                result[f"{column}_low"], result[f"{column}_high"] = low, high
    return result
