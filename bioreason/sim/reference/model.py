"""The model behind p*: cells from the linear-decoder Poisson SAMS model under given draws
of its globals (NUTS draws or the true parameters), behind the ``posterior_predictive``
interface the outcome simulator reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bioreason.models import PosteriorPredictive
from bioreason.sim.ground_truth import asked_labels, canonical_condition, predictive_labels
from bioreason.sim.reference.screen import _data, _truth_of

__all__ = ["LinearSAMSModel"]


class LinearSAMSModel:
    """Cells from the linear-decoder Poisson SAMS model under given draws of its globals.

    The duck-typed "model" of :class:`~bioreason.sim.OutcomeSimulator` (like
    :class:`~bioreason.sim.GroundTruthModel`): each posterior draw of
    ``posterior_predictive`` picks one of the K stored draws of (E, M) uniformly at
    random, then generates basal states, library sizes and Poisson counts. Built by
    :func:`fit_nuts_reference` (K NUTS draws) or :meth:`from_truth` (K = 1: the
    data-generating parameters, so p* is p_true).

    Parameters
    ----------
    perturbation_names : list of str, length P
    gene_names : list of str, length G
    masks : array of bool, shape (K, P, L)
    embeddings : array, shape (K, P, L)
    decoder_weight : array, shape (L, G)
    decoder_bias : array, shape (G,)
    library_sizes : array, shape (n,), optional
        Library sizes to resample (a fitted model's choice: the observed cells' totals).
    library_log_normal : (mean, sd), optional
        Or draw library sizes from LogNormal(mean, sd) (the truth's choice).
    control_label, delimiter : str
    adata : AnnData, optional
        The observed cells (for thresholds taken from observed control cells).
    diagnostics : dict, optional
        NUTS diagnostics (see :func:`fit_nuts_reference`).
    """

    def __init__(
        self,
        perturbation_names: Sequence[str],
        gene_names: Sequence[str],
        masks: np.ndarray,
        embeddings: np.ndarray,
        decoder_weight: np.ndarray,
        decoder_bias: np.ndarray,
        library_sizes: np.ndarray | None = None,
        library_log_normal: tuple[float, float] | None = None,
        control_label: str = "control",
        delimiter: str = "+",
        adata: Any = None,
        diagnostics: Mapping[str, Any] | None = None,
    ) -> None:
        self.perturbation_names = [str(p) for p in perturbation_names]
        self.gene_names = [str(g) for g in gene_names]
        self.masks = np.asarray(masks).astype(bool)
        self.embeddings = np.asarray(embeddings, dtype=np.float64)
        self.decoder_weight = np.asarray(decoder_weight, dtype=np.float64)
        self.decoder_bias = np.asarray(decoder_bias, dtype=np.float64)
        n_pert, n_genes = len(self.perturbation_names), len(self.gene_names)
        if self.masks.ndim != 3 or self.masks.shape != self.embeddings.shape:
            raise ValueError(
                f"masks and embeddings must share a shape (K, P, L); got {self.masks.shape} "
                f"and {self.embeddings.shape}"
            )
        if self.masks.shape[1] != n_pert:
            raise ValueError(f"masks have {self.masks.shape[1]} perturbations, names {n_pert}")
        _check_decoder(self.decoder_weight, self.decoder_bias, self.masks.shape[2], n_genes)
        if (library_sizes is None) == (library_log_normal is None):
            raise ValueError("give exactly one of library_sizes and library_log_normal")
        if library_sizes is not None:
            library_sizes = np.asarray(library_sizes, dtype=np.float64).ravel()
            if (
                library_sizes.size == 0
                or not (np.isfinite(library_sizes) & (library_sizes > 0)).all()
            ):
                raise ValueError("library_sizes must be non-empty, positive and finite")
        self.library_sizes = library_sizes
        self.library_log_normal = library_log_normal
        self.control_label = control_label
        self.delimiter = delimiter
        self.adata = adata
        self.diagnostics = dict(diagnostics or {})

    @classmethod
    def from_truth(cls, adata: Any) -> LinearSAMSModel:
        """The data-generating parameters of a :func:`simulate_reference_screen` AnnData
        as a one-draw model (p* of this model is p_true).

        Returns
        -------
        LinearSAMSModel with K = 1.
        """
        truth = _truth_of(adata, required=True)
        return cls(
            truth.perturbation_names,
            [str(g) for g in adata.var_names],
            truth.masks[None],
            truth.embeddings[None],
            truth.decoder_weight,
            truth.decoder_bias,
            library_log_normal=(truth.library_log_mean, truth.library_log_sd),
            adata=adata,
        )

    @property
    def n_samples(self) -> int:
        """K, the stored draws of the globals."""
        return int(self.masks.shape[0])

    @property
    def effects(self) -> np.ndarray:
        """E * M per draw, shape (K, P, L)."""
        return self.embeddings * self.masks

    def mask_probability(self) -> np.ndarray:
        """Posterior P(M = 1), shape (P, L): the share of draws with the mask on."""
        return self.masks.mean(axis=0)

    def canonical(self, condition: str) -> str:
        """The canonical label of ``condition`` (parts in perturbation order); raises a
        ValueError naming an unknown perturbation."""
        return canonical_condition(
            condition, self.perturbation_names, self.control_label, self.delimiter
        )

    def dosage_of(self, labels: Sequence[str]) -> np.ndarray:
        """Dosage rows of canonical labels, shape (len(labels), P)."""
        column = {name: j for j, name in enumerate(self.perturbation_names)}
        out = np.zeros((len(labels), len(self.perturbation_names)))
        for i, label in enumerate(labels):
            if label != self.control_label:
                for part in label.split(self.delimiter):
                    out[i, column[part]] += 1.0
        return out

    def data_for(self, adata: Any = None) -> Any:
        """The observed cells as :class:`~bioreason.data.PerturbationData`."""
        source = self.adata if adata is None else adata
        if source is None:
            raise ValueError("LinearSAMSModel was built without an AnnData; pass observed=adata")
        return _data(source, self.control_label)

    def posterior_predictive(
        self,
        conditions: Sequence[str] | str,
        n_cells: int = 100,
        n_draws: int = 100,
        library_size: Any = None,
        seed: int | None = 0,
        counterfactual: bool = False,
    ) -> PosteriorPredictive:
        """Cells of each condition, ``n_cells`` per condition for each of ``n_draws``
        draws of the globals (each drawn uniformly from the K stored draws).

        ``counterfactual=True``: cell ``i`` of every condition of a draw is the same
        basal cell (basal state and library size shared; counts drawn independently),
        as in :meth:`bioreason.models.PerturbationModel.posterior_predictive`.

        Returns
        -------
        PosteriorPredictive with ``counts`` and ``expected_counts`` of shape
        (n_draws, C, n_cells, G) and ``library_size`` (n_draws, C, n_cells).
        """
        labels = predictive_labels(self, conditions, n_cells, n_draws)
        if not labels:
            raise ValueError("no conditions given")
        rng = np.random.default_rng(seed)
        shape = (n_draws, len(labels), n_cells)
        which = rng.integers(self.n_samples, size=n_draws)
        shift = np.einsum("cp,kpl->kcl", self.dosage_of(labels), self.effects[which])
        # one basal cell per slot shared by all conditions, or one per condition
        basal_shape = (n_draws, 1, n_cells) if counterfactual else shape
        z = rng.standard_normal((*basal_shape, self.masks.shape[2])) + shift[:, :, None, :]
        if library_size is not None:
            library = np.broadcast_to(np.asarray(library_size, dtype=np.float64), shape).copy()
            if not (np.isfinite(library) & (library > 0)).all():
                raise ValueError("library_size must be positive and finite")
        elif self.library_sizes is not None:
            library = rng.choice(self.library_sizes, basal_shape)
        else:
            mean, sd = self.library_log_normal
            library = np.exp(rng.normal(mean, sd, basal_shape))
        library = np.broadcast_to(library, shape)
        logits = z @ self.decoder_weight + self.decoder_bias
        logits -= logits.max(axis=-1, keepdims=True)
        proportions = np.exp(logits)
        proportions /= proportions.sum(axis=-1, keepdims=True)
        expected = library[..., None] * proportions
        counts = rng.poisson(expected)
        return PosteriorPredictive(
            conditions=asked_labels(conditions),
            gene_names=list(self.gene_names),
            counts=counts.astype(np.float32),
            expected_counts=expected.astype(np.float32),
            library_size=library.astype(np.float32),
            canonical_conditions=labels,
            delimiter=self.delimiter,
        )

    #: :meth:`posterior_predictive` takes ``counterfactual=True``
    supports_counterfactual = True

    def __repr__(self) -> str:
        return (
            f"LinearSAMSModel({len(self.gene_names)} genes, {len(self.perturbation_names)} "
            f"perturbations, n_latent={self.masks.shape[2]}, {self.n_samples} draws)"
        )


def _check_decoder(weight: np.ndarray, bias: np.ndarray, n_latent: int, n_genes: int) -> None:
    if weight.ndim != 2 or weight.shape != (n_latent, n_genes):
        raise ValueError(
            f"decoder weight must have shape (n_latent, n_genes) = ({n_latent}, {n_genes}), "
            f"got {weight.shape}"
        )
    if bias.shape != (n_genes,):
        raise ValueError(f"decoder bias must have shape ({n_genes},), got {bias.shape}")
    if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
        raise ValueError("decoder weight and bias must be finite")
