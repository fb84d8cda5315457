"""The tabular categorical policy of the synthetic calibration experiment.

Per category ``c``, a categorical distribution over the answer grid (0.01 .. 0.99 by
default) with logits ``theta[c]``. Sampling and the policy gradient are written out in
closed form so that a step over 100,000 rollouts takes a few milliseconds:

* sampling: inverse-CDF with a bucket "guide table" (the answer of a uniform draw is
  read off its bucket unless a CDF boundary falls inside that bucket; only those
  draws get a binary search);
* gradient: ``d/d theta[c, k] sum_i w_i log pi(a_i | c_i) = sum_{i: c_i=c} w_i
  (1[a_i = k] - pi[c, k])``, i.e. a scatter-add of the weights into (category, answer)
  cells minus ``pi`` times the per-category weight sums.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TabularPolicy"]

_GUIDE_BUCKETS = 1024  # a power of two: u * L and cdf * L are exact in floating point


class TabularPolicy:
    """Per-category categorical policy over a grid of answers.

    Parameters
    ----------
    n_categories : int
    answers : Tensor, shape (n_answers,)
        The value of each answer (e.g. probabilities 0.01..0.99).
    logits : Tensor, shape (n_categories, n_answers), optional
        Initial logits; zeros (the uniform policy) by default.
    """

    def __init__(self, n_categories: int, answers: Tensor, logits: Tensor | None = None) -> None:
        answers = torch.as_tensor(answers, dtype=torch.float64)
        if answers.ndim != 1 or answers.numel() < 2:
            raise ValueError("answers must be a 1-d tensor of at least 2 answer values")
        if n_categories < 1:
            raise ValueError(f"n_categories must be >= 1, got {n_categories}")
        self.answers = answers
        shape = (n_categories, answers.numel())
        if logits is None:
            logits = torch.zeros(shape, dtype=torch.float64)
        elif tuple(logits.shape) != shape:
            raise ValueError(f"logits must have shape {shape}, got {tuple(logits.shape)}")
        self.logits = torch.nn.Parameter(logits.detach().to(torch.float64).clone())

    @property
    def n_categories(self) -> int:
        return self.logits.shape[0]

    @property
    def n_answers(self) -> int:
        return self.logits.shape[1]

    def probs(self) -> Tensor:
        """``pi[c, k]``, shape (n_categories, n_answers)."""
        return torch.softmax(self.logits.detach(), dim=1)

    def mean_answer(self) -> Tensor:
        """``E_pi[answer | c]``, shape (n_categories,)."""
        return self.probs() @ self.answers

    def _check_categories(self, categories: Tensor) -> Tensor:
        categories = torch.as_tensor(categories, dtype=torch.long)
        if categories.ndim != 1:
            raise ValueError("categories must be a 1-d tensor of category indices")
        if categories.numel() and (categories.min() < 0 or categories.max() >= self.n_categories):
            raise ValueError(f"category indices must lie in [0, {self.n_categories})")
        return categories

    def sample(
        self, categories: Tensor, n: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw ``n`` answers per question.

        Parameters
        ----------
        categories : Tensor of int, shape (n_questions,)
        n : int
            Rollouts per question.

        Returns
        -------
        Tensor of int, shape (n_questions, n)
            Answer indices into ``self.answers``.
        """
        categories = self._check_categories(categories)
        n_cat, n_ans = self.logits.shape
        buckets = _GUIDE_BUCKETS
        cdf = torch.cumsum(self.probs(), dim=1)[:, :-1]  # the n_ans - 1 inner boundaries
        # Bucket of each boundary; guide[c, b] = #boundaries of c in buckets < b.
        boundary_bucket = (cdf * buckets).floor().long().clamp_(0, buckets - 1)
        boundary_bucket += torch.arange(n_cat)[:, None] * buckets
        per_bucket = torch.bincount(boundary_bucket.reshape(-1), minlength=n_cat * buckets)
        guide = per_bucket.view(n_cat, buckets).cumsum(1).reshape(-1) - per_bucket
        # One lookup table: answer index in the high bits, "bucket holds a boundary" in bit 0.
        table = guide * 2 + (per_bucket > 0)
        u = torch.rand(categories.numel(), n, dtype=torch.float64, generator=generator)
        bucket = (u * buckets).long().add_((categories * buckets)[:, None])
        code = table.index_select(0, bucket.reshape(-1)).view(bucket.shape)
        answer = code >> 1
        # Draws whose bucket holds a boundary: count boundaries <= u exactly.
        ambiguous = (code & 1).nonzero(as_tuple=True)
        if ambiguous[0].numel():
            rows = categories[ambiguous[0]]
            offsets = torch.arange(n_cat, dtype=torch.float64)[:, None] * 2.0
            flat = (cdf + offsets).reshape(-1)  # each row shifted by 2c keeps it sorted
            query = u[ambiguous] + rows * 2.0
            found = torch.searchsorted(flat, query, right=True) - rows * (n_ans - 1)
            answer[ambiguous] = found
        return answer

    def log_prob(self, categories: Tensor, answers: Tensor) -> Tensor:
        """``log pi(answer | category)`` without autograd, shape of ``answers``.

        ``answers`` has shape (n_questions, n) and ``categories`` (n_questions,).
        """
        log_pi = torch.log_softmax(self.logits.detach(), dim=1).reshape(-1)
        cells = categories[:, None] * self.n_answers + answers
        return log_pi.index_select(0, cells.reshape(-1)).view(cells.shape)

    def policy_gradient(self, categories: Tensor, answers: Tensor, weights: Tensor) -> Tensor:
        """Exact gradient of ``sum_i w_i log pi(a_i | c_i)`` w.r.t. the logits.

        Parameters
        ----------
        categories : Tensor of int, shape (n_questions,)
        answers : Tensor of int, shape (n_questions, n)
        weights : Tensor, shape (n_questions, n)
            Per-rollout weights (advantages, or clipped-surrogate weights).

        Returns
        -------
        Tensor, shape (n_categories, n_answers)
        """
        n_cat, n_ans = self.logits.shape
        weights = weights.to(torch.float64)
        cells = (categories[:, None] * n_ans + answers).reshape(-1)
        scattered = torch.bincount(cells, weights=weights.reshape(-1), minlength=n_cat * n_ans)
        per_category = torch.bincount(categories, weights=weights.sum(1), minlength=n_cat)
        return scattered.view(n_cat, n_ans) - self.probs() * per_category[:, None]

    def entropy_gradient(self) -> tuple[Tensor, Tensor]:
        """Entropy ``H[c]`` and its exact gradient ``-pi (log pi + H)``, shapes (C,), (C, K)."""
        log_pi = torch.log_softmax(self.logits.detach(), dim=1)
        pi = log_pi.exp()
        entropy = -(pi * log_pi).sum(1)
        return entropy, -pi * (log_pi + entropy[:, None])

    def kl_gradient(self, ref_logits: Tensor) -> tuple[Tensor, Tensor]:
        """``KL(pi_c || ref_c)`` and its exact gradient ``pi (log pi - log ref - KL)``."""
        log_pi = torch.log_softmax(self.logits.detach(), dim=1)
        log_ref = torch.log_softmax(ref_logits, dim=1)
        pi = log_pi.exp()
        kl = (pi * (log_pi - log_ref)).sum(1)
        return kl, pi * (log_pi - log_ref - kl[:, None])

    def predict(
        self, categories: Tensor, n_samples: int = 100, generator: torch.Generator | None = None
    ) -> Tensor:
        """A prediction per question: the mean of ``n_samples`` sampled answers.

        Returns
        -------
        Tensor, shape (n_questions,)
        """
        draws = self.sample(categories, n_samples, generator)
        return self.answers[draws].mean(1)
