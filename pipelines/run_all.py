"""Run pipelines end to end: ``bioreason run`` for each config, one after the other.

    python pipelines/run_all.py [CONFIG.yaml ...] [-- bioreason-run options]

Without configs it runs every ``pipelines/configs/*.yaml`` (demo, synthetic_lm, replogle,
synthetic_calibration; hours on a 2-core CPU for all but the demo). Options after ``--``
go to each ``bioreason run`` (e.g. ``-- --workers 2 --force``). Each run is resumable:
rerunning skips the stages that are up to date. Exit status: the first non-zero one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bioreason.cli import main

CONFIGS = Path(__file__).resolve().parent / "configs"


def run_all(argv: list[str]) -> int:
    """Run ``bioreason run CONFIG [options]`` for each config; returns the exit status."""
    if "--" in argv:
        cut = argv.index("--")
        configs, options = argv[:cut], argv[cut + 1 :]
    else:
        configs, options = argv, []
    if any(c in ("-h", "--help") for c in configs):
        print(__doc__)
        return 0
    paths = [Path(c) for c in configs] or sorted(CONFIGS.glob("*.yaml"))
    for path in paths:
        print(f"== bioreason run {path} {' '.join(options)}".rstrip(), flush=True)
        status = main(["run", str(path), *options])
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(run_all(sys.argv[1:]))
