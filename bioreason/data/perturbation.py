"""PerturbationData: counts, dosage matrix and library sizes parsed from an AnnData."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bioreason.data._matrix import is_backed_matrix, read_rows, to_csr_float32
from bioreason.data.labels import parse_perturbation_labels
from bioreason.data.setup import PerturbationSetup
from bioreason.data.validation import (
    check_anndata,
    check_no_empty_cells,
    get_layer,
    validate_counts,
    warn_mixed_experiments,
)


@dataclass
class PerturbationData:
    """A perturbation screen ready for a model.

    Attributes
    ----------
    counts : csr_matrix (n_cells, n_genes) float32, or a backed on-disk matrix
        Raw counts. For a backed AnnData (``read_h5ad(..., backed="r")`` with
        ``layer=None``) this stays on disk and :meth:`get_counts` reads rows.
    dosage : csr_matrix, shape (n_cells, n_perturbations), float32
        The dosage matrix D; a combination ``A+B`` sets two columns.
    perturbation_names : list of str, length n_perturbations
    library_size : ndarray, shape (n_cells,), float32
        Total counts per cell.
    condition_names, condition_codes, is_control
        Canonical condition labels, each cell's condition, and the control mask.
    cell_names, gene_names
        ``obs_names`` and ``var_names`` of the source AnnData.
    setup : PerturbationSetup
        How the labels and counts were read.
    """

    counts: Any
    dosage: sp.csr_matrix
    perturbation_names: list[str]
    library_size: np.ndarray
    condition_names: list[str]
    condition_codes: np.ndarray
    is_control: np.ndarray
    cell_names: pd.Index
    gene_names: pd.Index
    setup: PerturbationSetup = field(default_factory=PerturbationSetup)

    @classmethod
    def from_anndata(
        cls,
        adata: Any,
        setup: PerturbationSetup | dict[str, Any] | None = None,
        *,
        perturbation_names: Sequence[str] | None = None,
        validate: bool = True,
        require_control: bool = True,
        **setup_fields: Any,
    ) -> PerturbationData:
        """Parse ``adata`` into counts, dosage matrix and library sizes.

        Parameters
        ----------
        adata : AnnData
            Dense, sparse or backed (``backed="r"``) AnnData.
        setup : PerturbationSetup, optional
            Where labels, controls, counts and doses are; defaults to
            ``PerturbationSetup()`` (``obs["perturbation"]``, control label
            ``"control"``, ``layers["counts"]``, delimiter ``"+"``, no dosage column).
        perturbation_names : list of str, optional
            Fix the perturbation columns (for example those of a trained model).
        validate : bool
            Check that counts are finite, non-negative integers (chunk by chunk).
        require_control : bool
            Raise when no cell carries a control label.
        **setup_fields
            Fields of :class:`~bioreason.data.PerturbationSetup` that override those of
            ``setup``: ``perturbation_key``, ``control``, ``layer`` (``None`` = ``X``),
            ``delimiter``, ``dosage_key``. An unknown name raises a ``ValueError``.

        Raises
        ------
        TypeError
            When ``adata`` is not an AnnData.
        ValueError
            For no cells or no genes; a missing column or layer; bad labels or doses
            (see :func:`~bioreason.data.parse_perturbation_labels`); no control cells
            (with ``require_control``); no perturbed cells (unless
            ``perturbation_names`` is given); counts that are not non-negative integers;
            cells whose counts are all zero (drop them first, e.g. with
            :func:`~bioreason.data.prepare` and ``drop_empty_cells=True``).

        Warns
        -----
        UserWarning
            When an obs column that names the experiment (``dataset``, ``cell_type``,
            ``cell_line``, ``perturbation_type``) holds several values: the file may mix
            experiments whose labels would be merged.
        """
        check_anndata(adata, "PerturbationData.from_anndata")
        setup = PerturbationSetup.resolve(
            setup, where="PerturbationData.from_anndata", **setup_fields
        )
        perturbation_key, control = setup.perturbation_key, setup.control
        delimiter, layer, dosage_key = setup.delimiter, setup.layer, setup.dosage_key
        if adata.n_obs == 0:
            raise ValueError("adata has no cells (0 rows); subset it to the cells of a screen")
        if adata.n_vars == 0:
            raise ValueError(
                "adata has no genes (0 columns); keep the genes when subsetting "
                "(adata[cells, :]) or read a file with expression"
            )
        if perturbation_key not in adata.obs.columns:
            raise ValueError(
                f"perturbation column {perturbation_key!r} not found in adata.obs; "
                f"columns are {list(adata.obs.columns)}"
            )
        dosages = None
        if dosage_key is not None:
            if dosage_key not in adata.obs.columns:
                raise ValueError(
                    f"dosage column {dosage_key!r} not found in adata.obs; "
                    f"columns are {list(adata.obs.columns)}"
                )
            dosages = adata.obs[dosage_key].to_numpy()
        warn_mixed_experiments(adata)
        parsed = parse_perturbation_labels(
            adata.obs[perturbation_key].to_numpy(),
            control=control,
            delimiter=delimiter,
            dosages=dosages,
            perturbation_names=perturbation_names,
            key=perturbation_key,
            dosage_key=dosage_key,
            cell_names=adata.obs_names,
        )
        if require_control and not parsed.is_control.any():
            top = adata.obs[perturbation_key].astype(str).value_counts().index[:5].tolist()
            raise ValueError(
                f"no control cells: no label in obs[{perturbation_key!r}] equals {control!r}. "
                f"Most common labels: {top}. Pass control= with your control label(s)."
            )
        if perturbation_names is None and not parsed.perturbation_names:
            raise ValueError(
                f"no perturbed cells: every label in obs[{perturbation_key!r}] is a control "
                f"label ({sorted(set(adata.obs[perturbation_key].astype(str)))[:5]}), so there "
                "is no perturbation to learn. Check control= (it lists the control labels "
                "only), or pass perturbation_names= to read control cells for a model that "
                "knows its perturbations."
            )
        matrix = get_layer(adata, layer)
        cell_names = pd.Index(adata.obs_names)
        gene_names = pd.Index(adata.var_names)
        if validate:
            library_size = validate_counts(
                matrix, cell_names=cell_names, gene_names=gene_names, layer=layer
            )
        else:
            library_size = None
        counts = matrix if is_backed_matrix(matrix) else to_csr_float32(matrix, adata.n_obs)
        if library_size is None:
            library_size = _row_sums(counts, adata.n_obs)
        check_no_empty_cells(library_size, cell_names, layer)
        return cls(
            counts=counts,
            dosage=parsed.dosage,
            perturbation_names=parsed.perturbation_names,
            library_size=library_size,
            condition_names=parsed.condition_names,
            condition_codes=parsed.condition_codes,
            is_control=parsed.is_control,
            cell_names=cell_names,
            gene_names=gene_names,
            setup=setup,
        )

    @property
    def n_cells(self) -> int:
        return int(self.dosage.shape[0])

    @property
    def n_genes(self) -> int:
        return len(self.gene_names)

    @property
    def n_perturbations(self) -> int:
        return len(self.perturbation_names)

    @property
    def is_backed(self) -> bool:
        return is_backed_matrix(self.counts)

    @property
    def n_perturbations_per_cell(self) -> np.ndarray:
        """Number of distinct perturbations in each cell, shape (n_cells,)."""
        return np.diff(self.dosage.indptr)

    @property
    def cell_condition(self) -> np.ndarray:
        """Canonical condition label of each cell, shape (n_cells,)."""
        return np.asarray(self.condition_names, dtype=object)[self.condition_codes]

    def get_counts(self, rows: np.ndarray) -> sp.csr_matrix:
        """Counts of ``rows`` as CSR float32, shape (len(rows), n_genes)."""
        rows = np.asarray(rows)
        if rows.dtype == bool or not np.issubdtype(rows.dtype, np.integer) and rows.size:
            raise TypeError(
                f"rows must be integer cell indices, got {rows.dtype} values (for a boolean "
                "mask pass np.flatnonzero(mask))"
            )
        if rows.ndim != 1:
            raise ValueError(f"rows must be one-dimensional, got shape {rows.shape}")
        if rows.size and (rows.min() < -self.n_cells or rows.max() >= self.n_cells):
            raise ValueError(
                f"rows must lie in [0, {self.n_cells}), got {rows.min()}..{rows.max()}"
            )
        return read_rows(self.counts, rows.astype(np.int64))

    def condition_table(self) -> pd.DataFrame:
        """One row per condition: number of perturbations, cells, mean library size."""
        codes = self.condition_codes
        n_cells = np.bincount(codes, minlength=len(self.condition_names))
        library = np.bincount(codes, weights=self.library_size, minlength=len(n_cells))
        first_cell = np.full(len(n_cells), -1)
        first_cell[codes[::-1]] = np.arange(self.n_cells)[::-1]
        n_perts = np.asarray(self.n_perturbations_per_cell)[first_cell]
        return pd.DataFrame(
            {
                "condition": self.condition_names,
                "n_perturbations": n_perts,
                "n_cells": n_cells,
                "mean_library_size": library / np.maximum(n_cells, 1),
            }
        ).set_index("condition")

    def summary(self) -> str:
        table = self.condition_table()
        kinds = table["n_perturbations"].value_counts().sort_index()
        lines = [
            f"{self.n_cells} cells x {self.n_genes} genes, {self.n_perturbations} perturbations, "
            f"{len(table)} conditions",
            f"control cells: {int(self.is_control.sum())}",
        ]
        for k, count in kinds.items():
            name = {0: "control", 1: "single"}.get(int(k), f"{int(k)}-gene combination")
            lines.append(f"{name} conditions: {count}")
        lines.append(
            f"library size: median {np.median(self.library_size):.0f}, "
            f"range {self.library_size.min():.0f}-{self.library_size.max():.0f}"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"PerturbationData({self.n_cells} cells x {self.n_genes} genes, "
            f"{self.n_perturbations} perturbations, {len(self.condition_names)} conditions"
            f"{', backed' if self.is_backed else ''})"
        )


def _row_sums(matrix: Any, n_rows: int) -> np.ndarray:
    from bioreason.data._matrix import iter_row_chunks

    sums = np.zeros(n_rows, dtype=np.float32)
    for start, block in iter_row_chunks(matrix, n_rows):
        sums[start : start + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
    return sums
