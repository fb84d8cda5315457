"""One registry type for every family of interchangeable methods.

Advantage estimators, policy losses, scoring rules, calibration metrics, count
likelihoods and perturbation models are each a :class:`Registry`: adding a method is
one function and one ``register`` line, and looking up an unknown name raises an error
that lists the choices. This module imports nothing from the project.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_MISSING = object()

__all__ = ["Registry", "UnknownEntryError"]


class UnknownEntryError(KeyError, ValueError):
    """A name that is not registered. Both a ``KeyError`` (mapping lookups) and a
    ``ValueError`` (bad user input), so either ``except`` catches it."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry mapping with per-entry metadata.

    Parameters
    ----------
    kind : str
        What the entries are, in words (``"advantage estimator"``); used in errors.

    Examples
    --------
    >>> SCORES = Registry("scoring rule")
    >>> @SCORES.register("brier", bounded=True)
    ... def brier(q, y): ...
    >>> SCORES.get("brier") is brier
    True
    >>> SCORES.metadata("brier")
    {'bounded': True}
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._metadata: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ writing
    def register(
        self, name: str, entry: T | Any = _MISSING, *, overwrite: bool = False, **metadata: Any
    ) -> Any:
        """Add ``entry`` under ``name`` with optional metadata.

        Used directly (``REG.register("x", fn)``, returns ``fn``) or as a decorator
        (``@REG.register("x", flag=True)``). Registering a taken name raises unless
        ``overwrite=True``.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(value: T) -> T:
            if name in self._entries and not overwrite:
                raise ValueError(
                    f"a {self.kind} named {name!r} is already registered; "
                    "pass overwrite=True to replace it"
                )
            self._entries[name] = value
            self._metadata[name] = dict(metadata)
            return value

        if entry is _MISSING:
            return add
        return add(entry)

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry."""
        entry = self[name]
        del self._entries[name]
        del self._metadata[name]
        return entry

    # ------------------------------------------------------------------ reading
    def _unknown(self, name: Any) -> UnknownEntryError:
        return UnknownEntryError(
            f"unknown {self.kind} {name!r}; choose one of {sorted(self._entries)}"
        )

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise self._unknown(name) from None

    def get(self, name: str, default: Any = _MISSING) -> T:  # type: ignore[override]
        """The entry named ``name``; without ``default``, an unknown name raises
        :class:`UnknownEntryError` listing the registered names."""
        if name in self._entries:
            return self._entries[name]
        if default is _MISSING:
            raise self._unknown(name)
        return default

    def metadata(self, name: str) -> dict[str, Any]:
        """The metadata given when ``name`` was registered (a copy)."""
        self[name]  # raises for an unknown name
        return dict(self._metadata[name])

    def where(self, predicate: Callable[[dict[str, Any]], bool]) -> list[str]:
        """Names whose metadata satisfies ``predicate``, in registration order."""
        return [name for name, meta in self._metadata.items() if predicate(meta)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
