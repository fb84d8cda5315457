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
