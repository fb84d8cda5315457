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
        if p_star.ndim != 1 or bool(((p_star < 0) | (p_star > 1)).any()):
            raise ValueError("p_star must be a 1-d tensor of probabilities in [0, 1]")
        self.p_star = p_star

    def sample(self, questions: Tensor, n: int, seed: int) -> Tensor:
        questions = torch.as_tensor(questions, dtype=torch.long)
        generator = torch.Generator().manual_seed(seed)
        p = self.p_star[questions][:, None].expand(-1, n)
        return torch.bernoulli(p, generator=generator)
