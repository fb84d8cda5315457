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

__all__ = ["plot_prediction_histogram", "plot_reference", "plot_reliability_diagram"]


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, overwrite: bool) -> Path:
    from bioreason._io import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"figure path must end in .png, got {path}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    _figure().close(fig)
    return path


def plot_reliability_diagram(
    outcomes,
    probs,
    path: str | Path,
    n_bins: int = 10,
    title: str = "",
    overwrite: bool = True,
    right: bool = False,
) -> Path:
    """Mean outcome against mean prediction per equal-width bin, with bin counts.

    ``outcomes``, ``probs``: arrays of shape (n,); ``right``: the bin-edge convention of
    :func:`bioreason.calibration.calibration_bins`.
    """
    plt = _figure()
    bins = calibration_bins(outcomes, probs, n_bins, right=right)
    filled = bins["count"] > 0
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(4.5, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    top.plot(bins["mean_prob"][filled], bins["mean_outcome"][filled], "o-", label="model")
    ece = expected_calibration_error(outcomes, probs, n_bins, right=right)
    top.set(ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1))
    top.set_title(f"{title} (ECE {ece:.3f})".strip())
    top.legend(loc="upper left")
    centres = (np.arange(n_bins) + 0.5) / n_bins
    bottom.bar(centres, bins["count"], width=1 / n_bins, edgecolor="white")
    bottom.set(xlabel="predicted probability", ylabel="count")
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
