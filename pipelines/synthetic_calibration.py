"""Synthetic calibration experiment: does each RL estimator leave a tabular probability
predictor calibrated? (Bereket & Leskovec 2025; see docs/rl_calibration.md.)

    python pipelines/synthetic_calibration.py --out runs/synthetic_calibration \
        [--config pipelines/synthetic_calibration.yaml] [--offline] [--methods grpo rloo] \
        [--steps 50000] [--seed 0]

Same as ``bioreason synthetic-calibration``; this script reads the YAML next to it by
default.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bioreason.cli import main

DEFAULT_CONFIG = Path(__file__).with_suffix(".yaml")

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--config" not in argv:
        argv = [*argv, "--config", str(DEFAULT_CONFIG)]
    sys.exit(main(["synthetic-calibration", *argv]))
