import numpy as np
import pytest

from bioreason.calibration import (
    plot_prediction_histogram,
    plot_reference,
    plot_reliability_diagram,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_and_refuse_to_overwrite(tmp_path):
    rng = np.random.default_rng(0)
    probs = rng.uniform(size=300)
    outcomes = (rng.uniform(size=300) < probs).astype(float)
    paths = [
        plot_reliability_diagram(outcomes, probs, tmp_path / "reliability.png", title="test"),
        plot_prediction_histogram(probs, tmp_path / "histogram.png"),
        plot_reference(probs, probs, tmp_path / "reference.png", target=probs * 0.9),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
    before = paths[0].read_bytes()
    with pytest.raises(FileExistsError):
        plot_reliability_diagram(outcomes, probs, paths[0], overwrite=False)
    assert paths[0].read_bytes() == before
    with pytest.raises(ValueError, match=".png"):
        plot_prediction_histogram(probs, tmp_path / "histogram.jpg")


def test_reliability_diagram_draws_on_a_given_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bioreason.calibration import plot_reliability_diagrams

    rng = np.random.default_rng(0)
    probs = rng.uniform(size=200)
    outcomes = (rng.uniform(size=200) < probs).astype(float)
    fig, (left, right) = plt.subplots(1, 2)
    assert plot_reliability_diagram(outcomes, probs, ax=left, label="a", title="A") is left
    plot_reliability_diagram(outcomes, probs**2, ax=left, label="b")  # a second curve
    labels = [line.get_label() for line in left.get_lines()]
    assert labels[0] == "calibrated" and labels.count("calibrated") == 1
    assert labels[1].startswith("a (ECE ") and labels[2].startswith("b (ECE ")
    assert left.get_title() == "A" and not right.get_lines()
    path = plot_reliability_diagram(outcomes, probs, tmp_path / "panel.png", ax=right)
    assert path is right and (tmp_path / "panel.png").read_bytes()[:8] == PNG_SIGNATURE
    plt.close(fig)
    with pytest.raises(TypeError, match="matplotlib Axes"):
        plot_reliability_diagram(outcomes, probs, ax="left")
    with pytest.raises(ValueError, match="path of the .png, or an ax"):
        plot_reliability_diagram(outcomes, probs)
    groups = {"a": (outcomes, probs), "b": (outcomes, probs**2)}
    out = plot_reliability_diagrams(groups, tmp_path / "both.png", title="two")
    assert out.read_bytes()[:8] == PNG_SIGNATURE
