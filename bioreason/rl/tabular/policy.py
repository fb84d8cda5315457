"""The tabular categorical policy of the synthetic calibration experiment.

Per category ``c``, a categorical distribution over the answer grid (0.01 .. 0.99 by
default) with logits ``theta[c]``. Sampling and the policy gradient are written out in
closed form so that a step over 100,000 rollouts is a handful of vectorized operations:

* sampling: inverse-CDF with a bucket "guide table" (the answer of a uniform draw is
  read off its bucket unless a CDF boundary falls inside that bucket; only those
  draws get a binary search);
* gradient: ``d/d theta[c, k] sum_i w_i log pi(a_i | c_i) = sum_{i: c_i=c} w_i
  (1[a_i = k] - pi[c, k])``, i.e. a scatter-add of the weights into (category, answer)
  cells minus ``pi`` times the per-category weight sums.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from bioreason.rl._checks import check_int

__all__ = ["TabularPolicy"]

_GUIDE_BUCKETS = 1024  # a power of two: u * L and cdf * L are exact in floating point


def _indices(values: Any, name: str, where: str) -> Tensor:
    """Integer indices as a long tensor; fractional or non-numeric input is refused
    (converting 1.7 to 1 would silently pick another entry)."""
    tensor = torch.as_tensor(values)
    if tensor.is_floating_point() or tensor.is_complex() or tensor.dtype == torch.bool:
        raise TypeError(f"{where}: {name} must be integer indices, got dtype {tensor.dtype}")
    return tensor.to(torch.long)


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
        where = "TabularPolicy"
        n_categories = check_int(n_categories, "n_categories", where, 1)
        answers = torch.as_tensor(answers, dtype=torch.float64)
        if answers.ndim != 1 or answers.numel() < 2:
            raise ValueError("answers must be a 1-d tensor of at least 2 answer values")
        finite = torch.isfinite(answers)
        if not bool(finite.all()):
            index = int((~finite).nonzero()[0])
            raise ValueError(
                f"{where}: answers[{index}] = {answers[index].item()}: answers must be finite"
            )
        self.answers = answers
        shape = (n_categories, answers.numel())
        if logits is None:
            logits = torch.zeros(shape, dtype=torch.float64)
        else:
            logits = torch.as_tensor(logits)
            if tuple(logits.shape) != shape:
                raise ValueError(f"logits must have shape {shape}, got {tuple(logits.shape)}")
            if not bool(torch.isfinite(logits).all()):
                raise ValueError(f"{where}: logits must be finite (no NaN or inf)")
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
        categories = _indices(categories, "categories", "TabularPolicy")
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
        n = check_int(n, "n", "TabularPolicy.sample", 1)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"TabularPolicy.sample: generator must be a torch.Generator or None, "
                f"got {generator!r}"
            )
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

        ``answers`` has shape (n_questions, n) and ``categories`` (n_questions,), both
        integer indices (checked for shape and dtype; ranges are not, on this hot path).
        """
        categories, answers = self._check_rollouts(categories, answers, "log_prob")
        log_pi = torch.log_softmax(self.logits.detach(), dim=1).reshape(-1)
        cells = categories[:, None] * self.n_answers + answers
        return log_pi.index_select(0, cells.reshape(-1)).view(cells.shape)

    def _check_rollouts(self, categories: Tensor, answers: Tensor, where: str):
        where = f"TabularPolicy.{where}"
        categories = _indices(categories, "categories", where)
        answers = _indices(answers, "answers", where)
        if categories.ndim != 1 or answers.ndim != 2 or answers.shape[0] != categories.shape[0]:
            raise ValueError(
                f"{where}: categories must have shape (n_questions,) and answers "
                f"(n_questions, n), got {tuple(categories.shape)} and {tuple(answers.shape)}"
            )
        # an index out of range would address another category's cell: one min/max pass
        for name, index, size in (
            ("categories", categories, self.n_categories),
            ("answers", answers, self.n_answers),
        ):
            if index.numel():
                low, high = (bound.item() for bound in torch.aminmax(index))
                if low < 0 or high >= size:
                    raise ValueError(
                        f"{where}: {name} must be indices in [0, {size}), got values in "
                        f"[{low}, {high}]"
                    )
        return categories, answers

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
        categories, answers = self._check_rollouts(categories, answers, "policy_gradient")
        weights = torch.as_tensor(weights)
        if weights.shape != answers.shape:
            raise ValueError(
                f"TabularPolicy.policy_gradient: weights must have the shape of answers "
                f"{tuple(answers.shape)}, got {tuple(weights.shape)}"
            )
        n_cat, n_ans = self.logits.shape
        weights = weights.to(torch.float64)
        if not math.isfinite(weights.sum().item()) and not bool(torch.isfinite(weights).all()):
            row = int((~torch.isfinite(weights)).any(1).nonzero()[0])
            raise ValueError(
                f"TabularPolicy.policy_gradient: weights of question {row} are not finite"
            )
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
        """``KL(pi_c || ref_c)`` and its exact gradient ``pi (log pi - log ref - KL)``.

        ``ref_logits``: shape (n_categories, n_answers), like the policy's."""
        if tuple(ref_logits.shape) != tuple(self.logits.shape):
            raise ValueError(
                f"TabularPolicy.kl_gradient: ref_logits must have shape "
                f"{tuple(self.logits.shape)}, got {tuple(ref_logits.shape)}"
            )
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
        n_samples = check_int(n_samples, "n_samples", "TabularPolicy.predict", 1)
        draws = self.sample(categories, n_samples, generator)
        return self.answers[draws].mean(1)
