"""Gauss-Lobatto-Legendre (GLL) points, weights and Lagrange interpolation on them.

All functions work on the reference interval [-1, 1] and support tensor orders 1..10
(``order + 1`` points per axis).
"""

from functools import lru_cache

import numpy as np

MAX_ORDER = 10


def _check_order(order: int) -> None:
    if not (isinstance(order, (int, np.integer)) and 1 <= order <= MAX_ORDER):
        raise ValueError(f"tensor order must be an integer in 1..{MAX_ORDER}, got {order!r}")


@lru_cache(maxsize=None)
def _gll(order: int) -> tuple[np.ndarray, np.ndarray]:
    n = order
    # Interior points: roots of P'_n, i.e. eigenvalues of the Jacobi matrix of the
    # Gauss-Jacobi(1,1) rule (Golub-Welsch), then one Newton polish on P'_n.
    k = np.arange(1, n - 1, dtype=float)
    offdiag = np.sqrt(k * (k + 2.0) / ((2.0 * k + 1.0) * (2.0 * k + 3.0)))
    interior = np.linalg.eigvalsh(np.diag(offdiag, 1) + np.diag(offdiag, -1)) if n > 1 else []
    x = np.concatenate(([-1.0], np.sort(interior), [1.0]))
    for _ in range(3):
        p, dp, d2p = _legendre_and_derivatives(n, x[1:-1])
        x[1:-1] -= dp / d2p
    p, _, _ = _legendre_and_derivatives(n, x)
    w = 2.0 / (n * (n + 1) * p**2)
    x.setflags(write=False)
    w.setflags(write=False)
    return x, w


def _legendre_and_derivatives(n: int, x: np.ndarray):
    """P_n(x), P_n'(x), P_n''(x) by the three-term recurrence (x may hold +-1)."""
    x = np.asarray(x, dtype=float)
    p0, p1 = np.ones_like(x), x.copy()
    if n == 0:
        return p0, np.zeros_like(x), np.zeros_like(x)
    for k in range(2, n + 1):
        p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
    # Derivatives from the Legendre ODE; exact formula away from the end points.
    with np.errstate(divide="ignore", invalid="ignore"):
        dp = n * (x * p1 - p0) / (x**2 - 1.0)
        d2p = (2.0 * x * dp - n * (n + 1) * p1) / (1.0 - x**2)
    return p1, dp, d2p


def gll_points_weights(order: int) -> tuple[np.ndarray, np.ndarray]:
    """GLL points ``(order+1,)`` in [-1, 1], ascending, and quadrature weights ``(order+1,)``.

    The rule integrates polynomials of degree <= ``2*order - 1`` exactly.
    """
    _check_order(order)
    return _gll(int(order))


def barycentric_weights(nodes: np.ndarray) -> np.ndarray:
    """Barycentric weights ``(n,)`` of the Lagrange basis on ``nodes``."""
    diff = nodes[:, None] - nodes[None, :]
    np.fill_diagonal(diff, 1.0)
    return 1.0 / np.prod(diff, axis=1)


def lagrange_basis(nodes: np.ndarray, x) -> np.ndarray:
    """Values ``(len(x), n)`` of the n Lagrange polynomials on ``nodes`` at points ``x``."""
    nodes = np.asarray(nodes, dtype=float)
    x = np.atleast_1d(np.asarray(x, dtype=float))
    out = np.empty((x.size, nodes.size))
    for a in range(nodes.size):
        others = np.delete(nodes, a)
        out[:, a] = np.prod((x[:, None] - others) / (nodes[a] - others), axis=1)
    return out


@lru_cache(maxsize=None)
def _derivative_matrix(order: int) -> np.ndarray:
    x, _ = _gll(order)
    c = barycentric_weights(x)
    diff = x[:, None] - x[None, :]
    np.fill_diagonal(diff, 1.0)
    d = (c[None, :] / c[:, None]) / diff
    np.fill_diagonal(d, 0.0)
    np.fill_diagonal(d, -d.sum(axis=1))  # rows of a derivative matrix sum to zero
    d.setflags(write=False)
    return d


def derivative_matrix(order: int) -> np.ndarray:
    """Lagrange derivative matrix ``D (n, n)`` on the GLL points: ``D[i, k] = l_k'(x_i)``.

    ``D @ f(x)`` is the exact derivative at the GLL points for polynomials of degree <= order.
    """
    _check_order(order)
    return _derivative_matrix(int(order))
