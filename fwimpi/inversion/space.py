"""The inversion space of an inversion: what the optimizer sees.

Root-only and pure. A point ``x`` is a flat ``(n_parameters * n,)`` vector of the mapping's
inversion parameters at the ``n`` points of the inversion mesh: the simulation mesh's points
(the default) or the GLL points of a coarser mesh of the domain (order 1: bilinear quads in
2D, trilinear hexahedra in 3D, so that interpolation is a convex combination). With a coarse
mesh, ``P (P_sim, n)`` interpolates to the simulation mesh (a point in a margin takes the
value at the nearest point of the domain) and the gradient uses ``P^T``: the exact transpose
(a dot-product test checks it).

    model(x)    = mapping.forward(P x, prior)
    gradient(g) = P^T sum_e mapping.adjoint(g_e, prior, points, event e, at P x)

``weights (n,)``: the quadrature weights of the inversion mesh, the optimizer's inner product;
``precondition``: the smoothing of a kernel on the inversion mesh (per parameter); bounds on
the simulation model become bounds on ``x`` (exact without a coarse mesh, conservative with
one: every point of a coarse element keeps within them).
"""

from __future__ import annotations

from collections.abc import Mapping as MappingABC, Sequence

import numpy as np
import scipy.sparse

from ..errors import FwimpiError
from ..mesh.structured import StructuredMesh, build_mesh
from ..mesh.structured3d import Box3, StructuredMesh3D, build_mesh3d
from ..sem.acquisition import Event
from ..sem.geometry import point_weights
from ..sem.operators import assembled_sum
from .mapping import EventGeometry, Mapping
from .smoothing import ConstantSmoothing


class SpaceError(FwimpiError, ValueError):
    """An inversion space that cannot be built (bounds that exclude the prior, say)."""


def interpolation_matrix(coarse: StructuredMesh | StructuredMesh3D,
                         points: np.ndarray) -> scipy.sparse.csr_matrix:
    """``P (Q, n_coarse)``: the coarse mesh's field at ``points (Q, d)`` (``d = coarse.dim``;
    clamped into its domain), by Lagrange interpolation in the element holding each point
    (bilinear, trilinear at order 1)."""
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != coarse.dim:
        raise SpaceError(f"inversion.mesh_element_size_in_meters: a {coarse.dim}D inversion "
                         f"mesh for points of shape {points.shape}")
    xy = coarse.domain.clamp(points)
    elements, ref = coarse.locate(xy)
    cols = coarse.ibool(elements).reshape(len(xy), -1)
    vals = point_weights(coarse.order, ref)
    rows = np.repeat(np.arange(len(xy)), cols.shape[1])
    m = scipy.sparse.csr_matrix((vals.ravel(), (rows, cols.ravel())),
                                shape=(len(xy), coarse.n_points))
    m.eliminate_zeros()
    return m


class InversionSpace:
    """Root-only: ``mapping``'s inversion space on the simulation mesh (``points (P, 2)`` or
    ``(P, 3)``, ``cells``, ``mass (P,)``, ``order``) or on ``coarse`` (an order-1
    ``StructuredMesh`` or ``StructuredMesh3D`` of the domain, ``coarse_mesh``); ``prior``
    ``{parameter: (P,)}``; ``events`` (their cutouts); ``bounds`` ``{parameter: (lo, hi)}``
    on the simulation model; ``smoothing`` the preconditioner (None: the identity)."""

    def __init__(self, mapping: Mapping, prior: MappingABC[str, np.ndarray], points: np.ndarray,
                 cells: np.ndarray, mass: np.ndarray, order: int, events: Sequence[Event],
                 bounds: MappingABC[str, tuple[float, float]] | None = None,
                 smoothing: ConstantSmoothing | None = None,
                 coarse: StructuredMesh | StructuredMesh3D | None = None):
        self.mapping, self.events = mapping, tuple(events)
        self.prior = {k: np.asarray(v, float) for k, v in prior.items()}
        self.points = np.asarray(points, float)
        self.parameters = mapping.inversion_parameters
        self.coarse = coarse
        if coarse is None:
            self.P = None
            self.mesh_arrays = (self.points, np.asarray(cells), np.asarray(mass, float), order)
        else:
            if coarse.order != 1:
                raise SpaceError("inversion.mesh: the inversion mesh must be of order 1")
            self.P = interpolation_matrix(coarse, self.points)
            w = assembled_sum(coarse.ibool(), coarse.geometry().jw, coarse.n_points)
            self.mesh_arrays = (coarse.points, coarse.cells, w, coarse.order)
        self.n = len(self.mesh_arrays[2])
        self.weights = np.tile(self.mesh_arrays[2], len(self.parameters))
        self.smoothing = smoothing
        self._smoothers = None
        self.lower, self.upper = self._bounds(bounds or {})

    # ------------------------------------------------------------------ vectors

    def split(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """``{parameter: (n,)}`` views of a flat vector."""
        return {p: x[i * self.n:(i + 1) * self.n] for i, p in enumerate(self.parameters)}

    def join(self, fields: MappingABC[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(fields[p], float) for p in self.parameters])

    def _fine(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The inversion point at the simulation mesh's points."""
        parts = self.split(x)
        return parts if self.P is None else {p: self.P @ v for p, v in parts.items()}

    def start(self) -> np.ndarray:
        """The prior's point (``x0``): zero for relative and logarithmic scalings, the
        prior itself (averaged onto a coarse mesh) for the absolute one."""
        fine = self.mapping.inverse(self.prior, self.prior)
        if self.P is None:
            return self.join(fine)
        counts = np.asarray(self.P.sum(axis=0)).ravel()
        return self.join({p: (self.P.T @ v) / np.maximum(counts, 1e-300)
                          for p, v in fine.items()})

    # ------------------------------------------------------------------ maps

    def model(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The simulation model ``{parameter: (P,)}`` of ``x`` (every physics parameter)."""
        return self.mapping.forward(self._fine(x), self.prior)

    def gradient(self, raw: MappingABC[str, MappingABC[str, np.ndarray]], x: np.ndarray
                 ) -> np.ndarray:
        """``dJ/dx`` (flat, Euclidean) from each event's raw gradient ``{parameter: (P,)}``
        (``raw[event name]``), each mapped with that event's cutouts, at the point ``x``."""
        at = self._fine(x)
        total = None
        for event in self.events:
            g = self.mapping.adjoint(raw[event.name], self.prior, self.points,
                                     EventGeometry.from_events([event]), x=at)
            total = g if total is None else {k: total[k] + g[k] for k in g}
        if self.P is not None:
            total = {p: self.P.T @ v for p, v in total.items()}
        return self.join(total)

    def precondition(self, kernel: np.ndarray) -> np.ndarray:
        """The smoothing of a kernel (flat) on the inversion mesh, parameter by parameter."""
        if self.smoothing is None:
            return kernel
        if self._smoothers is None:
            from .smoothing import DiffusionSmoother

            points, cells, mass, order = self.mesh_arrays
            self._smoothers = {
                p: DiffusionSmoother(points, cells, mass, order, sigma, self.smoothing.n_steps,
                                     self.smoothing.rtol)
                for p, sigma in self.smoothing.smoothing_lengths_in_meters.items()
                if p in self.parameters}
        out = kernel.copy()
        for i, p in enumerate(self.parameters):
            if p in self._smoothers:
                part = slice(i * self.n, (i + 1) * self.n)
                out[part] = self._smoothers[p](kernel[part])
        return out

    def close(self) -> None:
        """Free the preconditioner's PETSc objects."""
        for s in (self._smoothers or {}).values():
            s.destroy()
        self._smoothers = None

    # ------------------------------------------------------------------ bounds

    def _bounds(self, bounds: MappingABC[str, tuple[float, float]]
                ) -> tuple[np.ndarray, np.ndarray]:
        lower, upper = [], []
        for p in self.parameters:
            lo, hi = bounds.get(p, (-np.inf, np.inf))
            m0 = self.prior[p]
            lo_x, hi_x = self._to_x(lo, m0), self._to_x(hi, m0)
            if self.P is not None:  # a coarse point bounds every fine point it reaches
                lo_x, hi_x = self._coarse_bounds(lo_x, hi_x)
            if np.any(lo_x > hi_x) or np.any(m0 < lo) or np.any(m0 > hi):
                raise SpaceError(f"inversion.bounds.{p}: [{lo:g}, {hi:g}] excludes the "
                                 f"starting model ({m0.min():g} to {m0.max():g})")
            lower.append(lo_x)
            upper.append(hi_x)
        return np.concatenate(lower), np.concatenate(upper)

    def _to_x(self, value: float, m0: np.ndarray) -> np.ndarray:
        """A bound ``value`` on the model as a bound on ``x`` at each point (prior ``m0``)."""
        scaling = self.mapping.scaling
        if not np.isfinite(value) or scaling == "absolute":
            return np.full_like(m0, value)
        if scaling == "relative_deviation_from_prior":
            return (value - m0) / m0
        return np.log(value / m0) if value > 0 else np.full_like(m0, -np.inf)

    def _coarse_bounds(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        support = self.P.tocsc().copy()
        support.data[:] = 1.0
        lo_c = np.full(self.n, -np.inf)
        hi_c = np.full(self.n, np.inf)
        coo = support.tocoo()
        np.maximum.at(lo_c, coo.col, lo[coo.row])
        np.minimum.at(hi_c, coo.col, hi[coo.row])
        return lo_c, hi_c


def coarse_mesh(domain, element_size: float) -> StructuredMesh | StructuredMesh3D:
    """An order-1 mesh of ``domain`` alone (no margins) with elements of at most
    ``element_size`` metres: quads for a ``Box``, hexahedra for a ``Box3``."""
    if isinstance(domain, Box3):
        return build_mesh3d(domain, 0.0, element_size, 1)
    return build_mesh(domain, 0.0, element_size, 1)
