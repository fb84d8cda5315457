"""Jobs for tests of ``bioreason.pipelines.lm_runs.run_jobs``'s interruption: module-level
functions, so that the pool's spawned processes can import them (nothing heavy here)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def slow_job(job: dict[str, Any]) -> dict[str, Any]:
    """Mark the job as started (a file), sleep ``job["seconds"]``, mark it as finished."""
    folder = Path(job["folder"])
    (folder / f"started-{job['index']}").write_text(str(os.getpid()))
    time.sleep(job["seconds"])
    (folder / f"finished-{job['index']}").write_text("done")
    return {"index": job["index"]}


if __name__ == "__main__":  # a spawned process imports this module, never runs it
    raise SystemExit("tests/_interrupt_jobs.py holds jobs for the tests; it is not a script")
