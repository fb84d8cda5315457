"""``bioreason inspect-task``: summarize a task table (splits, p*, outcomes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from bioreason.cli._base import one_line, positive_float

NAME = "inspect-task"


def ordered_splits(counts: dict) -> list:
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(counts.items(), key=lambda item: (order.get(item[0], 3), item[0]))


def _read_task(path: Path):
    """A task table from a parquet file (``save_task``) or a Replogle task folder."""
    from bioreason.data.tasks import load_replogle_task, load_task

    if path.is_dir():
        if (path / "train.pq").exists():
            return load_replogle_task(path)
        raise IsADirectoryError(
            f"{path} is a folder; give a task .parquet file (bioreason build-task --out) or "
            "a Replogle task folder (train.pq, val.pq, test.pq)"
        )
    if not path.exists():
        raise FileNotFoundError(f"task table {path} does not exist")
    try:
        return load_task(path)
    except ValueError as err:
        text = one_line(err)
        if "not a readable parquet" in text:
            raise ValueError(f"{path} is not a parquet file (not a task table)") from None
        if "lacks column" in text:
            raise ValueError(f"{path} is a parquet file but not a task table: {text}") from None
        raise


def _task_facts(table, path: Path, target_se: float | None) -> dict:
    """The summary of a task table, plus what inspect-task prints beyond it."""
    import json

    import numpy as np

    from bioreason.data.tasks import task_summary

    facts = task_summary(table)
    sidecar = path.with_suffix(path.suffix + ".summary.json")
    if target_se is None and path.is_file() and sidecar.exists():
        try:
            target_se = json.loads(sidecar.read_text()).get("target_se")
        except (OSError, ValueError, AttributeError):
            target_se = None
    target_se = 0.01 if target_se is None else float(target_se)
    p_star = table["p_star"].to_numpy(dtype=float)
    known = np.isfinite(p_star)
    facts["questions_per_split"] = dict(ordered_splits(facts["questions_per_split"]))
    facts["outcome_rate_per_split"] = {
        split: float(table.loc[table["split"] == split, "outcome"].mean())
        for split in facts["questions_per_split"]
    }
    facts["n_conditions"] = int(table["condition"].nunique())
    facts["n_readouts"] = int(table["readout"].nunique())
    facts["n_with_p_star"] = int(known.sum())
    facts["target_se"] = target_se
    facts["n_unconverged"] = int(
        (table["p_star_se"].to_numpy(dtype=float)[known] > target_se).sum()
    )
    for column, key in (("p_true", "mean_p_true"), ("reference_probability", "mean_reference")):
        values = table[column].to_numpy(dtype=float)
        facts[key] = float(np.nanmean(values)) if np.isfinite(values).any() else None
    both = known & np.isfinite(table["p_true"].to_numpy(dtype=float))
    facts["mean_abs_p_star_minus_p_true"] = (
        float(np.abs(p_star[both] - table["p_true"].to_numpy(dtype=float)[both]).mean())
        if both.any()
        else None
    )
    reference = table["reference_probability"].to_numpy(dtype=float)
    reference = reference[np.isfinite(reference)]
    facts["reference_histogram"] = (
        np.histogram(reference, bins=10, range=(0, 1))[0].tolist() if reference.size else []
    )
    facts["outcome_definitions"] = list(dict.fromkeys(table["outcome_definition"].astype(str)))
    facts["columns"] = [str(c) for c in table.columns]
    return facts


def _describe_outcome(text: str) -> str:
    import json

    try:
        definition = json.loads(text)
    except ValueError:
        return text[:200]
    if not isinstance(definition, dict):
        return text[:200]
    name = definition.pop("name", "?")
    parts = []
    for key, value in definition.items():
        if (
            isinstance(value, dict)
            and value
            and all(isinstance(v, (int, float)) for v in value.values())
        ):
            low, high = min(value.values()), max(value.values())
            parts.append(f"{key} per readout ({len(value)} values, {low:.3g}-{high:.3g})")
        else:
            parts.append(f"{key}={value}")
    return f"{name} ({', '.join(parts)})" if parts else str(name)


def _histogram_lines(counts: list[int], width: int = 40) -> list[str]:
    top = max(max(counts), 1)
    return [
        f"  {k / 10:.1f}-{(k + 1) / 10:.1f} | {'#' * round(width * n / top):<{width}} {n}"
        for k, n in enumerate(counts)
    ]


def _task_report(facts: dict, path: Path) -> str:
    def number(value) -> str:
        return "n/a" if value is None or value != value else f"{value:.3f}"

    splits = ", ".join(f"{k} {v}" for k, v in facts["questions_per_split"].items())
    rates = ", ".join(f"{k} {number(v)}" for k, v in facts["outcome_rate_per_split"].items())
    lines = [
        f"{path}: {facts['n_questions']} questions, {facts['n_conditions']} conditions, "
        f"{facts['n_readouts']} readouts",
    ]
    for text in facts["outcome_definitions"][:3]:
        lines.append(f"outcome: {_describe_outcome(text)}")
    if len(facts["outcome_definitions"]) > 3:
        lines.append(f"  ... {len(facts['outcome_definitions'])} outcome definitions in all")
    lines += [
        f"questions per split: {splits}",
        f"outcome rate: {number(facts['outcome_rate'])} ({rates})",
    ]
    if facts["n_with_p_star"]:
        lines.append(
            f"p*: mean {number(facts['mean_p_star'])}, mean SE {facts['mean_p_star_se']:.4f}, "
            f"unconverged (SE > {facts['target_se']:g}) {facts['n_unconverged']} of "
            f"{facts['n_with_p_star']}; within 0.05 of 0 or 1: "
            f"{facts['p_star_extreme_fraction']:.0%}"
        )
        lines.append("p* histogram:")
        lines += _histogram_lines(facts["p_star_histogram"])
    else:
        lines.append("p*: none (no model behind this task: p_star is empty)")
    if facts["mean_p_true"] is not None:
        gap = facts["mean_abs_p_star_minus_p_true"]
        lines.append(
            f"p_true: mean {number(facts['mean_p_true'])}"
            + (f", mean |p* - p_true| {gap:.3f}" if gap is not None else "")
        )
    if facts["mean_reference"] is not None:
        lines.append(f"reference probability: mean {number(facts['mean_reference'])}")
        if not facts["n_with_p_star"]:
            lines.append("reference probability histogram:")
            lines += _histogram_lines(facts["reference_histogram"])
    lines.append(f"columns: {', '.join(facts['columns'])}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    import json

    path = Path(args.path)
    table = _read_task(path)
    facts = _task_facts(table, path, args.target_se)
    if args.json:
        print(json.dumps(facts, indent=1))
    else:
        print(_task_report(facts, path))
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        NAME,
        help="summarize a task table (splits, p*, outcomes)",
    )
    parser.add_argument("path", help="task .parquet file, or a Replogle task folder")
    parser.add_argument(
        "--target-se",
        dest="target_se",
        type=positive_float,
        help="SE above which p* counts as unconverged (default: the task's target, else 0.01)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return parser
