"""A task table from an outcome simulator: every condition x readout question with its
prompt, p*, sampled outcomes and a split (the schema is :mod:`bioreason.data.tasks`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bioreason.data.tasks import (
    DEFAULT_TEMPLATE,
    check_template,
    save_task,
    split_questions,
    task_summary,
)
from bioreason.sim.budget import SimulationBudget
from bioreason.sim.prompts import perturbation_verb
from bioreason.sim.readouts import Readout
from bioreason.sim.simulator import OutcomeSimulator

__all__ = ["OUTCOME_SAMPLING", "build_task"]

#: how :func:`build_task` draws its outcomes (see :meth:`OutcomeSimulator.sample`):
#: ``independent`` (each question's outcomes its own posterior draws and replicates) or
#: ``shared`` (outcome ``j`` of every question from one draw and one replicate screen)
OUTCOME_SAMPLING = ("independent", "shared")


def build_task(
    simulator: OutcomeSimulator,
    conditions: Sequence[str],
    readouts: Sequence[str | Readout] | None = None,
    *,
    template: str = DEFAULT_TEMPLATE,
    n_outcomes: int = 1,
    outcome_sampling: str = "independent",
    split: str = "random",
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    budget: SimulationBudget | None = None,
    threshold_quantile: float = 0.5,
    truth: OutcomeSimulator | None = None,
    path: str | Path | None = None,
    overwrite: bool = False,
    perturbation_type: str = "crispri",
) -> pd.DataFrame:
    """Questions (every condition x readout) with p*, sampled outcomes and a split.

    Parameters
    ----------
    simulator : OutcomeSimulator
        Computes p* and samples the outcomes (its outcome defines the questions).
    conditions : sequence of str
        Condition labels (``"A"``, ``"A+B"``), their parts in any order; each condition
        once (``"A+B"`` and ``"B+A"`` together are refused). A list, not one string.
    readouts : sequence of str or Readout, optional
        The readouts asked about (None for outcomes without readouts): names (a gene of
        the model, or a program the simulator was given) or
        :class:`~bioreason.sim.Readout` objects, as ``OutcomeSimulator(readouts=...)``
        takes them; a ``Readout`` is added to ``simulator.readouts`` (a different one of
        the same name raises) and its questions use its name. A list, not one string.
    template : str
        Format string with fields from :data:`bioreason.data.tasks.TEMPLATE_FIELDS`.
    n_outcomes : int
        Sampled outcomes per question (the first is ``outcome``, the others
        ``further_outcomes``).
    outcome_sampling : {"independent", "shared"}
        ``"independent"`` (default): every outcome of every question is its own
        posterior draw of the model's globals and its own replicate experiment, so the
        outcomes of different questions are independent Bernoulli(p*) draws -- what
        scoring predictions question by question against outcomes assumes.
        ``"shared"``: outcome ``j`` of every question comes from one posterior draw
        and one simulated screen (shared control cells, a condition's cells shared by
        its readouts), so column ``j`` is one correlated realisation of the world, as
        one real screen would be; see :meth:`OutcomeSimulator.sample`.
    split, test_fraction, val_fraction
        See :func:`bioreason.data.tasks.split_questions`.
    seed : int
        Seeds every random draw, so (arguments, seed) give the same table: the
        suggested thresholds and p* use ``seed`` (p*'s round ``r`` the sub-seed
        ``SeedSequence([seed, r])``), p_true uses ``seed`` in the truth simulator, the
        outcomes use ``seed + 1`` (``OutcomeSimulator.sample(..., seed=seed + 1)``:
        independent outcomes draw from a per-condition stream
        ``SeedSequence([seed + 1, tag, hash(condition)])``, shared ones from
        ``SeedSequence([seed + 1, chunk])``), and the split uses ``seed``.
    budget : SimulationBudget, optional
        The Monte Carlo budget of p* (and of p_true); default: the simulator's.
    threshold_quantile : float
        When a ``screen_hit`` outcome has ``threshold=None``, each readout's threshold
        is this quantile of the model's expected |effect| across ``conditions``
        (:meth:`~bioreason.sim.OutcomeSimulator.suggest_thresholds`).
    truth : OutcomeSimulator, optional
        A simulator of the true process (e.g. ``GroundTruthSimulator``): fills
        ``p_true``; it is given the same outcome definition (thresholds included) and
        the same budget (and the readouts given as ``Readout`` objects).
    path : str or Path, optional
        Write the table there as parquet (atomically); an existing file is refused
        unless ``overwrite=True``.
    overwrite : bool
        Replace an existing ``path``.
    perturbation_type : str
        How the screen perturbs its genes, which sets the prompt's verb
        (:data:`~bioreason.sim.PERTURBATION_VERBS`): ``"crispri"`` ("knocking down",
        the default), ``"crispra"`` ("activating"), ``"knockout"``, ``"overexpression"``,
        ``"compound"``.

    Returns
    -------
    DataFrame
        The columns of :data:`bioreason.data.tasks.TASK_COLUMNS` (plus
        ``further_outcomes`` when n_outcomes > 1, and ``p_star_low`` / ``p_star_high``
        (the central 90 % interval of the per-draw probabilities), ``p_star_draws``,
        ``p_star_method``, ``unseen_parts``: the condition's parts that no observed
        cell carries alone, ``""`` when none, None when no cells are known -- see
        :meth:`~bioreason.sim.OutcomeSimulator.unseen_parts`); ``condition`` keeps the
        spelling given; ``attrs["summary"]`` is
        :func:`~bioreason.data.tasks.task_summary` plus ``outcome_sampling``.
    """
    check_template(template)
    verb = perturbation_verb(perturbation_type)
    if outcome_sampling not in OUTCOME_SAMPLING:
        raise ValueError(
            f"outcome_sampling must be one of {list(OUTCOME_SAMPLING)}, got {outcome_sampling!r}"
        )
    if isinstance(n_outcomes, bool) or not isinstance(n_outcomes, (int, np.integer)):
        raise TypeError(f"n_outcomes must be an integer, got {n_outcomes!r}")
    if n_outcomes < 1:
        raise ValueError(f"n_outcomes must be >= 1, got {n_outcomes}")
    if path is not None and Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    if budget is not None and not isinstance(budget, SimulationBudget):
        raise TypeError(f"budget must be a SimulationBudget, got {type(budget).__name__}")
    budget = simulator.budget if budget is None else budget
    conditions = _labels(conditions, "conditions", "condition labels, e.g. ['A', 'A+B']")
    if not conditions:
        raise ValueError("no conditions given")
    _refuse_repeated_conditions(simulator, conditions)
    uses_readout = simulator.outcome.uses_readout
    if uses_readout:
        if readouts is None or (not isinstance(readouts, str) and not list(readouts)):
            raise ValueError(f"outcome {simulator.outcome.name!r} needs readouts (genes/programs)")
        readouts = _readout_names(simulator, readouts, truth)
    else:
        readouts = [""]
    outcome = simulator.outcome
    if outcome.name == "screen_hit" and outcome.needs_thresholds():
        thresholds = simulator.suggest_thresholds(
            conditions, readouts, quantile=threshold_quantile, seed=seed
        )
        simulator.outcome = outcome.with_thresholds(thresholds)
    simulator.fix_thresholds(readouts)
    questions = pd.DataFrame(
        [(c, r) for c in conditions for r in readouts], columns=["condition", "readout"]
    )
    result = simulator.probability(questions, budget, seed=seed)
    outcomes = simulator.sample(
        result[["condition", "readout"]],
        n=n_outcomes,
        seed=seed + 1,
        independent=outcome_sampling == "independent",
    )
    outcomes = np.asarray(outcomes, dtype=np.int8)
    p_true = np.full(len(result), np.nan)
    if truth is not None:
        truth.outcome = simulator.outcome
        p_true = truth.probability(result[["condition", "readout"]], budget, seed=seed)
        p_true = p_true["p_star"].to_numpy()
    prompts = []
    for condition, readout in zip(result["condition"], result["readout"], strict=True):
        markers = ""
        if uses_readout:
            markers = ", ".join(simulator.readouts.get(readout).markers[:15])
        condition_text = _condition_text(simulator, condition, verb)
        prompts.append(
            template.format(
                question=simulator.describe(condition, readout, condition_text),
                condition=condition,
                condition_text=condition_text,
                readout=readout,
                markers=markers,
            )
        )
    table = pd.DataFrame(
        {
            "question_id": [f"q{i:05d}" for i in range(len(result))],
            "condition": result["condition"].to_numpy(),
            "readout": result["readout"].to_numpy(),
            "outcome_definition": simulator.outcome.to_json(),
            "prompt": prompts,
            "p_star": result["p_star"].to_numpy(),
            "p_star_se": result["p_star_se"].to_numpy(),
            "p_star_spread": result["p_star_spread"].to_numpy(),
            "p_true": p_true,
            "reference_probability": np.nan,
            "outcome": outcomes[:, 0],
        }
    )
    if n_outcomes > 1:
        table["further_outcomes"] = [row.tolist() for row in outcomes[:, 1:]]
    table["split"] = split_questions(table, split, test_fraction, val_fraction, seed)
    # the central 90 % interval of the per-draw probabilities (the fits' mixture's for an
    # EnsembleSimulator): whether p_true (or p_obs) lies inside it says whether p*'s
    # uncertainty is honest
    table["p_star_low"] = result["p_star_low"].to_numpy()
    table["p_star_high"] = result["p_star_high"].to_numpy()
    table["p_star_draws"] = result["n_draws"].to_numpy()
    table["p_star_method"] = result["method"].to_numpy()
    table["unseen_parts"] = result["unseen_parts"].to_numpy()
    unconverged = int((~result["converged"]).sum())
    if unconverged:
        warnings.warn(
            f"{unconverged} of {len(result)} questions did not reach p_star_se <= "
            f"{budget.target_se} within {budget.max_draws} draws (see column p_star_se)",
            UserWarning,
            stacklevel=2,
        )
    # the summary (saved beside the table) records how the outcomes were drawn
    table.attrs["summary"] = {**task_summary(table), "outcome_sampling": outcome_sampling}
    extreme = table.attrs["summary"]["p_star_extreme_fraction"]
    if extreme > 0.8:
        warnings.warn(
            f"p* is within 0.05 of 0 or 1 for {extreme:.0%} of the questions: calibration "
            "differences between predictors will hardly show; choose other thresholds "
            "(threshold=None picks them from the model's effects) or replicate sizes",
            UserWarning,
            stacklevel=2,
        )
    if path is not None:
        save_task(table, path, overwrite=overwrite)
    return table


def _readout_names(
    simulator: OutcomeSimulator,
    readouts: Sequence[str | Readout],
    truth: OutcomeSimulator | None,
) -> list[str]:
    """The names of ``readouts`` (each once, in order), adding ``Readout`` objects to the
    simulator's readouts and the truth simulator's (as ``OutcomeSimulator(readouts=...)``
    does)."""
    if isinstance(readouts, (str, Readout)):
        shown = readouts if isinstance(readouts, str) else readouts.name
        raise TypeError(
            f"readouts must be a list of readout names or Readout objects, got the single "
            f"{type(readouts).__name__} {shown!r}; pass [{shown!r}]"
        )
    if isinstance(readouts, Mapping) or not isinstance(readouts, Iterable):
        raise TypeError(
            f"readouts must be a list of readout names or Readout objects; got {readouts!r}"
        )
    names = []
    for readout in readouts:
        if isinstance(readout, Readout):
            for target in (simulator, truth):  # validates its genes; a clash raises
                if target is not None:
                    target.readouts.add(readout)
            names.append(readout.name)
        elif isinstance(readout, str):
            names.append(readout)
        else:
            raise TypeError(
                "readouts must hold readout names (str) or Readout objects, got "
                f"{type(readout).__name__} {readout!r}"
            )
    return list(dict.fromkeys(names))


def _labels(values: object, name: str, what: str) -> list[str]:
    """``values`` as a list of distinct labels in order, or a TypeError naming the
    argument (one string would be read letter by letter)."""
    if isinstance(values, (str, bytes)):
        raise TypeError(
            f"build_task: {name} must be a list of {what}; got the single string "
            f"{values!r}: pass [{values!r}]"
        )
    if isinstance(values, Mapping) or not isinstance(values, Iterable):
        raise TypeError(f"build_task: {name} must be a list of {what}; got {values!r}")
    labels = list(values)
    wrong = [v for v in labels if not isinstance(v, (str, np.str_))]
    if wrong:
        raise TypeError(
            f"build_task: {name} must be a list of {what}; it holds {wrong[0]!r} "
            f"({type(wrong[0]).__name__})"
        )
    return [str(v) for v in dict.fromkeys(labels)]


def _refuse_repeated_conditions(simulator: OutcomeSimulator, conditions: list[str]) -> None:
    """Raise when two labels name one condition (``"A+B"`` and ``"B+A"``): its questions
    would be asked twice."""
    canonical = simulator._canonical(conditions)
    seen: dict[str, str] = {}
    for label in conditions:
        first = seen.setdefault(canonical[label], label)
        if first != label:
            raise ValueError(
                f"build_task: conditions name one condition twice ({first!r} and {label!r}); "
                "list each condition once, in either order of its parts"
            )


def _condition_text(simulator: OutcomeSimulator, condition: str, verb: str) -> str:
    """How a prompt names ``condition`` (``"knocking down A and B together"``)."""
    control = getattr(simulator.model, "control_label", "control")
    if condition == control:
        return "no perturbation (control cells)"
    parts = condition.split("+")
    if len(parts) == 1:
        return f"{verb} {condition}"
    return f"{verb} {', '.join(parts[:-1])} and {parts[-1]} together"
