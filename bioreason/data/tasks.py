"""Task tables: the questions a predictor answers, one row per question (parquet): the
schema, its prompt templates and splits, and the loaders and savers.

Columns (every task, simulated or loaded):

=====================  =============================================================
``question_id``        unique string id
``condition``          the perturbation condition (``"A"``, ``"A+B"``)
``readout``            the gene or program the question is about (``""`` if none)
``outcome_definition`` the outcome's name and options, as JSON
``prompt``             the text the predictor reads
``p_star``             posterior predictive probability from the fitted model (NaN if none)
``p_star_se``          its Monte Carlo standard error
``p_star_spread``      spread of the per-draw probabilities (epistemic uncertainty)
``p_true``             probability under the true generating process (NaN if unknown)
``reference_probability``  a published probability (the Replogle task's ``hit_prob``)
``outcome``            one sampled (or observed) 0/1 outcome
``further_outcomes``   the other sampled outcomes (list), only when ``n_outcomes > 1``
``split``              ``"train"``, ``"val"`` or ``"test"``
=====================  =============================================================

A simulated task (:func:`bioreason.sim.build_task`) also has ``p_star_low`` and
``p_star_high``: the central 90 % interval of the per-draw probabilities behind p*.

:func:`bioreason.sim.build_task` builds a table from an outcome simulator;
:func:`load_replogle_task` reads the real Replogle K562 task into the same schema.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_TEMPLATE",
    "REPLOGLE_TEMPLATE",
    "SPLITS",
    "TASK_COLUMNS",
    "TEMPLATE_FIELDS",
    "check_template",
    "describe_task",
    "format_task_description",
    "load_replogle_task",
    "load_task",
    "ordered_splits",
    "read_task",
    "saved_task_summary",
    "save_task",
    "split_questions",
    "task_problems",
    "task_summary",
]

TASK_COLUMNS = [
    "question_id",
    "condition",
    "readout",
    "outcome_definition",
    "prompt",
    "p_star",
    "p_star_se",
    "p_star_spread",
    "p_true",
    "reference_probability",
    "outcome",
    "split",
]

#: fields a prompt template may use
TEMPLATE_FIELDS = ("question", "condition", "condition_text", "readout", "markers")

DEFAULT_TEMPLATE = (
    "{question} How likely is this, in percent? Answer with an integer from 1 to 99 inside "
    "<answer></answer>."
)

REPLOGLE_TEMPLATE = (
    "In a CRISPRi Perturb-seq screen of K562 cells, does knocking down {condition} have a "
    "strong effect on the gene expression program marked by {markers}? How likely is this, "
    "in percent? Answer with an integer from 1 to 99 inside <answer></answer>."
)

SPLITS = ("random", "heldout_conditions", "heldout_combinations")


def check_template(template: str) -> None:
    """Raise a ``ValueError`` when ``template`` is not a format string over
    :data:`TEMPLATE_FIELDS` (the message names the unknown fields and lists the valid ones).

    Returns
    -------
    None
    """
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as err:
        raise ValueError(f"prompt template is not a valid format string: {err}") from None
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        raise ValueError(
            f"prompt template uses unknown field(s) {unknown}; available: {list(TEMPLATE_FIELDS)}"
        )


def split_questions(
    table: pd.DataFrame,
    split: str = "random",
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    delimiter: str = "+",
) -> np.ndarray:
    """``"train"`` / ``"val"`` / ``"test"`` for every row of ``table``.

    ``"random"``: questions at random; ``"heldout_conditions"``: whole conditions;
    ``"heldout_combinations"``: test questions are those of combinations whose parts are
    all single conditions of the task (unseen pairs of seen perturbations), validation
    and training share the other conditions.

    Returns
    -------
    ndarray of str, shape (len(table),)
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 <= value < 1:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    if test_fraction + val_fraction >= 1:
        raise ValueError("test_fraction + val_fraction must be < 1 (nothing left to train on)")
    rng = np.random.default_rng(seed)
    n = len(table)
    out = np.full(n, "train", dtype=object)

    def assign(units: np.ndarray, unit_of_row: np.ndarray, fractions: dict[str, float]) -> None:
        order = rng.permutation(len(units))
        start = 0
        for name, fraction in fractions.items():
            count = int(round(fraction * len(units)))
            chosen = set(units[order[start : start + count]])
            out[np.isin(unit_of_row, list(chosen))] = name
            start += count

    conditions = table["condition"].astype(str).to_numpy()
    if split == "random":
        assign(np.arange(n), np.arange(n), {"test": test_fraction, "val": val_fraction})
    elif split == "heldout_conditions":
        units = np.asarray(list(dict.fromkeys(conditions)), dtype=object)
        assign(units, conditions, {"test": test_fraction, "val": val_fraction})
    else:
        unique = list(dict.fromkeys(conditions))
        singles = {c for c in unique if delimiter not in c}
        composable = np.asarray(
            [c for c in unique if delimiter in c and set(c.split(delimiter)) <= singles],
            dtype=object,
        )
        if composable.size == 0:
            raise ValueError(
                "heldout_combinations needs combinations whose parts are also single "
                "conditions of the task; none found"
            )
        count = max(1, int(round(test_fraction * composable.size)))
        held = composable[rng.permutation(composable.size)[:count]]
        out[np.isin(conditions, held)] = "test"
        rest = np.asarray([c for c in unique if c not in set(held)], dtype=object)
        order = rng.permutation(rest.size)
        val = rest[order[: int(round(val_fraction * rest.size))]]
        out[np.isin(conditions, val)] = "val"
    return out.astype(str)


def task_summary(table: pd.DataFrame) -> dict[str, Any]:
    """Questions per split, mean p*, outcome rate, mean SE and the histogram of p*
    (10 bins over [0, 1]); a plain dict.

    A table with the column ``unseen_parts`` (:func:`bioreason.sim.build_task`) also
    gets ``questions_with_unseen_parts`` (how many questions' conditions have a part
    never measured alone, so that their p* rests on the model's prior for it) and
    ``unseen_parts`` (condition -> those parts, for the conditions that have any).

    Returns
    -------
    dict
    """
    _require_columns(table, ["split", "outcome", "p_star", "p_star_se"], "task table")
    p_star = _numbers(table["p_star"])
    known = p_star[np.isfinite(p_star)]
    histogram = np.histogram(known, bins=10, range=(0, 1))[0].tolist() if known.size else []
    return {
        "n_questions": int(len(table)),
        "questions_per_split": {k: int(v) for k, v in table["split"].value_counts().items()},
        "outcome_rate": float(np.nanmean(_numbers(table["outcome"])))
        if np.isfinite(_numbers(table["outcome"])).any()
        else float("nan"),
        "mean_p_star": float(known.mean()) if known.size else float("nan"),
        "mean_p_star_se": float(np.nanmean(_numbers(table["p_star_se"])))
        if known.size
        else float("nan"),
        "p_star_histogram": histogram,
        "p_star_extreme_fraction": (
            float(np.mean((known < 0.05) | (known > 0.95))) if known.size else float("nan")
        ),
        **_unseen_parts_summary(table),
    }


def _unseen_parts_summary(table: pd.DataFrame) -> dict[str, Any]:
    """``questions_with_unseen_parts`` and ``unseen_parts`` (condition -> parts never
    measured alone) of a table with an ``unseen_parts`` column; ``{}`` without one."""
    if "unseen_parts" not in table.columns or "condition" not in table.columns:
        return {}
    parts = table["unseen_parts"]
    flagged = parts.notna() & (parts.astype(str) != "")
    return {
        "questions_with_unseen_parts": int(flagged.sum()),
        "unseen_parts": {
            str(c): str(p)
            for c, p in zip(table.loc[flagged, "condition"], parts[flagged], strict=True)
        },
    }


def _numbers(column: pd.Series) -> np.ndarray:
    """A column as float64, text read as NaN (:func:`task_problems` reports it)."""
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float)


def ordered_splits(counts: dict[str, Any]) -> list[tuple[str, Any]]:
    """The items of a mapping keyed by split, in the order train, val, test, then the
    other splits alphabetically.

    Returns
    -------
    list of (split, value)
    """
    order = {"train": 0, "val": 1, "test": 2}
    return sorted(counts.items(), key=lambda item: (order.get(item[0], 3), item[0]))


def describe_task(table: pd.DataFrame, target_se: float | None = None) -> dict[str, Any]:
    """A task table described question by question: :func:`task_summary` and more.

    Parameters
    ----------
    table : DataFrame
        A task table (:data:`TASK_COLUMNS`).
    target_se : float, optional
        The standard error above which p* counts as unconverged; ``None`` for 0.01
        (pass the task's own target, e.g. ``saved_task_summary(path).get("target_se")``).

    Returns
    -------
    dict
        JSON-ready. The keys of :func:`task_summary` (``n_questions``,
        ``questions_per_split`` here in :func:`ordered_splits` order, ``outcome_rate``,
        ``mean_p_star``, ``mean_p_star_se``, ``p_star_histogram``,
        ``p_star_extreme_fraction``) and: ``outcome_rate_per_split`` (split -> mean
        outcome), ``n_conditions``, ``n_readouts``, ``n_with_p_star`` (questions whose p*
        is known), ``target_se`` (the one used), ``n_unconverged`` (of those, with
        ``p_star_se > target_se``), ``mean_p_true`` and ``mean_reference`` (mean of the
        finite ``p_true`` / ``reference_probability``, ``None`` when there are none),
        ``mean_abs_p_star_minus_p_true`` (over questions with both, else ``None``),
        ``reference_histogram`` (counts of the reference probabilities in 10 bins over
        [0, 1], ``[]`` when there are none), ``outcome_definitions`` (the distinct JSON
        definitions, in order of appearance), ``columns``, ``target_se_known`` (False
        when ``target_se`` was None and 0.01 assumed) and ``problems``
        (:func:`task_problems`: values no task should hold, one sentence each).
    """
    facts = task_summary(table)
    facts["target_se_known"] = target_se is not None
    target_se = 0.01 if target_se is None else float(target_se)
    p_star = _numbers(table["p_star"])
    known = np.isfinite(p_star)
    facts["questions_per_split"] = dict(ordered_splits(facts["questions_per_split"]))
    facts["outcome_rate_per_split"] = {
        split: float(np.nanmean(values))
        if np.isfinite(values := _numbers(table.loc[table["split"] == split, "outcome"])).any()
        else float("nan")
        for split in facts["questions_per_split"]
    }
    facts["n_conditions"] = int(table["condition"].nunique())
    facts["n_readouts"] = int(table["readout"].nunique())
    facts["n_with_p_star"] = int(known.sum())
    facts["target_se"] = target_se
    facts["n_unconverged"] = int((_numbers(table["p_star_se"])[known] > target_se).sum())
    for column, key in (("p_true", "mean_p_true"), ("reference_probability", "mean_reference")):
        values = _numbers(table[column])
        facts[key] = float(np.nanmean(values)) if np.isfinite(values).any() else None
    p_true = _numbers(table["p_true"])
    both = known & np.isfinite(p_true)
    facts["mean_abs_p_star_minus_p_true"] = (
        float(np.abs(p_star[both] - p_true[both]).mean()) if both.any() else None
    )
    reference = _numbers(table["reference_probability"])
    reference = reference[np.isfinite(reference)]
    facts["reference_histogram"] = (
        np.histogram(reference, bins=10, range=(0, 1))[0].tolist() if reference.size else []
    )
    facts["outcome_definitions"] = list(dict.fromkeys(table["outcome_definition"].astype(str)))
    facts["columns"] = [str(c) for c in table.columns]
    facts["problems"] = task_problems(table)
    return facts


def _ids(table: pd.DataFrame, mask: np.ndarray, limit: int = 3) -> str:
    ids = table["question_id"].astype(str).to_numpy()[mask]
    shown = ", ".join(ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def task_problems(table: pd.DataFrame) -> list[str]:
    """Values of a task table that no task should hold, one sentence each naming the
    column and some of the questions: repeated ``question_id``; p* (or ``p_true``,
    ``reference_probability``) outside [0, 1]; p* missing (NaN) for some questions but
    not all (a table without a model has none); a negative or missing SE where p* is
    known; an outcome other than 0, 1 or NaN (unknown); a null or empty prompt.

    Returns
    -------
    list of str
        Empty when nothing is wrong.
    """
    problems = []
    ids = table["question_id"].astype(str)
    repeated = ids.duplicated(keep=False).to_numpy()
    if repeated.any():
        distinct = ids[repeated].unique()
        problems.append(
            f"question_id has duplicates: {len(distinct)} id(s) repeated over "
            f"{int(repeated.sum())} rows (e.g. {', '.join(distinct[:3])}); each question "
            "needs its own id"
        )
    numbers = {}
    for column in ("p_star", "p_star_se", "p_true", "reference_probability", "outcome"):
        if column not in table:
            continue
        raw = table[column]
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
        text = (np.isnan(values) & raw.notna().to_numpy()).copy()
        if text.any():
            problems.append(
                f"{column} holds text (e.g. {raw[text].iloc[0]!r}) for {int(text.sum())} "
                f"question(s): {_ids(table, text)}; expected numbers"
            )
        numbers[column] = values
    for column in ("p_star", "p_true", "reference_probability"):
        values = numbers.get(column)
        if values is None:
            continue
        outside = np.isfinite(values) & ((values < 0) | (values > 1))
        if outside.any():
            problems.append(
                f"{column} lies outside [0, 1] for {int(outside.sum())} question(s) "
                f"({_ids(table, outside)}; e.g. {values[outside][0]:g}); a probability is in "
                "[0, 1]"
            )
    p_star = numbers.get("p_star")
    if p_star is not None:
        missing = np.isnan(p_star)
        if missing.any() and not missing.all():
            problems.append(
                f"p_star is missing (NaN) for {int(missing.sum())} of {len(p_star)} questions "
                f"({_ids(table, missing)}): questions without p* are not scored against it"
            )
        se = numbers.get("p_star_se")
        if se is not None:
            bad = ~missing & ~(se >= 0)
            if bad.any():
                problems.append(
                    f"p_star_se is negative or missing for {int(bad.sum())} question(s) with "
                    f"a p* ({_ids(table, bad)})"
                )
    outcome = numbers.get("outcome")
    if outcome is not None:
        bad = np.isfinite(outcome) & ~np.isin(outcome, (0.0, 1.0))
        if bad.any():
            problems.append(
                f"outcome holds {sorted(set(outcome[bad].tolist()))[:3]} for {int(bad.sum())} "
                f"question(s) ({_ids(table, bad)}); an outcome is 1, 0 or NaN (unknown)"
            )
    if "prompt" in table:
        prompts = table["prompt"]
        empty = (prompts.isna() | prompts.astype(str).str.strip().eq("")).to_numpy()
        if empty.any():
            problems.append(
                f"prompt is null or empty for {int(empty.sum())} question(s) ({_ids(table, empty)})"
            )
    return problems


def _describe_outcome(text: str) -> str:
    """An outcome definition (JSON) on one line; a per-readout mapping as its range."""
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


def format_task_description(facts: dict[str, Any], path: str | Path) -> str:
    """:func:`describe_task`'s facts as text, one fact a line, histograms drawn in ``#``.

    Parameters
    ----------
    facts : dict
        From :func:`describe_task`.
    path : str or Path
        The table's file, named in the first line.

    Returns
    -------
    str
        Lines joined by newlines, without a final newline.
    """

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
            f"unconverged (SE > {facts['target_se']:g}"
            + ("" if facts.get("target_se_known", True) else ", assumed: no target recorded")
            + f") {facts['n_unconverged']} of "
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
    if facts.get("unseen_parts"):
        listed = ", ".join(f"{c} ({p})" for c, p in list(facts["unseen_parts"].items())[:10])
        more = " ..." if len(facts["unseen_parts"]) > 10 else ""
        lines.append(
            f"parts never measured alone: {facts['questions_with_unseen_parts']} questions "
            f"about {listed}{more}; their p* rests on the model's prior for those parts"
        )
    lines.append(f"columns: {', '.join(facts['columns'])}")
    for problem in facts.get("problems", []):
        lines.append(f"problem: {problem}")
    return "\n".join(lines)


def _require_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; it has {list(table.columns)}")


def _summary_path(path: Path) -> Path:
    return path.with_suffix(path.suffix + ".summary.json")


def save_task(table: pd.DataFrame, path: str | Path, overwrite: bool = False) -> Path:
    """Write a task table as parquet, atomically; refuses to replace a file unless
    ``overwrite=True``. Returns the path."""
    from bioreason._io import atomic_write

    _require_columns(table, TASK_COLUMNS, "task table")
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    frame = table.copy()
    frame.attrs = {}
    metadata = json.dumps(table.attrs.get("summary", {}))
    atomic_write(
        path,
        lambda tmp: frame.assign().to_parquet(tmp, index=False),
        overwrite=True,
    )
    atomic_write(_summary_path(path), lambda tmp: tmp.write_text(metadata), overwrite=True)
    return path


def load_task(path: str | Path) -> pd.DataFrame:
    """Read a task table written by :func:`save_task` (checks the schema).

    Returns
    -------
    DataFrame with :data:`TASK_COLUMNS`; ``attrs["summary"]`` recomputed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"task table {path} does not exist")
    try:
        table = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{path} is not a readable parquet task table ({err})") from None
    _require_columns(table, TASK_COLUMNS, f"task table {path}")
    table.attrs["summary"] = task_summary(table)
    return table


def load_replogle_task(folder: str | Path, template: str = REPLOGLE_TEMPLATE) -> pd.DataFrame:
    """The Replogle K562 essential-gene task (train/val/test parquet files) in the task
    schema: ``condition`` = the knocked-down gene, ``readout`` = ``program<pheno>``,
    ``outcome`` = ``hit``, ``reference_probability`` = the published ``hit_prob``,
    ``p_star`` empty (NaN), the given splits; prompts from ``template`` over the gene
    (``{condition}``) and the program's markers (``{markers}``).

    Returns
    -------
    DataFrame with :data:`TASK_COLUMNS` plus ``markers``.
    """
    check_template(template)
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"Replogle task folder {folder} does not exist")
    files = {split: folder / f"{split}.pq" for split in ("train", "val", "test")}
    for file in files.values():
        if not file.exists():
            raise FileNotFoundError(
                f"{file} is missing: the Replogle task folder needs train.pq, val.pq and test.pq"
            )
    frames = []
    for split, file in files.items():
        frame = pd.read_parquet(file)
        _require_columns(frame, ["pert", "pheno", "pheno_markers", "hit", "hit_prob"], str(file))
        frames.append(frame.assign(split=split))
    raw = pd.concat(frames, ignore_index=True)
    condition = raw["pert"].astype(str).to_numpy()
    readout = np.asarray([f"program{int(p)}" for p in raw["pheno"]], dtype=object)
    markers = raw["pheno_markers"].astype(str).to_numpy()
    prompts = [
        template.format(
            question="",
            condition=c,
            condition_text=f"knocking down {c}",
            readout=r,
            markers=m,
        )
        for c, r, m in zip(condition, readout, markers, strict=True)
    ]
    definition = json.dumps({"name": "replogle_hit", "source": "Replogle et al. 2022, cNMF"})
    return pd.DataFrame(
        {
            "question_id": [f"replogle{i:05d}" for i in range(len(raw))],
            "condition": condition,
            "readout": readout,
            "outcome_definition": definition,
            "prompt": prompts,
            "p_star": np.nan,
            "p_star_se": np.nan,
            "p_star_spread": np.nan,
            "p_true": np.nan,
            "reference_probability": raw["hit_prob"].to_numpy(dtype=float),
            "outcome": raw["hit"].astype(np.int8).to_numpy(),
            "split": raw["split"].to_numpy(),
            "markers": markers,
        }
    )


def read_task(path: str | Path) -> pd.DataFrame:
    """A task table from a parquet file (:func:`save_task`) or a Replogle task folder
    (:func:`load_replogle_task`), with errors that name the file and say what it is.

    Returns
    -------
    DataFrame with :data:`TASK_COLUMNS`
    """
    path = Path(path)
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
        text = " ".join(str(err).split())
        if "not a readable parquet" in text:
            raise ValueError(f"{path} is not a parquet file (not a task table)") from None
        if "lacks column" in text:
            raise ValueError(f"{path} is a parquet file but not a task table: {text}") from None
        raise


def saved_task_summary(path: str | Path) -> dict[str, Any]:
    """The summary :func:`save_task` wrote beside a task file (``<path>.summary.json``:
    how the task was built, e.g. its ``target_se``); ``{}`` when there is none or it
    cannot be read.

    Returns
    -------
    dict
    """
    path = Path(path)
    sidecar = _summary_path(path)
    if not (path.is_file() and sidecar.exists()):
        return {}
    try:
        summary = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}
