"""Quadrilateral spectral elements: GLL point positions and geometric factors.

An element is the bilinear image of the reference square [-1, 1]^2 with its four corners
given counterclockwise. Element-local node ``a = i + n*j`` (``n = order + 1``) sits at the
reference point ``(xi_i, eta_j)``; arrays indexed per element point have shape ``(E, n, n)``
ordered ``[e, j, i]``. Geometric arrays carry a leading dimension axis: coordinates
``(dim, E, n, n)`` and the metric ``(dim, dim, E, n, n)``, so that code written against them
does not name components.

>>> import numpy as np
>>> g = element_geometry(np.array([[[0., 0.], [2., 0.], [2., 1.], [0., 1.]]]), order=2)
>>> g.dim, g.coords.shape, g.metric.shape
(2, (2, 1, 3, 3), (2, 2, 1, 3, 3))
>>> float(g.jw.sum())  # the element's area, m^2
2.0
"""

from dataclasses import dataclass

import numpy as np

from .gll import gll_points_weights, lagrange_basis


@dataclass(frozen=True)
class ElementGeometry:
    """Per-element-point geometry of E elements of one order.

    ``coords (dim, E, n, n)`` the GLL point positions (m); ``jw (E, n, n)`` the quadrature
    weight ``w_i w_j det(J)`` (m^2); ``metric (dim, dim, E, n, n)`` the symmetric
    ``jw * J^-1 J^-T`` that the stiffness action needs (dimensionless in 2D), reference axes
    first: ``metric[a, b]`` pairs the derivatives along reference axes ``a`` and ``b``.
    """

    order: int
    coords: np.ndarray
    jw: np.ndarray
    metric: np.ndarray

    @property
    def dim(self) -> int:
        return self.coords.shape[0]

    @property
    def n_elements(self) -> int:
        return self.jw.shape[0]


def bilinear_map(corners: np.ndarray, xi, eta) -> np.ndarray:
    """Physical coordinates ``(2, E) + broadcast(xi, eta).shape`` of reference points of the
    quads with corners ``(E, 4, 2)``."""
    xi, eta = np.broadcast_arrays(np.asarray(xi, float), np.asarray(eta, float))
    shape = [(1 - xi) * (1 - eta), (1 + xi) * (1 - eta), (1 + xi) * (1 + eta), (1 - xi) * (1 + eta)]
    return np.stack([
        sum(corners[:, k, c].reshape((-1,) + (1,) * xi.ndim) * shape[k] for k in range(4)) / 4
        for c in range(2)])


def metric_from_jacobian(jacobian: np.ndarray, weights: np.ndarray,
                         diffusivity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``jw (E, n, n)`` and ``metric (dim, dim, E, n, n)`` from the Jacobian
    ``J[c, a] = dx_c / dxi_a`` of shape ``(dim, dim, E, n, n)`` and the tensor-product GLL
    weights ``(n, n)``: ``metric = jw J^-1 D J^-T`` with ``D`` the symmetric ``diffusivity
    (dim, dim)`` (identity by default). Raises ValueError on a non-positive determinant."""
    jac = np.moveaxis(jacobian, (0, 1), (-2, -1))  # (E, n, n, dim, dim)
    det = np.linalg.det(jac)
    if np.any(det <= 0):
        bad = int(np.flatnonzero((det <= 0).reshape(len(det), -1).any(axis=1))[0])
        raise ValueError(f"element {bad} is degenerate or not counterclockwise")
    inv = np.linalg.inv(jac)  # inv[..., a, c] = dxi_a / dx_c
    jw = weights[None] * det
    d = np.eye(jac.shape[-1]) if diffusivity is None else np.asarray(diffusivity, float)
    metric = np.einsum("...ac,cd,...bd->ab...", inv, d, inv) * jw[None, None]
    return jw, metric


def element_geometry(corners: np.ndarray, order: int,
                     diffusivity: np.ndarray | None = None) -> ElementGeometry:
    """Geometry of quads with corners ``(E, 4, 2)`` (m, counterclockwise) at GLL order
    ``order``; with ``diffusivity (2, 2)`` the metric is ``jw J^-1 D J^-T`` (the stiffness
    of ``div(D grad .)``, used for smoothing)."""
    c = np.asarray(corners, dtype=float)
    xi, w = gll_points_weights(order)
    XI, ETA = xi[None, None, :], xi[None, :, None]  # [e, j, i]
    coords = bilinear_map(c, XI[0], ETA[0])
    # The bilinear map's Jacobian from corner differences: exact zeros off the diagonal of
    # an axis-aligned rectangle, and the same bits in every translate of an element.
    e01, e32 = c[:, 1] - c[:, 0], c[:, 2] - c[:, 3]  # (E, 2): edges along xi
    e03, e12 = c[:, 3] - c[:, 0], c[:, 2] - c[:, 1]  # along eta
    shape = (len(c), len(xi), len(xi))
    jacobian = np.empty((2, 2) + shape)
    for k in range(2):
        jacobian[k, 0] = (e01[:, k, None, None] * (1 - ETA) + e32[:, k, None, None] * (1 + ETA)) / 4
        jacobian[k, 1] = (e03[:, k, None, None] * (1 - XI) + e12[:, k, None, None] * (1 + XI)) / 4
    jw, metric = metric_from_jacobian(jacobian, np.outer(w, w), diffusivity)
    return ElementGeometry(order, coords, jw, metric)


def point_weights(order: int, ref: np.ndarray) -> np.ndarray:
    """Lagrange weights ``(Q, (order+1)^dim)`` of reference points ``ref (Q, dim)``, dim 2 or 3.

    Column ``a = i + n j`` (2D) or ``a = i + n j + n^2 k`` (3D; ``n = order + 1``) holds
    ``l_i(xi) l_j(eta) [l_k(zeta)]``; a field's value at the point is the weighted sum of its
    element-point values (exact for the SEM polynomial).
    """
    nodes, _ = gll_points_weights(order)
    lx = lagrange_basis(nodes, ref[:, 0])
    ly = lagrange_basis(nodes, ref[:, 1])
    if ref.shape[1] == 2:
        return (ly[:, :, None] * lx[:, None, :]).reshape(len(ref), (order + 1) ** 2)
    if ref.shape[1] != 3:
        raise ValueError(f"point_weights: reference points (Q, 2) or (Q, 3), got {ref.shape}")
    lz = lagrange_basis(nodes, ref[:, 2])
    return (lz[:, :, None, None] * ly[:, None, :, None] * lx[:, None, None, :]).reshape(
        len(ref), (order + 1) ** 3)


def box_geometry(sizes, order: int, diffusivity: np.ndarray | None = None) -> ElementGeometry:
    """Geometry of one axis-aligned box element ``[0, h_0] x ... x [0, h_{d-1}]``
    (``sizes = (h_0, ..)`` in m, 2 or 3 of them) at GLL order ``order``: ``coords (d, 1, n,
    .., n)`` ordered ``[e, .., j, i]`` (the last index runs along x), ``jw`` the tensor GLL
    weight times ``prod(h) / 2^d`` and the diagonal metric ``jw (2 / h_a)^2`` (times the
    diagonal of ``diffusivity (d, d)`` when given; only diagonal diffusivities keep the
    metric diagonal, others raise ValueError).

    >>> g = box_geometry((2.0, 1.0, 3.0), 2)
    >>> g.coords.shape, round(float(g.jw.sum()), 12)
    ((3, 1, 3, 3, 3), 6.0)
    """
    h = np.asarray(sizes, dtype=float)
    dim = len(h)
    if dim not in (2, 3) or np.any(h <= 0):
        raise ValueError(f"box_geometry: 2 or 3 positive sizes, got {sizes}")
    xi, w = gll_points_weights(order)
    n = len(xi)
    shape = (1,) + (n,) * dim
    # axis a (x, y, z) runs along array axis dim - a of (e, [k,] j, i)
    grids = np.meshgrid(*([xi] * dim), indexing="ij")  # grids[k] varies along axis k
    coords = np.stack([(h[a] * (grids[dim - 1 - a] + 1.0) / 2.0).reshape(shape)
                       for a in range(dim)])
    weight = w
    for _ in range(dim - 1):
        weight = np.multiply.outer(w, weight)
    jw = (weight * np.prod(h) / 2.0**dim).reshape(shape)
    d = np.eye(dim) if diffusivity is None else np.asarray(diffusivity, float)
    if np.any(d != np.diag(np.diag(d))):
        raise ValueError("box_geometry: the diffusivity must be diagonal")
    metric = np.zeros((dim, dim) + shape)
    for a in range(dim):
        metric[a, a] = jw * (2.0 / h[a]) ** 2 * d[a, a]
    return ElementGeometry(order, coords, jw, metric)
