"""Quadrilateral spectral elements: GLL point positions and geometric factors.

An element is the bilinear image of the reference square [-1, 1]^2 with its four corners
given counterclockwise. Element-local node ``a = i + n*j`` (``n = order + 1``) sits at the
reference point ``(xi_i, eta_j)``; arrays indexed per element point have shape ``(E, n, n)``
ordered ``[e, j, i]``.
"""

from dataclasses import dataclass

import numpy as np

from .gll import derivative_matrix, gll_points_weights, lagrange_basis


@dataclass(frozen=True)
class ElementGeometry:
    """Per-element-point geometry of E quads of one order, all arrays ``(E, n, n)``.

    ``jw = w_i w_j det(J)`` (m^2) is the quadrature weight; ``g11, g12, g22`` are the entries
    of ``jw * J^-1 J^-T``, the metric the stiffness action needs (dimensionless).
    """

    order: int
    x: np.ndarray
    y: np.ndarray
    jw: np.ndarray
    g11: np.ndarray
    g12: np.ndarray
    g22: np.ndarray


def bilinear_map(corners: np.ndarray, xi, eta) -> tuple[np.ndarray, np.ndarray]:
    """Physical coordinates of reference points: corners ``(E, 4, 2)``, xi/eta broadcastable.

    Returns x, y of shape ``(E,) + broadcast(xi, eta).shape``.
    """
    xi, eta = np.broadcast_arrays(np.asarray(xi, float), np.asarray(eta, float))
    shape = [(1 - xi) * (1 - eta), (1 + xi) * (1 - eta), (1 + xi) * (1 + eta), (1 - xi) * (1 + eta)]
    ex = sum(corners[:, k, 0].reshape((-1,) + (1,) * xi.ndim) * shape[k] for k in range(4)) / 4
    ey = sum(corners[:, k, 1].reshape((-1,) + (1,) * xi.ndim) * shape[k] for k in range(4)) / 4
    return ex, ey


def element_geometry(corners: np.ndarray, order: int) -> ElementGeometry:
    """Geometry of quads with corners ``(E, 4, 2)`` (m, counterclockwise) at GLL order ``order``."""
    corners = np.asarray(corners, dtype=float)
    xi, w = gll_points_weights(order)
    d = derivative_matrix(order)
    XI, ETA = np.meshgrid(xi, xi, indexing="xy")  # [j, i]
    x, y = bilinear_map(corners, XI, ETA)
    # Jacobian entries by differentiating the (exactly represented) bilinear map.
    x_xi = np.einsum("ik,ejk->eji", d, x)
    y_xi = np.einsum("ik,ejk->eji", d, y)
    x_eta = np.einsum("jk,eki->eji", d, x)
    y_eta = np.einsum("jk,eki->eji", d, y)
    det = x_xi * y_eta - x_eta * y_xi
    if np.any(det <= 0):
        bad = int(np.flatnonzero((det <= 0).any(axis=(1, 2)))[0])
        raise ValueError(f"element {bad} is degenerate or not counterclockwise")
    jw = np.outer(w, w)[None] * det
    # Rows of J^-1: grad(xi) = (y_eta, -x_eta)/det, grad(eta) = (-y_xi, x_xi)/det.
    g11 = jw * (y_eta**2 + x_eta**2) / det**2
    g12 = -jw * (y_eta * y_xi + x_eta * x_xi) / det**2
    g22 = jw * (y_xi**2 + x_xi**2) / det**2
    return ElementGeometry(order, x, y, jw, g11, g12, g22)


def point_weights(order: int, ref: np.ndarray) -> np.ndarray:
    """Lagrange weights ``(Q, (order+1)^2)`` of reference points ``ref (Q, 2)``.

    Column ``a = i + (order+1) j`` holds ``l_i(xi) l_j(eta)``; a field's value at the point
    is the weighted sum of its element-point values (exact for the SEM polynomial).
    """
    nodes, _ = gll_points_weights(order)
    lx = lagrange_basis(nodes, ref[:, 0])
    ly = lagrange_basis(nodes, ref[:, 1])
    return (ly[:, :, None] * lx[:, None, :]).reshape(len(ref), (order + 1) ** 2)
