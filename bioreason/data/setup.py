"""PerturbationSetup: how a perturbation screen is written in an AnnData, defined once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from bioreason.config import Config
from bioreason.data.labels import as_controls

#: ``adata.uns`` key under which :meth:`PerturbationSetup.write` stores the setup
SETUP_KEY = "_bioreason_setup"

#: string that setups written before PerturbationSetup stored in place of ``None``
_LEGACY_NONE = "__none__"


@dataclass
class PerturbationSetup(Config):
    """Where the labels, controls and counts of a perturbation screen are in an AnnData.

    The one keyword list shared by :meth:`PerturbationData.from_anndata
    <bioreason.data.PerturbationData.from_anndata>`, :func:`~bioreason.data.prepare`,
    the models' ``setup_anndata``, the dataset registry and ``bioreason inspect``.

    Parameters
    ----------
    perturbation_key : str, default ``"perturbation"``
        ``adata.obs`` column with each cell's label: the control label, a perturbation
        ``A`` or a combination ``A+B``.
    control : str or list of str, default ``"control"``
        Label(s) of control cells, e.g. ``["control", "non-targeting"]``. ``""`` is a
        valid label (unlabelled cells). Labels are compared as text: an integer (``0``)
        is stored as its text (``"0"``) and matches an integer column's ``0``.
    layer : str or None, default ``"counts"``
        ``adata.layers`` key of the raw counts; ``None`` reads ``adata.X``.
    delimiter : str, default ``"+"``
        Separates the perturbations of a combination (``A+B``).
    dosage_key : str or None, default ``None``
        Optional ``adata.obs`` column of doses: one number per cell, or one per part of
        a combination joined by ``delimiter`` (``"1+0.5"``). ``None``: every dose is 1.

    Examples
    --------
    >>> setup = PerturbationSetup(control=["control", "ctrl"], layer=None)
    >>> PerturbationSetup.resolve(setup, delimiter="_").delimiter
    '_'
    """

    perturbation_key: str = "perturbation"
    control: str | int | list[str | int] = "control"
    layer: str | None = "counts"
    delimiter: str = "+"
    dosage_key: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.perturbation_key, str) or not self.perturbation_key:
            raise ValueError(
                "perturbation_key must be a non-empty obs column name, "
                f"got {self.perturbation_key!r}"
            )
        controls = as_controls(self.control)  # TypeError/ValueError naming control
        is_one = isinstance(self.control, (str, int, np.integer))
        self.control = controls[0] if is_one else list(controls)
        if not isinstance(self.delimiter, str) or not self.delimiter:
            raise ValueError(f"delimiter must be a non-empty string, got {self.delimiter!r}")
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer):
            raise ValueError(f"layer must be a layer name or None (adata.X), got {self.layer!r}")
        if self.dosage_key is not None and (
            not isinstance(self.dosage_key, str) or not self.dosage_key
        ):
            raise ValueError(
                f"dosage_key must be an obs column name or None, got {self.dosage_key!r}"
            )

    @property
    def controls(self) -> tuple[str, ...]:
        """The control label(s) as a tuple."""
        return (self.control,) if isinstance(self.control, str) else tuple(self.control)

    # ---------------------------------------------------------------- building
    @classmethod
    def resolve(
        cls,
        setup: PerturbationSetup | dict[str, Any] | None = None,
        *,
        where: str | None = None,
        **fields: Any,
    ) -> PerturbationSetup:
        """A setup from an optional base and field overrides.

        Parameters
        ----------
        setup : PerturbationSetup, dict or None
            The base; ``None`` means the defaults.
        where : str, optional
            Named in error messages (e.g. the calling function).
        **fields
            Fields that replace those of ``setup``; an unknown name raises a
            ``ValueError`` that names it and lists the valid fields.

        Returns
        -------
        PerturbationSetup
            A new object (``setup`` is not modified), validated field by field.
        """
        where = where or cls.__name__
        if setup is None:
            base: dict[str, Any] = {}
        elif isinstance(setup, cls):
            base = setup.to_dict()
        elif isinstance(setup, dict):
            base = dict(setup)
        else:
            raise TypeError(
                f"{where}: setup must be a PerturbationSetup, a dict of its fields or None, "
                f"got {setup!r}; pass single fields by keyword (perturbation_key=..., "
                "control=..., layer=...)"
            )
        return cls.from_dict({**base, **fields}, where=where)

    # --------------------------------------------------------------- storage
    def to_json(self) -> str:
        """The setup as a JSON object (``None`` is ``null``)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, *, where: str | None = None) -> PerturbationSetup:
        """Inverse of :meth:`to_json`."""
        where = where or cls.__name__
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not a JSON object ({err}): {text[:200]!r}") from None
        return cls.from_dict(values, where=where)

    def write(self, adata: Any, key: str = SETUP_KEY) -> None:
        """Store the setup in ``adata.uns[key]`` as a JSON string.

        A string survives ``write_h5ad``/``read_h5ad`` unchanged, ``None`` fields
        included (h5ad cannot store ``None`` inside a mapping).
        """
        adata.uns[key] = self.to_json()

    @classmethod
    def read(cls, adata: Any, key: str = SETUP_KEY) -> PerturbationSetup | None:
        """The setup stored in ``adata.uns[key]`` by :meth:`write`, or ``None`` if absent.

        Also reads the older format: a mapping of the fields with the string
        ``"__none__"`` in place of ``None`` (lists may come back from h5ad as arrays).
        """
        stored = adata.uns.get(key)
        if stored is None:
            return None
        where = f"adata.uns[{key!r}]"
        if isinstance(stored, (str, bytes)):
            return cls.from_json(
                stored if isinstance(stored, str) else stored.decode(), where=where
            )
        if hasattr(stored, "items"):
            return cls.from_dict({k: _legacy_value(v) for k, v in stored.items()}, where=where)
        raise ValueError(
            f"{where} holds {type(stored).__name__}, not a stored PerturbationSetup; "
            "run setup_anndata again"
        )


def _legacy_value(value: Any) -> Any:
    """One value of an old-format setup mapping, as the plain Python value."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value == _LEGACY_NONE:
        return None
    if isinstance(value, (list, tuple)):
        return [v.decode() if isinstance(v, bytes) else str(v) for v in value]
    return value
