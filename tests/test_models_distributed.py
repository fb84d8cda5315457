"""Two CPU processes under ``accelerate launch`` stay in sync (about 10 s)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_data_parallel_training_keeps_ranks_in_sync(tmp_path):
    launcher = Path(sys.executable).parent / "accelerate"  # the one of this environment
    launcher = str(launcher) if launcher.exists() else shutil.which("accelerate")
    if launcher is None:
        pytest.skip("accelerate launcher not installed")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # --multi_gpu starts one process per rank through torch elastic; without a GPU the
    # processes run on CPU and talk over gloo (``--cpu`` alone starts a single process).
    command = [
        launcher,
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
        "29517",
        str(ROOT / "tests" / "_ddp_script.py"),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    # different minibatches and particle noise on each rank...
    assert ranks[0]["losses"] != ranks[1]["losses"]
    # ...but the same parameters after every averaged step
    assert ranks[0]["after"] != ranks[0]["before"]
    for key, value in ranks[0]["state"].items():
        np.testing.assert_allclose(value, ranks[1]["state"][key], rtol=1e-5, atol=1e-6, err_msg=key)
