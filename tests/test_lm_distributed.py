"""LMTrainer under several processes: 2 CPU processes (gloo, ``accelerate launch``) give
the same gradient and weights as one process on the same global batch (about 15 s per
launch), and the pieces that make it so."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _lm_ddp_cases import make_trainer, run_case  # noqa: E402

from bioreason.rl.lm import distributed as lm_distributed  # noqa: E402
from bioreason.rl.lm.distributed import ProcessGroup  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _launcher() -> str:
    launcher = Path(sys.executable).parent / "accelerate"  # the one of this environment
    found = str(launcher) if launcher.exists() else shutil.which("accelerate")
    if found is None:
        pytest.skip("accelerate launcher not installed")
    return found


def _launch(arguments: list[str], port: int) -> subprocess.CompletedProcess:
    """``accelerate launch`` of 2 CPU processes (``--multi_gpu`` starts one process per
    rank through torch elastic; without a GPU they talk over gloo)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        _launcher(),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port),
        *arguments,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    "case",
    [
        "fused_batch_std",
        pytest.param("unfused_live_kl", marks=pytest.mark.slow),
        pytest.param("ppo_separate_critic", marks=pytest.mark.slow),
    ],
)
def test_two_processes_equal_one_process_on_the_same_batch(tmp_path, case):
    done = _launch([str(ROOT / "tests" / "_lm_ddp_script.py"), str(tmp_path), case], 29541)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    alone = run_case(case)
    first, second = (r["cases"][case] for r in ranks)
    # the same (summed) gradient and weights on both processes...
    assert first["gradient"] == second["gradient"]
    assert first["weights"] == second["weights"]
    # ...equal to one process's on the whole batch (rounding: sums in another order)
    np.testing.assert_allclose(first["gradient"], alone["gradient"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(first["weights"], alone["weights"], rtol=0, atol=2e-5)
    assert first["reward_mean"] == pytest.approx(alone["reward_mean"], abs=1e-12)
    before = make_trainer(case)
    n_policy = len(lm_distributed_flat(before.model))
    moved = np.abs(np.asarray(alone["weights"][:n_policy]) - lm_distributed_flat(before.model))
    assert moved.max() > 1e-4  # the steps did something
    if before.critic is not None:  # ...to the critic too, whose gradients were summed
        critic = np.asarray(alone["weights"][n_policy:]) - lm_distributed_flat(before.critic)
        assert np.abs(critic).max() > 1e-4
        assert np.abs(np.asarray(alone["gradient"][n_policy:])).max() > 0


def lm_distributed_flat(model: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def test_question_noise_does_not_depend_on_the_rest_of_the_batch():
    trainer = make_trainer("fused_batch_std")
    rows = [0, 5, 9, 13]
    whole = trainer._sample(
        trainer._prompts(rows),
        4,
        lm_distributed.question_generators(0, 3, range(4), trainer.device),
    )
    half = trainer._sample(
        trainer._prompts(rows[2:]),
        4,
        lm_distributed.question_generators(0, 3, range(2, 4), trainer.device),
    )
    n = half.tokens.shape[1]
    assert torch.equal(whole.tokens[8:, :n], half.tokens)
    assert torch.equal(whole.mask[8:, :n], half.mask)
    assert not whole.mask[8:, n:].any()
    torch.testing.assert_close(whole.log_probs[8:, :n], half.log_probs)
    other = lm_distributed.question_generators(0, 4, range(4), trainer.device)
    assert not torch.equal(trainer._sample(trainer._prompts(rows), 4, other).tokens, whole.tokens)


def test_shards_are_disjoint_equal_slices_and_bad_sizes_are_refused():
    slices = [lm_distributed.shard_bounds(8, ProcessGroup(rank, 4)) for rank in range(4)]
    assert slices == [(0, 2), (2, 4), (4, 6), (6, 8)]
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        lm_distributed.shard_bounds(6, ProcessGroup(0, 4))
    alone = ProcessGroup()
    assert alone.is_main and not alone.distributed
    assert lm_distributed.shard_loss_weights(
        torch.ones(2, 3, dtype=bool), 3, "token_mean", None, alone
    ) == (1.0, 1.0)


def test_fsdp_config_is_refused_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(NotImplementedError, match="not FSDP"):
        lm_distributed.current_process_group()


@pytest.mark.slow
def test_cli_finetune_under_accelerate_launch(tmp_path):
    """``accelerate launch -m bioreason.cli finetune``: two processes train, the main one
    writes the run folder (about 40 s)."""
    from test_cli_finetune import _config, task_path

    task = task_path.__wrapped__(tmp_path)
    config = _config(tmp_path, steps=2, group_size=2, log_every=1, eval_every=2)
    out = tmp_path / "run"
    arguments = ["-m", "bioreason.cli", "finetune", "--task", str(task), "--model", "tiny"]
    arguments += ["--config", str(config), "--out", str(out), "--no-progress"]
    done = _launch(arguments, 29543)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("checkpoint.pt", "metrics.json", "predictions.parquet", "eval.csv"):
        assert (out / name).exists(), name
    assert list(pd.read_csv(out / "log.csv")["step"]) == [0, 1, 2]
