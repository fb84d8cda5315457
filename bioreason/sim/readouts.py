"""Readouts: what an outcome measures in a cell -- one gene, or a program (a weighted gene set).

A cell's score for a readout is the weighted mean of its log-normalized expression,
``log1p(10,000 * counts / total counts)``, over the readout's genes (weights sum to 1).
Programs come from the user (gene lists, e.g. marker genes) or are learned from the data
with non-negative matrix factorization (:func:`learn_programs`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Readout",
    "ReadoutSet",
    "cell_scores",
    "gene_readout",
    "learn_programs",
    "log_normalize",
    "program_readout",
]

#: the total each cell is scaled to before ``log1p`` (scanpy's ``normalize_total`` default)
TARGET_SUM = 1e4


@dataclass(frozen=True)
class Readout:
    """A gene or a program: genes with non-negative weights that sum to 1.

    Attributes
    ----------
    name : str
        The name questions use (a gene's own name for a gene readout).
    genes : tuple of str
    weights : tuple of float, same length as ``genes``
    kind : ``"gene"`` or ``"program"``
    """

    name: str
    genes: tuple[str, ...]
    weights: tuple[float, ...]
    kind: str = "program"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a readout needs a non-empty name")
        if len(self.genes) == 0:
            raise ValueError(f"readout {self.name!r} has no genes")
        if len(self.genes) != len(self.weights):
            raise ValueError(
                f"readout {self.name!r}: {len(self.genes)} genes but {len(self.weights)} weights"
            )
        if len(set(self.genes)) != len(self.genes):
            raise ValueError(f"readout {self.name!r} lists a gene twice")
        weights = np.asarray(self.weights, dtype=float)
        if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"readout {self.name!r}: weights must be finite, non-negative and not all zero"
            )
        if self.kind not in ("gene", "program"):
            raise ValueError(f"readout kind must be 'gene' or 'program', got {self.kind!r}")
        object.__setattr__(self, "weights", tuple(float(w) for w in weights / weights.sum()))

    @property
    def markers(self) -> list[str]:
        """Genes by decreasing weight."""
        order = np.argsort(-np.asarray(self.weights), kind="stable")
        return [self.genes[i] for i in order]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "genes": list(self.genes),
            "weights": list(self.weights),
            "kind": self.kind,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Readout:
        return cls(
            name=str(values["name"]),
            genes=tuple(str(g) for g in values["genes"]),
            weights=tuple(float(w) for w in values["weights"]),
            kind=str(values.get("kind", "program")),
        )


def gene_readout(gene: str) -> Readout:
    """The readout of one gene's log-normalized expression."""
    return Readout(name=str(gene), genes=(str(gene),), weights=(1.0,), kind="gene")


def program_readout(
    name: str, genes: Sequence[str], weights: Sequence[float] | None = None
) -> Readout:
    """A program from a gene list (equal weights unless ``weights`` are given)."""
    genes = [str(g) for g in genes]
    weights = [1.0] * len(genes) if weights is None else [float(w) for w in weights]
    return Readout(name=str(name), genes=tuple(genes), weights=tuple(weights), kind="program")


def _suggest(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=3)
    return f" (did you mean {close}?)" if close else ""


class ReadoutSet:
    """Readouts resolved against a model's genes: the weight matrix that scores cells.

    Parameters
    ----------
    gene_names : list of str, length G
    readouts : iterable of Readout or str
        A string is a gene readout of that gene.

    Attributes
    ----------
    names : list of str, length R
    weights : ndarray, shape (G, R), float32 -- column r holds readout r's weights
    """

    def __init__(self, gene_names: Sequence[str], readouts: Iterable[Readout | str] = ()) -> None:
        self.gene_names = [str(g) for g in gene_names]
        self._gene_index = {g: i for i, g in enumerate(self.gene_names)}
        self._readouts: dict[str, Readout] = {}
        for readout in readouts:
            self.add(readout)

    def add(self, readout: Readout | str) -> Readout:
        if isinstance(readout, str):
            readout = gene_readout(readout)
        if not isinstance(readout, Readout):
            raise TypeError(f"a readout is a Readout or a gene name, got {type(readout).__name__}")
        missing = [g for g in readout.genes if g not in self._gene_index]
        if missing:
            hint = _suggest(missing[0], self.gene_names)
            raise ValueError(
                f"readout {readout.name!r}: gene(s) {missing[:5]} are not among the model's "
                f"{len(self.gene_names)} genes{hint}"
            )
        existing = self._readouts.get(readout.name)
        if existing is not None and existing != readout:
            raise ValueError(f"two different readouts are named {readout.name!r}")
        self._readouts[readout.name] = readout
        return readout

    def get(self, name: str) -> Readout:
        """The readout called ``name``; a gene of the model becomes a gene readout."""
        if name in self._readouts:
            return self._readouts[name]
        if name in self._gene_index:
            return self.add(name)
        known = list(self._readouts)
        raise ValueError(
            f"unknown readout {name!r}{_suggest(name, known + self.gene_names)}: neither a "
            f"program ({known[:10]}{'...' if len(known) > 10 else ''}) nor one of the model's "
            f"{len(self.gene_names)} genes"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._readouts or name in self._gene_index

    @property
    def readouts(self) -> list[Readout]:
        return list(self._readouts.values())

    def weights(self, names: Sequence[str]) -> np.ndarray:
        """Weight matrix of ``names``, shape (G, len(names)), float32."""
        matrix = np.zeros((len(self.gene_names), len(names)), dtype=np.float32)
        for column, name in enumerate(names):
            readout = self.get(name)
            rows = [self._gene_index[g] for g in readout.genes]
            matrix[rows, column] = readout.weights
        return matrix


def log_normalize(
    counts: np.ndarray, target_sum: float = TARGET_SUM, totals: np.ndarray | None = None
) -> np.ndarray:
    """``log1p(target_sum * counts / total)`` along the last axis (genes); a cell without
    counts stays 0. Any leading shape; returns float32 of the same shape.

    ``totals`` (the leading shape): each cell's total count, when ``counts`` holds only
    some of its genes (default: ``counts.sum(-1)``)."""
    counts = np.asarray(counts, dtype=np.float32)
    if totals is None:
        total = counts.sum(axis=-1, keepdims=True)
    else:
        total = np.asarray(totals, dtype=np.float32)[..., None]
        if total.shape[:-1] != counts.shape[:-1]:
            raise ValueError(
                f"totals of shape {total.shape[:-1]} do not match counts of shape {counts.shape}"
            )
    scale = np.divide(np.float32(target_sum), total, out=np.zeros_like(total), where=total > 0)
    return np.log1p(counts * scale)


def cell_scores(
    counts: np.ndarray, weights: np.ndarray, totals: np.ndarray | None = None
) -> np.ndarray:
    """Readout scores of cells.

    Parameters
    ----------
    counts : ndarray, shape (..., G)
    weights : ndarray, shape (G, R) (from :meth:`ReadoutSet.weights`)
    totals : ndarray, shape (...), optional
        Each cell's total count when ``counts`` holds only some of its genes.

    Returns
    -------
    ndarray, shape (..., R), float32
    """
    normalized = log_normalize(counts, totals=totals)
    weights = np.asarray(weights, dtype=np.float32)
    # one 2-D product (BLAS) instead of numpy's stacked matmul over the leading axes
    flat = normalized.reshape(-1, normalized.shape[-1]) @ weights
    return flat.reshape(*normalized.shape[:-1], weights.shape[-1])


def learn_programs(
    adata: Any,
    n_programs: int = 10,
    n_markers: int = 15,
    layer: str | None = "counts",
    seed: int = 0,
    max_iter: int = 400,
    prefix: str = "program",
) -> list[Readout]:
    """Gene programs learned by NMF on log-normalized cells (control and perturbed).

    ``sklearn.decomposition.NMF`` factorizes the cells x genes matrix into
    ``n_programs`` non-negative programs; each program keeps its ``n_markers`` genes of
    largest loading as markers, weighted by their loadings.

    Parameters
    ----------
    adata : AnnData with raw counts in ``layers[layer]`` (``X`` when layer is None)
    n_programs, n_markers : int
    seed, max_iter : passed to NMF

    Returns
    -------
    list of Readout (kind ``"program"``), named ``f"{prefix}{k}"``.
    """
    import scipy.sparse as sp
    from sklearn.decomposition import NMF

    if n_programs < 1 or n_markers < 1:
        raise ValueError(f"n_programs and n_markers must be >= 1, got {n_programs}, {n_markers}")
    if layer is not None and layer not in adata.layers:
        raise ValueError(
            f"layer {layer!r} not in adata.layers ({list(adata.layers)}); pass layer=None to use X"
        )
    matrix = adata.X if layer is None else adata.layers[layer]
    counts = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    if n_programs > min(counts.shape):
        raise ValueError(f"n_programs={n_programs} exceeds min(cells, genes) = {min(counts.shape)}")
    normalized = log_normalize(counts)
    expressed = normalized.sum(axis=0) > 0
    nmf = NMF(n_components=n_programs, init="nndsvda", random_state=seed, max_iter=max_iter)
    nmf.fit(normalized[:, expressed])
    genes = np.asarray(adata.var_names)[expressed]
    programs = []
    for k, loading in enumerate(nmf.components_):
        top = np.argsort(-loading, kind="stable")[: min(n_markers, loading.size)]
        top = top[loading[top] > 0]
        if top.size == 0:
            raise ValueError(f"NMF program {k} has no positive loadings; use fewer programs")
        programs.append(
            program_readout(f"{prefix}{k}", [str(g) for g in genes[top]], loading[top].tolist())
        )
    return programs
