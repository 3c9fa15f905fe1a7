"""Structured quadrilateral spectral-element mesh of a box domain plus absorbing margins.

The domain ``[x0, x1] x [y0, y1]`` (m; y up, the top ``y1`` is the free surface) is
extended by ``margin`` metres to the left, the right and the bottom; the extended box is
split into ``nex x ney`` equal rectangles. Elements are numbered row by row,
``e = ex + nex * ey``; global GLL points form the tensor grid of ``(nex*N + 1) x
(ney*N + 1)`` points numbered ``p = I + (nex*N + 1) * J``.
"""

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..sem.geometry import ElementGeometry, element_geometry
from ..sem.gll import gll_points_weights


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle ``[x0, x1] x [y0, y1]`` in metres."""

    x0: float
    x1: float
    y0: float
    y1: float

    @property
    def bounds(self) -> tuple[tuple[float, float], ...]:
        """``((x0, x1), (y0, y1))``."""
        return (self.x0, self.x1), (self.y0, self.y1)

    def clamp(self, points: np.ndarray) -> np.ndarray:
        """Nearest points of the box to ``points (P, 2)``."""
        return np.column_stack(
            (np.clip(points[:, 0], self.x0, self.x1), np.clip(points[:, 1], self.y0, self.y1))
        )


@dataclass(frozen=True)
class StructuredMesh:
    """A structured SEM mesh; see the module docstring for the numbering."""

    domain: Box
    extended: Box
    margin: float
    order: int
    nex: int
    ney: int

    dim = 2

    @property
    def shape(self) -> tuple[int, int]:
        """Elements along x and y."""
        return self.nex, self.ney

    @property
    def sizes(self) -> tuple[float, float]:
        """Element sizes (m) along x and y."""
        return self.hx, self.hy

    @property
    def point_shape(self) -> tuple[int, int]:
        """Global GLL points along x and y."""
        return self.npx, self.npy

    @property
    def n_elements(self) -> int:
        return self.nex * self.ney

    def description(self) -> dict:
        """The parameters that rebuild this mesh exactly (``from_description``): JSON."""
        return {"domain": [self.domain.x0, self.domain.x1, self.domain.y0, self.domain.y1],
                "extended": [self.extended.x0, self.extended.x1, self.extended.y0,
                             self.extended.y1],
                "margin": self.margin, "order": self.order, "nex": self.nex, "ney": self.ney}

    @classmethod
    def from_description(cls, d: dict) -> "StructuredMesh":
        """The mesh a ``description()`` describes. Raises ValueError on a malformed one."""
        try:
            mesh = cls(Box(*map(float, d["domain"])), Box(*map(float, d["extended"])),
                       float(d["margin"]), int(d["order"]), int(d["nex"]), int(d["ney"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a mesh description: {err}") from None
        if not (1 <= mesh.order <= 10 and mesh.nex >= 1 and mesh.ney >= 1
                and mesh.extended.x0 < mesh.extended.x1 and mesh.extended.y0 < mesh.extended.y1):
            raise ValueError(f"not a valid mesh description: {d}")
        return mesh

    def axes(self) -> tuple[np.ndarray, np.ndarray]:
        """The GLL coordinates along x ``(npx,)`` and y ``(npy,)``: ``points`` is their grid."""
        return (self._axis(self.extended.x0, self.hx, self.nex),
                self._axis(self.extended.y0, self.hy, self.ney))

    def point_indices(self, xy: np.ndarray, tolerance: float = 1e-9) -> np.ndarray:
        """Natural indices ``(Q,)`` of points ``(Q, 2)`` that are GLL points of this mesh (to
        ``tolerance`` times its size); ValueError for a point that is not."""
        return grid_point_indices(xy, self.axes(), tolerance)

    @property
    def npx(self) -> int:
        """Global GLL points along x."""
        return self.nex * self.order + 1

    @property
    def npy(self) -> int:
        return self.ney * self.order + 1

    @property
    def n_points(self) -> int:
        return self.npx * self.npy

    @property
    def hx(self) -> float:
        return (self.extended.x1 - self.extended.x0) / self.nex

    @property
    def hy(self) -> float:
        return (self.extended.y1 - self.extended.y0) / self.ney

    def _axis(self, lo: float, h: float, ne: int) -> np.ndarray:
        xi, _ = gll_points_weights(self.order)
        e = np.repeat(np.arange(ne), self.order)
        i = np.tile(np.arange(self.order), ne)
        coords = lo + h * (e + (xi[i] + 1.0) / 2.0)
        return np.append(coords, lo + h * ne)

    @cached_property
    def points(self) -> np.ndarray:
        """Global GLL points ``(P, 2)`` in metres."""
        x, y = self.axes()
        xx, yy = np.meshgrid(x, y, indexing="xy")
        return np.column_stack((xx.ravel(), yy.ravel()))

    def element_indices(self, elements: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Column ``ex`` and row ``ey`` of elements (all by default)."""
        e = np.arange(self.n_elements) if elements is None else np.asarray(elements)
        return e % self.nex, e // self.nex

    def ibool(self, elements: np.ndarray | None = None) -> np.ndarray:
        """Global point index of each element point, ``(E, n, n)`` ordered ``[e, j, i]``."""
        ex, ey = self.element_indices(elements)
        n = self.order + 1
        j, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        col = ex[:, None, None] * self.order + i[None]
        row = ey[:, None, None] * self.order + j[None]
        return (row * self.npx + col).astype(np.int64)

    @property
    def cells(self) -> np.ndarray:
        """Contract layout ``(E, (N+1)^2)`` int64: local node ``a = i + (N+1) j``."""
        return self.ibool().reshape(self.n_elements, -1)

    def corners(self, elements: np.ndarray | None = None) -> np.ndarray:
        """Element corners ``(E, 4, 2)``, counterclockwise from the lower left."""
        ex, ey = self.element_indices(elements)
        x0 = self.extended.x0 + ex * self.hx
        y0 = self.extended.y0 + ey * self.hy
        x1, y1 = x0 + self.hx, y0 + self.hy
        return np.stack(
            [np.column_stack(c) for c in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))], axis=1
        )

    def geometry(self, elements: np.ndarray | None = None) -> ElementGeometry:
        """Geometry of the elements: one reference rectangle translated, so the factors
        are bitwise identical in every element (and on every rank)."""
        ref = element_geometry(
            np.array([[[0.0, 0.0], [self.hx, 0.0], [self.hx, self.hy], [0.0, self.hy]]]),
            self.order,
        )
        ex, ey = self.element_indices(elements)
        e = len(ex)
        coords = np.stack([(self.extended.x0 + ex * self.hx)[:, None, None] + ref.coords[0],
                           (self.extended.y0 + ey * self.hy)[:, None, None] + ref.coords[1]])
        jw = np.broadcast_to(ref.jw, (e,) + ref.jw.shape[1:])
        metric = np.broadcast_to(ref.metric, ref.metric.shape[:2] + (e,) + ref.metric.shape[3:])
        return ElementGeometry(self.order, coords, jw, metric)

    def locate(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Element and reference coordinates of points ``(Q, 2)``.

        Returns ``elements (Q,)`` and ``ref (Q, 2)`` in [-1, 1]^2. A point on an element edge
        goes to the element with the lowest number, whatever the partitioning. Points
        outside the extended box raise ValueError.
        """
        xy = np.atleast_2d(np.asarray(xy, dtype=float))
        ext = self.extended
        tol = 1e-9 * max(ext.x1 - ext.x0, ext.y1 - ext.y0)
        outside = (
            (xy[:, 0] < ext.x0 - tol) | (xy[:, 0] > ext.x1 + tol)
            | (xy[:, 1] < ext.y0 - tol) | (xy[:, 1] > ext.y1 + tol)
        )
        if outside.any():
            raise ValueError(f"point {tuple(xy[outside][0])} lies outside the mesh")
        sx = (xy[:, 0] - ext.x0) / self.hx
        sy = (xy[:, 1] - ext.y0) / self.hy
        # Lowest-numbered element: on an edge at integer s, take the cell below (s - 1).
        ex = np.clip(np.ceil(sx - 1e-12).astype(int) - 1, 0, self.nex - 1)
        ey = np.clip(np.ceil(sy - 1e-12).astype(int) - 1, 0, self.ney - 1)
        ref = np.column_stack((2.0 * (sx - ex) - 1.0, 2.0 * (sy - ey) - 1.0))
        return ex + self.nex * ey, np.clip(ref, -1.0, 1.0)


def grid_point_indices(points: np.ndarray, axes, tolerance: float = 1e-9) -> np.ndarray:
    """Natural indices ``(Q,)`` (the first axis fastest) of ``points (Q, dim)`` on the tensor
    grid of ``axes`` (one coordinate array per axis), each within ``tolerance`` times the
    axis's extent of a grid point; ValueError for a point that is not."""
    points = np.atleast_2d(np.asarray(points, dtype=float))
    index, stride = np.zeros(len(points), dtype=np.int64), 1
    for c, axis in zip(points.T, axes):
        k = np.clip(np.searchsorted(axis, c), 1, len(axis) - 1)
        k = np.where(np.abs(axis[k - 1] - c) <= np.abs(axis[k] - c), k - 1, k)
        off = np.abs(axis[k] - c) > tolerance * (axis[-1] - axis[0])
        if off.any():
            q = int(np.flatnonzero(off)[0])
            raise ValueError(f"point {tuple(points[q])} is not a point of the mesh")
        index += stride * k
        stride *= len(axis)
    return index


def build_mesh(domain: Box, margin: float, element_size: float, order: int) -> StructuredMesh:
    """Mesh ``domain`` plus ``margin`` (m) of absorbing layer on left, right and bottom.

    The element count per axis is ``ceil(extent / element_size)``, so elements are at most
    ``element_size`` metres wide.
    """
    if element_size <= 0 or not math.isfinite(element_size):
        raise ValueError(f"element size must be positive and finite, got {element_size}")
    extended = Box(domain.x0 - margin, domain.x1 + margin, domain.y0 - margin, domain.y1)
    nex = max(1, math.ceil((extended.x1 - extended.x0) / element_size - 1e-9))
    ney = max(1, math.ceil((extended.y1 - extended.y0) / element_size - 1e-9))
    return StructuredMesh(domain, extended, float(margin), int(order), nex, ney)


class MeshTooLarge(ValueError):
    """A mesh would have more points than allowed (raised before its points are made)."""

    def __init__(self, n_points: int, limit: int):
        super().__init__(f"the mesh would have {n_points} points, more than {limit}")
        self.n_points, self.limit = n_points, limit


def mesh_for_model(domain, margin: float, order: int, elements_per_wavelength: float,
                   max_frequency: float, velocity, max_points: int | None = None):
    """The mesh of ``domain`` (a ``Box``, or a ``Box3`` for 3D) plus ``margin`` (m) whose
    elements resolve the slowest wave: element size ``v_min / (max_frequency *
    elements_per_wavelength)``.

    ``velocity(points (Q, dim)) -> (Q,)`` gives the wave speed (m/s). ``v_min`` is first
    sampled on a grid of the domain (257 points per axis in 2D, 65 in 3D), then on the mesh's
    GLL points; the mesh is refined (at most three times) while the GLL points find a lower
    speed. Returns the mesh and the ``v_min`` it was sized with. A model changed later (an
    inversion's iterates) keeps this mesh: size it from the starting model. Raises
    MeshTooLarge before making the points of a mesh of more than ``max_points`` points.
    """
    from .structured3d import Box3, build_mesh3d

    three = isinstance(domain, Box3)
    build = build_mesh3d if three else build_mesh
    axes = [np.linspace(lo, hi, 65 if three else 257) for lo, hi in domain.bounds]
    grid = np.meshgrid(*axes, indexing="ij")
    vmin = float(np.min(velocity(np.column_stack([g.ravel() for g in grid]))))
    for _ in range(3):
        h = vmin / (max_frequency * elements_per_wavelength)
        mesh = build(domain, margin, h, order)
        if max_points is not None and mesh.n_points > max_points:
            raise MeshTooLarge(mesh.n_points, max_points)
        vmin_mesh = float(np.min(velocity(mesh.points)))
        if vmin_mesh >= vmin * (1 - 1e-12):
            break
        vmin = vmin_mesh
    return mesh, vmin


def mesh_from_description(d: dict):
    """A 2D or 3D structured mesh from its ``description()`` (3D ones carry
    ``"dimension": 3``). Raises ValueError on a malformed one."""
    from .structured3d import StructuredMesh3D

    if not isinstance(d, dict):
        raise ValueError("not a mesh description")
    if d.get("dimension", 2) == 3:
        return StructuredMesh3D.from_description(d)
    return StructuredMesh.from_description(d)
