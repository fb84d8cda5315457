"""Calibration figures as PNG files (matplotlib, Agg backend): reliability diagrams,
prediction histograms, predicted vs true probability."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bioreason.calibration.metrics import (
    _check_n_bins,
    _check_reference,
    _vector,
    calibration_bins,
    expected_calibration_error,
)

__all__ = [
    "plot_prediction_histogram",
    "plot_reference",
    "plot_reliability_diagram",
    "plot_reliability_diagrams",
]


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, overwrite: bool, close: bool = True) -> Path:
    from bioreason._io import atomic_path

    path = Path(path)
    try:
        if path.suffix.lower() != ".png":
            raise ValueError(f"figure path must end in .png, got {path}")
        with atomic_path(path, overwrite=overwrite) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        if close:
            _figure().close(fig)
    return path


def _reliability_curve(ax, outcomes, probs, n_bins: int, right: bool, label: str) -> dict:
    """Draw the diagonal (once per Axes) and one reliability curve on ``ax``; the bins."""
    bins = calibration_bins(outcomes, probs, n_bins, right=right)
    filled = bins["count"] > 0
    if not any(line.get_gid() == "calibrated" for line in ax.get_lines()):
        ax.plot(
            [0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated",
            gid="calibrated",
        )  # fmt: skip
    ece = expected_calibration_error(outcomes, probs, n_bins, right=right)
    ax.plot(bins["mean_prob"][filled], bins["mean_outcome"][filled], "o-", label=label)
    ax.set(ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    bins["ece"] = ece
    return bins


def plot_reliability_diagram(
    outcomes,
    probs,
    path: str | Path | None = None,
    n_bins: int = 10,
    title: str = "",
    overwrite: bool = True,
    right: bool = False,
    ax=None,
    label: str = "model",
):
    """Mean outcome against mean prediction per equal-width bin, with bin counts.

    ``outcomes``, ``probs``: arrays of shape (n,); ``right``: the bin-edge convention of
    :func:`bioreason.calibration.calibration_bins`.

    Without ``ax``: a new figure (the curve above, the bin counts below) written to
    ``path`` (a ``.png``); returns the path. With ``ax`` (a matplotlib ``Axes``): the
    diagonal and the curve, labelled ``label (ECE x)``, are drawn on it (no count panel;
    several calls overlay several curves) and ``ax`` is returned; ``path``, if given,
    also saves ``ax``'s figure there.
    """
    n_bins = _check_n_bins(n_bins, "plot_reliability_diagram")
    if ax is not None:
        if not hasattr(ax, "plot") or not hasattr(ax, "figure"):
            raise TypeError(f"plot_reliability_diagram: ax must be a matplotlib Axes, got {ax!r}")
        ece = expected_calibration_error(outcomes, probs, n_bins, right=right)
        _reliability_curve(ax, outcomes, probs, n_bins, right, f"{label} (ECE {ece:.3f})")
        if title:
            ax.set_title(title)
        if path is not None:
            _save(ax.figure, path, overwrite, close=False)
        return ax
    if path is None:
        raise ValueError("plot_reliability_diagram: give the path of the .png, or an ax")
    return plot_reliability_diagrams(
        {label: (outcomes, probs)}, path, n_bins=n_bins, title=title, overwrite=overwrite,
        right=right,
    )  # fmt: skip


def plot_reliability_diagrams(
    groups,
    path: str | Path,
    n_bins: int = 10,
    title: str = "",
    overwrite: bool = True,
    right: bool = False,
) -> Path:
    """One reliability diagram of several predictors: a curve per group (drawn by
    :func:`plot_reliability_diagram` on one Axes) above the bin counts of each group.

    ``groups``: a mapping ``name -> (outcomes, probs)``, arrays of shape (n,) (e.g.
    :func:`bioreason.calibration.reliability_groups`). With one group the title shows
    its ECE. Returns ``path`` (a ``.png``).
    """
    n_bins = _check_n_bins(n_bins, "plot_reliability_diagrams")
    groups = dict(groups)
    if not groups:
        raise ValueError("plot_reliability_diagrams: no groups to draw")
    plt = _figure()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    try:
        centres = (np.arange(n_bins) + 0.5) / n_bins
        for name, (outcomes, probs) in groups.items():
            if len(groups) == 1:
                bins = _reliability_curve(top, outcomes, probs, n_bins, right, str(name))
                top.set_title(f"{title} (ECE {bins['ece']:.3f})".strip())
                bottom.bar(centres, bins["count"], width=1 / n_bins, edgecolor="white")
            else:
                plot_reliability_diagram(outcomes, probs, n_bins=n_bins, right=right, ax=top,
                                         label=str(name))  # fmt: skip
                counts = calibration_bins(outcomes, probs, n_bins, right=right)["count"]
                bottom.step(centres, counts, where="mid", label=str(name))
        if len(groups) > 1:
            top.set_title(title)
        bottom.set(xlabel="predicted probability", ylabel="count")
        bottom.set_ylim(bottom=0)
    except BaseException:
        plt.close(fig)
        raise
    return _save(fig, path, overwrite)


def plot_prediction_histogram(
    probs, path: str | Path, n_bins: int = 50, title: str = "", overwrite: bool = True
) -> Path:
    """Histogram of predicted probabilities, ``probs`` an array of shape (n,)."""
    probs = _vector(probs, "probs", "plot_prediction_histogram", "probability")
    n_bins = _check_n_bins(n_bins, "plot_prediction_histogram")
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.hist(probs, bins=n_bins, range=(0, 1))
    ax.set(xlabel="predicted probability", ylabel="count", title=title)
    return _save(fig, path, overwrite)


def plot_reference(
    p_star,
    probs,
    path: str | Path,
    title: str = "",
    target=None,
    overwrite: bool = True,
) -> Path:
    """Predicted probability against the true one (one point per category or question).

    ``p_star``, ``probs``: arrays of shape (n,) of probabilities. ``target``, if given, is
    a theory-predicted probability per point, shape (n,) (drawn as crosses; NaN where the
    theory has no prediction).
    """
    probs, p_star = _check_reference(probs, p_star, "plot_reference")
    if target is not None:
        target = np.asarray(target, dtype=np.float64)
        if target.shape != p_star.shape:
            raise ValueError(
                f"plot_reference: target must have shape {p_star.shape} like p_star, "
                f"got {target.shape}"
            )
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    ax.scatter(p_star, probs, s=18, label="predicted")
    if target is not None:
        ax.scatter(p_star, target, marker="x", s=18, label="theory target")
    ax.set(xlabel="true probability p*", ylabel="predicted probability", xlim=(0, 1), ylim=(0, 1))
    ax.set_title(title)
    ax.legend(loc="upper left")
    return _save(fig, path, overwrite)
