"""The report's figures as PNG bytes (matplotlib's Agg canvas, no pyplot state).

One multi-panel figure per kind, small (dpi 80), so the HTML page stays light. Every
function returns ``None`` when it has nothing to draw.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd

from bioreason.calibration.metrics import calibration_bins, reference_bins

__all__ = [
    "answer_histograms",
    "eval_curves",
    "fixed_point_scatter",
    "loss_curve",
    "question_reliability",
    "reference_scatter",
    "reliability_diagrams",
    "simulator_check",
    "training_curves",
]

DPI = 80
_PANEL = 3.2  # inches per panel side


def _new_figure(
    n_panels: int, ncols: int = 4, height: float = _PANEL, width: float = _PANEL, top: float = 0.5
):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n_panels))
    nrows = math.ceil(n_panels / ncols)
    size = (width * ncols, height * nrows)
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    # fixed margins in inches (tight_layout would double the drawing time)
    fig.subplots_adjust(
        left=0.75 / size[0],
        right=1 - 0.15 / size[0],
        bottom=0.5 / size[1],
        top=1 - top / size[1],
        wspace=0.42,
        hspace=0.6,
    )
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _colours(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def loss_curve(curve) -> bytes | None:
    """The perturbation model's training loss against step.

    Parameters
    ----------
    curve : sequence of (step, loss)

    Returns
    -------
    bytes or None
        PNG bytes; None when the curve is empty or malformed.
    """
    try:
        values = np.asarray(curve, dtype=float)
    except (TypeError, ValueError):
        return None
    if values.ndim != 2 or values.shape[1] < 2 or values.shape[0] == 0:
        return None
    fig, (ax,) = _new_figure(1, height=2.8, width=5.5)
    ax.plot(values[:, 0], values[:, 1], linewidth=1.2)
    ax.set(xlabel="step", ylabel="loss (negative ELBO)", title="perturbation model training")
    return _png(fig)


def simulator_check(task: pd.DataFrame) -> bytes | None:
    """p* against p_true (when the task has p_true) and the histogram of the epistemic
    spread of p* (when it has ``p_star_spread``).

    Parameters
    ----------
    task : DataFrame
        The task table.

    Returns
    -------
    bytes or None
    """
    panels = []
    p_star = task["p_star"].to_numpy(dtype=float) if "p_star" in task else None
    if p_star is not None and "p_true" in task:
        p_true = task["p_true"].to_numpy(dtype=float)
        if np.isfinite(p_true).any():
            panels.append("scatter")
    if "p_star_spread" in task and np.isfinite(task["p_star_spread"].to_numpy(float)).any():
        panels.append("spread")
    if p_star is not None and np.isfinite(p_star).any():
        panels.append("p_star")
    if not panels:
        return None
    fig, axes = _new_figure(len(panels))
    for ax, panel in zip(axes, panels):
        if panel == "scatter":
            split = task["split"].astype(str) if "split" in task else pd.Series(["all"] * len(task))
            for name in sorted(split.unique()):
                rows = (split == name).to_numpy()
                ax.scatter(p_true[rows], p_star[rows], s=10, alpha=0.7, label=name)
            ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
            ax.set(xlabel="p_true (generating parameters)", ylabel="p* (fitted model)")
            ax.set(xlim=(0, 1), ylim=(0, 1), title="p* against p_true")
            ax.legend(loc="upper left", fontsize=8)
        elif panel == "spread":
            spread = task["p_star_spread"].to_numpy(float)
            ax.hist(spread[np.isfinite(spread)], bins=30, color="tab:purple")
            ax.set(xlabel="p* spread over posterior draws", ylabel="questions")
            ax.set_title("epistemic spread")
        else:
            ax.hist(p_star[np.isfinite(p_star)], bins=20, range=(0, 1), color="tab:green")
            ax.set(xlabel="p*", ylabel="questions", title="p* over questions")
    return _png(fig)


def _runs_panels(runs, columns: list[tuple[str, str]], methods: list[str]) -> bytes | None:
    """One panel per (column, label), one line per run, coloured by method."""
    frames = [(run, frame) for run, frame in runs if frame is not None and "step" in frame]
    present = [(c, label) for c, label in columns if any(c in f for _, f in frames)]
    if not present:
        return None
    colours = _colours(methods)
    fig, axes = _new_figure(len(present), ncols=len(present), height=3.4, top=0.8)
    for ax, (column, label) in zip(axes, present):
        labelled = set()
        for run, frame in frames:
            if column not in frame:
                continue
            rows = frame[["step", column]].apply(pd.to_numeric, errors="coerce").dropna()
            if rows.empty:
                continue
            name = run.method
            ax.plot(
                rows["step"],
                rows[column],
                color=colours.get(name, "black"),
                linewidth=1,
                alpha=0.85,
                marker="o" if len(rows) < 6 else None,
                markersize=3,
                label=None if name in labelled else name,
            )
            labelled.add(name)
        ax.set(xlabel="step", title=label)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # one legend above the panels, clear of the lines
        fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=min(len(labels), 5))
    return _png(fig)


def training_curves(runs, methods: list[str]) -> bytes | None:
    """Reward mean, zero-std fraction and entropy against step, one line per run.

    Parameters
    ----------
    runs : list of FinetuneRun
    methods : list of str
        Display order (fixes the colours).

    Returns
    -------
    bytes or None
    """
    columns = [
        ("reward_mean", "reward mean"),
        ("zero_std_fraction", "zero-std group fraction"),
        ("entropy", "entropy"),
    ]
    return _runs_panels([(r, r.log) for r in runs], columns, methods)


def eval_curves(runs, methods: list[str]) -> bytes | None:
    """Held-out ECE, error against p*, invalid-answer rate and the prompt spread at the
    answer position (:func:`bioreason.lm.prompt_spread`; when ``eval.csv`` has it) at
    each evaluation.

    Returns
    -------
    bytes or None
    """
    columns = [
        ("ece", "ECE (held-out, outcomes)"),
        ("mae_to_reference", "|q - p*| (held-out)"),
        ("invalid_rate", "invalid answer rate"),
        ("prompt_spread", "prompt spread at the answer"),
    ]
    return _runs_panels([(r, r.eval) for r in runs], columns, methods)


def _by_method(predictions: pd.DataFrame, q: np.ndarray, methods: list[str]):
    names = predictions["method"].astype(str).to_numpy()
    for method in methods:
        rows = names == method
        if rows.any():
            yield method, rows


def _paired_panels(
    predictions: pd.DataFrame, q: np.ndarray, methods: list[str], column: str
) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]] | None:
    """``column`` as floats and one panel per method: (method, rows where both q and
    ``column`` are finite), methods without such rows left out; None when the column
    is absent or no method has such rows."""
    if column not in predictions:
        return None
    values = predictions[column].to_numpy(dtype=float)
    panels = []
    for method, rows in _by_method(predictions, q, methods):
        keep = rows & np.isfinite(q) & np.isfinite(values)
        if keep.any():
            panels.append((method, keep))
    return (values, panels) if panels else None


def reliability_diagrams(
    predictions: pd.DataFrame, q: np.ndarray, methods: list[str], n_bins: int = 10
) -> bytes | None:
    """Observed outcome frequency against mean prediction per bin, one panel per method
    (seeds pooled); marker area is proportional to the bin's count.

    Parameters
    ----------
    predictions : DataFrame
        With ``method`` and ``outcome``.
    q : ndarray, shape (n_predictions,)
        The judged probabilities.
    methods : list of str

    Returns
    -------
    bytes or None
    """
    found = _paired_panels(predictions, q, methods, "outcome")
    if found is None:
        return None
    outcome, panels = found
    fig, axes = _new_figure(len(panels))
    for ax, (method, keep) in zip(axes, panels):
        bins = calibration_bins(outcome[keep], q[keep], n_bins)
        filled = bins["count"] > 0
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.plot(bins["mean_prob"][filled], bins["mean_outcome"][filled], color="tab:blue")
        size = 200 * bins["count"][filled] / bins["count"].sum()
        ax.scatter(bins["mean_prob"][filled], bins["mean_outcome"][filled], s=10 + size)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability")
        ax.set(ylabel="observed frequency")
        ax.set_title(f"{method}\n{int(keep.sum())} predictions", fontsize=10)
    return _png(fig)


def reference_scatter(predictions: pd.DataFrame, q: np.ndarray, methods: list[str]) -> bytes | None:
    """Predicted probability against p*, one panel per method, one point per prediction.

    Returns
    -------
    bytes or None
    """
    found = _paired_panels(predictions, q, methods, "p_star")
    if found is None:
        return None
    p_star, panels = found
    fig, axes = _new_figure(len(panels))
    for ax, (method, keep) in zip(axes, panels):
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.scatter(p_star[keep], q[keep], s=9, alpha=0.6)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="p*", ylabel="predicted q")
        ax.set_title(f"{method}\n{int(keep.sum())} predictions", fontsize=10)
    return _png(fig)


def answer_histograms(predictions: pd.DataFrame, q: np.ndarray, methods: list[str]) -> bytes | None:
    """Histogram of the predicted probabilities per method, with the p* histogram of
    the same questions as an outline.

    Returns
    -------
    bytes or None
    """
    p_star = predictions["p_star"].to_numpy(dtype=float) if "p_star" in predictions else None
    panels = [(m, rows & np.isfinite(q)) for m, rows in _by_method(predictions, q, methods)]
    panels = [(m, keep) for m, keep in panels if keep.any()]
    if not panels:
        return None
    fig, axes = _new_figure(len(panels))
    for ax, (method, keep) in zip(axes, panels):
        ax.hist(q[keep], bins=20, range=(0, 1), color="tab:orange", alpha=0.8, label="q")
        if p_star is not None and np.isfinite(p_star[keep]).any():
            ref = p_star[keep]
            ax.hist(ref[np.isfinite(ref)], bins=20, range=(0, 1), histtype="step", color="k")
            ax.plot([], [], color="k", label="p*")
        ax.set(xlabel="probability", ylabel="predictions")
        ax.set_title(method, fontsize=10)
        ax.legend(fontsize=7, loc="upper center")
    return _png(fig)


def _per_question(
    predictions: pd.DataFrame, q: np.ndarray, keep: np.ndarray, columns: tuple[str, ...]
) -> pd.DataFrame:
    """One row per question of the rows ``keep``: q averaged over seeds, and the first
    value of each of ``columns`` (the same for every seed)."""
    frame = predictions.loc[keep, ["question_id", *columns]].assign(q=q[keep])
    grouped = frame.groupby("question_id", sort=False)
    return grouped[list(columns)].first().assign(q=grouped["q"].mean())


def question_reliability(
    predictions: pd.DataFrame, q: np.ndarray, methods: list[str], n_bins: int = 10
) -> bytes | None:
    """A reliability diagram question by question: q against p*, one panel per method.

    Each question is one grey point (q averaged over seeds); the line is the mean q in
    each of ``n_bins`` equal-width bins of p*, with bars from the 25th to the 75th
    percentile of q in the bin (:func:`bioreason.calibration.reference_bins`). A
    predictor that knows each question follows the diagonal, an overconfident one is
    steeper than it, and one that gives one answer to every question is flat.

    Parameters
    ----------
    predictions : DataFrame
        With ``method``, ``question_id`` and ``p_star``.
    q : ndarray, shape (n_predictions,)
        The judged probabilities.
    methods : list of str

    Returns
    -------
    bytes or None
        None without p* (real data) or without predictions.
    """
    found = _paired_panels(predictions, q, methods, "p_star")
    if found is None or "question_id" not in predictions:
        return None
    _, panels = found
    fig, axes = _new_figure(len(panels))
    for ax, (method, keep) in zip(axes, panels):
        per_question = _per_question(predictions, q, keep, ("p_star",))
        p_star, answers = per_question["p_star"].to_numpy(float), per_question["q"].to_numpy()
        bins = reference_bins(answers, p_star, n_bins)
        filled = bins["count"] > 0
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.scatter(p_star, answers, s=6, color="0.65", alpha=0.5, linewidths=0)
        x, y = bins["mean_reference"][filled], bins["mean_prob"][filled]
        # the quartiles as bars (the mean of a skewed bin may lie outside them)
        ax.vlines(x, bins["prob_low"][filled], bins["prob_high"][filled], color="tab:blue")
        ax.plot(x, y, color="tab:blue", marker="o", markersize=4)
        ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03))
        ax.set(xlabel="p* (bins of 0.1)", ylabel="q (mean per bin)")
        ax.set_title(
            f"{method}\n{len(answers)} questions, sd of q {np.std(answers):.3f}", fontsize=10
        )
    return _png(fig)


def fixed_point_scatter(
    predictions: pd.DataFrame, q: np.ndarray, methods: list[str]
) -> bytes | None:
    """The theory's fixed point against the measured end state, one panel per method.

    One point per question: x the fixed point at its p* (``fixed_point``), y the final
    q (averaged over seeds); the diagonal is where the theory's prediction holds. A red
    star marks one answer for every question: x the fixed point at the mean p*
    (``fixed_point_pooled``), y the mean q. Methods whose estimator declares no theory
    (NaN fixed points) have no panel.

    Returns
    -------
    bytes or None
        None when the predictions have no finite ``fixed_point``.
    """
    found = _paired_panels(predictions, q, methods, "fixed_point")
    if found is None or "question_id" not in predictions:
        return None
    _, panels = found
    pooled_column = "fixed_point_pooled" in predictions
    fig, axes = _new_figure(len(panels))
    for ax, (method, keep) in zip(axes, panels):
        columns = ("fixed_point", "fixed_point_pooled") if pooled_column else ("fixed_point",)
        per_question = _per_question(predictions, q, keep, columns)
        fixed, answers = per_question["fixed_point"].to_numpy(float), per_question["q"].to_numpy()
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.scatter(fixed, answers, s=9, alpha=0.6, label="a question")
        if pooled_column and np.isfinite(per_question["fixed_point_pooled"]).any():
            pooled = float(per_question["fixed_point_pooled"].iloc[0])
            ax.scatter(
                [pooled],
                [answers.mean()],
                marker="*",
                s=140,
                color="tab:red",
                label="one answer for all",
            )
        # a margin: GRPO's fixed points sit on the grid's edges
        ax.set(xlim=(-0.03, 1.03), ylim=(-0.03, 1.03))
        ax.set(xlabel="theory's fixed point", ylabel="measured q")
        error = float(np.mean(np.abs(answers - fixed)))
        ax.set_title(f"{method}\nmean |q - fixed point| {error:.3f}", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    return _png(fig)
