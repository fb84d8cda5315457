"""The outcome simulator: posterior predictive probabilities p* and Bernoulli outcomes.

A question is (condition, readout) under one outcome definition. With the fitted
model's approximate posterior q(globals),

    p* = E_{globals ~ q} [ P(outcome = 1 | globals) ],

where the inner probability integrates over everything local to an experiment: basal
states, library sizes, count noise and which cells land in the replicate. The two
levels are kept apart: each posterior draw k gives an estimate P_k of the inner
probability; p* is their mean, its Monte Carlo standard error is sd(P_k) / sqrt(K), and
the spread of P_k across draws is the model's epistemic uncertainty about the question.

How many draws, cells and replicates are spent is one object, the
:class:`~bioreason.sim.SimulationBudget` (``budget=``). Two ways to compute P_k (its
``method``):

* ``"brute"``: simulate ``replicates_per_draw`` replicate experiments under draw k and
  average the outcome -- the definition itself, for any outcome;
* ``"fast"``: simulate ``cells_per_draw`` cells per condition under draw k and compute
  P_k from them with the outcome's formula (a normal approximation for replicate means;
  exact for single-cell outcomes); see :mod:`bioreason.sim.outcomes`.

``"auto"`` takes the fast path when the outcome has one and replicates have at least
:data:`FAST_MIN_CELLS` cells. For p*, all questions of a condition share its simulated
cells; control cells are simulated once per draw and shared by every condition.

Sampled outcomes (:meth:`OutcomeSimulator.sample`) are independent across questions by
default: each outcome is its own posterior draw and its own replicate experiment.
``independent=False`` shares one draw and one simulated screen per outcome column, as
in one real screen.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from bioreason.sim.budget import SimulationBudget
from bioreason.sim.outcomes import CustomOutcome, Outcome, make_outcome
from bioreason.sim.readouts import Readout, ReadoutSet, cell_scores, log_normalize

__all__ = [
    "FAST_MIN_CELLS",
    "INTERVAL_QUANTILES",
    "MIN_LIBRARY_CELLS",
    "OutcomeSimulator",
    "questions_frame",
]

#: replicate size from which the normal approximation of the fast path is used by "auto"
FAST_MIN_CELLS = 20
#: quantiles of the per-draw probabilities P_k reported as ``p_star_low`` / ``p_star_high``
INTERVAL_QUANTILES = (0.05, 0.95)
#: generated count entries (draws x cells x genes) per simulation call
_ENTRIES_PER_CALL = 1 << 24


def questions_frame(questions: Any, uses_readout: bool = True) -> pd.DataFrame:
    """Questions as a DataFrame with columns ``condition`` and ``readout``.

    Accepts a DataFrame with those columns, a list of ``(condition, readout)`` pairs,
    a list of mappings, or (for outcomes without readouts) a list of condition labels.
    """
    if isinstance(questions, pd.DataFrame):
        frame = questions
    else:
        rows = list(questions)
        if rows and isinstance(rows[0], Mapping):
            frame = pd.DataFrame(rows)
        elif rows and isinstance(rows[0], str):
            frame = pd.DataFrame({"condition": rows, "readout": [""] * len(rows)})
        else:
            try:
                frame = pd.DataFrame(rows, columns=["condition", "readout"])
            except ValueError:
                raise ValueError(
                    "questions must be (condition, readout) pairs, mappings with 'condition' "
                    "and 'readout', a DataFrame with those columns, or integer indices into "
                    "the simulator's bound questions"
                ) from None
    if "condition" not in frame.columns:
        raise ValueError(f"questions need a 'condition' column; got columns {list(frame.columns)}")
    if "readout" not in frame.columns:
        if uses_readout:
            raise ValueError("questions need a 'readout' column (a gene or program name)")
        frame = frame.assign(readout="")
    out = pd.DataFrame(
        {
            "condition": frame["condition"].astype(str).to_numpy(),
            "readout": frame["readout"].fillna("").astype(str).to_numpy(),
        }
    )
    if len(out) == 0:
        raise ValueError("no questions given")
    return out


class OutcomeSimulator:
    """Experiments simulated from a fitted perturbation model's posterior predictive.

    Parameters
    ----------
    model : a fitted model of :mod:`bioreason.models` (or anything with
        ``posterior_predictive``, ``gene_names`` and ``control_label``, such as
        :class:`~bioreason.sim.GroundTruthModel`)
    outcome : str, Outcome or mapping
        A registered outcome name (``"screen_hit"``, ``"direction"``,
        ``"cell_expression"`` or a custom one), with its options as keyword arguments.
    readouts : iterable of Readout or gene names, optional
        Programs the questions may name; a gene of the model is always a valid readout.
    questions : optional
        Questions that ``sample`` and ``probability`` may refer to by integer index
        (what the RL trainers pass through the ``OutcomeSource`` protocol).
    observed : AnnData, optional
        Observed cells for data-dependent thresholds (default: the model's AnnData).
    budget : SimulationBudget, optional
        The Monte Carlo budget of :meth:`probability` (target standard error, posterior
        draws, cells and replicates per draw, method); default ``SimulationBudget()``.
        Its ``cells_per_draw`` must be at least the replicate size with counterfactual
        generation, twice it without.
    counterfactual : bool or None
        Fast path only: simulate each perturbed cell and a control cell from the same
        basal state (``posterior_predictive(..., counterfactual=True)``), so that mean
        differences are estimated from paired cells with far less noise and fewer
        posterior draws reach ``target_se``. None (default): when the model supports it
        (not SVAE+). The brute-force path always simulates independent cells, as a
        replicate experiment has them.
    library_sizes : ``"pooled"`` or ``"per_condition"``
        Where simulated cells' library sizes come from. ``"pooled"`` (default): every
        condition draws from the training cells' library sizes (the model's own rule).
        ``"per_condition"``: each condition draws from its own observed cells' library
        sizes (the model's AnnData, else ``observed``), so a knockdown that lowers the
        cells' total counts (an essential gene) keeps that in its replicates; a condition
        with fewer than :data:`MIN_LIBRARY_CELLS` observed cells draws from the pooled
        sizes, except a combination whose parts and the control have that many: it draws
        the control's sizes shifted by the sum of its parts' shifts, quantile by quantile
        on the log scale (the additive rule for library sizes). Paired (counterfactual)
        cells share a quantile: cell ``i`` gets the same rank in each condition's library
        sizes.
    library_cells : AnnData, optional
        The cells whose library sizes ``per_condition`` reads (default: the model's
        AnnData, else ``observed``). Give the training cells when the model's AnnData
        also holds held-out cells, so that a held-out pair's sizes are composed from its
        parts' rather than read from its own cells.
    **outcome_options
        Options of the outcome, e.g. ``threshold=0.2``, ``test="welch"``.
    """

    def __init__(
        self,
        model: Any,
        outcome: str | Outcome | Mapping[str, Any] = "screen_hit",
        *,
        readouts: Iterable[Readout | str] = (),
        questions: Any = None,
        observed: Any = None,
        budget: SimulationBudget | None = None,
        counterfactual: bool | None = None,
        library_sizes: str = "pooled",
        library_cells: Any = None,
        **outcome_options: Any,
    ) -> None:
        for name in ("posterior_predictive", "gene_names", "control_label"):
            if not hasattr(model, name):
                raise TypeError(
                    f"OutcomeSimulator needs a fitted perturbation model (with {name}); "
                    f"got {type(model).__name__}"
                )
        misplaced = sorted(
            set(outcome_options) & {f.name for f in dataclasses.fields(SimulationBudget)}
        )
        if misplaced:
            raise TypeError(
                f"{misplaced} belong to the simulation budget, not to the outcome: pass "
                f"budget=SimulationBudget({misplaced[0]}=...)"
            )
        if getattr(model, "is_trained", True) is False:
            warnings.warn(
                f"OutcomeSimulator: the {type(model).__name__} has not been trained "
                "(model.is_trained is False), so its p* and outcomes come from randomly "
                "initialised weights and mean nothing. Train it first (model.train(...)) or "
                "load a trained model folder.",
                UserWarning,
                stacklevel=2,
            )
        if library_sizes not in ("pooled", "per_condition"):
            raise ValueError(
                f"library_sizes must be 'pooled' or 'per_condition', got {library_sizes!r}"
            )
        self.library_sizes = library_sizes
        self.library_cells = library_cells
        self.model = model
        self.outcome = make_outcome(outcome, **outcome_options)
        self.readouts = ReadoutSet(model.gene_names, readouts)
        self.observed = observed
        size = max(self.outcome.n_cells, self.outcome.n_control or 0)
        # counterfactual generation pairs each perturbed cell with a control cell of the
        # same basal state: the fast path's mean differences become far less noisy
        supported = bool(getattr(model, "supports_counterfactual", False))
        if counterfactual and not supported:
            raise ValueError(
                f"{type(model).__name__} cannot generate counterfactual cells (no basal state "
                "shared across conditions); use counterfactual=False or None"
            )
        self.paired = supported if counterfactual is None else bool(counterfactual)
        # the fast path's cells per draw when the budget leaves them open, and the least
        # it may give (fixed here: the replicate size of the outcome asked about)
        self._least_cells = size if self.paired else 2 * size
        self._default_cells = max((1 if self.paired else 4) * size, 32)
        self.budget = _as_budget(budget)
        self._cells_per_draw(self.budget)
        self._auto_thresholds = (
            self.outcome.needs_thresholds() and self.outcome.name != "screen_hit"
        )
        self.questions = None if questions is None else self._resolve(questions)

    # ------------------------------------------------------------ questions
    def bind(self, questions: Any) -> OutcomeSimulator:
        """Remember ``questions`` so that integer indices can refer to them; returns self."""
        self.questions = self._resolve(questions)
        return self

    def _resolve(self, questions: Any) -> pd.DataFrame:
        if isinstance(questions, torch.Tensor):
            questions = questions.detach().cpu().numpy()
        if isinstance(questions, np.ndarray) and questions.dtype.kind in "iu":
            if self.questions is None:
                raise ValueError(
                    "integer questions index the simulator's bound questions; bind them "
                    "first (OutcomeSimulator(..., questions=...) or .bind(questions))"
                )
            index = questions.reshape(-1)
            if index.size and (index.min() < 0 or index.max() >= len(self.questions)):
                raise ValueError(
                    f"question index out of range: the simulator has {len(self.questions)} "
                    "bound questions"
                )
            return self.questions.iloc[index].reset_index(drop=True)
        frame = questions_frame(questions, uses_readout=self.outcome.uses_readout)
        if self.outcome.uses_readout:
            for name in frame["readout"].unique():
                self.readouts.get(name)  # raises naming the unknown readout
        canonical = self._canonical(list(frame["condition"].unique()))
        return frame.assign(**{_CANONICAL: frame["condition"].map(canonical)})

    def _canonical(self, conditions: list[str]) -> dict[str, str]:
        """The model's canonical label of each of ``conditions`` (``"SET+KLF1"`` ->
        ``"KLF1+SET"``); the model's parser validates them: an unknown perturbation raises
        naming it and listing the known ones."""
        predictive = self.model.posterior_predictive(conditions, n_cells=1, n_draws=1, seed=0)
        labels = getattr(predictive, "canonical_conditions", None) or predictive.conditions
        return dict(zip(conditions, labels, strict=True))

    def unseen_parts(self, conditions: Sequence[str]) -> list[str | None]:
        """The parts of each condition that no observed cell carries alone.

        A perturbation measured only inside combinations (or not at all) is learned from
        those combinations or not at all, so p* of a condition containing it rests on the
        model's prior rather than on measured effects. The cells read are the model's
        own AnnData (the cells it was fitted on, or loaded with), else ``observed``.

        Parameters
        ----------
        conditions : list of str
            Condition labels, their parts in any order.

        Returns
        -------
        list of str or None, one per condition
            The parts without single-perturbation cells, joined by ``", "`` (``""``
            when every part was measured alone, and for a control); None for every
            condition when neither the model nor the simulator has cells.
        """
        conditions = [str(c) for c in conditions]
        singles = self._singles_measured()
        if singles is None:
            return [None] * len(conditions)
        canonical = self._canonical(list(dict.fromkeys(conditions)))
        delimiter = _delimiter(self.model)
        out: list[str | None] = []
        for condition in conditions:
            label = canonical[condition]
            if label == self.model.control_label:
                out.append("")
                continue
            parts = [p for p in label.split(delimiter) if p not in singles]
            out.append(", ".join(parts))
        return out

    def _singles_measured(self) -> set[str] | None:
        """Perturbations with single-perturbation cells in the model's AnnData (else in
        ``observed``); None when there are no cells to read."""
        if hasattr(self, "_singles"):
            return self._singles
        from bioreason.data.labels import parse_perturbation_labels

        model = self.model
        cells = getattr(model, "adata", None)
        if cells is None:
            cells = self.observed
        singles = None
        if cells is not None:
            setup = getattr(model, "setup", None)
            key = getattr(setup, "perturbation_key", "perturbation")
            control = getattr(setup, "control", model.control_label)
            if key in cells.obs.columns:
                parsed = parse_perturbation_labels(
                    cells.obs[key].to_numpy(), control=control, delimiter=_delimiter(model)
                )
                alone = np.asarray(parsed.dosage.getnnz(axis=1) == 1)
                columns = np.unique(parsed.dosage[alone].indices)
                singles = {parsed.perturbation_names[j] for j in columns}
        self._singles = singles
        return singles

    # ------------------------------------------------------------ thresholds
    def fix_thresholds(self, readouts: Sequence[str]) -> Outcome:
        """Fix data-dependent thresholds for ``readouts`` (cell_expression's default: the
        observed control cells' median score per readout); returns the outcome in use."""
        if self.outcome.name == "screen_hit" and self.outcome.needs_thresholds():
            raise ValueError(
                "screen_hit has threshold=None: pass a threshold, or pick one per readout with "
                "simulator.suggest_thresholds(conditions, readouts)"
            )
        if not self._auto_thresholds:
            return self.outcome
        current = self.outcome.threshold if isinstance(self.outcome.threshold, Mapping) else {}
        missing = [r for r in dict.fromkeys(readouts) if r not in current]
        if not missing:
            return self.outcome
        counts = self._observed_control_counts()
        medians = np.median(cell_scores(counts, self.readouts.weights(missing)), axis=0)
        fixed = {**current, **{r: float(v) for r, v in zip(missing, medians, strict=True)}}
        self.outcome = self.outcome.with_thresholds(fixed)
        return self.outcome

    def _observed_control_counts(self) -> np.ndarray:
        import scipy.sparse as sp

        if self.observed is not None:
            from bioreason.data import PerturbationData

            data = PerturbationData.from_anndata(
                self.observed, getattr(self.model, "setup", None), require_control=True
            )
        elif hasattr(self.model, "data_for"):
            try:
                data = self.model.data_for(None)
            except ValueError:
                raise ValueError(
                    "the threshold is taken from observed control cells, but the model has no "
                    "AnnData: pass observed=adata or a numeric threshold"
                ) from None
        else:
            raise ValueError("pass observed=adata or a numeric threshold")
        rows = np.flatnonzero(data.is_control)
        if rows.size == 0:
            raise ValueError("the observed data has no control cells to take a threshold from")
        counts = data.get_counts(rows)
        return counts.toarray() if sp.issparse(counts) else np.asarray(counts)

    def suggest_thresholds(
        self,
        conditions: Sequence[str],
        readouts: Sequence[str],
        quantile: float = 0.5,
        n_draws: int = 16,
        seed: int = 0,
    ) -> dict[str, float]:
        """Per-readout screen_hit thresholds: the ``quantile`` over ``conditions`` of the
        model's expected |effect| on the readout (mean over ``n_draws`` posterior draws of
        |mean perturbed score - mean control score|). The median makes about half of the
        conditions hits, so p* spreads over (0, 1)."""
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        canonical = self._canonical(list(dict.fromkeys(map(str, conditions))))
        labels = list(dict.fromkeys(canonical.values()))
        readouts = list(dict.fromkeys(readouts))
        perturbed, control = self._simulate_scores(
            labels, readouts, n_draws, self._cells_per_draw(self.budget), seed
        )
        effect = np.abs(perturbed.mean(axis=2) - control.mean(axis=2)).mean(axis=0)  # (C, R)
        values = np.quantile(effect, quantile, axis=0)
        return {r: float(v) for r, v in zip(readouts, values, strict=True)}

    # ------------------------------------------------------------ simulation
    def _simulate_counts(
        self,
        conditions: list[str],
        n_draws: int,
        n_cells: int,
        seed: int,
        counterfactual: bool = False,
        genes: list[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Counts (n_draws, C, n_cells, G) and control counts (n_draws, 1, n_cells, G),
        and both groups' total counts over all genes (n_draws, C or 1, n_cells).

        ``counterfactual``: cell ``i`` of every condition and of the control is the same
        basal cell (only for the fast path; replicates need independent cells).
        ``genes``: generate only these genes (G = len(genes))."""
        labels = [self.model.control_label, *conditions]
        options: dict[str, Any] = {"counterfactual": True} if counterfactual else {}
        if genes is not None:
            options["genes"] = genes
        if self.library_sizes == "per_condition":
            options["library_size"] = self._condition_libraries(
                labels, n_draws, n_cells, seed, counterfactual
            )
        predictive = self.model.posterior_predictive(
            labels, n_cells=n_cells, n_draws=n_draws, seed=seed, **options
        )
        counts = predictive.counts
        totals = (
            predictive.totals()
            if hasattr(predictive, "totals")
            else counts.sum(axis=-1, dtype=np.float32)
        )
        return counts[:, 1:], counts[:, :1], totals[:, 1:], totals[:, :1]

    def _condition_libraries(
        self, labels: list[str], n_draws: int, n_cells: int, seed: int, paired: bool
    ) -> np.ndarray:
        """Library sizes (n_draws, C, n_cells), each condition's from its observed cells
        (``library_sizes="per_condition"``): the empirical quantile of a uniform draw,
        shared across conditions when the cells are paired; a combination without its
        own cells composed from its parts' (see the class docstring)."""
        table = self._observed_libraries()
        pooled = np.sort(np.asarray(self.model.library_sizes, dtype=np.float64))
        cache = self.__dict__.setdefault("_canonical_cache", {})
        missing = [label for label in dict.fromkeys(labels) if label not in cache]
        if missing:
            cache.update(self._canonical(missing))
        canonical = {label: cache[label] for label in labels}
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _LIBRARY_TAG])
        shape = (n_draws, 1 if paired else len(labels), n_cells)
        u = np.broadcast_to(rng.random(shape), (n_draws, len(labels), n_cells))
        out = np.empty((n_draws, len(labels), n_cells), dtype=np.float32)
        delimiter = _delimiter(self.model)
        control = self.model.control_label

        def own(name: str) -> np.ndarray | None:
            sizes = table.get(name)
            return sizes if sizes is not None and sizes.size >= MIN_LIBRARY_CELLS else None

        def quantile(sizes: np.ndarray, v: np.ndarray) -> np.ndarray:
            return sizes[np.minimum((v * sizes.size).astype(np.int64), sizes.size - 1)]

        for i, label in enumerate(labels):
            name = canonical[label]
            sizes = own(name)
            if sizes is not None:
                out[:, i] = quantile(sizes, u[:, i])
                continue
            parts = [own(part) for part in name.split(delimiter)]
            base = own(control)
            if len(parts) > 1 and base is not None and all(p is not None for p in parts):
                # a combination without cells of its own, its parts measured alone: each
                # part's shift of the log library-size quantiles from the control's, added
                log_base = np.log(np.maximum(quantile(base, u[:, i]), 1.0))
                shift = sum(np.log(np.maximum(quantile(p, u[:, i]), 1.0)) - log_base for p in parts)
                out[:, i] = np.exp(log_base + shift)
            else:
                out[:, i] = quantile(pooled, u[:, i])
        return out

    def _observed_libraries(self) -> dict[str, np.ndarray]:
        """Sorted library sizes of each canonical condition's observed cells
        (``library_cells``, else the model's AnnData, else ``observed``)."""
        if hasattr(self, "_libraries"):
            return self._libraries
        from bioreason.data import PerturbationData

        cells = self.library_cells
        if cells is None:
            cells = getattr(self.model, "adata", None)
        if cells is None:
            cells = self.observed
        if cells is None:
            raise ValueError(
                "library_sizes='per_condition' reads each condition's observed cells: the "
                "model has no AnnData, so pass observed=adata"
            )
        data = PerturbationData.from_anndata(cells, getattr(self.model, "setup", None))
        sizes = np.asarray(data.library_size, dtype=np.float64)
        self._libraries = {
            name: np.sort(sizes[data.condition_codes == code])
            for code, name in enumerate(data.condition_names)
        }
        return self._libraries

    def _simulate_scores(
        self, conditions: list[str], readouts: list[str], n_draws: int, n_cells: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        weights = self.readouts.weights(readouts)
        genes = None
        if getattr(self.model, "supports_gene_subset", False):
            # only the readouts' genes are generated (and each cell's total count)
            used = np.flatnonzero(np.any(weights != 0, axis=1))
            genes = [self.model.gene_names[i] for i in used]
            weights = weights[used]
        perturbed, control = [], []
        n_genes = len(self.model.gene_names) if genes is None else len(genes)
        for _, size, sub_seed in self._chunks(len(conditions) + 1, n_draws, n_cells, seed, n_genes):
            counts, ctrl, totals, ctrl_totals = self._simulate_counts(
                conditions, size, n_cells, sub_seed, counterfactual=self.paired, genes=genes
            )
            perturbed.append(cell_scores(counts, weights, totals))
            control.append(cell_scores(ctrl, weights, ctrl_totals))
        return np.concatenate(perturbed), np.concatenate(control)

    def _chunks(
        self, n_conditions: int, n_draws: int, n_cells: int, seed: int, n_genes: int | None = None
    ):
        n_genes = len(self.model.gene_names) if n_genes is None else n_genes
        per_draw = n_conditions * n_cells * n_genes
        step = max(1, min(n_draws, _ENTRIES_PER_CALL // max(per_draw, 1)))
        for number, start in enumerate(range(0, n_draws, step)):
            yield start, min(step, n_draws - start), _sub_seed(seed, number)

    def _cells_per_draw(self, budget: SimulationBudget) -> int:
        """The fast path's cells per condition per draw under ``budget``."""
        cells = int(budget.cells_per_draw or self._default_cells)
        if cells < self._least_cells:
            raise ValueError(
                f"cells_per_draw must be at least {'' if self.paired else 'twice '}the "
                f"replicate size ({self._least_cells}), got {cells}"
            )
        return cells

    def _resolve_method(self, method: str) -> str:
        has_fast = not isinstance(self.outcome, CustomOutcome)
        if method == "fast" and not has_fast:
            raise ValueError(f"outcome {self.outcome.name!r} has no fast path; use method='brute'")
        if method == "auto":
            large = self.outcome.n_cells >= FAST_MIN_CELLS or self.outcome.name == "cell_expression"
            return "fast" if has_fast and large else "brute"
        return method

    def _draw_probabilities(
        self,
        conditions: list[str],
        readouts: list[str],
        n_draws: int,
        method: str,
        seed: int,
        *,
        cells: int | None = None,
        replicates: int = 1,
    ) -> np.ndarray:
        """P_k for every draw, condition and readout: shape (n_draws, C, R); ``cells``
        per condition on the fast path (required there), ``replicates`` per draw on the
        brute-force path."""
        outcome = self.outcome
        if method == "fast":
            perturbed, control = self._simulate_scores(conditions, readouts, n_draws, cells, seed)
            return outcome.probability_given_globals(
                perturbed, control, readouts, paired=self.paired
            )
        reps = replicates
        n_p, n_c = outcome.n_cells, max(outcome.n_control or 0, 1)
        size = reps * max(n_p, n_c)
        out = []
        for _, count, sub_seed in self._chunks(len(conditions) + 1, n_draws, size, seed):
            counts, ctrl, _, _ = self._simulate_counts(conditions, count, size, sub_seed)
            pert = counts[:, :, : reps * n_p].reshape(count, len(conditions), reps, n_p, -1)
            cont = ctrl[:, :, : reps * n_c].reshape(count, 1, reps, n_c, -1)
            if isinstance(outcome, CustomOutcome):
                hits = outcome.replicate_counts(pert, cont)[..., None]  # (k, C, reps, 1)
            else:
                weights = self.readouts.weights(readouts)
                hits = outcome.replicate(
                    cell_scores(pert, weights),
                    cell_scores(cont, weights),
                    readouts,
                    rng=np.random.default_rng([sub_seed, _REPLICATE_TAG]),
                )
            out.append(hits.mean(axis=2, dtype=np.float64))
        return np.concatenate(out)

    # ------------------------------------------------------------ public API
    def probability(
        self,
        questions: Any = None,
        budget: SimulationBudget | None = None,
        *,
        seed: int = 0,
        keep_draws: bool = False,
        **changes: Any,
    ) -> pd.DataFrame:
        """p* of every question, with its Monte Carlo standard error.

        Posterior draws are added in rounds of ``draws_per_round`` until every question's
        standard error is at most ``target_se`` (after at least ``min_draws``, default
        ``min(16, max_draws)``) or ``max_draws`` is reached; later rounds simulate only
        conditions that still have unconverged questions (see
        :class:`~bioreason.sim.SimulationBudget`).

        Parameters
        ----------
        questions : optional
            (condition, readout) pairs, mappings, a DataFrame, or integer indices into
            the bound questions; default: the bound questions.
        budget : SimulationBudget, optional
            The Monte Carlo budget of this call; default: the simulator's ``budget``.
        seed : int
            Seeds the posterior draws and the simulated cells.
        keep_draws : bool, default False
            Also return every question's per-draw probabilities P_k (column
            ``p_star_per_draw``, a float array per row), e.g. to pool several fits with
            :func:`bioreason.sim.pool_fits`.
        **changes
            Fields of the budget changed for this call only, e.g. ``target_se=0.005``
            (``budget.replace(target_se=0.005)``).

        Returns
        -------
        DataFrame, one row per question in the given order, columns ``condition`` (as
        given: ``"SET+KLF1"`` and ``"KLF1+SET"`` are one condition, simulated once, each
        row keeps its spelling), ``readout``, ``p_star``, ``p_star_se`` (sd(P_k) /
        sqrt(K); on the brute-force path at least the binomial standard error of all its
        replicate experiments, so it does not vanish when they all agree),
        ``p_star_spread`` (sd of the per-draw estimates P_k across posterior draws: the
        epistemic spread, plus the per-draw estimate's own noise), ``p_star_low`` and
        ``p_star_high`` (the 5 % and 95 % quantiles of the P_k: the central 90 % interval
        of the posterior's probabilities, :data:`INTERVAL_QUANTILES`), ``n_draws``,
        ``converged`` (bool), ``method`` (``"fast"`` or ``"brute"``) and
        ``unseen_parts`` (the condition's parts never measured alone, joined by
        ``", "``; ``""`` when there are none, None when no cells are known: see
        :meth:`unseen_parts`; a non-empty value means p* rests on the model's prior for
        those parts), and with ``keep_draws`` ``p_star_per_draw``. ``attrs["seconds"]`` is
        the wall time.
        """
        start_time = time.perf_counter()
        budget = self.budget if budget is None else _as_budget(budget)
        if changes:
            budget = budget.replace(**changes)
        frame = self._resolve(self.questions if questions is None else questions)
        target_se, max_draws = budget.target_se, budget.max_draws
        min_draws, draws_per_round = budget.draws_at_least, budget.draws_per_round
        chosen = self._resolve_method(budget.method)
        sizes = {"cells": self._cells_per_draw(budget), "replicates": budget.replicates_per_draw}
        # brute force: each draw's value is a share of 0/1 replicate outcomes, so the
        # standard error gets the binomial floor that keeps it from vanishing at 0 and 1
        binomial_trials = budget.replicates_per_draw if chosen == "brute" else None
        self.fix_thresholds(list(dict.fromkeys(frame["readout"])))
        conditions = list(dict.fromkeys(frame[_CANONICAL]))
        readouts = list(dict.fromkeys(frame["readout"]))
        c_index = {c: i for i, c in enumerate(conditions)}
        r_index = {r: i for i, r in enumerate(readouts)}
        q_cond = frame[_CANONICAL].map(c_index).to_numpy()
        q_read = frame["readout"].map(r_index).to_numpy()
        shape = (len(conditions), len(readouts))
        total, total_sq = np.zeros(shape), np.zeros(shape)
        draws = np.zeros(len(conditions), dtype=np.int64)
        asked = np.zeros(shape, dtype=bool)
        asked[q_cond, q_read] = True
        active = np.ones(len(conditions), dtype=bool)
        per_draw: list[list[np.ndarray]] = [[] for _ in conditions]  # (batch, R) per round
        rounds = 0
        while active.any():
            room = max_draws - draws[active].max()
            if room <= 0:
                break
            batch = int(min(draws_per_round, room))
            which = np.flatnonzero(active)
            values = self._draw_probabilities(
                [conditions[i] for i in which],
                readouts,
                batch,
                chosen,
                _sub_seed(seed, rounds),
                **sizes,
            )
            rounds += 1
            total[which] += values.sum(axis=0)
            total_sq[which] += (values**2).sum(axis=0)
            for j, i in enumerate(which):
                per_draw[i].append(values[:, j])
            draws[which] += batch
            se = _standard_error(total, total_sq, draws, binomial_trials)
            done = (se <= target_se) | ~asked
            active = ~done.all(axis=1) | (draws < min_draws)
        se = _standard_error(total, total_sq, draws, binomial_trials)
        k = np.maximum(draws, 1)[:, None]
        mean = total / k
        spread = np.sqrt(np.maximum(total_sq / k - mean**2, 0.0) * k / np.maximum(k - 1, 1))
        unseen = dict(zip(conditions, self.unseen_parts(conditions), strict=True))
        low, high = np.full(shape, np.nan), np.full(shape, np.nan)
        for i, parts in enumerate(per_draw):
            if parts:
                low[i], high[i] = np.quantile(np.concatenate(parts), INTERVAL_QUANTILES, axis=0)
        result = frame.drop(columns=[_CANONICAL]).assign(
            p_star=mean[q_cond, q_read],
            p_star_se=se[q_cond, q_read],
            p_star_spread=spread[q_cond, q_read],
            p_star_low=low[q_cond, q_read],
            p_star_high=high[q_cond, q_read],
            n_draws=draws[q_cond],
            converged=se[q_cond, q_read] <= target_se,
            method=chosen,
            unseen_parts=frame[_CANONICAL].map(unseen).to_numpy(),
        )
        if keep_draws:
            pooled = [
                np.concatenate(parts) if parts else np.empty((0, shape[1])) for parts in per_draw
            ]
            result["p_star_per_draw"] = [
                pooled[c][:, r].copy() for c, r in zip(q_cond, q_read, strict=True)
            ]
        result.attrs["seconds"] = time.perf_counter() - start_time
        result.attrs["outcome"] = self.outcome.to_json()
        return result

    def sample(
        self, questions: Any = None, n: int = 1, seed: int = 0, *, independent: bool = True
    ) -> torch.Tensor:
        """0/1 outcomes of simulated replicate experiments, ``n`` per question.

        One outcome is one replicate experiment under one draw of the model's globals
        from the approximate posterior: ``n_control`` control cells and ``n_cells``
        perturbed cells are generated and the outcome's event is evaluated on them, so
        each outcome is a Bernoulli(p*) draw of its question.

        Implements :class:`bioreason.rl.outcomes.OutcomeSource`: ``questions`` may be
        integer indices into the bound questions.

        Parameters
        ----------
        questions : optional
            (condition, readout) pairs, mappings, a DataFrame, or integer indices into
            the bound questions; default: the bound questions. A question given twice is
            two rows (independent outcomes each with ``independent=True``).
        n : int
            Outcomes per question (>= 1).
        seed : int
            Seeds the posterior draws and the simulated cells (see Notes).
        independent : bool
            True (default): every outcome of every question is its own posterior draw
            of the globals and its own replicate (its own control and perturbed cells),
            so outcomes of different questions are independent, as the test outcomes of
            a task must be when predictions are scored question by question. False:
            outcome ``j`` of every question comes from one shared draw of the globals
            and one shared replicate experiment -- control cells shared by all
            conditions, a condition's perturbed cells shared by its readouts -- so each
            column is one correlated realisation of the world: what a single real
            screen looks like (its questions are judged together, not independently).

        Returns
        -------
        Tensor, shape (len(questions), n), float64 of 0/1.

        Notes
        -----
        Random streams. With ``independent=False``, draws ``0..n-1`` are generated in
        chunks of at most ``2**24`` count entries; chunk ``i`` uses the sub-seed
        ``SeedSequence([seed, i])``. With ``independent=True``, the questions of one
        condition are simulated together (one ``posterior_predictive`` call per chunk of
        draws, the condition and the control only): question ``j`` of the condition (in
        the given order) takes draws ``j * n .. j * n + n - 1`` of the condition's
        stream, seeded by ``SeedSequence([seed, tag, hash(condition)])`` with a fixed
        tag that no p* stream uses. A question's outcomes therefore depend on the seed,
        its condition, its rank among that condition's questions and ``n``, not on the
        other conditions asked. Both modes give each question the same marginal
        distribution.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if not isinstance(independent, (bool, np.bool_)):
            raise TypeError(f"independent must be True or False, got {independent!r}")
        frame = self._resolve(self.questions if questions is None else questions)
        self.fix_thresholds(list(dict.fromkeys(frame["readout"])))
        if independent:
            hits = self._independent_outcomes(frame, int(n), int(seed))
            return torch.as_tensor(hits, dtype=torch.float64)
        conditions = list(dict.fromkeys(frame[_CANONICAL]))
        readouts = list(dict.fromkeys(frame["readout"]))
        hits = self._draw_probabilities(conditions, readouts, int(n), "brute", seed, replicates=1)
        q_cond = frame[_CANONICAL].map({c: i for i, c in enumerate(conditions)}).to_numpy()
        q_read = frame["readout"].map({r: i for i, r in enumerate(readouts)}).to_numpy()
        if hits.shape[-1] == 1 and len(readouts) > 1:  # custom outcomes ignore the readout
            q_read = np.zeros_like(q_read)
        return torch.as_tensor(hits[:, q_cond, q_read].T.copy(), dtype=torch.float64)

    def _independent_outcomes(self, frame: pd.DataFrame, n: int, seed: int) -> np.ndarray:
        """Outcomes (len(frame), n), each its own posterior draw and replicate.

        Per condition, one ``posterior_predictive`` call per chunk of draws generates the
        control and the condition under ``len(rows) * n`` draws; draw ``j * n + t`` is
        outcome ``t`` of the condition's ``j``-th question and is scored on that
        question's readout only (the per-draw readouts ride on the outcome's readout
        axis, so per-readout thresholds apply)."""
        outcome = self.outcome
        n_p, n_c = outcome.n_cells, max(outcome.n_control or 0, 1)
        size = max(n_p, n_c)
        custom = isinstance(outcome, CustomOutcome)
        readouts = list(dict.fromkeys(frame["readout"]))
        weights = None if custom else self.readouts.weights(readouts)  # (G, R)
        q_read = frame["readout"].map({r: i for i, r in enumerate(readouts)}).to_numpy()
        out = np.empty((len(frame), n), dtype=np.float64)
        groups = frame.groupby(_CANONICAL, sort=False).indices
        for condition, rows in groups.items():
            asked = np.repeat(q_read[rows], n)  # readout of each draw
            hits = np.empty(asked.size, dtype=np.float64)
            stream = _condition_stream(seed, condition)
            for start, count, sub_seed in self._chunks(2, asked.size, size, stream):
                counts, ctrl, _, _ = self._simulate_counts([condition], count, size, sub_seed)
                perturbed, control = counts[:, 0, :n_p], ctrl[:, 0, :n_c]  # (count, cells, G)
                if custom:
                    hits[start : start + count] = outcome.replicate_counts(perturbed, control)
                    continue
                which = asked[start : start + count]
                # draw k's cells scored on its own readout: (count, cells, 1) -> (cells, count)
                own = weights[:, which].T[:, :, None]  # (count, G, 1)
                scores_p = np.matmul(log_normalize(perturbed), own)[..., 0].T
                scores_c = np.matmul(log_normalize(control), own)[..., 0].T
                names = [readouts[i] for i in which]
                hits[start : start + count] = outcome.replicate(
                    scores_p, scores_c, names, rng=np.random.default_rng([sub_seed, _REPLICATE_TAG])
                )
            out[rows] = hits.reshape(len(rows), n)
        return out

    def describe(self, condition: str, readout: str, condition_text: str | None = None) -> str:
        """The question in plain words."""
        text = condition_text or describe_condition(condition)
        return self.outcome.describe(text, readout)


def describe_condition(condition: str, delimiter: str = "+", verb: str = "knocking down") -> str:
    """``"A+B"`` -> ``"knocking down A and B"`` (``verb``: see :func:`perturbation_verb`)."""
    parts = [p for p in str(condition).split(delimiter) if p]
    if len(parts) <= 1:
        return f"{verb} {condition}"
    return f"{verb} {', '.join(parts[:-1])} and {parts[-1]}"


#: column of a resolved questions frame with the model's canonical label of its condition
_CANONICAL = "canonical_condition"


def _delimiter(model: Any) -> str:
    """The delimiter of a model's combination labels (``"+"`` unless it says)."""
    setup = getattr(model, "setup", None)
    return str(getattr(setup, "delimiter", None) or getattr(model, "delimiter", "+"))


def _as_budget(budget: Any) -> SimulationBudget:
    if budget is None:
        return SimulationBudget()
    if not isinstance(budget, SimulationBudget):
        raise TypeError(
            f"budget must be a SimulationBudget (bioreason.sim.SimulationBudget), got "
            f"{type(budget).__name__}"
        )
    return budget


def _standard_error(
    total: np.ndarray,
    total_sq: np.ndarray,
    draws: np.ndarray,
    trials_per_draw: int | None = None,
) -> np.ndarray:
    """Monte Carlo standard error of the mean of the per-draw values: sd / sqrt(K).

    With ``trials_per_draw`` (the brute-force path, where each draw's value is the share
    of ``m`` replicate experiments with outcome 1), the standard error is at least the
    binomial one of the pooled ``N = K m`` experiments, with the Agresti-Coull estimate
    ``p~ = (S + 2) / (N + 4)`` of the probability (S experiments with outcome 1):
    sqrt(p~ (1 - p~) / N). The plain estimate is 0 when every replicate agrees (all 0 or
    all 1), which a question of p = 0.01 does about a quarter of the time after 128
    experiments; it was then reported as 0 +/- 0. With the floor, p* = 0 comes with the
    uncertainty its experiments leave, and the stopping rule needs about
    2 / target_se experiments before it accepts such a question. The pseudo-counts also
    keep the sequential stopping from favouring low estimates: stopping on the plain or
    Laplace ((S + 1) / (N + 2)) floor biased p* at p = 0.01 down by about 0.002.
    """
    k = draws[:, None].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / k
        var = np.maximum(total_sq / k - mean**2, 0.0) * k / (k - 1)
        se = np.sqrt(var / k)
        if trials_per_draw is not None:
            n = k * trials_per_draw
            p = (total * trials_per_draw + 2.0) / (n + 4.0)
            se = np.maximum(se, np.sqrt(p * (1.0 - p) / n))
    return np.where(k > 1, se, np.inf)


def _sub_seed(seed: int, number: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, number]).generate_state(1)[0])


#: entropy word of the stream of per-condition library sizes
_LIBRARY_TAG = 0x6C69_6272
#: observed cells a condition needs for library_sizes="per_condition" to use its own sizes
MIN_LIBRARY_CELLS = 20
#: entropy word of the stream of replicate-level shifts (``ScreenHit.replicate_sd``)
_REPLICATE_TAG = 0x7265_706C
#: entropy word that sets the independent outcomes' streams apart from p*'s
_INDEPENDENT_TAG = 0x6F75_7463


def _condition_stream(seed: int, condition: str) -> int:
    """The seed of ``condition``'s independent outcomes: ``SeedSequence([seed, tag,
    blake2b(condition)])``, stable across runs and processes (not Python's ``hash``)."""
    digest = hashlib.blake2b(str(condition).encode(), digest_size=8).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in (0, 4)]
    entropy = [int(seed) & 0xFFFFFFFF, _INDEPENDENT_TAG, *words]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
