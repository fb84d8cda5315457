"""p* over several fitted models at once: the equal-weight mixture of their posteriors.

A SAMS-VAE fitted twice on the same cells from two initializations ends at two different
approximate posteriors; each fit's per-draw interval (``p_star_low`` .. ``p_star_high``)
knows nothing of the other. :func:`pool_fits` pools the per-draw probabilities of several
fits (:meth:`OutcomeSimulator.probability` with ``keep_draws=True``) into one p* per
question whose interval includes the fit-to-fit variation (docs/simulator.md, "Honest
uncertainty"). :class:`EnsembleSimulator` is an :class:`OutcomeSimulator` over several
fits: its p* is the pooled one and its outcomes are drawn from the mixture, so
:func:`bioreason.sim.build_task` and RL with live outcomes take it as they take one fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from bioreason.sim.simulator import _CANONICAL, INTERVAL_QUANTILES, OutcomeSimulator

__all__ = ["EnsembleSimulator", "fit_spreads", "pool_fits"]

#: tag of the random stream that picks each outcome's fit (no other stream uses it)
_PICK_TAG = 0xF175


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
    fits' draws), ``converged`` (every fit converged), ``n_fits`` and ``p_star_per_draw``
    (the pooled draws). ``attrs["seconds"]`` sums the fits'.

    Raises
    ------
    ValueError
        No frames; a frame without ``p_star_per_draw``; frames of other questions or in
        another order (naming the first row that differs).
    """
    frames = list(frames)
    if not frames:
        raise ValueError("pool_fits needs at least one fit's probabilities")
    for index, frame in enumerate(frames):
        if "p_star_per_draw" not in frame.columns:
            raise ValueError(
                f"fit {index} has no p_star_per_draw column: compute its probabilities with "
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
        draws = [np.asarray(f["p_star_per_draw"].iloc[q], dtype=float) for f in frames]
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
    out["p_star_per_draw"] = pooled
    out.attrs["seconds"] = float(sum(f.attrs.get("seconds", 0.0) for f in frames))
    return out


def fit_spreads(pooled: pd.DataFrame, by: str = "group") -> pd.DataFrame:
    """How far the fits' p* lie apart against each fit's own spread, per group of
    questions (e.g. seen conditions and held-out combinations).

    Parameters
    ----------
    pooled : DataFrame
        :func:`pool_fits`'s result with a grouping column ``by``.
    by : str
        The grouping column.

    Returns
    -------
    DataFrame indexed by group (in order of appearance), with ``between_fits`` (the mean
    over questions of ``p_star_between_fits``) and ``within_fit`` (the mean of
    ``p_star_within_fit``).

    Raises
    ------
    ValueError
        A frame without ``by`` or without the pooled columns.
    """
    needed = {by, "p_star_between_fits", "p_star_within_fit"}
    if missing := sorted(needed - set(pooled.columns)):
        raise ValueError(f"fit_spreads needs pool_fits' result with {by!r}; missing {missing}")
    groups = pooled.groupby(by, sort=False)
    return pd.DataFrame(
        {
            "between_fits": groups["p_star_between_fits"].mean(),
            "within_fit": groups["p_star_within_fit"].mean(),
        }
    )


_POOLED = {
    "p_star",
    "p_star_se",
    "p_star_spread",
    "p_star_low",
    "p_star_high",
    "n_draws",
    "converged",
    "p_star_per_draw",
}


class EnsembleSimulator(OutcomeSimulator):
    """An :class:`OutcomeSimulator` over several fits of one model to the same cells
    (e.g. SAMS-VAE from several seeds), answering as their equal-weight mixture.

    It is the first fit's simulator (its questions, readouts, thresholds, descriptions
    and unseen parts), with the other fits kept in step: the same outcome definition
    (thresholds included) and the same readouts. :meth:`probability` is
    :func:`pool_fits` of every fit's; :meth:`sample` draws each outcome from a fit picked
    uniformly at random, so an outcome is a Bernoulli draw of the pooled p*.

    Parameters
    ----------
    models : sequence of fitted models
        At least one; every one with the first's genes.
    *args, **options
        :class:`OutcomeSimulator`'s arguments (outcome, ``readouts=``, ``budget=``,
        ``observed=``, outcome options ...), given to every fit's simulator.

    Raises
    ------
    ValueError
        No models, or a model whose genes differ from the first's (naming it).
    """

    def __init__(self, models: Sequence[Any], *args: Any, **options: Any) -> None:
        models = list(models)
        if not models:
            raise ValueError("EnsembleSimulator needs at least one fitted model")
        super().__init__(models[0], *args, **options)
        genes = list(map(str, models[0].gene_names))
        for index, model in enumerate(models[1:], start=1):
            if list(map(str, getattr(model, "gene_names", []))) != genes:
                raise ValueError(
                    f"model {index} has other genes than model 0: the fits of an ensemble "
                    "must be fits of one model to the same genes"
                )
        others = dict(options)
        others.pop("questions", None)
        self.others = [OutcomeSimulator(model, *args, **others) for model in models[1:]]
        for other in self.others:
            other.readouts = self.readouts  # one set: a readout added is every fit's

    @property
    def models(self) -> list[Any]:
        """The fits, the first one first."""
        return [self.model, *(other.model for other in self.others)]

    def _in_step(self, questions: Any) -> pd.DataFrame:
        """The questions resolved once (as (condition, readout) rows every fit reads),
        with the thresholds fixed by the first fit and given to the others."""
        frame = self._resolve(self.questions if questions is None else questions)
        self.fix_thresholds(list(dict.fromkeys(frame["readout"])))
        for other in self.others:
            other.outcome = self.outcome
        return frame.drop(columns=[_CANONICAL])

    def probability(
        self,
        questions: Any = None,
        budget: Any = None,
        *,
        seed: int = 0,
        keep_draws: bool = False,
        **changes: Any,
    ) -> pd.DataFrame:
        """p* of every question under the mixture of the fits.

        Every fit computes its p* with the same budget and seed
        (:meth:`OutcomeSimulator.probability`), and :func:`pool_fits` pools them.

        Returns
        -------
        DataFrame
            :meth:`OutcomeSimulator.probability`'s columns, pooled as :func:`pool_fits`
            gives them (with ``p_star_between_fits``, ``p_star_within_fit`` and
            ``n_fits``); ``p_star_per_draw`` only with ``keep_draws``.
        """
        frame = self._in_step(questions)
        frames = [
            OutcomeSimulator.probability(self, frame, budget, seed=seed, keep_draws=True, **changes)
        ]
        frames += [
            other.probability(frame, budget, seed=seed, keep_draws=True, **changes)
            for other in self.others
        ]
        pooled = pool_fits(frames)
        if not keep_draws:
            pooled = pooled.drop(columns="p_star_per_draw")
        pooled.attrs["outcome"] = self.outcome.to_json()
        return pooled

    def sample(
        self, questions: Any = None, n: int = 1, seed: int = 0, *, independent: bool = True
    ) -> Any:
        """0/1 outcomes, ``n`` per question, each from a fit picked at random.

        With ``independent=True`` every outcome picks its fit on its own; with
        ``independent=False`` outcome ``j`` of every question comes from one fit (one
        realisation of the world is one fit's). Fit ``k`` samples with the seed
        ``SeedSequence([seed, k])`` (:meth:`OutcomeSimulator.sample`), and the picks come
        from a stream of their own, so the outcomes are Bernoulli draws of the pooled p*.

        Returns
        -------
        Tensor, shape (len(questions), n), float64 of 0/1.
        """
        import torch

        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        frame = self._in_step(questions)
        fits = [self, *self.others]
        outcomes = []
        for k, fit in enumerate(fits):
            fit_seed = int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0])
            drawn = OutcomeSimulator.sample(fit, frame, int(n), fit_seed, independent=independent)
            outcomes.append(np.asarray(drawn))
        stacked = np.stack(outcomes)  # (K, Q, n)
        rng = np.random.default_rng([int(seed), _PICK_TAG])
        q = len(frame)
        if independent:
            picks = rng.integers(len(fits), size=(q, int(n)))
        else:
            picks = np.broadcast_to(rng.integers(len(fits), size=int(n)), (q, int(n)))
        chosen = np.take_along_axis(stacked, picks[None], axis=0)[0]
        return torch.as_tensor(chosen, dtype=torch.float64)
