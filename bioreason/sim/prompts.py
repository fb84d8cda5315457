"""How a prompt names a screen's perturbations (no heavy imports: configs validate with it)."""

from __future__ import annotations

__all__ = ["PERTURBATION_VERBS", "perturbation_type_of", "perturbation_verb"]

#: how a prompt names a perturbation of each screen type (``perturbation_type``)
PERTURBATION_VERBS = {
    "crispri": "knocking down",
    "crispra": "activating",
    "knockout": "knocking out",
    "overexpression": "overexpressing",
    "compound": "treating the cells with",
}


def perturbation_verb(perturbation_type: str) -> str:
    """The verb of ``perturbation_type`` (:data:`PERTURBATION_VERBS`): ``"crispri"`` ->
    ``"knocking down"``, ``"crispra"`` -> ``"activating"``, ...

    Raises
    ------
    ValueError
        An unknown type; the message lists the known ones.
    """
    key = str(perturbation_type).strip().lower()
    if key not in PERTURBATION_VERBS:
        raise ValueError(
            f"unknown perturbation_type {perturbation_type!r}; choose one of "
            f"{sorted(PERTURBATION_VERBS)} (or write your own wording in the template)"
        )
    return PERTURBATION_VERBS[key]


def perturbation_type_of(adata, key: str = "perturbation_type") -> str | None:
    """The screen's perturbation type recorded in ``adata.obs[key]`` (a key of
    :data:`PERTURBATION_VERBS`, e.g. ``"crispra"`` for the Norman 2019 cells), or None
    when the column is absent, names no known type, or holds more than one type."""
    if adata is None or key not in getattr(adata, "obs", {}):
        return None
    values = {str(v).strip().lower() for v in adata.obs[key].dropna().unique()}
    values.discard("")
    values.discard("control")
    if len(values) != 1:
        return None
    (value,) = values
    return value if value in PERTURBATION_VERBS else None
