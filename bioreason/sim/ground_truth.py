"""The true generative model of a synthetic screen, behind the simulator's model API.

``simulate_screen`` stores its parameters in ``adata.uns["ground_truth"]``.
:class:`GroundTruthModel` generates cells from them with the same
``posterior_predictive`` interface as a fitted model -- every "posterior draw" is the
one true parameter set -- so ``GroundTruthSimulator(adata, "screen_hit", ...)`` gives
p_true, the probability of a question under the process that made the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bioreason.data.simulate import ScreenGroundTruth
from bioreason.models import PosteriorPredictive
from bioreason.sim.simulator import OutcomeSimulator

__all__ = ["GroundTruthModel", "GroundTruthSimulator", "canonical_condition"]


def canonical_condition(
    condition: str,
    perturbation_names: Sequence[str],
    control_label: str,
    delimiter: str = "+",
    owner: str = "model",
) -> str:
    """The canonical label of ``condition``: the control label as given, otherwise its
    parts in the order of ``perturbation_names``. Raises a ``ValueError`` naming an unknown
    perturbation (and listing known ones) or a perturbation named twice.

    Returns
    -------
    str
    """
    label = str(condition)
    if label == control_label:
        return label
    parts = label.split(delimiter)
    unknown = [p for p in parts if p not in perturbation_names]
    if unknown or not label:
        raise ValueError(
            f"unknown perturbation {unknown[0] if unknown else label!r} in condition "
            f"{label!r}; the {owner} has {len(perturbation_names)} perturbations "
            f"(e.g. {list(perturbation_names)[:10]})"
        )
    if len(set(parts)) != len(parts):
        raise ValueError(f"condition {label!r} names a perturbation twice")
    order = {name: i for i, name in enumerate(perturbation_names)}
    return delimiter.join(sorted(parts, key=order.__getitem__))


def asked_labels(conditions: Sequence[str] | str) -> list[str]:
    """The condition labels of a ``posterior_predictive`` call as asked for (one label or
    several), as text: what :attr:`PosteriorPredictive.conditions` reports.

    Returns
    -------
    list of str
    """
    if isinstance(conditions, str):
        conditions = [conditions]
    return [str(c) for c in conditions]


def predictive_labels(
    model: Any, conditions: Sequence[str] | str, n_cells: Any, n_draws: Any
) -> list[str]:
    """The canonical labels (``model.canonical``) of the conditions a
    ``posterior_predictive`` call asks for (one label or several), after checking that
    ``n_cells`` and ``n_draws`` are integers >= 1.

    Returns
    -------
    list of str
    """
    if isinstance(conditions, str):
        conditions = [conditions]
    labels = [model.canonical(c) for c in conditions]
    for name, value in (("n_cells", n_cells), ("n_draws", n_draws)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return labels


class GroundTruthModel:
    """Cells from a synthetic screen's true parameters.

    Parameters
    ----------
    truth : ScreenGroundTruth or AnnData from :func:`bioreason.data.simulate_screen`
    gene_names : list of str, optional (default: the AnnData's var_names, or gene0..)
    control_label : str
    delimiter : str
    """

    def __init__(
        self,
        truth: ScreenGroundTruth | Any,
        gene_names: Sequence[str] | None = None,
        control_label: str = "control",
        delimiter: str = "+",
    ) -> None:
        self.adata = None
        if not isinstance(truth, ScreenGroundTruth):
            uns = getattr(truth, "uns", None)
            if uns is None or "ground_truth" not in uns:
                raise ValueError(
                    "GroundTruthModel needs a ScreenGroundTruth or an AnnData made by "
                    "simulate_screen (with uns['ground_truth'])"
                )
            self.adata = truth
            if gene_names is None:
                gene_names = [str(g) for g in truth.var_names]
            truth = ScreenGroundTruth.from_uns(truth.uns["ground_truth"])
        self.truth = truth
        n_genes = truth.dispersion.shape[0]
        self.gene_names = (
            [f"gene{i}" for i in range(n_genes)] if gene_names is None else list(gene_names)
        )
        if len(self.gene_names) != n_genes:
            raise ValueError(f"{len(self.gene_names)} gene names for {n_genes} genes")
        self.control_label = control_label
        self.delimiter = delimiter
        self.perturbation_names = list(truth.perturbation_names)

    def canonical(self, condition: str) -> str:
        return canonical_condition(
            condition, self.perturbation_names, self.control_label, self.delimiter, "screen"
        )

    def data_for(self, adata: Any = None) -> Any:
        from bioreason.data import PerturbationData

        source = self.adata if adata is None else adata
        if source is None:
            raise ValueError("GroundTruthModel was built without an AnnData; pass observed=adata")
        return PerturbationData.from_anndata(
            source, {"perturbation_key": "perturbation", "control": self.control_label}
        )

    def posterior_predictive(
        self,
        conditions: Sequence[str] | str,
        n_cells: int = 100,
        n_draws: int = 100,
        library_size: Any = None,
        seed: int | None = 0,
        counterfactual: bool = False,
        genes: Sequence[str] | None = None,
    ) -> PosteriorPredictive:
        """Cells of each condition under the true parameters, in ``n_draws`` blocks.

        ``counterfactual=True``: cell ``i`` of every condition of a block is the same
        basal cell (true basal state and library size shared), as in
        ``posterior_predictive`` of the fitted models. ``genes``: generate only these
        genes' counts (``total_counts`` still counts every gene; the other genes' summed
        gamma rate is a two-moment-matched gamma, as for the fitted models).

        Returns
        -------
        PosteriorPredictive with arrays of shape (n_draws, C, n_cells, G).
        """
        labels = predictive_labels(self, conditions, n_cells, n_draws)
        rng = np.random.default_rng(seed)
        n_conditions = len(labels)
        dosage = self.truth.dosage_of(
            ["control" if c == self.control_label else c for c in labels], self.delimiter
        )
        if library_size is not None:
            raise ValueError("GroundTruthModel draws library sizes from the true distribution")
        picked = None if genes is None else self._gene_indices(genes)
        if counterfactual or picked is not None:
            mean, library = self._means(dosage, n_draws, n_cells, rng, counterfactual)
            counts, totals = _gamma_poisson(mean, self.truth.dispersion, picked, rng)
            names = list(self.gene_names)
            if picked is not None:
                names, mean = [names[i] for i in picked], mean[..., picked]
            return PosteriorPredictive(
                conditions=asked_labels(conditions),
                gene_names=names,
                counts=counts,
                expected_counts=mean.astype(np.float32),
                library_size=library.astype(np.float32),
                total_counts=totals,
                canonical_conditions=labels,
                delimiter=self.delimiter,
            )
        shape = (n_draws, n_conditions, n_cells, len(self.gene_names))
        rows = np.tile(np.repeat(dosage, n_cells, axis=0), (n_draws, 1))
        counts, _, z, library = self.truth.sample_counts(rows, rng)
        expected = self.truth.expected_counts(z, library).astype(np.float32)
        return PosteriorPredictive(
            conditions=asked_labels(conditions),
            gene_names=list(self.gene_names),
            counts=counts.toarray().reshape(shape),
            expected_counts=expected.reshape(shape),
            library_size=library.astype(np.float32).reshape(shape[:3]),
            canonical_conditions=labels,
            delimiter=self.delimiter,
        )

    #: :meth:`posterior_predictive` takes ``counterfactual=True`` and ``genes=``
    supports_counterfactual = True
    supports_gene_subset = True

    def _gene_indices(self, genes: Sequence[str]) -> np.ndarray:
        position = {g: i for i, g in enumerate(self.gene_names)}
        unknown = [str(g) for g in genes if str(g) not in position]
        if unknown or isinstance(genes, str):
            raise ValueError(
                f"unknown gene(s) {unknown[:5] or [genes]} in genes; the screen has "
                f"{len(position)} genes (e.g. {self.gene_names[:5]})"
            )
        return np.asarray([position[str(g)] for g in genes], dtype=np.int64)

    def _means(
        self,
        dosage: np.ndarray,
        n_draws: int,
        n_cells: int,
        rng: np.random.Generator,
        counterfactual: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Negative-binomial means (n_draws, C, n_cells, G) and library sizes
        (n_draws, C, n_cells); with ``counterfactual`` the C conditions share each cell's
        basal state and library size."""
        truth = self.truth
        n_conditions, n_latent = dosage.shape[0], truth.masks.shape[1]
        cells = 1 if counterfactual else n_conditions
        z_basal = rng.standard_normal((n_draws, cells, n_cells, n_latent))
        library = np.exp(
            rng.normal(truth.library_log_mean, truth.library_log_sd, (n_draws, cells, n_cells))
        )
        shift = truth.latent_shift(np.asarray(dosage, dtype=np.float64))  # (C, L)
        z = z_basal + shift[None, :, None, :]
        library = np.broadcast_to(library, (n_draws, n_conditions, n_cells))
        mean = truth.expected_counts(z.reshape(-1, n_latent), library.reshape(-1))
        return mean.reshape(n_draws, n_conditions, n_cells, -1), library


def _gamma_poisson(
    mean: np.ndarray, theta: np.ndarray, picked: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Negative-binomial counts of the ``picked`` genes (all when None), float32, and each
    cell's total over all genes (the other genes' summed gamma rate two-moment matched)."""
    if picked is None:
        rate = rng.standard_gamma(np.broadcast_to(theta, mean.shape)) * (mean / theta)
        counts = rng.poisson(rate).astype(np.float32)
        return counts, counts.sum(axis=-1)
    chosen, chosen_theta = mean[..., picked], theta[picked]
    rate = rng.standard_gamma(np.broadcast_to(chosen_theta, chosen.shape)) * (chosen / chosen_theta)
    counts = rng.poisson(rate).astype(np.float32)
    rest = np.ones(mean.shape[-1], dtype=bool)
    rest[picked] = False
    totals = counts.sum(axis=-1)
    if rest.any():
        others = mean[..., rest]
        first = others.sum(axis=-1)
        second = np.maximum((others**2 / theta[rest]).sum(axis=-1), 1e-12)
        shape = np.maximum(first**2 / second, 1e-6)
        rate_sum = rng.standard_gamma(shape) * (second / np.maximum(first, 1e-12))
        totals = totals + rng.poisson(rate_sum)
    return counts, totals.astype(np.float32)


class GroundTruthSimulator(OutcomeSimulator):
    """:class:`OutcomeSimulator` over a synthetic screen's true parameters: its
    ``probability`` is p_true (the spread across draws is 0 up to Monte Carlo noise).

    Parameters
    ----------
    truth : AnnData from ``simulate_screen`` or ScreenGroundTruth
    outcome, **options : as for :class:`OutcomeSimulator`
    """

    def __init__(self, truth: Any, outcome: Any = "screen_hit", **options: Any) -> None:
        model = truth if isinstance(truth, GroundTruthModel) else GroundTruthModel(truth)
        if "observed" not in options and model.adata is not None:
            options["observed"] = model.adata
        super().__init__(model, outcome, **options)
