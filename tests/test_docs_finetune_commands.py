"""The fine-tuning commands of the docs, run as written (issue 20): docs/finetune.md's
``bioreason finetune`` commands and its ``finetune.yaml``, and section 6 of
docs/tutorials/custom_task.md, on a task table like the ones those pages build. Each
must produce valid answers: an invalid-answer rate under the report's limit.

Slow (minutes): run with ``pytest -m slow tests/test_docs_finetune_commands.py``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_docs_examples import extract_blocks

from bioreason.cli import main
from bioreason.data.tasks import TASK_COLUMNS, save_task
from bioreason.run_layout import INVALID_RATE_LIMIT

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = ROOT / "docs" / "finetune.md"
CUSTOM_TASK = ROOT / "docs" / "tutorials" / "custom_task.md"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _task(path: Path, n_conditions: int = 12, n_readouts: int = 3) -> None:
    """A task table of bioreason's columns: conditions x readouts, p* spread over (0, 1),
    half of the conditions held out as the test split."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_conditions):
        for j in range(n_readouts):
            p = float(rng.uniform(0.05, 0.95))
            rows.append(
                {
                    "question_id": f"P{i}:G{j}",
                    "condition": f"P{i}",
                    "readout": f"G{j}",
                    "outcome_definition": "screen_hit",
                    "prompt": f"Does knocking down P{i} shift G{j} in a 100-cell screen?",
                    "p_star": p,
                    "p_star_se": 0.01,
                    "p_star_spread": 0.0,
                    "p_true": p,
                    "reference_probability": np.nan,
                    "outcome": float(rng.random() < p),
                    "split": "train" if i < n_conditions // 2 else "test",
                }
            )
    save_task(pd.DataFrame(rows, columns=TASK_COLUMNS), path)


def _commands(path: Path, section: str | None = None) -> list[list[str]]:
    """The ``bioreason finetune`` commands of a page's bash blocks (of one ``## `` section
    when ``section`` is given), continuation lines joined, as argument lists."""
    text = path.read_text()
    start, stop = 0, len(text.splitlines()) + 1
    if section is not None:
        lines = text.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith(f"## {section}")) + 1
        stop = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    commands = []
    for block in extract_blocks(path):
        if block.language != "bash" or not start <= block.line <= stop + 1:
            continue
        for line in block.code.replace("\\\n", " ").splitlines():
            if line.strip().startswith("bioreason finetune"):
                commands.append(shlex.split(line)[1:])
    return commands


def _yaml_block(path: Path, first_key: str) -> str:
    for block in extract_blocks(path):
        if block.language == "yaml" and block.code.lstrip().startswith(first_key):
            return block.code
    raise AssertionError(f"no yaml block starting with {first_key!r} in {path}")


def _check_valid(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["invalid_rate"] < INVALID_RATE_LIMIT, (out, metrics["invalid_rate"])
    predictions = pd.read_parquet(out / "predictions.parquet")
    last = predictions[predictions["step"] == predictions["step"].max()]
    assert np.isfinite(last["q_sampled"]).mean() > 1 - INVALID_RATE_LIMIT, out
    return metrics


def test_finetune_md_commands_give_valid_answers_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _task(tmp_path / "task.parquet")
    (tmp_path / "finetune.yaml").write_text(_yaml_block(FINETUNE, "model:"))
    commands = _commands(FINETUNE)
    assert len(commands) == 3, commands  # grpo, rloo, and on from grpo's model/ with the file
    for argv in commands:
        assert main([*argv, "--no-progress"]) == 0, argv
        out = Path(argv[argv.index("--out") + 1])
        _check_valid(out)
    capsys.readouterr()


def test_custom_task_section_6_command_gives_valid_answers_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _task(tmp_path / "my_task.parquet")
    commands = _commands(CUSTOM_TASK, "6.")
    assert len(commands) == 1, commands
    argv = commands[0]
    assert main([*argv, "--no-progress"]) == 0
    _check_valid(Path(argv[argv.index("--out") + 1]))


def test_the_gpu_tutorial_finetune_yaml_loads_with_a_warm_start():
    """The GPU tutorial's finetune.yaml needs a hub model and a GPU, which the tests do
    not have: its settings load and ask for the warm start that valid answers need."""
    from bioreason.rl.lm import FinetuneConfig

    text = _yaml_block(ROOT / "docs" / "tutorials" / "finetune_gpu.md", "# finetune.yaml")
    config = FinetuneConfig.from_dict(yaml.safe_load(text))
    assert config.warm_start_steps and config.warm_start_steps > 0
