"""The documentation site builds with ``mkdocs build --strict`` (warnings are errors: broken
links or anchors, griffe's docstring warnings) and its API reference lists the public names."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("mkdocs", "material", "mkdocstrings")),
    reason="the docs extra is not installed (pip install -e '.[docs]')",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
        + ["--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}{result.stdout}"
    return out


@pytest.mark.parametrize(
    "page, names",
    [
        ("data", ["PerturbationSetup", "simulate_screen", "load_task", "TASK_COLUMNS"]),
        ("models", ["SAMSVAE", "VAEConfig", "MODELS"]),
        (
            "sim",
            [
                "OutcomeSimulator",
                "OUTCOMES",
                "GroundTruthSimulator",
                "SimulationBudget",
                "build_task",
                "TaskConfig",
                "reference",
            ],
        ),
        ("lm", ["load_predictor", "answer_distribution", "warm_start"]),
        ("rl", ["LMTrainer", "LMRLConfig", "ADVANTAGES", "TabularTrainer", "TabularRLConfig"]),
        ("calibration", ["expected_calibration_error", "calibration_table"]),
    ],
)
def test_api_page_lists_public_names(site: Path, page: str, names: list[str]) -> None:
    html = (site / "api" / f"{page}.html").read_text()
    for name in names:
        # a name may be documented by its defining path (bioreason.rl.lm.LMTrainer)
        anchor = rf'id="bioreason\.{page}\.(?:[\w.]+\.)?{name}"'
        assert re.search(anchor, html), f"api/{page}.md: {name} is missing"


def test_site_has_every_page_and_no_network_assets(site: Path) -> None:
    for page in sorted((ROOT / "docs").rglob("*.md")):
        target = page.relative_to(ROOT / "docs").with_suffix(".html")
        assert (site / target).is_file(), f"docs/{page.name} not built as {target}"
    index = (site / "index.html").read_text()
    assert "fonts.googleapis" not in index and "fonts.gstatic" not in index


_HREF = re.compile(r'href="([^"#?]*)(?:[#?][^"]*)?"')


def test_offline_site_links_point_at_pages(site: Path) -> None:
    """Issue 20: the site opened from site/ (file://, no server) must link to pages
    (``quickstart.html``), not folders (``quickstart/``) that a browser shows as a file
    listing; every internal link resolves to a file of the site."""
    broken: list[str] = []
    pages = sorted(site.rglob("*.html"))
    assert (site / "index.html") in pages and (site / "quickstart.html") in pages
    for page in pages:
        if page.name == "404.html":
            continue  # served from the site's root by a web server: absolute-style links
        for target in _HREF.findall(page.read_text()):
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # same-page anchor, http(s), mailto, data
            resolved = (page.parent / target).resolve()
            if target.endswith("/") or resolved.is_dir():
                broken.append(f"{page.relative_to(site)} -> {target} (a folder)")
            elif not resolved.is_file():
                broken.append(f"{page.relative_to(site)} -> {target} (missing)")
    assert not broken, f"{len(broken)} links: " + "; ".join(sorted(set(broken))[:20])
