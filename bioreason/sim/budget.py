"""The Monte Carlo budget of p*: how many posterior draws, cells and replicates the
outcome simulator spends per question, in one object."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Literal

from bioreason.config import Config

__all__ = ["METHODS", "SimulationBudget"]

#: how the simulator computes P(outcome | globals) per posterior draw
METHODS = ("auto", "fast", "brute")


@dataclass
class SimulationBudget(Config):
    """The Monte Carlo budget of :meth:`~bioreason.sim.OutcomeSimulator.probability`.

    Posterior draws are added in rounds of ``draws_per_round`` until every question's
    Monte Carlo standard error is at most ``target_se`` (after at least ``min_draws``) or
    ``max_draws`` is reached. Under each draw the simulator generates ``cells_per_draw``
    cells per condition (the fast path) or ``replicates_per_draw`` replicate experiments
    (the brute-force path); ``method`` picks the path.

    Attributes
    ----------
    target_se : float
        Monte Carlo standard error of p* at which a question stops drawing from the
        posterior.
    max_draws : int
        Posterior draws per question at most.
    min_draws : int, optional
        Posterior draws per question at least, even when ``target_se`` is reached
        earlier; None: ``min(16, max_draws)``.
    draws_per_round : int
        Posterior draws added per round for the questions that have not converged.
    cells_per_draw : int, optional
        Cells per condition simulated per posterior draw on the fast path; None: the
        replicate size with counterfactual (paired) generation, 4 x it without, at
        least 32.
    replicates_per_draw : int
        Replicate experiments simulated per posterior draw on the brute-force path.
    method : str
        ``auto`` (the fast path when the outcome has one and replicates have at least
        :data:`~bioreason.sim.FAST_MIN_CELLS` cells), ``fast`` or ``brute``.
    """

    target_se: float = 0.01
    max_draws: int = 2000
    min_draws: int | None = None
    draws_per_round: int = 16
    cells_per_draw: int | None = None
    replicates_per_draw: int = 8
    method: Literal["auto", "fast", "brute"] = "auto"

    def __post_init__(self) -> None:
        for name in ("max_draws", "draws_per_round", "replicates_per_draw"):
            _check_count(name, getattr(self, name))
        for name in ("min_draws", "cells_per_draw"):
            if getattr(self, name) is not None:
                _check_count(name, getattr(self, name), " (or None)")
        if isinstance(self.target_se, bool) or not isinstance(self.target_se, numbers.Real):
            raise TypeError(f"target_se must be a number, got {self.target_se!r}")
        if not self.target_se > 0:
            raise ValueError(f"target_se must be > 0, got {self.target_se}")
        if self.min_draws is not None and self.min_draws > self.max_draws:
            raise ValueError(
                f"min_draws must be between 1 and max_draws ({self.max_draws}), "
                f"got {self.min_draws}"
            )
        if self.method not in METHODS:
            raise ValueError(f"method must be 'auto', 'fast' or 'brute', got {self.method!r}")

    @property
    def draws_at_least(self) -> int:
        """``min_draws``, or ``min(16, max_draws)`` when it is None.

        Returns
        -------
        int
        """
        return min(16, self.max_draws) if self.min_draws is None else self.min_draws

    def replace(self, **changes: Any) -> SimulationBudget:
        """A copy with ``changes`` (field name -> value), validated.

        Raises
        ------
        TypeError
            A name that is not a field (the message lists the fields).

        Returns
        -------
        SimulationBudget
        """
        fields = [f.name for f in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise TypeError(
                f"{unknown} {'is not a field' if len(unknown) == 1 else 'are not fields'} "
                f"of SimulationBudget; its fields are {fields}"
            )
        return dataclasses.replace(self, **changes)


def _check_count(name: str, value: Any, orelse: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer{orelse}, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1{orelse}, got {value}")
