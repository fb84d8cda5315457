"""Generation from a fitted model: the posterior predictive distribution of cells.

``model.posterior_predictive(conditions, n_cells, n_draws)`` draws the global latents
(embeddings, masks, ...) ``n_draws`` times from the guide and, for every draw, generates
``n_cells`` cells of every condition: basal states from the prior, library sizes, counts
from the likelihood. The draws are kept apart, so that downstream code can average an
outcome over cells *within* a draw and then over draws -- the two levels of a posterior
predictive probability (epistemic uncertainty about the globals, and cell-level noise).

Why not ``pyro.infer.Predictive``: it broadcasts one set of model arguments to every
posterior sample, so per-draw local inputs (each draw's own library sizes, or blocks of
observed cells in :meth:`PredictiveMixin.replicate_cells`) do not fit; it traces the
model twice without vectorization to guess shapes; and it cannot split a large request
into chunks of draws and cells that share the same global draw. The code below does what
``Predictive(model, guide=..., parallel=True)`` does -- draw the guide's globals in a
vectorized plate, condition the model on them, trace it -- with those three changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine

from bioreason.models._sampling import PARTICLE_DIM, check_count, check_seed, draw_globals, seeded

#: generated entries (cells x genes x draws) per vectorized pass
_CHUNK_ENTRIES = 1 << 23


@dataclass
class PosteriorPredictive:
    """Cells generated from a fitted model, kept apart by posterior draw.

    Attributes
    ----------
    conditions : list of str, length C
        Condition labels in the order and spelling asked for (``"B+A"`` stays
        ``"B+A"``).
    gene_names : list of str, length G
    counts : ndarray, shape (n_draws, C, n_cells, G), float32
        Sampled counts; ``counts[k, c]`` are ``n_cells`` cells of condition ``c`` that
        share the k-th draw of the global latents.
    expected_counts : ndarray, shape (n_draws, C, n_cells, G), float32
        The likelihood's mean of each generated cell (for the negative binomial,
        ``library_size * softmax(decoder(z))``): the counts without sampling noise.
    library_size : ndarray, shape (n_draws, C, n_cells), float32
    total_counts : ndarray, shape (n_draws, C, n_cells), float32, or None
        Each cell's total count over all the model's genes: ``counts.sum(-1)``, except
        when generation was restricted to some genes (``genes=``), where it also counts
        the genes not returned. None means ``counts.sum(-1)``.
    canonical_conditions : list of str, length C, or None
        The model's canonical label of each condition (``"A+B"`` for ``"B+A"``: parts
        sorted, the first control label for a control); None means ``conditions``.
    delimiter : str
        Joins the parts of a combination (for :meth:`index`).
    """

    conditions: list[str]
    gene_names: list[str]
    counts: np.ndarray
    expected_counts: np.ndarray
    library_size: np.ndarray
    total_counts: np.ndarray | None = None
    canonical_conditions: list[str] | None = None
    delimiter: str = "+"

    def totals(self) -> np.ndarray:
        """Each cell's total count over all genes, shape (n_draws, C, n_cells)."""
        if self.total_counts is not None:
            return self.total_counts
        return self.counts.sum(axis=-1, dtype=np.float32)

    @property
    def n_draws(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_cells(self) -> int:
        """Cells per condition and draw."""
        return int(self.counts.shape[2])

    def index(self, condition: str) -> int:
        """Position of ``condition`` in :attr:`conditions`: the label as generated, its
        canonical label, or its parts in another order (``"A+B"`` finds ``"B+A"``).

        Returns
        -------
        int
        """
        if condition in self.conditions:
            return self.conditions.index(condition)
        if self.canonical_conditions is not None and condition in self.canonical_conditions:
            return self.canonical_conditions.index(condition)
        wanted = _parts(condition, self.delimiter)
        for position, label in enumerate(self.conditions):
            if _parts(label, self.delimiter) == wanted:
                return position
        raise ValueError(f"condition {condition!r} was not generated; generated: {self.conditions}")

    def to_anndata(self) -> Any:
        """All cells as one AnnData (n_draws * C * n_cells cells, draw-major).

        ``X`` and ``layers["counts"]``: sampled counts (sparse); ``layers
        ["expected_counts"]``: the likelihood means (dense); ``obs``: ``draw`` (int),
        ``perturbation`` (categorical), ``library_size``.
        """
        import anndata as ad
        import scipy.sparse as sp

        n_draws, n_conditions, n_cells, n_genes = self.counts.shape
        total = n_draws * n_conditions * n_cells
        obs = pd.DataFrame(
            {
                "draw": np.repeat(np.arange(n_draws), n_conditions * n_cells),
                "perturbation": pd.Categorical(
                    np.tile(np.repeat(np.asarray(self.conditions, dtype=object), n_cells), n_draws),
                    categories=list(dict.fromkeys(self.conditions)),
                ),
                "library_size": self.library_size.reshape(total),
            },
            index=pd.Index([f"generated{i}" for i in range(total)]),
        )
        matrix = sp.csr_matrix(self.counts.reshape(total, n_genes))
        out = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=pd.Index(self.gene_names)))
        out.layers["counts"] = matrix.copy()
        out.layers["expected_counts"] = self.expected_counts.reshape(total, n_genes)
        return out


class PredictiveMixin:
    """Posterior predictive generation for a model with ``self.module``."""

    @property
    def supports_counterfactual(self) -> bool:
        """Whether ``posterior_predictive(..., counterfactual=True)`` works: the model
        has a basal cell state independent of the condition (not SVAE+)."""
        return getattr(self.module, "basal_site", None) is not None

    #: :meth:`posterior_predictive` takes ``genes=`` (generate only some genes)
    supports_gene_subset = True

    def posterior_predictive(
        self,
        conditions: Sequence[str] | str,
        n_cells: int = 100,
        n_draws: int = 100,
        library_size: float | np.ndarray | None = None,
        seed: int | None = 0,
        counterfactual: bool = False,
        genes: Sequence[str] | None = None,
    ) -> PosteriorPredictive:
        """Generate ``n_cells`` cells of each condition for each of ``n_draws``
        posterior draws of the global latents.

        Parameters
        ----------
        conditions : str or list of str
            Condition labels (``"control"``, ``"A"``, ``"A+B"``), their parts in any
            order (``"B+A"`` is the condition ``"A+B"`` and keeps its spelling in
            ``conditions``); combinations of known perturbations may be new (not for
            SVAE+). A label given twice is generated twice (the arrays are indexed by
            position).
        n_cells : int
            Cells per condition and draw.
        n_draws : int
            Draws of the global latents from the guide; all conditions of a draw share it.
        library_size : None, float or array
            None: drawn per generated cell from the training cells' library sizes; a
            positive number; or an array broadcastable to (n_draws, C, n_cells).
        seed : int >= 0 or None
            Seeds the draws (the caller's random streams are restored); None: unseeded.
        counterfactual : bool
            False (default): every generated cell has its own basal state and library
            size. True: cell ``i`` of every condition of a draw is the same basal cell
            (the same basal latent state and library size) under each condition -- a
            counterfactual comparison, and common random numbers that make differences
            between conditions far less noisy than independent cells. Each condition's
            cells, taken alone, have the same distribution either way; only cells of
            different conditions become dependent. Models without a basal state shared
            across conditions (SVAE+) raise a ``ValueError``.
        genes : list of str, optional
            Return only these genes' counts (faster: the other genes are not sampled);
            ``total_counts`` still holds each cell's total over all genes, so that
            library-size normalization stays right. The total is exact for the Poisson
            likelihood; for the negative binomial the other genes' summed gamma rate is
            drawn from a two-moment-matched gamma (see
            :meth:`~bioreason.models.likelihoods.NegativeBinomialCounts.sample_genes`).

        Returns
        -------
        PosteriorPredictive
            Arrays of shape (n_draws, C, n_cells, G) (G = len(genes) when given):
            ``counts`` and ``expected_counts``; ``library_size`` and ``total_counts``
            (n_draws, C, n_cells).
        """
        check_count("n_cells", n_cells)
        check_count("n_draws", n_draws)
        check_seed(seed)
        if not isinstance(counterfactual, (bool, np.bool_)):
            raise TypeError(f"counterfactual must be True or False, got {counterfactual!r}")
        basal_site = getattr(self.module, "basal_site", None)
        if counterfactual and basal_site is None:
            raise ValueError(
                f"{type(self).__name__} has no basal state shared across conditions (each "
                "condition has its own latent distribution); use counterfactual=False"
            )
        gene_index = None if genes is None else self._gene_indices(genes)
        dosage, labels, is_control, shown = self._parse_conditions(conditions)
        category = self._cell_categories(labels, is_control)
        n_conditions = len(labels)
        rng = np.random.default_rng(seed)
        expected_shape = (
            "an array broadcastable to (n_draws, n_conditions, n_cells) = "
            f"{(n_draws, n_conditions, n_cells)}"
        )
        if counterfactual and library_size is None:
            drawn = self._library_for((n_draws, 1, n_cells), None, rng)
            library = np.broadcast_to(drawn, (n_draws, n_conditions, n_cells)).copy()
        else:
            library = self._library_for(
                (n_draws, n_conditions, n_cells), library_size, rng, expected_shape
            )
        with seeded(seed):
            basal = None
            if counterfactual:
                noise = torch.randn(n_draws, 1, n_cells, self.module.config.n_latent)
                basal = noise.expand(n_draws, n_conditions, n_cells, -1).reshape(
                    n_draws, n_conditions * n_cells, -1
                )
            counts, expected, totals = self._simulate(
                np.repeat(dosage, n_cells, axis=0)[None],
                np.repeat(category, n_cells)[None],
                library.reshape(n_draws, n_conditions * n_cells),
                basal=basal,
                genes=gene_index,
            )
        names = list(self.gene_names)
        if gene_index is not None:
            names = [names[i] for i in gene_index]
        shape = (n_draws, n_conditions, n_cells, len(names))
        return PosteriorPredictive(
            conditions=shown,
            gene_names=names,
            counts=counts.reshape(shape),
            expected_counts=expected.reshape(shape),
            library_size=library,
            total_counts=totals.reshape(shape[:3]),
            canonical_conditions=[str(label) for label in labels],
            delimiter=self.setup.delimiter,
        )

    def _gene_indices(self, genes: Any) -> np.ndarray:
        if isinstance(genes, str) or not hasattr(genes, "__iter__"):
            raise TypeError(f"genes must be a list of gene names, got {genes!r}")
        names = [str(g) for g in genes]
        if not names:
            raise ValueError("genes is empty: pass at least one gene name, or genes=None")
        position = {g: i for i, g in enumerate(self.gene_names)}
        unknown = [g for g in names if g not in position]
        if unknown:
            raise ValueError(
                f"unknown gene(s) {unknown[:5]} in genes; the model has "
                f"{len(position)} genes (e.g. {list(self.gene_names)[:5]})"
            )
        if len(set(names)) != len(names):
            raise ValueError("genes names a gene twice")
        return np.asarray([position[g] for g in names], dtype=np.int64)

    def sample(
        self,
        perturbations: Sequence[str] | str,
        n_cells: int = 100,
        library_size: float | np.ndarray | None = None,
        seed: int | None = 0,
        n_global_draws: int = 50,
    ) -> Any:
        """Generate ``n_cells`` cells **per condition** of the given conditions (e.g.
        ``["control", "A", "A+B"]``): C conditions give ``C * n_cells`` cells.

        Parameters
        ----------
        perturbations : str or list of str
            Condition labels, each once (``"A+B"`` and ``"B+A"`` are one condition);
            combinations of perturbations seen in training may be new (not SVAE+). Cells
            keep the label asked for: ``"SET+KLF1"`` stays ``"SET+KLF1"``, and with
            several control labels ``"ctrl2"`` stays ``"ctrl2"``.
        n_cells : int
            Cells per condition (not in total).
        library_size : None, float, or array of shape (n_cells,)
            None: drawn from the training library sizes; a positive number; or one
            value per generated cell of a condition. The same n_cells values are used
            for every condition.
        seed : int >= 0 or None
            Random seed (None: do not reseed).
        n_global_draws : int
            Posterior draws of the global latents; each is shared by a block of
            ``ceil(n_cells / n_global_draws)`` cells of every condition.

        Returns
        -------
        AnnData
            ``n_cells`` cells per condition, grouped by condition in the order asked
            for: counts in ``X`` and ``layers["counts"]``; ``obs["perturbation"]``,
            ``obs["library_size"]``, ``obs["draw"]``.
        """
        check_count("n_cells", n_cells)
        check_count("n_global_draws", n_global_draws)
        check_seed(seed)
        # a condition asked for twice (in any spelling) would be generated twice
        _, labels, is_control, shown = self._parse_conditions(perturbations)
        keys = [s if control else c for s, c, control in zip(shown, labels, is_control)]
        repeated = [key for key in dict.fromkeys(keys) if keys.count(key) > 1]
        if repeated:
            spelled = [label for label, key in zip(shown, keys) if key == repeated[0]]
            raise ValueError(
                f"condition {repeated[0]!r} is asked for twice ({spelled}); ask for each "
                "condition once (n_cells is per condition)"
            )
        draws = min(n_global_draws, n_cells)
        per_draw = math.ceil(n_cells / draws)
        rng = np.random.default_rng(seed)
        library = self._library_for(
            (n_cells,),
            library_size,
            rng,
            f"n_cells={n_cells} values (one per generated cell, shared by every condition)",
        )
        padded = np.resize(library, draws * per_draw).reshape(draws, 1, per_draw)
        predictive = self.posterior_predictive(
            perturbations, n_cells=per_draw, n_draws=draws, library_size=padded, seed=seed
        )
        n_conditions = len(predictive.conditions)
        # (draws, C, per_draw, ...) -> (C, draws * per_draw, ...), first n_cells per condition
        counts = predictive.counts.transpose(1, 0, 2, 3).reshape(
            n_conditions, -1, len(self.gene_names)
        )
        draw = np.repeat(np.arange(draws), per_draw)[:n_cells]
        counts = counts[:, :n_cells].reshape(n_conditions * n_cells, -1)
        labels = np.repeat(np.asarray(predictive.conditions, dtype=object), n_cells)
        return _cells_anndata(
            counts,
            labels,
            list(dict.fromkeys(predictive.conditions)),
            np.tile(library, n_conditions),
            np.tile(draw, n_conditions),
            self.gene_names,
        )

    def replicate_cells(
        self, adata: Any | None = None, n_global_draws: int = 50, seed: int | None = 0
    ) -> np.ndarray:
        """One replicated cell per observed cell of ``adata`` (default: the model's
        AnnData), with that cell's condition and library size, from the posterior
        predictive; blocks of cells share a draw of the global latents.

        Returns
        -------
        ndarray, shape (n_cells, n_genes), float32
        """
        check_count("n_global_draws", n_global_draws)
        check_seed(seed)
        data = self._cells_for(adata, "replicate_cells")
        n = data.n_cells
        draws = max(1, min(n_global_draws, n))
        per_draw = math.ceil(n / draws)

        def blocks(x: np.ndarray) -> np.ndarray:
            return np.resize(x, (draws * per_draw, *x.shape[1:])).reshape(
                draws, per_draw, *x.shape[1:]
            )

        category = self._cell_categories(data.cell_condition, data.is_control)
        with seeded(seed):
            counts, _, _ = self._simulate(
                blocks(data.dosage.toarray()),
                blocks(category),
                blocks(data.library_size.astype(np.float32)),
            )
        return counts.reshape(draws * per_draw, -1)[:n]

    # ----------------------------------------------------------------- helpers
    def _library_for(
        self,
        shape: tuple[int, ...],
        library_size: Any,
        rng: np.random.Generator,
        expected: str = "",
    ) -> np.ndarray:
        if library_size is None:
            return rng.choice(self.library_sizes, shape, replace=True).astype(np.float32)
        try:
            values = np.asarray(library_size, dtype=np.float32)
        except (TypeError, ValueError):
            raise TypeError(
                f"library_size must be a number or an array of numbers, got {library_size!r}"
            ) from None
        try:
            library = np.broadcast_to(values, shape).copy()
        except ValueError:
            raise ValueError(
                f"library_size of shape {np.shape(library_size)} does not broadcast to "
                f"{shape}: pass a number or {expected or shape}, got shape "
                f"{np.shape(library_size)}"
            ) from None
        if not (np.isfinite(library).all() and (library > 0).all()):
            raise ValueError("library_size must be positive and finite")
        return library

    @torch.no_grad()
    def _simulate(
        self,
        dosage: np.ndarray,
        category: np.ndarray,
        library: np.ndarray,
        basal: torch.Tensor | None = None,
        genes: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Counts and likelihood means for k draws of the global latents.

        Parameters
        ----------
        dosage : ndarray, shape (k or 1, b, P)
        category : ndarray, shape (k or 1, b), int
        library : ndarray, shape (k, b)
        basal : Tensor, shape (k, b, L), optional
            Values of the module's basal latent site (``module.basal_site``) instead of
            prior draws.
        genes : ndarray of int, optional
            Generate only these genes' counts (``likelihood.sample_genes``).

        Returns
        -------
        counts, expected_counts : ndarrays, shape (k, b, G), float32
            Row ``[j, i]`` is cell ``i`` generated under the j-th global draw (G: the
            selected genes when ``genes`` is given).
        totals : ndarray, shape (k, b), float32
            Each cell's total count over all genes.
        """
        module = self.module
        n_draws, n_rows = library.shape
        n_all = len(self.gene_names)
        n_genes = n_all if genes is None else len(genes)
        picked = None if genes is None else torch.as_tensor(genes, device=self.device)
        globals_ = draw_globals(module, n_draws)
        rows_per_pass = max(1, min(n_rows, _CHUNK_ENTRIES // n_all))
        draws_per_pass = max(1, min(n_draws, _CHUNK_ENTRIES // (rows_per_pass * n_all)))
        counts = np.empty((n_draws, n_rows, n_genes), dtype=np.float32)
        expected = np.empty_like(counts)
        totals = np.empty((n_draws, n_rows), dtype=np.float32)

        def tensor(x: np.ndarray, draws: slice, rows: slice, dtype: torch.dtype) -> torch.Tensor:
            block = x[draws if x.shape[0] > 1 else slice(None), rows]
            return torch.as_tensor(block, dtype=dtype, device=self.device)

        for d0 in range(0, n_draws, draws_per_pass):
            draws = slice(d0, min(d0 + draws_per_pass, n_draws))
            values = {name: value[draws] for name, value in globals_.items()}
            for r0 in range(0, n_rows, rows_per_pass):
                rows = slice(r0, min(r0 + rows_per_pass, n_rows))
                n_block = rows.stop - rows.start
                if basal is not None:
                    values[module.basal_site] = basal[draws, rows].to(self.device)
                # with genes selected, the counts site is observed (zeros) so that the
                # model does not sample every gene; the likelihood then samples the genes
                observed = None
                if picked is not None:
                    observed = torch.zeros(n_block, n_all, device=self.device)
                args = (
                    observed,
                    tensor(dosage, draws, rows, torch.float32),
                    tensor(library, draws, rows, torch.float32),
                    tensor(category, draws, rows, torch.int64),
                    n_block,
                )
                with (
                    pyro.plate("draws", draws.stop - draws.start, dim=PARTICLE_DIM),
                    pyro.validation_enabled(False),
                ):
                    trace = poutine.trace(poutine.condition(module.model, data=values)).get_trace(
                        *args
                    )
                site = trace.nodes["counts"]
                shape = (draws.stop - draws.start, n_block, n_genes)
                mean = site["fn"].mean
                if picked is None:
                    value, total = site["value"], site["value"].sum(-1)
                else:
                    value, total = site["fn"].sample_genes(picked, mean=mean)
                    mean = mean[..., picked]
                counts[draws, rows] = value.reshape(shape).cpu().numpy()
                expected[draws, rows] = mean.reshape(shape).cpu().numpy()
                totals[draws, rows] = total.reshape(shape[:2]).cpu().numpy()
        return counts, expected, totals


def _cells_anndata(
    counts: np.ndarray,
    labels: np.ndarray,
    categories: list[str],
    library: np.ndarray,
    draw: np.ndarray,
    gene_names: Sequence[str],
) -> Any:
    import anndata as ad
    import scipy.sparse as sp

    obs = pd.DataFrame(
        {
            "perturbation": pd.Categorical(labels, categories=categories),
            "library_size": np.asarray(library, dtype=np.float32),
            "draw": np.asarray(draw),
        },
        index=pd.Index([f"generated{i}" for i in range(counts.shape[0])]),
    )
    matrix = sp.csr_matrix(counts)
    out = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=pd.Index(list(gene_names))))
    out.layers["counts"] = matrix.copy()
    return out


def _parts(label: str, delimiter: str) -> frozenset[str]:
    """The parts of a condition label, in no order (``"B+A"`` and ``"A+B"`` are equal)."""
    return frozenset(part.strip() for part in str(label).split(delimiter))
