"""Run by tests/test_lm_distributed.py under ``accelerate launch --multi_gpu`` (2 CPU
processes): each case trains a tiny LM and writes this rank's gradient and weights."""

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _lm_ddp_cases import CASES, run_case  # noqa: E402

torch.set_num_threads(1)
out = Path(sys.argv[1])
results = {name: run_case(name) for name in (sys.argv[2:] or CASES)}
rank = torch.distributed.get_rank()
world = torch.distributed.get_world_size()
with open(out / f"rank{rank}.json", "w") as handle:
    json.dump({"world": world, "rank": rank, "cases": results}, handle)
