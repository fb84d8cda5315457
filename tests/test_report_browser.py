"""The run report in a real browser: headless Chromium renders it and every figure loads.

Skips only when no Chromium binary is installed (``make browser`` installs Debian's
``chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from test_report import make_run

from bioreason.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars")


def _browser() -> str:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip(
        "no Chromium binary found (tried " + ", ".join(BROWSERS) + "); install it with "
        "`make browser` (apt-get install chromium) to run the browser test"
    )


def _run(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    browser = _browser()
    root = tmp_path_factory.mktemp("browser")
    files = write_report(make_run(root))
    profile = root / "profile"  # a private profile: parallel runs do not share a lock
    return browser, files, profile


def test_screenshot(rendered):
    browser, files, profile = rendered
    screenshot = files.html.parent / "screenshot.png"
    result = _run(
        [
            browser,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={screenshot}",
            "--window-size=1280,2000",
            files.html.as_uri(),
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert screenshot.is_file() and screenshot.stat().st_size > 10_000
    from matplotlib.image import imread

    pixels = imread(screenshot)
    assert pixels.shape[:2] == (2000, 1280)
    rgb = pixels[..., :3].reshape(-1, 3)
    assert np.unique(rgb, axis=0).shape[0] > 50, "the screenshot is (almost) one colour"
    dark = (rgb.mean(axis=1) < 0.3).mean()  # text and figure lines were drawn
    assert 0.001 < dark < 0.5


def test_every_figure_loads(rendered):
    browser, files, profile = rendered
    assert files.n_figures > 0
    result = _run(
        [
            browser,
            *FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            files.html.as_uri(),
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    match = re.search(r'data-images-loaded="(\d+)/(\d+)"', result.stdout)
    assert match is not None, "the page's load handler did not run: " + result.stdout[:500]
    loaded, total = int(match[1]), int(match[2])
    assert total == files.n_figures
    assert loaded == total, f"only {loaded} of {total} figures loaded"
