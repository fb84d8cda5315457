"""p* over several fitted models at once: the equal-weight mixture of their posteriors.

A SAMS-VAE fitted twice on the same cells from two initializations ends at two different
approximate posteriors; each fit's per-draw interval (``p_star_low`` .. ``p_star_high``)
knows nothing of the other. :func:`pool_fits` pools the per-draw probabilities of several
fits (:meth:`OutcomeSimulator.probability` with ``keep_draws=True``) into one p* per
question whose interval includes the fit-to-fit variation (docs/simulator.md, "Honest
uncertainty").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from bioreason.sim.simulator import INTERVAL_QUANTILES

__all__ = ["pool_fits"]


def _weighted_quantiles(
    values: np.ndarray, weights: np.ndarray, quantiles: Sequence[float]
) -> np.ndarray:
    """Quantiles of a discrete distribution (inverted CDF: the smallest value whose
    cumulative weight reaches q)."""
    order = np.argsort(values, kind="stable")
    values, cumulative = values[order], np.cumsum(weights[order])
    cumulative /= cumulative[-1]
    index = np.searchsorted(cumulative, np.asarray(quantiles) - 1e-12, side="left")
    return values[np.minimum(index, len(values) - 1)]


def pool_fits(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """p* of the equal-weight mixture of several fits' posteriors, question by question.

    Parameters
    ----------
    frames : sequence of DataFrame
        One :meth:`OutcomeSimulator.probability` result per fit, each computed with
        ``keep_draws=True`` and for the same questions in the same order.

    Returns
    -------
    DataFrame, one row per question (the first frame's ``condition``, ``readout`` and
    other question columns), with ``p_star`` (the mean of the fits' p*: each fit weighs
    1/K whatever its number of draws), ``p_star_se`` (sqrt of the sum of the fits'
    squared SEs, over K), ``p_star_spread`` (sd of the mixture of the fits' per-draw
    probabilities), ``p_star_low`` / ``p_star_high`` (the mixture's 5 % and 95 %
    quantiles), ``p_star_between_fits`` (sd of the fits' p* across fits, ddof 1),
    ``p_star_within_fit`` (the mean of the fits' ``p_star_spread``), ``n_draws`` (all
    fits' draws), ``converged`` (every fit converged), ``n_fits`` and ``p_star_draws``
    (the pooled draws). ``attrs["seconds"]`` sums the fits'.

    Raises
    ------
    ValueError
        No frames; a frame without ``p_star_draws``; frames of other questions or in
        another order (naming the first row that differs).
    """
    frames = list(frames)
    if not frames:
        raise ValueError("pool_fits needs at least one fit's probabilities")
    for index, frame in enumerate(frames):
        if "p_star_draws" not in frame.columns:
            raise ValueError(
                f"fit {index} has no p_star_draws column: compute its probabilities with "
                "OutcomeSimulator.probability(..., keep_draws=True)"
            )
    first = frames[0]
    keys = first[["condition", "readout"]].astype(str).to_numpy()
    for index, frame in enumerate(frames[1:], start=1):
        other = frame[["condition", "readout"]].astype(str).to_numpy()
        if other.shape != keys.shape:
            raise ValueError(
                f"fit {index} has {len(other)} questions, fit 0 has {len(keys)}; pool the "
                "same questions in the same order"
            )
        differ = np.flatnonzero((other != keys).any(axis=1))
        if differ.size:
            row = int(differ[0])
            raise ValueError(
                f"fit {index} row {row} asks {tuple(other[row])}, fit 0 asks "
                f"{tuple(keys[row])}; pool the same questions in the same order"
            )
    k = len(frames)
    p_star = np.stack([f["p_star"].to_numpy(dtype=float) for f in frames])  # (K, Q)
    se = np.stack([f["p_star_se"].to_numpy(dtype=float) for f in frames])
    within = np.stack([f["p_star_spread"].to_numpy(dtype=float) for f in frames])
    low, high, spread, pooled = [], [], [], []
    for q in range(len(first)):
        draws = [np.asarray(f["p_star_draws"].iloc[q], dtype=float) for f in frames]
        values = np.concatenate(draws)
        weights = np.concatenate([np.full(len(d), 1.0 / (k * len(d))) for d in draws])
        lo, hi = _weighted_quantiles(values, weights, INTERVAL_QUANTILES)
        mean = float(np.sum(weights * values))
        spread.append(float(np.sqrt(max(np.sum(weights * (values - mean) ** 2), 0.0))))
        low.append(lo)
        high.append(hi)
        pooled.append(values)
    columns = [c for c in first.columns if c not in _POOLED]
    out = first[columns].copy()
    out["p_star"] = p_star.mean(axis=0)
    out["p_star_se"] = np.sqrt((se**2).sum(axis=0)) / k
    out["p_star_spread"] = spread
    out["p_star_low"] = low
    out["p_star_high"] = high
    out["p_star_between_fits"] = p_star.std(axis=0, ddof=1) if k > 1 else 0.0
    out["p_star_within_fit"] = within.mean(axis=0)
    out["n_draws"] = np.sum([f["n_draws"].to_numpy() for f in frames], axis=0)
    out["converged"] = np.all([f["converged"].to_numpy(dtype=bool) for f in frames], axis=0)
    out["n_fits"] = k
    out["p_star_draws"] = pooled
    out.attrs["seconds"] = float(sum(f.attrs.get("seconds", 0.0) for f in frames))
    return out


_POOLED = {
    "p_star",
    "p_star_se",
    "p_star_spread",
    "p_star_low",
    "p_star_high",
    "n_draws",
    "converged",
    "p_star_draws",
}
