"""Setup and data access of the user-facing models: how an AnnData is registered,
parsed against the model's genes and perturbations, and turned into tensors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from bioreason._device import resolve_device
from bioreason.data import (
    MinibatchLoader,
    PerturbationData,
    PerturbationSetup,
    parse_perturbation_labels,
)

#: scvi-tools' covariate arguments of setup_anndata, refused with the reason
_COVARIATE_KEYS = ("batch_key", "categorical_covariate_keys", "continuous_covariate_keys")


def _differences(expected: Sequence[str], got: Sequence[str], what: str) -> str:
    missing = [g for g in expected if g not in set(got)]
    extra = [g for g in got if g not in set(expected)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} {what} missing from adata (e.g. {missing[:5]})")
    if extra:
        parts.append(f"{len(extra)} {what} not known to the model (e.g. {extra[:5]})")
    if not parts:
        parts.append(f"same {what} in a different order")
    return "; ".join(parts)


class SetupMixin:
    """``setup_anndata`` and the parsing of AnnData / condition labels for a model.

    Expects ``self.setup`` (:class:`~bioreason.data.PerturbationSetup`),
    ``self.gene_names``, ``self.perturbation_names``, ``self.adata`` and ``self.device``.
    """

    setup: PerturbationSetup
    gene_names: list[str]
    perturbation_names: list[str]
    device: torch.device

    @classmethod
    def setup_anndata(
        cls, adata: Any, setup: PerturbationSetup | None = None, **fields: Any
    ) -> PerturbationSetup:
        """Check ``adata`` and record how to read it in ``adata.uns``.

        Parameters
        ----------
        adata : AnnData
        setup : PerturbationSetup, optional
            How the screen is written (perturbation column, control label(s), counts
            layer, delimiter, dosage column); defaults to ``PerturbationSetup()``.
        **fields
            Fields of :class:`~bioreason.data.PerturbationSetup` given one by one
            (``perturbation_key=``, ``control=``, ``layer=``, ``delimiter=``,
            ``dosage_key=``); an unknown name raises. scvi-tools' ``batch_key``,
            ``categorical_covariate_keys`` and ``continuous_covariate_keys`` raise a
            ``ValueError`` saying why (docs/models.md, "Batches and covariates").

        Returns
        -------
        PerturbationSetup
            The setup written to ``adata.uns["_bioreason_setup"]``.
        """
        covariates = [name for name in _COVARIATE_KEYS if name in fields]
        if covariates:
            raise ValueError(
                f"{cls.__name__}.setup_anndata: {covariates} (scvi-tools' batch / covariate "
                "keys) are not supported: the perturbation models here have no batch or "
                "covariate input, and a batch effect would be learnt as part of the basal "
                "state (docs/models.md, 'Batches and covariates'). Correct the batch effect "
                "before training, or train one model per batch"
            )
        setup = PerturbationSetup.resolve(setup, **fields)
        PerturbationData.from_anndata(adata, setup=setup)  # raises on bad input
        setup.write(adata)
        return setup

    # ------------------------------------------------------------- data access
    def data_for(self, adata: Any | None = None) -> PerturbationData:
        """Parse ``adata`` (default: the model's own AnnData) with the model's setup.

        Checks that the genes are the model's, in order, and that every perturbation is
        one the model knows.

        Returns
        -------
        PerturbationData
            Dosage columns in the order of ``self.perturbation_names``.
        """
        if adata is None:
            adata = getattr(self, "adata", None)
        if adata is None:
            raise ValueError(
                "this model was loaded without an AnnData, so it has no cells of its own; "
                "pass one: model.data_for(adata), or load the model with "
                f"{type(self).__name__}.load(folder, adata=adata)"
            )
        if not hasattr(adata, "var_names") or not hasattr(adata, "obs"):
            raise TypeError(f"adata must be an AnnData, got {type(adata).__name__}")
        self._check_genes(list(map(str, adata.var_names)))
        setup = PerturbationSetup.read(adata) or self.setup
        try:
            return PerturbationData.from_anndata(
                adata,
                setup=setup,
                perturbation_names=self.perturbation_names,
                require_control=False,
            )
        except ValueError as err:
            if "not among the" in str(err):
                raise ValueError(
                    "adata has perturbations the model was not trained on and does not "
                    f"know: {err}. The model knows {len(self.perturbation_names)} perturbations "
                    f"(e.g. {self.perturbation_names[:5]}); remove those cells, or build the "
                    "model with perturbation_names= listing every perturbation."
                ) from None
            raise

    def categories_for(self, data: PerturbationData) -> torch.Tensor:
        """Category index of every cell of ``data`` (SVAE+; zeros for the other
        models), Tensor of shape (n_cells,), int64, on the model's device."""
        codes = self._cell_categories(data.cell_condition, data.is_control)
        return torch.as_tensor(codes, dtype=torch.int64, device=self.device)

    def training_conditions(self) -> list[str]:
        """Canonical labels of the non-control conditions of the model's AnnData."""
        data = self._own_data(
            f"load the model with {type(self).__name__}.load(folder, adata=adata) to list "
            "the conditions of its training cells"
        )
        table = data.condition_table()
        return [c for c in table.index if table.loc[c, "n_perturbations"] > 0]

    def to_device(self, device: str | torch.device) -> SetupMixin:
        """Move the module to ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``); returns self."""
        self.device = resolve_device(device)
        self.module.to(self.device)
        return self

    # ----------------------------------------------------------------- helpers
    def _own_data(self, fix: str) -> PerturbationData:
        """The model's own AnnData, parsed; a model loaded without one raises with
        ``fix`` (how to fix it for the calling method)."""
        if getattr(self, "adata", None) is None:
            raise ValueError(
                f"this model was loaded without an AnnData, so it has no cells of its own; {fix}"
            )
        return self.data_for(None)

    def _cells_for(self, adata: Any | None, method: str) -> PerturbationData:
        """``adata`` (default: the model's own) parsed for ``method``; at least one cell."""
        if adata is None:
            data = self._own_data(
                f"pass the cells: model.{method}(adata=...) with the model's genes, or load "
                f"the model with {type(self).__name__}.load(folder, adata=adata)"
            )
        else:
            data = self.data_for(adata)
        if data.n_cells == 0:
            raise ValueError(f"{method}: adata has no cells (0 rows); pass at least one cell")
        return data

    def _cell_categories(
        self, condition_names: Sequence[str], is_control: np.ndarray
    ) -> np.ndarray:
        """Category index per cell, shape (n,), int64 (only SVAE+ overrides this)."""
        return np.zeros(len(condition_names), dtype=np.int64)

    def _check_genes(self, genes: list[str]) -> None:
        if genes != self.gene_names:
            raise ValueError(
                f"adata's genes differ from the model's ({len(genes)} vs {len(self.gene_names)}): "
                f"{_differences(self.gene_names, genes, 'genes')}. Subset adata to the model's "
                "genes in the same order (adata[:, model.gene_names])."
            )

    def _loader(self, data: PerturbationData, batch_size: int, indices=None) -> MinibatchLoader:
        return MinibatchLoader(
            data, indices, batch_size=batch_size, shuffle=False, device=self.device
        )

    def _parse_conditions(
        self, perturbations: Sequence[str] | str
    ) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
        """Dosage rows (n, P), canonical labels, control flags, and the labels to show:
        each as it was asked for (``"SET+KLF1"`` stays ``"SET+KLF1"`` though its
        canonical label is ``"KLF1+SET"``; with several control labels, ``"ctrl2"``
        stays ``"ctrl2"``), without surrounding spaces."""
        if isinstance(perturbations, str):
            perturbations = [perturbations]
        if isinstance(perturbations, Mapping) or not isinstance(perturbations, Iterable):
            raise TypeError(
                "conditions must be a condition label or a list of condition labels "
                f"(e.g. ['control', 'A', 'A+B']), got {type(perturbations).__name__}"
            )
        asked = list(perturbations)
        if not asked:
            raise ValueError(
                "no conditions given; pass at least one condition label, e.g. "
                f"[{self.control_label!r}, {(self.perturbation_names or ['A'])[0]!r}]"
            )
        not_labels = [label for label in asked if not isinstance(label, str)]
        if not_labels:
            raise TypeError(
                f"condition labels must be strings, got {not_labels[:5]} "
                f"({type(not_labels[0]).__name__})"
            )
        key = "perturbations"
        try:
            parsed = parse_perturbation_labels(
                asked,
                control=self.setup.control,
                delimiter=self.setup.delimiter,
                perturbation_names=self.perturbation_names,
                key=key,
            )
        except ValueError as err:
            message = str(err).replace(f"obs[{key!r}] names", "the conditions asked for name")
            message = message.replace(f"obs[{key!r}]", "condition")
            raise ValueError(
                f"{message}. The model can only generate conditions built from its "
                f"{len(self.perturbation_names)} perturbations "
                f"(e.g. {self.perturbation_names[:5]})."
            ) from None
        labels = list(np.asarray(parsed.condition_names, dtype=object)[parsed.condition_codes])
        shown = [str(a).strip() for a in asked]
        return parsed.dosage.toarray(), labels, parsed.is_control, shown

    @property
    def control_label(self) -> str:
        """The (first) control label of the model's setup."""
        control = self.setup.control
        return control if isinstance(control, str) else control[0]
