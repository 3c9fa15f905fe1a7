"""Absorbing boundaries: the first-order Clayton-Engquist (Stacey) term on the outer edges of
the mesh and an optional damping layer in the margins, both in the diagonal ``C`` of the time
stepper.

The boundary term of ``m0 phi_tt - div(m1 grad phi) = f`` on the left, right and bottom edges
of the extended box (in 3D: the faces x0, x1, y0, y1 and the bottom z0) is
``m1 dphi/dn = -(m1 / c) phi_t`` with ``c = sqrt(m1 / m0)``, i.e.
``int_Gamma sqrt(m0 m1) phi_t v ds`` (``sqrt(m0 m1) = 1 / (rho vp)``): with the lumped GLL
quadrature of the edges it adds ``C_Gamma[i] = s[i] sqrt(m0 m1)[i]`` to ``C``, ``s[i]`` the
summed face weights (m in 2D, m^2 in 3D) of point ``i``. It depends on the model, so
``AbsorbingStepper`` adds its derivative to the adjoint's model kernels.

Measured on the tutorial (tests/test_absorbing.py; relative L2 error of the 10 surface traces
against a mesh too large for anything to return, 3.5 wavelengths of margin): the quadratic
layer alone (R = 1e-2, the former choice) 1.04%, the Stacey term alone 0.087% (with the
time stepper's lagged damping velocity, ``timestepper.DAMPING_WEIGHTS``; 0.105% with the
centred one, the figures below), the two together 1.02%. With the Stacey term every layer ``d = d0 (r/L)^p`` tried made the surface traces
worse (d0 of 0.1 to 100 1/s, p of 1 to 8, ramps starting 0 to 3/4 into the margin: 0.108% to
5.7%), and so did scaling the Stacey term by 0.97 to 1.03 instead of 1 (0.107% to 0.155%).
The rest is first-order Stacey's own reflection (oblique and low-frequency waves), back at
the receiver nearest the left edge in the last 0.3 s. A layer of
d0 = 2 to 8 1/s lowers the energy returned over the whole domain (9.6e-5 to 5e-5 of the
incident) but sends its low frequencies back up to the surface. So the layer is off by default
(``layer_reflection = 1``) and the margins are undamped room in front of the Stacey edge.

In 3D (tests/test_absorbing3d.py; jobs/tutorial_3d.yaml scaled down: 800 m x 400 m x 400 m,
Ricker 5 Hz, order 4, 100 m elements, 7 surface receivers along x, 1.2 s; the same measure
against a reference with 1300 m of closed margin on every side but the top) the Stacey faces
leave 9.55% at 0.25 wavelengths (of 2000 m/s at 5 Hz) of margin, 4.98% at 0.5 (the
tutorial's) and 1.69% at 1 (9.89%, 5.28% and 1.95% with the centred damping velocity), where
the closed box, with no absorbing term, leaves 153%, 116% and 70%. The worst receiver is the
one nearest the x1 face (28%, 14% and 4.6% centred).
"""

import math
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np

from .geometry import ElementGeometry
from .gll import derivative_matrix, gll_points_weights
from .operators import assembled_sum
from .timestepper import DAMPING_WEIGHTS, LeapfrogStepper, PointSampling

#: Amplitude left after the round trip through the damping layer (normal incidence) with no
#: Stacey term: reflected/incident energy 1.6e-4 at 1e-2, 2.7e-4 at 1e-3, 4.5e-4 at 1e-4,
#: 2.8e-3 at 1e-12 (below ~1e-2 the reflection off the steeper damping ramp dominates what
#: gets through). Used by ``damping_profile`` when no target is given.
TARGET_REFLECTION = 1e-2

#: The layer's default target with the Stacey term: 1, no layer (see the module docstring).
LAYER_REFLECTION = 1.0


@dataclass(frozen=True)
class AbsorbingBoundaries:
    """Absorbing margins outside the left, right and bottom of the domain, sized as
    ``number_of_wavelengths`` wavelengths of ``reference_velocity`` (m/s) at
    ``reference_frequency`` (Hz), with the Stacey term on their outer edges (``stacey``) and
    a damping layer of round-trip target ``layer_reflection`` (1: none, the default).

    >>> AbsorbingBoundaries(2000.0, 3.5, 5.0).width_in_meters
    1400.0
    """

    reference_velocity: float
    number_of_wavelengths: float
    reference_frequency: float
    layer_reflection: float = LAYER_REFLECTION
    stacey: bool = True

    @property
    def width_in_meters(self) -> float:
        """``number_of_wavelengths * reference_velocity / reference_frequency``, m."""
        return self.number_of_wavelengths * self.reference_velocity / self.reference_frequency

    def damping(self, points: np.ndarray, domain: tuple[float, ...]) -> np.ndarray:
        """The layer's damping rate ``d (P,)`` (1/s) at ``points (P, 2)`` outside ``domain =
        (x0, x1, y0, y1)``, or ``points (P, 3)`` outside ``(x0, x1, y0, y1, z0, z1)`` (zero
        with the default ``layer_reflection = 1``)."""
        return damping_profile(points, domain, self.width_in_meters, self.reference_velocity,
                               target_reflection=self.layer_reflection)

    def boundary(self, geometry: ElementGeometry, ibool: np.ndarray, n_points: int,
                 box: tuple[float, ...],
                 assemble: Callable[[np.ndarray], None] | None = None) -> "StaceyBoundary | None":
        """The Stacey term on the left, right and bottom edges of ``box = (x0, x1, y0, y1)``
        (the extended mesh's outer box), in 3D on the faces x0, x1, y0, y1 and z0 of ``box =
        (x0, x1, y0, y1, z0, z1)``, for the elements of ``geometry`` / ``ibool`` over
        ``n_points`` points; ``assemble`` sums shared points across subdomains (None:
        serial). None without ``stacey``."""
        if not self.stacey:
            return None
        return StaceyBoundary.on_box(geometry, ibool, n_points, box, assemble)


def damping_profile(
    points: np.ndarray,
    domain: tuple[float, ...],
    width: float,
    reference_velocity: float,
    sides: tuple[str, ...] | None = None,
    target_reflection: float = TARGET_REFLECTION,
) -> np.ndarray:
    """Damping rate ``d (P,)`` in 1/s at ``points (P, 2)`` or ``(P, 3)`` (m).

    ``d = d0 (r / width)^2`` with ``r`` the distance (m) into the margin outside
    ``domain = (x0, x1, y0, y1)`` (2D) or ``(x0, x1, y0, y1, z0, z1)`` (3D); the
    contributions of the sides add up in the edges and corners. ``sides`` (default: all
    absorbing ones) among "left" (x0), "right" (x1), "bottom" (y0 in 2D, z0 in 3D) and, in
    3D, "front" (y0) and "back" (y1).
    ``d0 = 3 v ln(1/R) / width`` makes a wave at ``reference_velocity`` v that crosses the
    margin and back decay to ``R = target_reflection`` (the quadratic ramp keeps the
    reflection off the damping gradient small); ``R = 1`` is no damping.
    """
    d = np.zeros(len(points))
    if len(domain) not in (4, 6):
        raise ValueError(f"damping_profile: a box of 4 (2D) or 6 (3D) numbers, got {domain}")
    three = len(domain) == 6
    if sides is None:
        sides = ("left", "right", "front", "back", "bottom") if three else (
            "left", "right", "bottom")
    if width <= 0 or target_reflection >= 1.0:
        return d
    x0, x1, y0, y1 = domain[:4]
    d0 = 3.0 * reference_velocity * math.log(1.0 / target_reflection) / width
    depth = {
        "left": np.maximum(x0 - points[:, 0], 0.0),
        "right": np.maximum(points[:, 0] - x1, 0.0),
        "bottom": np.maximum(y0 - points[:, 1], 0.0),
    }
    if three:
        depth.update(front=depth.pop("bottom"), back=np.maximum(points[:, 1] - y1, 0.0),
                     bottom=np.maximum(domain[4] - points[:, 2], 0.0))
    for side in sides:
        d += d0 * np.minimum(depth[side] / width, 1.0) ** 2
    return d


@dataclass(frozen=True)
class StaceyBoundary:
    """The Stacey term's points ``indices (B,)`` among ``n_points`` local points and their
    summed face weights ``weights (B,)`` (m in 2D, m^2 in 3D): ``C_Gamma = weights *
    sqrt(m0 m1)`` there."""

    indices: np.ndarray
    weights: np.ndarray
    n_points: int

    @classmethod
    def on_box(cls, geometry: ElementGeometry, ibool: np.ndarray, n_points: int,
               box: tuple[float, ...],
               assemble: Callable[[np.ndarray], None] | None = None) -> "StaceyBoundary":
        """The element faces on the left, right and bottom edges of ``box = (x0, x1, y0, y1)``
        (2D), or on the faces x0, x1, y0, y1 and z0 of ``box = (x0, x1, y0, y1, z0, z1)``
        (3D), found from the GLL coordinates, to 1e-9 of the box's size. Each point is
        weighted by its face's lumped quadrature: in 2D ``w_k |dx/dxi|_k`` (the 1D GLL weight
        times half the length of a straight edge), in 3D ``w_k w_l |dx/da x dx/db|_kl`` (the
        2D GLL weight times the face's area Jacobian: a quarter of a flat rectangle's area);
        the weights of a point on several faces or elements add up, across subdomains by
        ``assemble`` (like the mass)."""
        if geometry.dim == 3:
            face = _box_faces_3d(geometry, box)
        else:
            face = _box_edges_2d(geometry, box)
        s = assembled_sum(ibool, face, n_points)
        if assemble is not None:
            assemble(s)
        indices = np.flatnonzero(s > 0.0)
        return cls(indices, s[indices].copy(), int(n_points))

    def damping(self, m0: np.ndarray, m1: np.ndarray) -> np.ndarray:
        """``C_Gamma (n_points,)`` = ``weights sqrt(m0 m1)`` (= ``weights / (rho vp)``) at the
        boundary points, 0 elsewhere, for the coefficients ``m0, m1 (n_points,)``."""
        c = np.zeros(self.n_points)
        c[self.indices] = self.weights * np.sqrt(m0[self.indices] * m1[self.indices])
        return c


def _box_edges_2d(geometry: ElementGeometry, box: tuple[float, ...]) -> np.ndarray:
    """Lumped edge weights ``(E, n, n)`` (m) on the left, right and bottom of ``box``."""
    x0, x1, y0, y1 = box
    _, w = gll_points_weights(geometry.order)
    d = derivative_matrix(geometry.order)
    x, y = geometry.coords  # (E, n, n), ordered [e, j, i]
    tol = 1e-9 * max(x1 - x0, y1 - y0)
    face = np.zeros(x.shape)
    for sl, c, edge in (((slice(None), slice(None), 0), x, x0),    # left: i = 0
                        ((slice(None), slice(None), -1), x, x1),   # right: i = N
                        ((slice(None), 0, slice(None)), y, y0)):   # bottom: j = 0
        on = np.all(np.abs(c[sl] - edge) <= tol, axis=1)
        ds = np.hypot(x[sl] @ d.T, y[sl] @ d.T)  # |dx/dxi| at the face's GLL points
        face[sl] += np.where(on[:, None], w[None, :] * ds, 0.0)
    return face


def _box_faces_3d(geometry: ElementGeometry, box: tuple[float, ...]) -> np.ndarray:
    """Lumped face weights ``(E, n, n, n)`` (m^2) on the faces x0, x1, y0, y1, z0 of ``box``."""
    if len(box) != 6:
        raise ValueError(f"StaceyBoundary: a 3D box is (x0, x1, y0, y1, z0, z1), got {box}")
    x0, x1, y0, y1, z0, z1 = box
    _, w = gll_points_weights(geometry.order)
    d = derivative_matrix(geometry.order)
    coords = np.asarray(geometry.coords)  # (3, E, n, n, n), ordered [c, e, k, j, i]
    tol = 1e-9 * max(x1 - x0, y1 - y0, z1 - z0)
    face = np.zeros(coords.shape[1:])
    every = slice(None)
    # (element-point slice, coordinate axis, plane): a face's points are (E, n, n) in the
    # order of the two remaining reference axes, slowest first
    for sl, axis, plane in (((every, every, every, 0), 0, x0),    # x0: i = 0, points [k, j]
                            ((every, every, every, -1), 0, x1),   # x1: i = N
                            ((every, every, 0, every), 1, y0),    # y0: j = 0, points [k, i]
                            ((every, every, -1, every), 1, y1),   # y1: j = N
                            ((every, 0, every, every), 2, z0)):   # z0: k = 0, points [j, i]
        c = coords[(every,) + sl]  # (3, E, n, n)
        on = np.all(np.abs(c[axis] - plane) <= tol, axis=(1, 2))
        t_fast = c @ d.T  # d x / d(reference axis of the last index)
        t_slow = np.einsum("kl,celj->cekj", d, c)  # ... of the first
        area = np.linalg.norm(np.cross(t_slow, t_fast, axis=0), axis=0)
        face[sl] += np.where(on[:, None, None], np.multiply.outer(w, w)[None] * area, 0.0)
    return face


@numba.njit(cache=True)
def _boundary_term(gc, u, b, l_k, later, w_plus, w_0, w_minus):
    """One step of ``gC``: ``gc += u[b] (w+ l[k] + w0 l[k+1] + w- l[k+2])`` with ``later =
    (l[k+1], l[k+2])`` ``(2, B)``, which then becomes ``(l[k], l[k+1])``."""
    for i in range(len(b)):
        gc[i] += u[b[i]] * (w_plus * l_k[i] + w_0 * later[0, i] + w_minus * later[1, i])
        later[1, i] = later[0, i]
        later[0, i] = l_k[i]


class AbsorbingStepper(LeapfrogStepper):
    """A ``LeapfrogStepper`` whose damping ``C`` includes the Stacey term of ``boundary`` for
    the coefficients ``m0, m1 (P,)`` (``set_boundary_model`` replaces them), and whose adjoint
    adds that term's model dependence to the kernels, so the gradient stays exact.

    ``LeapfrogStepper.adjoint``'s kernels treat all of ``C`` as ``m0`` times a fixed rate:
    ``dC/dm0 = C/m0``. For ``C_Gamma = s sqrt(m0 m1)`` the derivatives are ``C_Gamma / (2 m0)``
    and ``C_Gamma / (2 m1)``. With ``gC = sum_m u[m] dt (w+ l[m-1] + w0 l[m] + w- l[m+1])``
    (``DAMPING_WEIGHTS``) at the boundary
    points (``dJ/dC = -gC / dt^2``), the kernels become

        g0 -= C_Gamma / (2 M) gC,    g1 += C_Gamma / (2 m1) gC / dt^2.

    ``gC`` is summed as the adjoint runs: ``forward`` delivers ``u[m]`` at the start of step
    m, and ``l[m-1]`` at the boundary points is passed back at its end (``on_record``, with
    the caller's rows, if any, kept for it), so only ``l[m]`` and ``l[m+1]`` are held: ``4 B``
    values, not ``2 B n_steps`` (55 MB at 4,000 steps of the tutorial mesh).
    """

    def __init__(self, boundary: StaceyBoundary, m0: np.ndarray, m1: np.ndarray,
                 *args, **kwargs):
        self.boundary = boundary
        self.set_boundary_model(m0, m1)
        super().__init__(*args, **kwargs)

    def set_boundary_model(self, m0: np.ndarray, m1: np.ndarray) -> None:
        """The coefficients ``m0, m1 (P,)`` of the current model (call with every new one)."""
        b = self.boundary.indices
        self._m0, self._m1 = m0[b].copy(), m1[b].copy()

    def set_coefficients(self, mass: np.ndarray, damping: np.ndarray) -> None:
        """``LeapfrogStepper.set_coefficients``; ``damping`` includes ``C_Gamma``."""
        self._mass = mass[self.boundary.indices].copy()
        super().set_coefficients(mass, damping)

    def adjoint(self, n_steps, receivers, adjoint_sources, forward, record=None):
        """``LeapfrogStepper.adjoint`` with the kernels of the model-dependent ``C_Gamma``."""
        b = self.boundary.indices
        nb = len(b)
        if nb == 0:
            return super().adjoint(n_steps, receivers, adjoint_sources, forward, record)
        k = 1 if record is None else max(1, record.indices.shape[1])
        idx = np.zeros((nb, k), dtype=np.int64)
        wts = np.zeros((nb, k))
        idx[:, 0], wts[:, 0] = b, 1.0
        rows = PointSampling(idx, wts)
        if record is not None:
            rows = PointSampling(np.vstack((record.indices, idx)), np.vstack((record.weights, wts)))
        n_rec = 0 if record is None else len(record)
        lam = None if record is None else np.zeros((n_rec, n_steps))
        u_m = [None]  # u[m], m the step running (valid until the next forward(m))
        later = np.zeros((2, nb))  # l[m], l[m+1] at the boundary (l[n] = l[n+1] = 0)
        gc = np.zeros(nb)

        def forward_at_boundary(m):
            u_m[0] = forward(m)
            return u_m[0]

        def on_record(k, values):  # l[k], k = m - 1: the term u[m] (l[m-1] - l[m+1])
            if lam is not None:
                lam[:, k] = values[:n_rec]
            _boundary_term(gc, u_m[0], b, values[n_rec:], later, *DAMPING_WEIGHTS)

        g0, g1, _ = super().adjoint(n_steps, receivers, adjoint_sources, forward_at_boundary,
                                    rows, on_record)
        gc *= self.dt
        c_gamma = self.boundary.weights * np.sqrt(self._m0 * self._m1)
        g0[b] -= 0.5 * c_gamma / self._mass * gc
        g1[b] += 0.5 * c_gamma / self._m1 * gc / self.dt**2
        return g0, g1, lam
