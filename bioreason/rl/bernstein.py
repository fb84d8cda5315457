"""Bernstein polynomials: the basis in which group-based estimators' objectives live.

Davis & Recht (2025): with M rollouts and 0/1 rewards, an estimator whose per-rollout
weight is ``Z_i = f(R_i, S_i)`` (``S_i`` the leave-one-out success count) has expected
update ``h_M'(p) grad p`` with ``h_M'(p) = sum_s a_s b_{s, M-1}(p)`` and
``a_s = f(1, s) - f(0, s)``; ``b_{s, n}`` is the Bernstein basis of degree ``n``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from bioreason.rl._checks import check_int, unit_interval

__all__ = [
    "bernstein_basis",
    "bernstein_eval",
    "bernstein_integral",
    "fit_bernstein_coefficients",
]


def _coefficients(coefficients: Any, where: str) -> Tensor:
    coefficients = torch.as_tensor(coefficients, dtype=torch.float64)
    if coefficients.ndim != 1 or coefficients.numel() == 0:
        raise ValueError(
            f"{where}: coefficients must be a non-empty 1-d tensor, shape (degree + 1,), "
            f"got shape {tuple(coefficients.shape)}"
        )
    if not bool(torch.isfinite(coefficients).all()):
        raise ValueError(f"{where}: coefficients must be finite, got {coefficients.tolist()}")
    return coefficients


def bernstein_basis(t: Tensor, degree: int) -> Tensor:
    """Bernstein basis ``b_{s,d}(t) = C(d, s) t^s (1 - t)^(d - s)``.

    Parameters
    ----------
    t : Tensor, shape (n,)
        Points in [0, 1].
    degree : int
        ``d >= 0``.

    Returns
    -------
    Tensor, shape (n, degree + 1)
    """
    degree = check_int(degree, "degree", "bernstein_basis", 0)
    t = unit_interval(t, "t", "bernstein_basis").reshape(-1, 1)
    s = torch.arange(degree + 1, dtype=torch.float64)
    log_binom = (
        torch.lgamma(torch.tensor(degree + 1.0, dtype=torch.float64))
        - torch.lgamma(s + 1)
        - torch.lgamma(degree - s + 1)
    )
    # xlogy gives 0 * log 0 = 0, so the endpoints t = 0 and t = 1 are exact.
    return torch.exp(log_binom + torch.xlogy(s, t) + torch.xlogy(degree - s, 1 - t))


def bernstein_eval(coefficients: Tensor, t: Tensor) -> Tensor:
    """``sum_s a_s b_{s, d}(t)`` with ``d = len(coefficients) - 1``; shape of ``t`` kept.

    ``coefficients``: finite, shape (d + 1,); ``t``: points in [0, 1]."""
    coefficients = _coefficients(coefficients, "bernstein_eval")
    t = unit_interval(t, "t", "bernstein_eval")
    basis = bernstein_basis(t.reshape(-1), coefficients.numel() - 1)
    return (basis @ coefficients).reshape(t.shape)


def bernstein_integral(coefficients: Tensor, t: Tensor) -> Tensor:
    """``int_0^t sum_s a_s b_{s,d}(x) dx`` in closed form.

    Uses ``int_0^t b_{s,d} = (1 / (d + 1)) sum_{j > s} b_{j, d + 1}(t)``.
    ``coefficients``: finite, shape (d + 1,); ``t``: points in [0, 1], shape kept.
    """
    coefficients = _coefficients(coefficients, "bernstein_integral")
    t = unit_interval(t, "t", "bernstein_integral")
    degree = coefficients.numel() - 1
    basis = bernstein_basis(t.reshape(-1), degree + 1)  # (n, d + 2)
    # tail[:, s] = sum_{j >= s + 1} b_{j, d+1}
    tail = basis.flip(1).cumsum(1).flip(1)[:, 1:]
    return (tail @ coefficients / (degree + 1)).reshape(t.shape)


def fit_bernstein_coefficients(
    h_prime: Callable[[np.ndarray], np.ndarray],
    degree: int,
    n_nodes: int | None = None,
    tolerance: float = 1e-9,
) -> Tensor:
    """Coefficients ``a`` with ``sum_s a_s b_{s,d}(t) ~= h'(t)`` on (0, 1).

    1. Least squares at Gauss-Legendre nodes: when ``h'`` is a polynomial of degree
       ``<= d`` it lies in the span and is reproduced exactly (relative residual below
       ``tolerance``); those coefficients are returned.
    2. Otherwise the least-squares coefficients of a non-polynomial ``h'`` (e.g. ``1/t``)
       oscillate in sign and size, which makes a useless, high-variance estimator. We
       then use the Bernstein-type approximant at interior nodes,
       ``a_s = h'((s + 1) / (d + 2))``: finite for derivatives with poles at 0 or 1,
       positive wherever ``h'`` is, and convergent to ``h'`` on compacts of (0, 1) as
       ``d`` grows. For ``h = log t`` it gives ``(M + 1) / (s + 1)``, which is
       rejection sampling's ``M / (s + 1)`` up to a constant factor.

    Returns
    -------
    Tensor, shape (degree + 1,)
    """
    degree = check_int(degree, "degree", "fit_bernstein_coefficients", 0)
    if n_nodes is not None and (
        isinstance(n_nodes, bool) or not isinstance(n_nodes, (int, np.integer)) or n_nodes < 1
    ):
        raise ValueError(
            f"fit_bernstein_coefficients: n_nodes must be an integer >= 1, got {n_nodes!r}"
        )
    n_nodes = n_nodes or max(4 * (degree + 1), 64)
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    t = (nodes + 1) / 2
    target = np.asarray(h_prime(t), dtype=np.float64)
    if target.shape != t.shape or not np.all(np.isfinite(target)):
        raise ValueError(
            "h_prime must map an array of points in (0, 1) to finite values of the same shape"
        )
    design = bernstein_basis(torch.from_numpy(t), degree).numpy()
    root_w = np.sqrt(weights / 2)[:, None]
    coefficients, *_ = np.linalg.lstsq(design * root_w, target * root_w[:, 0], rcond=None)
    residual = np.linalg.norm((design @ coefficients - target) * root_w[:, 0])
    scale = np.linalg.norm(target * root_w[:, 0])
    if residual <= tolerance * max(scale, 1e-300):
        return torch.from_numpy(coefficients)
    interior = (np.arange(degree + 1) + 1.0) / (degree + 2)
    return torch.from_numpy(np.asarray(h_prime(interior), dtype=np.float64))
