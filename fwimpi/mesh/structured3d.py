"""Structured hexahedral spectral-element mesh of a 3D box domain plus absorbing margins.

The domain ``[x0, x1] x [y0, y1] x [z0, z1]`` (m; x and y horizontal, z up: the top ``z1``
is the free surface) is extended by ``margin`` metres on the four sides and the bottom; the
extended box is split into ``nex x ney x nez`` equal boxes. Elements are numbered
``e = ex + nex * (ey + ney * ez)``; global GLL points form the tensor grid of
``npx x npy x npz`` points numbered ``p = I + npx * (J + npy * K)``. Element-point arrays
are ``(E, n, n, n)`` ordered ``[e, k, j, i]`` (i along x, k along z), ``n = order + 1``;
the contract's ``cells (E, n^3)`` uses local node ``a = i + n j + n^2 k``.

The interface is that of the 2D ``StructuredMesh`` (``dim``, ``shape``, ``sizes``,
``points``, ``ibool``, ``cells``, ``geometry``, ``locate``, ``description``), so the
parallel and inversion layers take either.

>>> m = build_mesh3d(Box3(0, 300, 0, 200, -100, 0), 0.0, 100.0, 2)
>>> m.shape, m.n_points, m.points.shape, m.ibool().shape
((3, 2, 1), 105, (105, 3), (6, 3, 3, 3))
"""

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..sem.geometry import ElementGeometry, box_geometry
from ..sem.gll import gll_points_weights


@dataclass(frozen=True)
class Box3:
    """An axis-aligned box ``[x0, x1] x [y0, y1] x [z0, z1]`` in metres."""

    x0: float
    x1: float
    y0: float
    y1: float
    z0: float
    z1: float

    @property
    def bounds(self) -> tuple[tuple[float, float], ...]:
        """``((x0, x1), (y0, y1), (z0, z1))``."""
        return (self.x0, self.x1), (self.y0, self.y1), (self.z0, self.z1)

    def clamp(self, points: np.ndarray) -> np.ndarray:
        """Nearest points of the box to ``points (P, 3)``."""
        return np.column_stack([np.clip(points[:, a], lo, hi)
                                for a, (lo, hi) in enumerate(self.bounds)])


@dataclass(frozen=True)
class StructuredMesh3D:
    """A structured hexahedral SEM mesh; see the module docstring for the numbering."""

    domain: Box3
    extended: Box3
    margin: float
    order: int
    nex: int
    ney: int
    nez: int

    dim = 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """Elements along x, y and z."""
        return self.nex, self.ney, self.nez

    @property
    def sizes(self) -> tuple[float, float, float]:
        """Element sizes (m) along x, y and z."""
        return tuple((hi - lo) / ne for (lo, hi), ne in zip(self.extended.bounds, self.shape))

    @property
    def n_elements(self) -> int:
        return self.nex * self.ney * self.nez

    @property
    def point_shape(self) -> tuple[int, int, int]:
        """Global GLL points along x, y and z."""
        return tuple(ne * self.order + 1 for ne in self.shape)

    @property
    def n_points(self) -> int:
        return int(np.prod(self.point_shape))

    def description(self) -> dict:
        """The parameters that rebuild this mesh exactly (``from_description``): JSON."""
        return {"dimension": 3,
                "domain": [v for b in self.domain.bounds for v in b],
                "extended": [v for b in self.extended.bounds for v in b],
                "margin": self.margin, "order": self.order,
                "nex": self.nex, "ney": self.ney, "nez": self.nez}

    @classmethod
    def from_description(cls, d: dict) -> "StructuredMesh3D":
        """The mesh a ``description()`` describes. Raises ValueError on a malformed one."""
        try:
            mesh = cls(Box3(*map(float, d["domain"])), Box3(*map(float, d["extended"])),
                       float(d["margin"]), int(d["order"]), int(d["nex"]), int(d["ney"]),
                       int(d["nez"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a mesh description: {err}") from None
        if not (1 <= mesh.order <= 10 and min(mesh.shape) >= 1
                and all(lo < hi for lo, hi in mesh.extended.bounds)):
            raise ValueError(f"not a valid mesh description: {d}")
        return mesh

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The GLL coordinates along x, y and z: ``points`` is their grid."""
        xi, _ = gll_points_weights(self.order)
        out = []
        for (lo, _), h, ne in zip(self.extended.bounds, self.sizes, self.shape):
            e = np.repeat(np.arange(ne), self.order)
            i = np.tile(np.arange(self.order), ne)
            out.append(np.append(lo + h * (e + (xi[i] + 1.0) / 2.0), lo + h * ne))
        return tuple(out)

    @cached_property
    def points(self) -> np.ndarray:
        """Global GLL points ``(P, 3)`` in metres, x fastest."""
        x, y, z = self.axes()
        zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
        return np.column_stack((xx.ravel(), yy.ravel(), zz.ravel()))

    def point_indices(self, xyz: np.ndarray, tolerance: float = 1e-9) -> np.ndarray:
        """Natural indices ``(Q,)`` of points ``(Q, 3)`` that are GLL points of this mesh (to
        ``tolerance`` times its size); ValueError for a point that is not."""
        from .structured import grid_point_indices

        return grid_point_indices(xyz, self.axes(), tolerance)

    def element_indices(self, elements: np.ndarray | None = None):
        """``ex, ey, ez`` of elements (all by default)."""
        e = np.arange(self.n_elements) if elements is None else np.asarray(elements)
        return e % self.nex, (e // self.nex) % self.ney, e // (self.nex * self.ney)

    def ibool(self, elements: np.ndarray | None = None) -> np.ndarray:
        """Global point index of each element point, ``(E, n, n, n)`` ordered ``[e, k, j, i]``."""
        ex, ey, ez = self.element_indices(elements)
        n, p = self.order + 1, self.order
        npx, npy, _ = self.point_shape
        k, j, i = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
        col = ex[:, None, None, None] * p + i[None]
        row = ey[:, None, None, None] * p + j[None]
        lay = ez[:, None, None, None] * p + k[None]
        return (col + npx * (row + npy * lay)).astype(np.int64)

    @property
    def cells(self) -> np.ndarray:
        """Contract layout ``(E, (N+1)^3)`` int64: local node ``a = i + n j + n^2 k``."""
        return self.ibool().reshape(self.n_elements, -1)

    def geometry(self, elements: np.ndarray | None = None) -> ElementGeometry:
        """Geometry of the elements: one reference box translated, so the factors are
        bitwise identical in every element (and on every rank)."""
        ref = box_geometry(self.sizes, self.order)
        idx = self.element_indices(elements)
        e = len(idx[0])
        coords = np.stack([(lo + c * h)[:, None, None, None] + ref.coords[a]
                           for a, ((lo, _), c, h) in
                           enumerate(zip(self.extended.bounds, idx, self.sizes))])
        jw = np.broadcast_to(ref.jw, (e,) + ref.jw.shape[1:])
        metric = np.broadcast_to(ref.metric, ref.metric.shape[:2] + (e,) + ref.metric.shape[3:])
        return ElementGeometry(self.order, coords, jw, metric)

    def locate(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Element and reference coordinates of points ``(Q, 3)``.

        Returns ``elements (Q,)`` and ``ref (Q, 3)`` in [-1, 1]^3 (xi along x, eta along y,
        zeta along z). A point on an element face goes to the element with the lowest
        number, whatever the partitioning. Points outside the extended box raise ValueError.
        """
        xyz = np.atleast_2d(np.asarray(xyz, dtype=float))
        bounds = self.extended.bounds
        tol = 1e-9 * max(hi - lo for lo, hi in bounds)
        outside = np.zeros(len(xyz), dtype=bool)
        for a, (lo, hi) in enumerate(bounds):
            outside |= (xyz[:, a] < lo - tol) | (xyz[:, a] > hi + tol)
        if outside.any():
            raise ValueError(f"point {tuple(xyz[outside][0])} lies outside the mesh")
        idx, ref = [], []
        for a, ((lo, _), h, ne) in enumerate(zip(bounds, self.sizes, self.shape)):
            s = (xyz[:, a] - lo) / h
            # lowest-numbered element: on a face at integer s, take the cell below (s - 1)
            c = np.clip(np.ceil(s - 1e-12).astype(int) - 1, 0, ne - 1)
            idx.append(c)
            ref.append(2.0 * (s - c) - 1.0)
        elements = idx[0] + self.nex * (idx[1] + self.ney * idx[2])
        return elements, np.clip(np.column_stack(ref), -1.0, 1.0)


def build_mesh3d(domain: Box3, margin: float, element_size: float,
                 order: int) -> StructuredMesh3D:
    """Mesh ``domain`` plus ``margin`` (m) of absorbing room on the four sides and the
    bottom; elements at most ``element_size`` metres along each axis."""
    if element_size <= 0 or not math.isfinite(element_size):
        raise ValueError(f"element size must be positive and finite, got {element_size}")
    extended = Box3(domain.x0 - margin, domain.x1 + margin, domain.y0 - margin,
                    domain.y1 + margin, domain.z0 - margin, domain.z1)
    counts = [max(1, math.ceil((hi - lo) / element_size - 1e-9)) for lo, hi in extended.bounds]
    return StructuredMesh3D(domain, extended, float(margin), int(order), *counts)

