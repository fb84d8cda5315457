"""Task tables from a config: a saved model folder, an outcome, readouts and conditions in,
a task parquet out (what ``bioreason build-task`` runs).

:class:`TaskConfig` holds everything that defines a task (validated on load, unknown
fields named); :func:`build_task_from_config` loads the model (and the observed AnnData
when given), learns or reads the programs, expands the condition sets, builds the
:class:`~bioreason.sim.OutcomeSimulator` with the config's
:class:`~bioreason.sim.SimulationBudget` and calls :func:`bioreason.sim.build_task`.
Paths in a config are relative to the current working directory.

Condition sets (:data:`CONDITION_SETS`) name groups of conditions instead of listing
them; a ``conditions`` entry that is not a set's name is a condition label (``"A"``,
``"A+B"``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from bioreason.config import Config, read_yaml
from bioreason.data.h5ad import read_h5ad
from bioreason.data.tasks import DEFAULT_TEMPLATE, SPLITS, check_template
from bioreason.registry import Registry
from bioreason.sim.budget import SimulationBudget
from bioreason.sim.prompts import perturbation_type_of, perturbation_verb

__all__ = [
    "CONDITION_SETS",
    "TaskConfig",
    "build_task_from_config",
    "check_on_cells",
    "load_model",
    "resolve_conditions",
]


# ---------------------------------------------------------------- condition sets
def _measured(model: Any) -> list[str]:
    """Non-control conditions with cells in the model's AnnData, canonical labels."""
    return list(model.training_conditions())


def _parts(model: Any, label: str) -> list[str]:
    return label.split(model.setup.delimiter)


def _measured_singles(model: Any) -> list[str]:
    return [c for c in _measured(model) if len(_parts(model, c)) == 1]


def _pairs_of_measured_singles(model: Any) -> list[str]:
    singles = set(_measured_singles(model))
    ordered = [p for p in model.perturbation_names if p in singles]  # the model's order
    return [model.setup.delimiter.join(pair) for pair in itertools.combinations(ordered, 2)]


#: name -> function(model) -> condition labels; ``measured*`` and ``*pairs`` read the
#: observed AnnData (``adata``), ``singles`` only the model
CONDITION_SETS: Registry[Callable[[Any], list[str]]] = Registry("condition set")
CONDITION_SETS.register(
    "singles",
    lambda model: list(model.perturbation_names),
    needs_adata=False,
    help="every single perturbation the model knows",
)
CONDITION_SETS.register(
    "measured",
    _measured,
    needs_adata=True,
    help="every non-control condition with cells in adata (singles and combinations)",
)
CONDITION_SETS.register(
    "measured_singles",
    _measured_singles,
    needs_adata=True,
    help="single perturbations with cells in adata",
)
CONDITION_SETS.register(
    "measured_combinations",
    lambda model: [c for c in _measured(model) if len(_parts(model, c)) > 1],
    needs_adata=True,
    help="combinations with cells in adata",
)
CONDITION_SETS.register(
    "pairs",
    _pairs_of_measured_singles,
    needs_adata=True,
    help="every pair A+B of measured singles, measured or not",
)
CONDITION_SETS.register(
    "unseen_pairs",
    lambda model: [
        pair
        for pair in _pairs_of_measured_singles(model)
        if frozenset(_parts(model, pair))
        not in {frozenset(_parts(model, c)) for c in _measured(model)}
    ],
    needs_adata=True,
    help="pairs of measured singles without cells in adata (the model composes them)",
)


# ---------------------------------------------------------------- the config
@dataclass
class TaskConfig(Config):
    """Everything that defines a task table built from a saved model.

    Attributes
    ----------
    model : str or None
        Folder written by ``model.save``; required to build a task (a pipeline sets it to
        its ``vae`` stage's model).
    model_class : str, optional
        Registry name (``"sams_vae"``) or class name (``"SAMSVAE"``) of
        :data:`bioreason.models.MODELS`; default: the class recorded in the folder's
        ``attributes.json``.
    ensemble : list of str
        Folders of further fits of the same model to the same cells (e.g. from other
        seeds). With them p* and the outcomes come from the equal-weight mixture of
        ``model`` and these fits (:class:`bioreason.sim.EnsembleSimulator`), whose 90 %
        intervals carry the fit-to-fit variation (docs/simulator.md, "Honest
        uncertainty"). Default: none, ``model`` alone.
    adata : str, optional
        ``.h5ad`` of observed cells with the model's genes: the source of ``measured``
        conditions, learned programs, data-dependent thresholds (``cell_expression``)
        and, for a synthetic screen, the ground truth. A saved model folder does not
        record its AnnData, so give it here.
    device : str
        ``"cpu"``, ``"cuda"`` or ``"auto"``.
    outcome : str
        A registered outcome (:data:`bioreason.sim.OUTCOMES`): ``screen_hit``,
        ``direction``, ``cell_expression`` or a custom one.
    outcome_options : dict
        The outcome's options, e.g. ``{threshold: 0.1, n_cells: 100}``; for
        ``screen_hit``, ``threshold: null`` picks one threshold per readout at
        ``threshold_quantile`` of the model's effects.
    readouts : list of str
        Gene names of the model or program names; empty: every program (given or
        learned).
    programs : dict or str, optional
        User programs, ``{name: [gene, ...]}`` (equal weights) or
        ``{name: {gene: weight}}``, or the path of a YAML file holding that mapping.
    n_programs : int, optional
        Learn this many programs (``program0``, ...) by NMF on the cells of ``adata``.
    n_markers : int
        Marker genes kept per learned program.
    conditions : list of str or str, optional
        Condition labels and/or names of :data:`CONDITION_SETS`; default ``measured``
        with ``adata``, else ``singles``.
    ground_truth : bool
        Fill ``p_true`` from ``adata.uns["ground_truth"]`` (a screen made by
        ``simulate_screen``).
    template : str
        Prompt format string (fields: question, condition, condition_text, readout,
        markers).
    n_outcomes : int
        Sampled outcomes per question.
    outcome_sampling : str
        ``independent`` (each question's outcomes its own posterior draws and replicate
        experiments: outcomes independent across questions, for scoring question by
        question) or ``shared`` (outcome ``j`` of every question from one simulated
        screen, as a real screen would correlate them); see
        :func:`bioreason.sim.build_task`.
    split : str
        How questions are split into train/val/test (:data:`bioreason.data.tasks.SPLITS`:
        ``random``, ``heldout_conditions``, ``heldout_combinations``; see
        :func:`bioreason.data.tasks.split_questions`).
    test_fraction : float
        Share of the questions (or of the conditions) in the test split.
    val_fraction : float
        Share of the questions (or of the conditions) in the validation split.
    seed : int
        Seeds the learned programs, the split, the thresholds, the draws of p* and the
        sampled outcomes (``seed + 1``; see :func:`bioreason.sim.build_task`): a config
        and its seed give the same table.
    budget : SimulationBudget
        The Monte Carlo budget of p* (and p_true): ``target_se``, ``max_draws``,
        ``min_draws``, ``draws_per_round``, ``cells_per_draw``, ``replicates_per_draw``,
        ``method``; a mapping of those fields in YAML. The flat ``target_se``,
        ``max_draws``, ``cells_per_draw`` and ``replicates_per_draw`` of earlier
        versions still load, with a ``FutureWarning``.
    threshold_quantile : float in (0, 1)
        Quantile of the model's effects that sets a readout's threshold when
        ``threshold`` is null (``screen_hit``).
    perturbation_type : str
        The screen's perturbation, which sets the prompt's verb
        (:data:`~bioreason.sim.PERTURBATION_VERBS`): ``crispri`` (knocking down),
        ``crispra`` (activating), ``knockout``, ``overexpression``, ``compound``; or
        ``auto`` (default): the one type in ``adata.obs["perturbation_type"]`` when the
        observed cells record it (``crispra`` for the Norman 2019 cells), else
        ``crispri``.
    library_sizes : ``"pooled"`` or ``"per_condition"``
        Where simulated cells' library sizes come from
        (:class:`~bioreason.sim.OutcomeSimulator`'s ``library_sizes``): the training
        cells pooled (default), or each condition's own observed cells, a combination
        without cells composed from its parts'. On real screens, where a perturbation
        changes the cells' total counts, ``per_condition`` is the measured choice
        (docs/simulator.md).
    """

    #: the budget's fields that were TaskConfig fields before it was nested
    moved_fields: ClassVar[dict[str, str]] = {
        name: f"budget.{name}"
        for name in ("target_se", "max_draws", "cells_per_draw", "replicates_per_draw")
    }

    model: str | None = None
    model_class: str | None = None
    ensemble: list[str] = field(default_factory=list)
    adata: str | None = None
    device: str = "cpu"
    outcome: str = "screen_hit"
    outcome_options: dict[str, Any] = field(default_factory=dict)
    readouts: list[str] = field(default_factory=list)
    programs: dict[str, Any] | str | None = None
    n_programs: int | None = None
    n_markers: int = 15
    conditions: list[str] | str | None = None
    ground_truth: bool = False
    template: str = DEFAULT_TEMPLATE
    n_outcomes: int = 1
    outcome_sampling: Literal["independent", "shared"] = "independent"
    split: str = "random"
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0
    budget: SimulationBudget = field(default_factory=SimulationBudget)
    threshold_quantile: float = 0.5
    perturbation_type: str = "auto"
    library_sizes: Literal["pooled", "per_condition"] = "pooled"

    def __post_init__(self) -> None:
        if isinstance(self.conditions, str):
            self.conditions = [self.conditions]
        if self.conditions is not None and not self.conditions:
            raise ValueError("conditions is empty; list condition labels or condition sets")
        _check_outcome(self.outcome, self.outcome_options)
        if isinstance(self.programs, Mapping):
            _check_programs(self.programs, "programs")
        check_template(self.template)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        if self.outcome_sampling not in ("independent", "shared"):
            raise ValueError(
                "outcome_sampling must be one of ['independent', 'shared'], got "
                f"{self.outcome_sampling!r}"
            )
        for name, smallest in (
            ("n_outcomes", 1),
            ("n_markers", 1),
            ("seed", 0),
        ):
            if getattr(self, name) < smallest:
                raise ValueError(f"{name} must be >= {smallest}, got {getattr(self, name)}")
        if self.n_programs is not None and self.n_programs < 1:
            raise ValueError(f"n_programs must be >= 1 (or null), got {self.n_programs}")
        if not isinstance(self.budget, SimulationBudget):
            raise TypeError(
                f"budget must be a SimulationBudget (a mapping of its fields in YAML), got "
                f"{type(self.budget).__name__}"
            )
        for name in ("test_fraction", "val_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.test_fraction + self.val_fraction >= 1:
            raise ValueError("test_fraction + val_fraction must be < 1 (nothing left to train on)")
        if self.library_sizes not in ("pooled", "per_condition"):
            raise ValueError(
                "library_sizes must be one of ['pooled', 'per_condition'], got "
                f"{self.library_sizes!r}"
            )
        if not 0 < self.threshold_quantile < 1:
            raise ValueError(f"threshold_quantile must be in (0, 1), got {self.threshold_quantile}")
        if self.perturbation_type != "auto":
            perturbation_verb(self.perturbation_type)  # an unknown type names the known ones

    def check_inputs(self) -> None:
        """Check that the settings name what building the task reads: a saved model, and
        the observed cells where learned programs, observed thresholds or the ground truth
        need them (:func:`build_task_from_config` calls it first; a pipeline, whose model
        and cells come from its own stages, checks the rest up front).

        Raises
        ------
        ValueError
            Naming the missing field and what needs it.
        """
        if not self.model:
            raise ValueError(
                "model: give the folder of a saved model (--model DIR, or 'model:' in the "
                "config file)"
            )
        if self.n_programs is not None and self.adata is None:
            raise ValueError("n_programs learns programs from observed cells: give adata too")
        if _needs_observed_thresholds(self.outcome, self.outcome_options) and self.adata is None:
            raise ValueError(
                f"outcome {self.outcome!r} takes its default threshold from the observed "
                "control cells: give adata (--adata FILE.h5ad) or a numeric threshold "
                "(--option threshold=1.0)"
            )
        if self.ground_truth and self.adata is None:
            raise ValueError("ground_truth reads adata.uns['ground_truth']: give adata too")


def _check_outcome(name: str, options: Mapping[str, Any]) -> None:
    """Raise naming an unregistered outcome or an option it does not have."""
    from bioreason.sim.outcomes import OUTCOMES, make_outcome

    factory = OUTCOMES.get(name)  # lists the registered outcomes
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        valid = sorted(f.name for f in dataclasses.fields(factory) if f.init)
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ValueError(
                f"outcome_options: unknown option(s) {unknown} for outcome {name!r}; "
                f"its options are {valid}"
            )
    try:
        make_outcome(name, **options)
    except (TypeError, ValueError) as err:
        raise ValueError(f"outcome_options: {err}") from None


def _needs_observed_thresholds(name: str, options: Mapping[str, Any]) -> bool:
    """Whether the outcome fixes its thresholds from observed cells (not screen_hit, whose
    missing thresholds come from the model's effects)."""
    from bioreason.sim.outcomes import make_outcome

    outcome = make_outcome(name, **options)
    return outcome.needs_thresholds() and outcome.name != "screen_hit"


def _check_programs(programs: Mapping[str, Any], where: str) -> None:
    if not programs:
        raise ValueError(f"{where} is empty; give name: [gene, ...] entries")
    for name, genes in programs.items():
        if isinstance(genes, Mapping):
            good = bool(genes) and all(
                isinstance(g, str) and isinstance(w, (int, float)) and not isinstance(w, bool)
                for g, w in genes.items()
            )
        else:
            good = (
                isinstance(genes, (list, tuple))
                and bool(genes)
                and all(isinstance(g, str) for g in genes)
            )
        if not isinstance(name, str) or not good:
            raise ValueError(
                f"{where}: program {name!r} must map a name to a non-empty list of gene names "
                f"or to {{gene: weight}}, got {genes!r}"
            )


# ---------------------------------------------------------------- building
def load_model(
    folder: str | Path, model_class: str | None = None, adata: Any = None, **kw: Any
) -> Any:
    """Load a saved model folder with its recorded class (or ``model_class``).

    Returns
    -------
    A fitted model of :mod:`bioreason.models` (``adata`` attached when given).
    """
    from bioreason.models import MODELS

    folder = Path(folder)
    attributes = folder / "attributes.json"
    if model_class is None:
        if not folder.is_dir():
            raise FileNotFoundError(f"model folder {folder} does not exist (check the path)")
        if not attributes.exists():
            raise FileNotFoundError(
                f"{attributes} not found: {folder} is not a folder written by model.save"
            )
        try:
            model_class = str(json.loads(attributes.read_text())["model_class"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            raise ValueError(f"{attributes} is damaged: no readable 'model_class'") from None
    by_class = {cls.__name__: cls for cls in MODELS.values()}
    cls = by_class.get(model_class) or MODELS.get(model_class)  # the latter lists the choices
    return cls.load(folder, adata=adata, **kw)


def resolve_conditions(model: Any, entries: list[str], has_adata: bool) -> list[str]:
    """Expand condition-set names (:data:`CONDITION_SETS`) among ``entries``; other
    entries are labels, kept as given (the simulator checks them against the model).

    Returns
    -------
    list of str, without repeats, in order of first appearance.
    """
    known = set(model.perturbation_names)
    out: list[str] = []
    for entry in entries:
        if entry not in CONDITION_SETS:
            out.append(entry)
            continue
        if entry in known:
            raise ValueError(
                f"conditions: {entry!r} is both a condition set and a perturbation of the "
                "model; list the perturbation's conditions another way (e.g. as a pair)"
            )
        if CONDITION_SETS.metadata(entry)["needs_adata"] and not has_adata:
            raise ValueError(
                f"conditions: the set {entry!r} ({CONDITION_SETS.metadata(entry)['help']}) "
                "needs observed cells: give adata (--adata FILE.h5ad)"
            )
        found = CONDITION_SETS.get(entry)(model)
        if not found:
            raise ValueError(f"conditions: the set {entry!r} is empty for this model and adata")
        out.extend(found)
    return list(dict.fromkeys(out))


def _programs(config: TaskConfig, model: Any, adata: Any) -> list[Any]:
    from bioreason.sim.readouts import learn_programs, program_readout

    readouts = []
    user = config.programs
    if isinstance(user, str):
        user = read_yaml(user, what="programs file")
        if not isinstance(user, Mapping):
            raise ValueError(
                f"programs file {config.programs} must hold a mapping name: [gene, ...], "
                f"got {type(user).__name__}"
            )
        _check_programs(user, f"programs file {config.programs}")
    for name, genes in (user or {}).items():
        if isinstance(genes, Mapping):
            readouts.append(program_readout(name, list(genes), list(genes.values())))
        else:
            readouts.append(program_readout(name, genes))
    if config.n_programs is not None:
        learned = learn_programs(
            adata,
            n_programs=config.n_programs,
            n_markers=config.n_markers,
            layer=model.setup.layer,
            seed=config.seed,
        )
        clash = sorted({r.name for r in learned} & {r.name for r in readouts})
        if clash:
            raise ValueError(f"programs {clash} are named like learned programs; rename them")
        readouts.extend(learned)
    return readouts


def _check_task_files(out: Path) -> None:
    """Refuse (before any work) to replace the files written beside a task table,
    ``OUT.summary.json`` and ``OUT.manifest.json``, unless bioreason wrote them: the
    manifest must be one of bioreason's, and record the summary unchanged."""
    from bioreason.stage import check_replaceable, read_manifest

    sidecar = out.with_suffix(out.suffix + ".summary.json")
    manifest = out.parent / (out.name + ".manifest.json")
    hint = "choose another path or pass --force (overwrite=True in Python) to replace it"
    for path in (sidecar, manifest):
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; move it away or {hint}")
    if manifest.exists():
        saved = read_manifest(manifest)
        outputs = (saved or {}).get("outputs")
        if not isinstance(outputs, dict) or "config" not in (saved or {}):
            raise FileExistsError(
                f"{manifest} already exists and is not a manifest written by bioreason's "
                f"build-task; {hint}"
            )
    if sidecar.exists():
        check_replaceable(sidecar, manifest=manifest)


def _training_cells(adata: Any, train_cells: np.ndarray) -> Any:
    if adata is None:
        raise ValueError("train_cells index the observed cells: the config has no adata")
    rows = np.asarray(train_cells, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= adata.n_obs):
        raise ValueError(f"train_cells must index the {adata.n_obs} cells of adata")
    return adata[rows]


def build_task_from_config(
    config: TaskConfig,
    out: str | Path | None = None,
    overwrite: bool = False,
    *,
    train_cells: np.ndarray | None = None,
) -> pd.DataFrame:
    """Build the task ``config`` describes; write it to ``out`` (parquet, atomically, with
    a ``.summary.json`` and a ``.manifest.json`` beside it) when given.

    ``train_cells`` (row indices into ``config.adata``): the cells the model was trained
    on, when ``adata`` also holds held-out cells. With ``library_sizes: per_condition``
    only these cells' library sizes are read, so a held-out combination's are composed
    from its parts'. (Learned programs still read every cell of ``adata``.)

    Raises
    ------
    FileExistsError
        ``out`` exists and ``overwrite`` is false (checked before any work).
    ValueError, FileNotFoundError
        A bad field, file, gene, program or condition; the message names it.

    Returns
    -------
    DataFrame, the task table of :func:`bioreason.sim.build_task`;
    ``attrs["summary"]`` is its summary plus ``n_fits`` (1 + the ``ensemble`` folders),
    the budget's ``target_se`` and ``n_unconverged``.
    """
    from bioreason.data.tasks import save_task
    from bioreason.sim.ensemble import EnsembleSimulator
    from bioreason.sim.ground_truth import GroundTruthSimulator
    from bioreason.sim.simulator import OutcomeSimulator
    from bioreason.sim.tasks import build_task
    from bioreason.stage import write_manifest

    config.check_inputs()
    if out is not None:
        out = Path(out)
        if out.is_dir():
            raise IsADirectoryError(f"{out} is a folder; give the path of a .parquet file")
        if out.exists() and not overwrite:
            raise FileExistsError(
                f"{out} already exists; choose another path or pass --force "
                "(overwrite=True in Python) to replace it"
            )
        if not overwrite:
            _check_task_files(out)
    adata = read_h5ad(config.adata, what="adata") if config.adata is not None else None
    if config.ground_truth and "ground_truth" not in adata.uns:
        raise ValueError(
            f"ground_truth: adata {config.adata} has no uns['ground_truth'] (only screens made "
            "by simulate_screen know their true parameters)"
        )
    model = load_model(config.model, config.model_class, adata=adata, device=config.device)
    fits = [
        load_model(path, config.model_class, adata=adata, device=config.device)
        for path in config.ensemble
    ]
    programs = _programs(config, model, adata)
    readouts = list(config.readouts) or [r.name for r in programs]
    options = dict(readouts=programs, observed=adata, budget=config.budget)
    simulator = (EnsembleSimulator if fits else OutcomeSimulator)(
        [model, *fits] if fits else model,
        config.outcome,
        library_sizes=config.library_sizes,
        library_cells=None if train_cells is None else _training_cells(adata, train_cells),
        **options,
        **config.outcome_options,
    )
    if simulator.outcome.uses_readout:
        if not readouts:
            raise ValueError(
                f"outcome {config.outcome!r} asks about readouts: give genes (--readouts), "
                "programs (programs: in the config) or learned programs (--n-programs N)"
            )
        for name in readouts:
            simulator.readouts.get(name)  # names an unknown gene or program
    entries = config.conditions or (["measured"] if adata is not None else ["singles"])
    conditions = resolve_conditions(model, list(entries), adata is not None)
    truth = None
    if config.ground_truth:
        truth = GroundTruthSimulator(adata, config.outcome, **options, **config.outcome_options)
    table = build_task(
        simulator,
        conditions,
        readouts if simulator.outcome.uses_readout else None,
        template=config.template,
        n_outcomes=config.n_outcomes,
        outcome_sampling=config.outcome_sampling,
        split=config.split,
        test_fraction=config.test_fraction,
        val_fraction=config.val_fraction,
        seed=config.seed,
        threshold_quantile=config.threshold_quantile,
        perturbation_type=(
            (perturbation_type_of(adata) or "crispri")
            if config.perturbation_type == "auto"
            else config.perturbation_type
        ),
        truth=truth,
    )
    table.attrs["summary"] = {
        **table.attrs["summary"],
        "n_fits": 1 + len(fits),
        "target_se": config.budget.target_se,
        "n_unconverged": int((table["p_star_se"] > config.budget.target_se).sum()),
    }
    if out is not None:
        inputs = {"model": config.model}
        inputs.update({f"ensemble{k}": path for k, path in enumerate(config.ensemble, start=1)})
        if config.adata is not None:
            inputs["adata"] = config.adata
        if isinstance(config.programs, str):
            inputs["programs"] = config.programs
        sidecar = out.with_suffix(out.suffix + ".summary.json")
        manifest = {
            "config": config.to_dict(),
            "seed": config.seed,
            "inputs": inputs,
            "name": out.name + ".manifest.json",
        }
        write_manifest(out.parent, **manifest, outputs=[out, sidecar], complete=False)
        save_task(table, out, overwrite=overwrite)
        write_manifest(out.parent, **manifest, outputs=[out, sidecar])
    return table


def check_on_cells(
    config: TaskConfig, table: pd.DataFrame, heldout: Sequence[str], train_cells: np.ndarray
) -> pd.DataFrame:
    """p* of a task's held-out conditions against what their own cells say (real data,
    where there is no p_true): :func:`bioreason.sim.baselines.heldout_reference` on the
    config's observed cells and readouts, joined to the task's p*.

    Parameters
    ----------
    config : TaskConfig
        The config that built ``table`` (its ``adata`` holds every cell, its model was
        trained on ``train_cells``).
    table : DataFrame
        The task table (``condition``, ``readout``, ``p_star``, ``outcome_definition``).
    heldout : list of str
        Conditions whose cells the model never saw.
    train_cells : array of int
        Row indices into ``config.adata`` of the model's training and validation cells.

    Returns
    -------
    DataFrame, one row per task question about a held-out condition, the columns of
    ``heldout_reference`` plus ``p_star`` (and the table's ``p_star_low`` /
    ``p_star_high`` when it has them); empty when the task asks about none of
    ``heldout``.

    Raises
    ------
    ValueError
        A config without ``adata``, an outcome other than ``screen_hit``, or what
        ``heldout_reference`` refuses.
    """
    from bioreason.sim.baselines import _parts_key, heldout_reference
    from bioreason.sim.outcomes import ScreenHit, make_outcome

    if config.adata is None:
        raise ValueError("check_on_cells reads the observed cells: the config has no adata")
    model = load_model(config.model, config.model_class, device=config.device)
    setup = model.setup
    # a held-out condition matches its questions whatever the order of its parts
    # ("SET+KLF1" in the data, "KLF1+SET" in the task)
    held = {_parts_key(c, setup.delimiter) for c in heldout}
    keys = table["condition"].astype(str).map(lambda c: _parts_key(c, setup.delimiter))
    rows = table[keys.isin(held)]
    columns = ["condition", "readout", "p_star"]
    columns += [c for c in ("p_star_low", "p_star_high") if c in table.columns]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    outcome = make_outcome(json.loads(str(rows["outcome_definition"].iloc[0])))
    if not isinstance(outcome, ScreenHit):
        raise ValueError(f"check_on_cells answers screen_hit questions, not {outcome.name!r}")
    adata = read_h5ad(config.adata, what="adata")
    asked = list(dict.fromkeys(rows["readout"].astype(str)))
    readouts = [r for r in _programs(config, model, adata) if r.name in asked]
    readouts += [name for name in asked if name not in {r.name for r in readouts}]  # genes
    reference = heldout_reference(
        outcome,
        adata,
        readouts,
        list(dict.fromkeys(rows["condition"].astype(str))),
        train_cells,
        layer=setup.layer,
        perturbation_key=setup.perturbation_key,
        control=str(model.control_label),
        delimiter=setup.delimiter,
        seed=config.seed,
    )
    return rows[columns].merge(reference, on=["condition", "readout"], how="inner")
