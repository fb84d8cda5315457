"""Bad task tables for LM fine-tuning (issue 20's probe): every one a clear error naming
the table, the column and the questions, from the trainer and from ``bioreason
finetune``; and the weights written with the umask's modes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest
import torch
from test_lm_trainer import make_model, make_task, make_tokenizer, small_config

from bioreason.cli import main
from bioreason.data.tasks import TASK_COLUMNS
from bioreason.rl import LMTrainer


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def _table(**columns) -> pd.DataFrame:
    """A six-question task table (four train, two test) with ``columns`` replaced."""
    rows = {
        "question_id": [f"P{i}:G0" for i in range(6)],
        "condition": [f"P{i}" for i in range(6)],
        "readout": "G0",
        "outcome_definition": "screen_hit",
        "prompt": [f"perturb P{i} readout G0 probability ?" for i in range(6)],
        "p_star": 0.3,
        "p_star_se": 0.01,
        "p_star_spread": 0.0,
        "p_true": 0.3,
        "reference_probability": np.nan,
        "outcome": [float(i % 2) for i in range(6)],
        "split": ["train"] * 4 + ["test"] * 2,
    }
    rows.update(columns)
    return pd.DataFrame(rows, columns=TASK_COLUMNS)


def _finetune(tmp_path, table: pd.DataFrame, *extra: str) -> int:
    path = tmp_path / "task.parquet"
    table.to_parquet(path)  # as a user would write it (save_task checks less)
    argv = ["finetune", "--task", str(path), "--model", "tiny", "--out", str(tmp_path / "out")]
    fast = ["--steps", "1", "--group-size", "2", "--questions-per-step", "2"]
    fast += ["--max-new-tokens", "3", "--eval-samples", "2", "--warm-start-steps", "1"]
    return main([*argv, *fast, "--no-progress", "--device", "cpu", *extra])


# ----- held-out split ------------------------------------------------------------------


def test_an_eval_split_without_rows_is_refused_naming_it_and_the_splits(tokenizer):
    # make_task holds out "val": the default eval_split "test" has no rows
    config = small_config(eval_split="test")
    with pytest.raises(ValueError, match=r"eval_split='test'.*splits are \['train', 'val'\]"):
        LMTrainer(make_model(tokenizer), tokenizer, make_task(), config)
    with pytest.raises(ValueError, match=r"eval_split='nope'.*splits are \['train', 'val'\]"):
        LMTrainer(make_model(tokenizer), tokenizer, make_task(), small_config(eval_split="nope"))
    no_split = make_task().drop(columns="split")
    with pytest.raises(ValueError, match="no 'split' column .* set eval_split=None"):
        LMTrainer(make_model(tokenizer), tokenizer, no_split, small_config())
    # eval_split=None: no held-out split, and evaluate() says so by taking every question
    trainer = LMTrainer(make_model(tokenizer), tokenizer, no_split, small_config(eval_split=None))
    assert trainer.evaluate()["n_questions"] == len(no_split)


def test_finetune_refuses_a_task_without_test_rows_or_an_unknown_split(tmp_path, capsys):
    assert _finetune(tmp_path, _table(split=["train"] * 6)) == 1
    err = capsys.readouterr().err
    assert "no rows with split == 'test' (rl.eval_split); its splits are ['train']" in err
    assert _finetune(tmp_path, _table(), "--eval-split", "nope") == 1
    assert "split == 'nope' (rl.eval_split); its splits are ['test', 'train']" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "out" / "metrics.json").exists()


# ----- prompts, ids, outcomes --------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (None, r"'prompt' is empty \(null\) for 2 question\(s\): 'P1:G0', 'P3:G0'; .*'None'"),
        ("", r"'prompt' is empty for 2 question\(s\): 'P1:G0', 'P3:G0'"),
        ("   ", r"'prompt' is empty for 2 question\(s\): 'P1:G0', 'P3:G0'"),
    ],
    ids=["null", "empty", "blank"],
)
def test_missing_prompts_are_refused_naming_the_questions(
    tokenizer, tmp_path, capsys, prompt, message
):
    prompts = [
        prompt if i in (1, 3) else f"perturb P{i} readout G0 probability ?" for i in range(6)
    ]
    table = _table(prompt=prompts)
    with pytest.raises(ValueError, match=message):
        LMTrainer(make_model(tokenizer), tokenizer, table, small_config(eval_split="test"))
    assert _finetune(tmp_path, table) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert f"task table {tmp_path / 'task.parquet'}" in err
    assert "'P1:G0', 'P3:G0'" in err and not (tmp_path / "out" / "metrics.json").exists()


def test_repeated_question_ids_are_refused(tokenizer, tmp_path, capsys):
    table = _table(question_id=["P0", "P0", "P1", "P1", "P2", "P3"])
    message = r"'question_id' repeats 'P0', 'P1' \(4 rows share 2 id\(s\)\)"
    with pytest.raises(ValueError, match=message):
        LMTrainer(make_model(tokenizer), tokenizer, table, small_config(eval_split="test"))
    assert _finetune(tmp_path, table) == 1
    assert "'question_id' repeats 'P0', 'P1'" in capsys.readouterr().err


def test_text_outcomes_name_the_file_the_column_and_what_is_expected(tmp_path, capsys):
    table = _table(outcome=["yes", "no", "yes", "yes", "no", "no"])
    assert _finetune(tmp_path, table) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert (
        f"task table {tmp_path / 'task.parquet'}: column 'outcome' holds text ('yes', 'no')" in err
    )
    assert "expected numbers: 1 (the outcome happened), 0 (it did not), NaN when unknown" in err
    assert "Could not convert" not in err


def test_other_bad_values_are_named():
    from bioreason.rl.lm.task_checks import check_task_table

    with pytest.raises(ValueError, match=r"'outcome' holds 2.0 for 1 question\(s\), e.g. 'P2:G0'"):
        check_task_table(_table(outcome=[0.0, 1.0, 2.0, 0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"'p_star' holds text \('high'\)"):
        check_task_table(_table(p_star=["high"] + [0.3] * 5))
    with pytest.raises(ValueError, match=r"'question_id' is empty \(null\) in row\(s\) 4"):
        check_task_table(_table(question_id=["a", "b", "c", "d", None, "f"]))
    with pytest.raises(ValueError, match=r"my table lacks column\(s\) \['prompt'\]"):
        check_task_table(_table().drop(columns="prompt"), "my table")
    with pytest.raises(TypeError, match="pandas DataFrame"):
        check_task_table([1, 2])
    # NaN outcomes (unknown) and 0/1 as integers or booleans are fine
    check_task_table(_table(outcome=[0, 1, 1, 0, 1, 0]))
    check_task_table(_table(outcome=[True, False, True, False, True, False]))
    check_task_table(_table(outcome=[0.0, np.nan, 1.0, 0.0, np.nan, 1.0]))


# ----- file modes ---------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_saved_models_follow_the_umask(tmp_path, umask):
    from bioreason.lm import load_predictor

    predictor = load_predictor("tiny", device="cpu", texts=["a b c"])
    previous = os.umask(umask)
    try:
        folder = predictor.save(tmp_path / "model")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes["model.safetensors"] == 0o666 & ~umask, oct(modes["model.safetensors"])
    assert set(modes.values()) == {0o666 & ~umask}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask


def test_a_finetune_jobs_outputs_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        assert _finetune(tmp_path, _table()) == 0
    finally:
        os.umask(previous)
    out = tmp_path / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    assert out / "model" / "model.safetensors" in files
    wrong = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    wrong = {name: mode for name, mode in wrong.items() if mode != oct(0o644)}
    assert not wrong
