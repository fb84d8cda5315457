"""benchmarks/lm_regime_ablation.py: each variant runs and prints its figures; the
variants' settings add one change each."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pandas as pd
import torch
from test_lm_trainer import N_GENE, N_PERT

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "lm_regime_ablation", ROOT / "benchmarks" / "lm_regime_ablation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_variants_add_one_change_each():
    bench = _bench()
    args = argparse.Namespace(kl=0.03, lr=3e-3)
    settings = [bench._settings(v, args) for v in bench.VARIANTS]
    assert settings[0] == {
        "warm_start_trainable": "all",
        "open_answer": False,
        "kl_coef": 0.0,
        "trainable": "all",
        "kl_estimator": "k2",
        "lr": 5e-4,
    }
    for before, after in zip(settings, settings[1:]):
        changed = {k for k in after if after[k] != before[k]}
        assert 1 <= len(changed) <= 2, changed  # the embeddings variant also takes its lr
    assert settings[-1]["kl_estimator"] == "k3" and settings[-2]["kl_estimator"] == "k2"


def test_two_variants_run_and_print_every_figure(tmp_path, capsys):
    torch.set_num_threads(1)
    rows = [
        {
            "question_id": f"q{i}_{j}",
            "prompt": f"Does knocking down P{i} shift program{j}? Answer inside <answer></answer>.",
            "p_star": 0.2 + 0.1 * j,
            "outcome": float((i + j) % 2),
            "split": "test" if i >= N_PERT - 2 else "train",
        }
        for i in range(N_PERT)
        for j in range(N_GENE)
    ]
    (tmp_path / "run" / "task").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(tmp_path / "run" / "task" / "task.parquet")
    argv = ["--run", str(tmp_path / "run"), "--steps", "2", "--variants", "before", "embeddings"]
    assert _bench().main(argv) == 0
    lines = dict(
        re.fullmatch(r"(\S+): (\S+)(?: s)?", line).groups()
        for line in capsys.readouterr().out.strip().splitlines()
        if ": " in line
    )
    for variant in ("before", "embeddings"):
        for name in ("spread_after_warm_start", "spread_end", "sd_q", "mae_q_pstar", "seconds"):
            assert f"{variant}_{name}" in lines
        assert 0 <= float(lines[f"{variant}_mae_q_pstar"]) <= 1
    # the whole-model warm start forgets the prompt; the answer-row one does not
    assert float(lines["before_spread_after_warm_start"]) < float(
        lines["embeddings_spread_after_warm_start"]
    )
