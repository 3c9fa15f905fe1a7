"""Anisotropic smoothing by diffusion on the SEM mesh (DESIGN.md, "Mapping and smoothing").

Root-only and pure: arrays of the contract mesh layout in (2D: ``points (P, 2)``, ``cells (E,
(N+1)^2)`` with local node ``a = i + (N+1) j``; 3D: ``points (P, 3)``, ``cells (E, (N+1)^3)``
with ``a = i + (N+1) j + (N+1)^2 k``; ``mass (P,)`` the assembled quadrature weights ``w``),
arrays out. PETSc is used on ``COMM_SELF`` only; no files, no MPI collectives.

A smoothing length ``sigma = (sx, sy)`` in 2D, ``(sx, sy, sz)`` in 3D (metres) is the standard
deviation per axis of the equivalent Gaussian kernel: the field is diffused by ``du/dt =
div(D grad u)`` for unit time with ``D = diag(sx^2, sy^2[, sz^2]) / 2``, whose kernel is the
Gaussian of covariance ``2 D T = diag(sx^2, ...)``. Boundaries are natural (no flux), so
``sum(w u)`` is conserved.

Discretisation:

- space: the SEM of the simulation, lumped mass ``M = diag(w)`` and the stiffness ``K_D`` of
  ``div(D grad .)``, applied matrix-free by ``AcousticStiffness`` with the element metric
  ``G = jw J^-1 D J^-T`` (``element_geometry``'s metric with ``D`` inserted), the
  geometry taken from the cells' corner points (2D: bilinear quads, checked against
  ``points``; 3D: identical axis-aligned boxes, checked the same way, one ``box_geometry``
  translated);
- time: ``n_steps`` backward Euler steps of ``tau = 1 / n_steps``,
  ``(M + tau K_D) u_{k+1} = M u_k``, each solved by PETSc CG with Jacobi preconditioning
  through a python shell matrix (unconditionally stable, so the step count is a choice of
  kernel shape, not of stability).

Backward Euler keeps the moments exact: ``K_D`` annihilates constants and linear fields and
maps ``x^2`` to ``-2 D_xx w`` away from the boundary (GLL quadrature is exact there for straight-
sided elements of order >= 2), so each step adds exactly ``2 D tau`` to the mass-weighted second
moments, whatever the step count: ``n_steps`` only changes the kernel's shape. One step gives
the exponential-tailed kernel ``(1 + k.Dk)^-1`` in Fourier space; ``n`` steps give ``(1 +
k.Dk / n)^-n``, which tends to the Gaussian ``exp(-k.Dk)`` (excess kurtosis ``3 / n`` per axis
in 1D). ``DEFAULT_STEPS = 8`` is a balance: close to Gaussian (1.6e-3 of an impulse's integral
lies beyond 4 sigma, 3.4e-4 for the Gaussian), 8 linear solves. The smoothing operator
``S = ((M + tau K_D)^-1 M)^n`` is self-adjoint in the mass inner product (``M S`` symmetric).
Near a boundary the kernel is reflected (no flux), not truncated: nothing leaks out.

Cost: CG iterations per step grow like ``sigma / h_min`` (``h_min`` the smallest GLL spacing),
the same factor by which a finer mesh needs more time steps, so smoothing keeps its ratio to a
forward run under refinement. Tutorial mesh (40377 points), sigma (100, 50) m: 440 CG
iterations in all, 0.26 s on one core, against the forward run's 1283 time steps.

A gradient ``g = dJ/dp_i`` is a mass-weighted quantity (``g = w * kernel``): smooth its kernel,
``mass_weighted=True`` does ``w * S(g / w)``, which is ``S^T g``, the gradient of ``J(S x)``.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field as dc_field

import numpy as np

from fwimpi.errors import FwimpiError
from fwimpi.sem.geometry import ElementGeometry, bilinear_map, box_geometry, element_geometry
from fwimpi.sem.gll import derivative_matrix, gll_points_weights
from fwimpi.sem.operators import AcousticStiffness, assembled_sum

DEFAULT_STEPS = 8
DEFAULT_RTOL = 1e-12
MAX_ITERATIONS = 10_000


class SmoothingError(FwimpiError, ValueError):
    """Smoothing that cannot be set up or did not converge."""


# --------------------------------------------------------------------------- geometry


def cell_corners(points: np.ndarray, cells: np.ndarray, order: int) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    """Corners ``(E, 4, 2)`` (counterclockwise) of ``cells`` and the element-point indices
    ``ibool (E, n, n)`` ordered ``[e, j, i]``.

    Raises SmoothingError when the cells do not fit ``order`` or their GLL points are not those
    of bilinear quads through the corners (curved elements are not supported).
    """
    points = np.asarray(points, dtype=np.float64)
    cells = np.asarray(cells)
    n = order + 1
    if points.ndim != 2 or points.shape[1] != 2:
        raise SmoothingError(f"points: expected shape (n_points, 2), got {points.shape}")
    if cells.ndim != 2 or cells.shape[1] != n * n:
        raise SmoothingError(f"cells: expected shape (n_elements, {n * n}) for order {order}, "
                             f"got {cells.shape}")
    if cells.size and (cells.min() < 0 or cells.max() >= len(points)):
        raise SmoothingError(f"cells: indices must lie in 0..{len(points) - 1}")
    ibool = cells.reshape(len(cells), n, n).astype(np.int64)
    corners = points[ibool[:, [0, 0, -1, -1], [0, -1, -1, 0]]]
    xi, _ = gll_points_weights(order)
    x, y = bilinear_map(corners, xi[None, :], xi[:, None])  # [e, j, i]
    extent = max(np.ptp(points[:, 0]), np.ptp(points[:, 1]), 1.0)
    gap = max(np.abs(x - points[ibool, 0]).max(initial=0.0),
              np.abs(y - points[ibool, 1]).max(initial=0.0))
    if gap > 1e-9 * extent:
        raise SmoothingError(f"cells: element points are {gap:.3g} m away from the GLL points of "
                             f"bilinear quads through the corners (curved elements are not "
                             f"supported)")
    return corners, ibool


def box_cells(points: np.ndarray, cells: np.ndarray, order: int) -> tuple[np.ndarray,
                                                                           np.ndarray,
                                                                           np.ndarray]:
    """Of hexahedral ``cells (E, (N+1)^3)`` over ``points (P, 3)``: the lowest corners
    ``(E, 3)``, the common box sizes ``(hx, hy, hz)`` (m) and ``ibool (E, n, n, n)`` ordered
    ``[e, k, j, i]``.

    Raises SmoothingError when the cells do not fit ``order`` or are not identical
    axis-aligned boxes with their GLL points where ``box_geometry`` puts them (to 1e-9 of the
    mesh's extent).
    """
    points = np.asarray(points, dtype=np.float64)
    cells = np.asarray(cells)
    n = order + 1
    if points.ndim != 2 or points.shape[1] != 3:
        raise SmoothingError(f"points: expected shape (n_points, 3), got {points.shape}")
    if cells.ndim != 2 or cells.shape[1] != n**3:
        raise SmoothingError(f"cells: expected shape (n_elements, {n**3}) for order {order}, "
                             f"got {cells.shape}")
    if len(cells) == 0:
        raise SmoothingError("cells: no elements")
    if cells.min() < 0 or cells.max() >= len(points):
        raise SmoothingError(f"cells: indices must lie in 0..{len(points) - 1}")
    ibool = cells.reshape(len(cells), n, n, n).astype(np.int64)
    xyz = points[ibool]  # (E, n, n, n, 3)
    lo, hi = xyz[:, 0, 0, 0], xyz[:, -1, -1, -1]
    sizes = (hi - lo).mean(axis=0)
    extent = max(np.ptp(points, axis=0).max(), 1.0)
    tol = 1e-9 * extent
    if not (sizes > tol).all():
        raise SmoothingError(f"cells: boxes must have positive sizes along x, y and z, got "
                             f"{tuple(sizes)} m on average")
    spread = np.abs(hi - lo - sizes).max()
    if spread > tol:
        raise SmoothingError(f"cells: the boxes differ in size by up to {spread:.3g} m "
                             f"(3D smoothing needs identical axis-aligned boxes)")
    ref = box_geometry(tuple(sizes), order).coords[:, 0]  # (3, n, n, n) [a, k, j, i]
    gap = np.abs(xyz - lo[:, None, None, None, :] - np.moveaxis(ref, 0, -1)[None]).max()
    if gap > tol:
        raise SmoothingError(f"cells: element points are {gap:.3g} m away from the GLL points "
                             f"of axis-aligned boxes (3D smoothing needs identical "
                             f"axis-aligned boxes)")
    return lo, tuple(float(h) for h in sizes), ibool


def box_mesh_geometry(corners: np.ndarray, sizes, order: int,
                      diffusivity: np.ndarray | None = None) -> ElementGeometry:
    """Geometry of the boxes of ``sizes`` (m) whose lowest corners are ``corners (E, 3)``:
    ``box_geometry(sizes, order, diffusivity)`` translated, its factors broadcast (the same
    bits in every element, as ``StructuredMesh3D.geometry``)."""
    ref = box_geometry(sizes, order, diffusivity)
    e = len(corners)
    coords = np.stack([corners[:, a, None, None, None] + ref.coords[a] for a in range(3)])
    jw = np.broadcast_to(ref.jw, (e,) + ref.jw.shape[1:])
    metric = np.broadcast_to(ref.metric, ref.metric.shape[:2] + (e,) + ref.metric.shape[3:])
    return ElementGeometry(order, coords, jw, metric)


def stiffness_diagonal(geometry: ElementGeometry, ibool: np.ndarray, n_points: int) -> np.ndarray:
    """Assembled diagonal ``(P,)`` of the stiffness with ``geometry``'s metric (unit m1); in
    3D the metric must be diagonal (boxes)."""
    d = derivative_matrix(geometry.order)
    d2 = d**2
    if geometry.dim == 3:
        g = geometry.metric
        off = max(np.abs(g[a, b]).max() for a in range(3) for b in range(3) if a != b)
        if off > 0:
            raise SmoothingError("stiffness_diagonal: 3D needs a diagonal metric (boxes)")
        local = (np.einsum("ekjl,li->ekji", g[0, 0], d2)
                 + np.einsum("ekli,lj->ekji", g[1, 1], d2)
                 + np.einsum("elji,lk->ekji", g[2, 2], d2))
        return assembled_sum(ibool, local, n_points)
    dd = np.outer(np.diag(d), np.diag(d))  # [j, i] -> d[j, j] d[i, i]
    g = geometry.metric
    local = (np.einsum("ejk,ki->eji", g[0, 0], d2)
             + np.einsum("eki,kj->eji", g[1, 1], d2)
             + 2.0 * g[0, 1] * dd[None])
    return assembled_sum(ibool, local, n_points)


# --------------------------------------------------------------------------- operator


def _sigma(sigma, where: str) -> tuple[float, ...]:
    """``(sx, sy)`` or ``(sx, sy, sz)`` as floats, checked."""
    try:
        lengths = tuple(float(s) for s in sigma)
    except (TypeError, ValueError):
        lengths = ()
    if len(lengths) not in (2, 3):
        raise SmoothingError(f"{where}: expected (sigma_x, sigma_y) or (sigma_x, sigma_y, "
                             f"sigma_z) in metres, got {sigma!r}")
    if not all(math.isfinite(s) and s >= 0 for s in lengths):
        raise SmoothingError(f"{where}: smoothing lengths must be finite and >= 0, got "
                             f"{sigma!r}")
    return lengths


def _dimension(points) -> int:
    """2 or 3: the columns of ``points``; SmoothingError otherwise."""
    shape = np.shape(points)
    if len(shape) != 2 or shape[1] not in (2, 3):
        raise SmoothingError(f"points: expected shape (n_points, 2) or (n_points, 3), got "
                             f"{shape}")
    return shape[1]


def _check_lengths(sigma: tuple[float, ...], dim: int, where: str) -> None:
    if len(sigma) != dim:
        names = ", ".join(f"sigma_{a}" for a in "xyz"[:dim])
        raise SmoothingError(f"{where}: {len(sigma)} smoothing lengths for a {dim}D mesh; "
                             f"expected ({names}) in metres, got {sigma}")


class _Shell:
    """PETSc python-matrix context of ``A = M + tau K_D``."""

    def __init__(self, mass: np.ndarray, stiffness: AcousticStiffness, diagonal: np.ndarray):
        self.mass, self.stiffness, self.diagonal = mass, stiffness, diagonal

    def mult(self, mat, x, y):
        xa = x.getArray(readonly=True)
        with y as ya:
            np.multiply(self.mass, xa, out=ya)
            self.stiffness.add(xa, ya)

    def getDiagonal(self, mat, d):
        with d as da:
            da[:] = self.diagonal


class DiffusionSmoother:
    """Root-only: the smoothing operator ``S`` of one ``sigma`` (2 or 3 lengths, m, as the
    mesh's dimension) on one mesh (2D quads or 3D identical axis-aligned boxes); call it on
    fields ``(P,)``. Holds PETSc objects on ``COMM_SELF``; ``destroy()`` frees them.

    ``iterations`` lists the CG iteration count of every solve so far.
    """

    def __init__(self, points, cells, mass, order: int, sigma, n_steps: int = DEFAULT_STEPS,
                 rtol: float = DEFAULT_RTOL):
        self.sigma = _sigma(sigma, "sigma")
        if not (isinstance(n_steps, (int, np.integer)) and n_steps >= 1):
            raise SmoothingError(f"n_steps: must be an integer >= 1, got {n_steps!r}")
        if not (0 < rtol < 1):
            raise SmoothingError(f"rtol: must lie in (0, 1), got {rtol!r}")
        self.n_steps, self.rtol = int(n_steps), float(rtol)
        self.mass = np.ascontiguousarray(mass, dtype=np.float64)
        self.n_points = len(np.asarray(points))
        if self.mass.shape != (self.n_points,) or not (self.mass > 0).all():
            raise SmoothingError(f"mass: expected positive weights of shape ({self.n_points},), "
                                 f"got shape {self.mass.shape}")
        self.iterations: list[int] = []
        self._ksp = None
        self.dim = _dimension(points)
        _check_lengths(self.sigma, self.dim, "sigma")
        self.identity = not any(self.sigma)
        if self.identity:
            return
        tau = 1.0 / self.n_steps
        if self.dim == 2:
            sx, sy = self.sigma
            corners, ibool = cell_corners(points, cells, order)
            diffusivity = tau * np.diag([sx * sx, sy * sy]) / 2.0
            scaled = element_geometry(corners, order, diffusivity)
        else:
            corners, sizes, ibool = box_cells(points, cells, order)
            diffusivity = tau * np.diag([s * s for s in self.sigma]) / 2.0
            scaled = box_mesh_geometry(corners, sizes, order, diffusivity)
        # general=False lets AcousticStiffness use its rectangle kernel on meshes of identical
        # axis-aligned rectangles (same operator, half the memory traffic).
        stiffness = AcousticStiffness(scaled, ibool, np.ones(self.n_points))
        diagonal = self.mass + stiffness_diagonal(scaled, ibool, self.n_points)
        self._shell = _Shell(self.mass, stiffness, diagonal)
        # imported here: importing petsc4py initialises MPI, which a launcher must not do
        from petsc4py import PETSc

        n = self.n_points
        self._mat = PETSc.Mat().createPython([n, n], self._shell, comm=PETSc.COMM_SELF)
        self._mat.setUp()
        ksp = PETSc.KSP().create(comm=PETSc.COMM_SELF)
        ksp.setOperators(self._mat)
        ksp.setType(PETSc.KSP.Type.CG)
        ksp.getPC().setType(PETSc.PC.Type.JACOBI)
        ksp.setNormType(PETSc.KSP.NormType.UNPRECONDITIONED)
        ksp.setTolerances(rtol=self.rtol, atol=0.0, max_it=MAX_ITERATIONS)
        ksp.setInitialGuessNonzero(True)  # u_k is a good guess for u_{k+1}
        ksp.setOptionsPrefix("fwimpi_smoothing_")
        ksp.setFromOptions()
        self._ksp = ksp
        self._b, self._u = self._mat.createVecs()
        # Free the PETSc objects when this smoother goes, and at the latest at exit, before
        # PETSc finalises (a python shell matrix destroyed after PetscFinalize crashes).
        self._finalizer = weakref.finalize(self, _destroy, (ksp, self._mat, self._b, self._u))

    def __call__(self, field: np.ndarray) -> np.ndarray:
        """``S field``: ``n_steps`` backward Euler steps of the diffusion, a new array."""
        u = np.array(field, dtype=np.float64)
        if u.shape != (self.n_points,):
            raise SmoothingError(f"field: expected shape ({self.n_points},), got {u.shape}")
        if not np.isfinite(u).all():
            raise SmoothingError("field: values must be finite")
        if self.identity or not u.any():
            return u
        if self._ksp is None:
            raise SmoothingError("this smoother was destroyed; make a new one")
        with self._u as ua:
            ua[:] = u
        for step in range(self.n_steps):
            with self._b as ba:
                np.multiply(self.mass, self._u.getArray(readonly=True), out=ba)
            self._ksp.solve(self._b, self._u)
            reason = self._ksp.getConvergedReason()
            self.iterations.append(self._ksp.getIterationNumber())
            if reason <= 0:
                raise SmoothingError(
                    f"smoothing step {step + 1}/{self.n_steps} (sigma {self.sigma} m): CG did "
                    f"not converge (reason {reason}, {self._ksp.getIterationNumber()} "
                    f"iterations, residual {self._ksp.getResidualNorm():.3g})")
        return self._u.getArray(readonly=True).copy()

    def destroy(self) -> None:
        """Free the PETSc objects now (the smoother then acts no more)."""
        if self._ksp is not None:
            self._finalizer()
            self._ksp = None

    def __enter__(self) -> "DiffusionSmoother":
        return self

    def __exit__(self, *exc) -> None:
        self.destroy()


def _destroy(objects) -> None:
    for obj in objects:
        obj.destroy()


def smooth(field: np.ndarray, sigma, points: np.ndarray, cells: np.ndarray, mass: np.ndarray,
           order: int, n_steps: int = DEFAULT_STEPS, rtol: float = DEFAULT_RTOL) -> np.ndarray:
    """Root-only: ``field (P,)`` smoothed with Gaussian-equivalent lengths ``sigma = (sx, sy)``
    (2D) or ``(sx, sy, sz)`` (3D) metres by ``n_steps`` backward Euler steps of the diffusion
    (module docstring)."""
    smoother = DiffusionSmoother(points, cells, mass, order, sigma, n_steps, rtol)
    try:
        return smoother(field)
    finally:
        smoother.destroy()


@dataclass(frozen=True, eq=False)
class ConstantSmoothing:
    """Smoothing lengths per parameter and axis, ``{"VP": (sigma_x, sigma_y)}`` in 2D or
    ``{"VP": (sigma_x, sigma_y, sigma_z)}`` in 3D (metres, the Gaussian standard
    deviations), the same everywhere in the domain. ``apply`` checks the count against the
    mesh's dimension."""

    smoothing_lengths_in_meters: MappingABC
    n_steps: int = DEFAULT_STEPS
    rtol: float = DEFAULT_RTOL
    field: str = dc_field(default="smoothing", repr=False)

    def __post_init__(self):
        raw = self.smoothing_lengths_in_meters
        where = f"{self.field}.smoothing_lengths_in_meters"
        if not isinstance(raw, MappingABC) or not raw:
            raise SmoothingError(f"{where}: must be a non-empty mapping "
                                 f"{{PARAMETER: (sigma_x, sigma_y[, sigma_z])}}, got {raw!r}")
        lengths = {str(k): _sigma(v, f"{where}.{k}") for k, v in raw.items()}
        if len({len(v) for v in lengths.values()}) > 1:
            raise SmoothingError(f"{where}: every parameter needs as many lengths (2 in 2D, 3 "
                                 f"in 3D), got {raw!r}")
        object.__setattr__(self, "smoothing_lengths_in_meters", lengths)

    @property
    def dimension(self) -> int:
        """2 or 3: the number of lengths per parameter."""
        return len(next(iter(self.smoothing_lengths_in_meters.values())))

    def apply(self, fields: MappingABC, points: np.ndarray, cells: np.ndarray,
              mass: np.ndarray, order: int, mass_weighted: bool = False) -> dict[str, np.ndarray]:
        """Root-only: every field of ``fields``, the ones with smoothing lengths smoothed
        (others copied). ``mass_weighted``: the fields are gradients ``w * kernel``; smooth
        their kernels (``w * S(g / w)``). One operator per distinct ``sigma``."""
        missing = set(self.smoothing_lengths_in_meters) - set(fields)
        if missing:
            raise SmoothingError(f"{self.field}.smoothing_lengths_in_meters: no field "
                                 f"{', '.join(sorted(missing))} to smooth (fields: "
                                 f"{', '.join(fields) or 'none'})")
        dim = _dimension(points)
        for name, sigma in self.smoothing_lengths_in_meters.items():
            _check_lengths(sigma, dim, f"{self.field}.smoothing_lengths_in_meters.{name}")
        mass = np.asarray(mass, dtype=np.float64)
        out = {name: np.array(value, dtype=np.float64) for name, value in fields.items()}
        smoothers: dict[tuple[float, ...], DiffusionSmoother] = {}
        try:
            for name, sigma in self.smoothing_lengths_in_meters.items():
                if sigma not in smoothers:
                    smoothers[sigma] = DiffusionSmoother(points, cells, mass, order, sigma,
                                                         self.n_steps, self.rtol)
                s = smoothers[sigma]
                out[name] = mass * s(out[name] / mass) if mass_weighted else s(out[name])
        finally:
            for s in smoothers.values():
                s.destroy()
        return out
