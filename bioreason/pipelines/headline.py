"""What a pipeline run prints at its end (the headline table and its verdict), and how
many fine-tuning jobs run at once by default."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["default_workers", "print_headline"]


def default_workers() -> int:
    """Parallel fine-tuning jobs by default: the machine's cores, at most 4.

    Returns
    -------
    int
    """
    return max(1, min(4, os.cpu_count() or 1))


def print_headline(result: dict[str, Any]) -> None:
    """Print the calibration stage's headline table and its verdict.

    Parameters
    ----------
    result : dict
        ``calibration/result.json`` (``headline`` rows and ``finding``).
    """
    import math

    def cell(row: dict[str, Any], name: str) -> str:
        value = row.get(name)
        if value is None or not math.isfinite(value):
            return "n/a"
        low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
            return f"{value:.3f}"
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"

    header = (
        "method",
        "ECE vs outcomes",
        "|q - p*|",
        "overconfidence vs p*",
        "sd of q",
        "invalid",
    )
    rows = [
        (
            str(row["method"]),
            cell(row, "ece"),
            cell(row, "mae_p_star"),
            cell(row, "overconfidence"),
            "n/a" if row.get("q_spread") is None else f"{row['q_spread']:.3f}",
            "n/a" if row.get("invalid_rate") is None else f"{row['invalid_rate']:.3f}",
        )
        for row in result.get("headline", [])
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for line in [header, *rows]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip())
    print("(95 % bootstrap intervals over held-out questions)")
    finding = result.get("finding") or {}
    if finding.get("text"):
        print(finding["text"])
