"""The answer grid, read without importing :mod:`bioreason.rl` at import time.

``bioreason.rl`` imports ``bioreason.lm`` (the LM trainer), so ``bioreason.lm`` imports
:class:`~bioreason.rl.rewards.AnswerGrid` only when a function runs, never at module
level: either package can be imported first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bioreason.rl.rewards import AnswerGrid


def resolve_grid(grid: AnswerGrid | None, where: str) -> AnswerGrid:
    """``grid`` itself, or the default grid (integers 1..99, ``q = N / 100``) for None."""
    from bioreason.rl.rewards import AnswerGrid

    if grid is None:
        return AnswerGrid()
    if not isinstance(grid, AnswerGrid):
        raise TypeError(
            f"{where}: grid must be a bioreason.rl.AnswerGrid (or None for 1..99), got {grid!r}"
        )
    return grid


def grid_answers(grid: AnswerGrid) -> list[str]:
    """The grid's answers as the text a model writes: ``["1", "2", ..., "99"]``."""
    return [str(number) for number in range(grid.low, grid.high + 1)]
