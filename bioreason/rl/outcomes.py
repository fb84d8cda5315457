"""How a trainer gets experimental outcomes: a small protocol.

Anything with ``.sample(questions, n, seed)`` returning 0/1 outcomes of shape
``(len(questions), n)`` can be plugged in: a simulator built on a perturbation model, a
table of recorded assay results, or :class:`BernoulliOutcomes` for known probabilities.
``bioreason.rl`` never imports the simulators themselves.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["BernoulliOutcomes", "OutcomeSource"]


@runtime_checkable
class OutcomeSource(Protocol):
    def sample(self, questions: Tensor, n: int, seed: int) -> Tensor:
        """0/1 outcomes, shape ``(len(questions), n)``."""
        ...


class BernoulliOutcomes:
    """Outcomes of questions with known probabilities ``p_star``.

    Parameters
    ----------
    p_star : Tensor, shape (n_questions,)
        ``P(outcome = 1)`` of each question.
    """

    def __init__(self, p_star: Tensor) -> None:
        p_star = torch.as_tensor(p_star, dtype=torch.float64)
        if p_star.ndim != 1:
            raise ValueError(
                "p_star must be a 1-d tensor of probabilities in [0, 1], one per question, "
                f"got shape {tuple(p_star.shape)}"
            )
        inside = (p_star >= 0) & (p_star <= 1)  # False for NaN
        if not bool(inside.all()):
            index = int((~inside).nonzero()[0])
            raise ValueError(
                f"BernoulliOutcomes: p_star[{index}] = {p_star[index].item()}: p_star must be "
                "probabilities in [0, 1] (no NaN)"
            )
        self.p_star = p_star

    def sample(self, questions: Tensor, n: int, seed: int) -> Tensor:
        """0/1 outcomes, shape ``(len(questions), n)``: ``questions`` are integer indices
        into ``p_star``, ``n`` >= 1 draws each, ``seed`` an integer."""
        where = "BernoulliOutcomes.sample"
        questions = torch.as_tensor(questions)
        if questions.is_floating_point() or questions.is_complex() or questions.ndim != 1:
            raise TypeError(
                f"{where}: questions must be a 1-d tensor of integer indices, got "
                f"{questions.dtype} of shape {tuple(questions.shape)}"
            )
        questions = questions.to(torch.long)
        n_questions = self.p_star.numel()
        if questions.numel() and (questions.min() < 0 or questions.max() >= n_questions):
            raise ValueError(f"{where}: questions must be indices in [0, {n_questions})")
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"{where}: n must be an integer >= 1, got {n!r}")
        if n < 1:
            raise ValueError(f"{where}: n must be an integer >= 1, got {n}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"{where}: seed must be an integer, got {seed!r}")
        generator = torch.Generator().manual_seed(seed)
        p = self.p_star[questions][:, None].expand(-1, n)
        return torch.bernoulli(p, generator=generator)
