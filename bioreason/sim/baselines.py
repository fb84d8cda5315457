"""Model-free reference probabilities from observed cells, to judge p* against.

A fitted model earns its keep when its p* is closer to the truth than what the observed
cells alone say. Two baselines for :class:`~bioreason.sim.outcomes.ScreenHit` questions:

* **plug-in** (a measured condition): the replicate's score difference D is normal with
  mean ``d`` and variance ``s^2 = var_p / n + var_c / n_c`` (``n``, ``n_c``: the
  replicate's cells). The observed cells estimate ``d`` by ``d_hat`` (the difference of
  the observed mean scores, ``m`` perturbed and ``m_c`` control cells) with variance
  ``v = var_p / m + var_c / m_c``; the predictive distribution of D is then
  ``N(d_hat, s^2 + v)``, and the event's probability under it is the plug-in estimate
  (the estimate's own variance added, so a noisy estimate is not read as certain).
* **additive** (a combination A+B whose parts were measured alone): ``d_hat = d_hat_A +
  d_hat_B`` (each part's observed effect against the same control cells), its variance
  ``var_A / m_A + var_B / m_B + 4 var_c / m_c``, and the perturbed cells' variance the
  mean of the parts'; the rest as the plug-in.

Both use the same event as the simulator (:meth:`ScreenHit._event`: threshold or Welch
test, either direction). They need no model: :func:`observed_probability` reads the
cells' counts and the readouts' weights.

A plug-in used as the *reference* (p_obs of a real held-out condition, which has no
p_true) carries its own error: :func:`plugin_error` is the mean |p_obs - p| a perfect
predictor would show against it, by a parametric bootstrap that takes ``d_hat`` as the
truth and redraws the estimate from ``N(d_hat, v)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from bioreason.sim.outcomes import ScreenHit, _welch_df
from bioreason.sim.readouts import Readout, ReadoutSet, cell_scores

__all__ = ["heldout_reference", "observed_probability", "plugin_error"]


def _dense(matrix: Any) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix, np.float32)


def _parts_key(label: str, delimiter: str) -> frozenset[str]:
    return frozenset(part.strip() for part in str(label).split(delimiter))


def observed_probability(
    outcome: ScreenHit,
    adata: Any,
    readouts: Sequence[Readout] | ReadoutSet,
    conditions: Sequence[str],
    *,
    method: str = "plugin",
    layer: str | None = "counts",
    perturbation_key: str = "perturbation",
    control: str = "control",
    delimiter: str = "+",
) -> pd.DataFrame:
    """Model-free probabilities of ``screen_hit`` questions from observed cells.

    Parameters
    ----------
    outcome : ScreenHit
        The event, with its thresholds fixed (a number or one per readout).
    adata : AnnData
        Observed cells (counts in ``layers[layer]``, or ``X`` when ``layer`` is None)
        labelled by ``obs[perturbation_key]``; only these cells are used, so pass the
        training cells to judge a model trained on them.
    readouts : list of Readout (or gene names) or ReadoutSet
        The readouts asked about (every one is scored).
    conditions : list of str
        Conditions to answer; a label matches cells whose label has the same parts in
        any order (``"B+A"`` matches cells labelled ``"A+B"``).
    method : ``"plugin"`` or ``"additive"``
        ``plugin``: each condition from its own cells; ``additive``: each condition from
        its parts' cells (a single perturbation is then its own plug-in).

    Returns
    -------
    DataFrame, one row per (condition, readout) in ``conditions`` x readouts order,
    columns ``condition``, ``readout``, ``p_star`` (the baseline's probability),
    ``effect`` (``d_hat``), ``effect_se`` (sqrt(v)), ``n_cells`` (the observed
    perturbed cells used; for ``additive`` the smaller part's), ``replicate_sd`` (s, the
    sd of D in one replicate) and ``df`` (Welch's degrees of freedom of a replicate).

    Raises
    ------
    ValueError
        An outcome other than ``screen_hit`` or without thresholds, an unknown
        ``method``, a condition (or, for ``additive``, a part) with fewer than 2
        observed cells, or fewer than 2 control cells.
    """
    if not isinstance(outcome, ScreenHit):
        raise ValueError(
            f"observed_probability answers screen_hit questions; got {type(outcome).__name__}"
        )
    if outcome.needs_thresholds():
        raise ValueError("observed_probability: fix the outcome's thresholds first")
    if method not in ("plugin", "additive"):
        raise ValueError(f"method must be 'plugin' or 'additive', got {method!r}")
    if perturbation_key not in adata.obs:
        raise ValueError(f"adata.obs has no column {perturbation_key!r}")
    given = readouts.readouts if isinstance(readouts, ReadoutSet) else list(readouts)
    resolved = ReadoutSet(list(map(str, adata.var_names)))
    names = [resolved.add(r).name for r in given]
    weights = resolved.weights(names)
    counts = _dense(adata.layers[layer] if layer is not None else adata.X)
    scores = cell_scores(counts, weights)  # (cells, R)
    # each distinct label parsed once; cells grouped by the set of their label's parts
    codes, labels = pd.factorize(adata.obs[perturbation_key].astype(str))
    key_code: dict[frozenset[str], list[int]] = {}
    for code, label in enumerate(labels):
        key_code.setdefault(_parts_key(label, delimiter), []).append(code)

    def cells_of(key: frozenset[str], what: str) -> np.ndarray:
        rows = scores[np.isin(codes, key_code.get(key, []))]
        if len(rows) < 2:
            raise ValueError(f"{what}: {len(rows)} observed cell(s); at least 2 are needed")
        return rows.astype(np.float64)

    ctrl = cells_of(frozenset([control]), f"control {control!r}")
    mean_c, var_c, m_c = ctrl.mean(0), ctrl.var(0, ddof=1), len(ctrl)
    n_p, n_c = outcome.n_cells, outcome.n_control
    rows = []
    for condition in conditions:
        key = _parts_key(condition, delimiter)
        if method == "plugin" or len(key) == 1:
            cells = cells_of(key, f"condition {condition!r}")
            effect = cells.mean(0) - mean_c
            var_p = cells.var(0, ddof=1)
            v = var_p / len(cells) + var_c / m_c
            used = len(cells)
        else:
            parts = [cells_of(frozenset([p]), f"part {p!r} of {condition!r}") for p in key]
            effect = sum(c.mean(0) - mean_c for c in parts)
            var_p = np.mean([c.var(0, ddof=1) for c in parts], axis=0)
            v = sum(c.var(0, ddof=1) / len(c) for c in parts) + len(parts) ** 2 * var_c / m_c
            used = min(len(c) for c in parts)
        var_d = var_p / n_p + var_c / n_c
        df = _welch_df(var_p, var_c, n_p, n_c)
        prob = outcome._event(effect, np.sqrt(var_d), np.sqrt(var_d + v), names, df)
        for r, name in enumerate(names):
            rows.append(
                (
                    condition,
                    name,
                    float(prob[r]),
                    float(effect[r]),
                    float(np.sqrt(v[r])),
                    used,
                    float(np.sqrt(var_d[r])),
                    float(df[r]),
                )
            )
    columns = ["condition", "readout", "p_star", "effect", "effect_se", "n_cells"]
    return pd.DataFrame(rows, columns=[*columns, "replicate_sd", "df"])


def plugin_error(
    outcome: ScreenHit,
    table: pd.DataFrame,
    n_draws: int = 4000,
    seed: int = 0,
    *,
    signed: bool = False,
) -> np.ndarray:
    """The plug-in's own error: the mean |p_obs - p| of a perfect predictor, per row.

    Takes each row's ``effect`` as the true mean difference ``d``; then the true
    probability is the event's under ``D ~ N(d, s^2)`` and a plug-in from new cells sees
    ``d_hat ~ N(d, v)`` and answers as :func:`observed_probability` does (under
    ``N(d_hat, s^2 + v)``). The mean of |plug-in - truth| over ``n_draws`` such
    estimates is what a predictor that knew ``d`` exactly would score against the
    plug-in: the floor of mean |p* - p_obs|.

    Parameters
    ----------
    outcome : ScreenHit
        The event, thresholds fixed (as given to :func:`observed_probability`).
    table : DataFrame
        :func:`observed_probability`'s output (``readout``, ``effect``, ``effect_se``,
        ``replicate_sd``, ``df``).
    n_draws : int
        Redrawn estimates per row (Monte Carlo sd of each row's figure at most
        ``0.5 / sqrt(n_draws)``).
    seed : int
    signed : bool
        Return the mean of plug-in - truth instead (the plug-in's own bias: a noisy
        ``d_hat`` reads a small effect as larger, and the added variance pulls back).

    Returns
    -------
    ndarray, shape (len(table),), float64
        Each row's expected |plug-in - truth| (``signed``: plug-in - truth).

    Raises
    ------
    ValueError
        A table without those columns, or ``n_draws < 1``.
    """
    needed = ["readout", "effect", "effect_se", "replicate_sd", "df"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"plugin_error needs observed_probability's columns; missing {missing}")
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    names = table["readout"].astype(str).tolist()
    d = table["effect"].to_numpy(np.float64)
    v = table["effect_se"].to_numpy(np.float64) ** 2
    s = table["replicate_sd"].to_numpy(np.float64)
    df = table["df"].to_numpy(np.float64)
    truth = outcome._event(d, s, s, names, df)
    rng = np.random.default_rng(seed)
    redrawn = d + np.sqrt(v) * rng.standard_normal((n_draws, len(d)))
    estimate = outcome._event(redrawn, s, np.sqrt(s**2 + v), names, df)
    error = estimate - truth
    return (error if signed else np.abs(error)).mean(axis=0)


def heldout_reference(
    outcome: ScreenHit,
    adata: Any,
    readouts: Sequence[Readout] | ReadoutSet,
    heldout: Sequence[str],
    train_cells: np.ndarray,
    *,
    layer: str | None = "counts",
    perturbation_key: str = "perturbation",
    control: str = "control",
    delimiter: str = "+",
    seed: int = 0,
) -> pd.DataFrame:
    """What real held-out conditions' own cells say, to check p* against (no p_true).

    For each held-out condition and readout: ``p_obs``, the plug-in probability from the
    condition's own cells (those outside ``train_cells``) against the *training* control
    cells; its own error and bias (:func:`plugin_error`); and the additive baseline from
    the training cells of the condition's parts (the model-free competitor). A model
    trained on ``train_cells`` has seen none of the held-out cells.

    Parameters
    ----------
    outcome : ScreenHit
        The event, thresholds fixed.
    adata : AnnData
        Every cell, labelled by ``obs[perturbation_key]``.
    readouts : list of Readout (or gene names) or ReadoutSet
    heldout : list of str
        Held-out conditions (a label matches its parts in any order).
    train_cells : array of int
        Row indices of the cells the model was trained (and validated) on.
    layer, perturbation_key, control, delimiter
        As :func:`observed_probability`.
    seed : int
        Seeds :func:`plugin_error`.

    Returns
    -------
    DataFrame, one row per (held-out condition, readout), columns ``condition``,
    ``readout``, ``p_obs``, ``p_obs_effect``, ``p_obs_effect_se``, ``p_obs_own_error``,
    ``p_obs_own_bias``, ``n_cells`` (the condition's held-out cells), ``p_additive``
    (NaN for a condition with a part that no training cell carries alone: the additive
    baseline cannot answer it, while a model answers from its prior for that part).

    Raises
    ------
    ValueError
        As :func:`observed_probability`, e.g. a held-out condition without cells outside
        ``train_cells``.
    """
    train_cells = np.asarray(train_cells, dtype=np.int64)
    inside = np.zeros(adata.n_obs, dtype=bool)
    inside[train_cells] = True
    labels = adata.obs[perturbation_key].astype(str).to_numpy()
    is_control = labels == control
    options = {
        "layer": layer,
        "perturbation_key": perturbation_key,
        "control": control,
        "delimiter": delimiter,
    }
    # the held-out cells of every held-out condition, against the training controls
    reference = adata[np.flatnonzero((~inside & ~is_control) | (inside & is_control))]
    observed = observed_probability(outcome, reference, readouts, heldout, **options)
    training = adata[train_cells]
    # the additive baseline needs every part measured alone in the training cells; a
    # condition with a part that is not (the Norman reference split's CBL+CNN1) gets NaN
    trained = training.obs[perturbation_key].astype(str).value_counts()
    alone: dict[frozenset[str], int] = {}
    for label, n in trained.items():
        key = _parts_key(label, delimiter)
        alone[key] = alone.get(key, 0) + int(n)
    composable = [
        c
        for c in heldout
        if all(alone.get(frozenset([part]), 0) >= 2 for part in _parts_key(c, delimiter))
    ]
    p_additive = np.full(len(observed), np.nan)
    if composable:
        additive = observed_probability(
            outcome, training, readouts, composable, method="additive", **options
        )
        by_question = additive.set_index(["condition", "readout"])["p_star"]
        at = pd.MultiIndex.from_frame(observed[["condition", "readout"]])
        p_additive = by_question.reindex(at).to_numpy(dtype=np.float64)
    own = plugin_error(outcome, observed, seed=seed)
    own_bias = plugin_error(outcome, observed, seed=seed, signed=True)
    return pd.DataFrame(
        {
            "condition": observed["condition"],
            "readout": observed["readout"],
            "p_obs": observed["p_star"],
            "p_obs_effect": observed["effect"],
            "p_obs_effect_se": observed["effect_se"],
            "p_obs_own_error": own,
            "p_obs_own_bias": own_bias,
            "n_cells": observed["n_cells"],
            "p_additive": p_additive,
        }
    )
