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

    One line per method: the sampled invalid-answer rate (beside the figures that score
    ``q_exact``), ECE against outcomes, ``|q - p*|`` and the overconfidence vs p* per
    question with their intervals, then the question-level figures (corr and Spearman
    of q with p*, sd of q across questions, AUROC against outcomes and against
    p* > 1/2); then what the intervals cover, and the verdict.

    Parameters
    ----------
    result : dict
        ``calibration/result.json`` (``headline`` rows, ``interval`` and ``finding``).
    """
    import math

    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and math.isfinite(value)

    def cell(row: dict[str, Any], name: str, interval: bool = True) -> str:
        value = row.get(name)
        if not finite(value):
            return "n/a"
        low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
        if not interval or not (finite(low) and finite(high)):
            return f"{value:.3f}"
        return f"{value:.3f} [{low:.3f}, {high:.3f}]"

    def overconfidence(row: dict[str, Any], name: str = "overconfidence_question") -> str:
        # per question against p*; against p_true where the run has no p*
        if finite(row.get(name)) or not finite(row.get(f"{name}_p_true")):
            return cell(row, name)
        return cell(row, f"{name}_p_true") + " (vs p_true)"

    def invalid(row: dict[str, Any]) -> str:
        rate = row.get("invalid_rate")
        text = f"{rate:.3f}" if finite(rate) else "n/a"
        source = row.get("q_source")
        return f"{text} (q_{source})" if source else text

    header = (
        "method",
        "invalid, sampled",
        "ECE vs outcomes",
        "|q - p*|",
        "overconfidence vs p*",
        "keyed on q",
        "corr(q, p*)",
        "Spearman",
        "sd of q",
        "AUROC vs y",
        "AUROC vs p*>1/2",
    )
    rows = [
        (
            str(row["method"]),
            invalid(row),
            cell(row, "ece"),
            cell(row, "mae_p_star"),
            overconfidence(row),
            overconfidence(row, "overconfidence_answer"),
            cell(row, "corr_p_star", False),
            cell(row, "spearman_p_star", False),
            cell(row, "sd_q" if "sd_q" in row else "q_spread", False),
            cell(row, "auroc", False),
            cell(row, "auroc_p_star", False),
        )
        for row in result.get("headline", [])
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for line in [header, *rows]:
        print("  ".join(text.ljust(width) for text, width in zip(line, widths)).rstrip())
    interval = result.get("interval") or "95 % bootstrap intervals over held-out questions"
    print(
        f"([low, high]: {interval}; overconfidence vs p*: mean of sign(p* - 1/2)(q - p*) "
        "over questions, positive when answers are pushed outward past p*; keyed on q: mean "
        "of sign(q - 1/2)(q - p*), 0 for answers calibrated against p* however little they "
        "know, positive when answers are more extreme than the p* behind them; invalid: "
        "the share of sampled answers that could not be read)"
    )
    finding = result.get("finding") or {}
    if finding.get("text"):
        print(finding["text"])
