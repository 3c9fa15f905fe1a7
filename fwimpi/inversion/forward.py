"""Forward simulation of one event on a set of elements of a structured mesh.

The problem owns the elements it is given (all of them in a serial run, one subdomain in a
decomposed run): local point numbering, model, operators, sources and receivers. The
caller passes ``assemble`` (sum of shared-point values across subdomains, in place) and
``reduce_max`` (a global max) for a decomposed run; both are identities in serial.
"""

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..mesh.structured import StructuredMesh
from ..sem.absorbing import damping_profile
from ..sem.geometry import point_weights
from ..sem.operators import AcousticStiffness, assembled_sum
from ..sem.timestepper import LeapfrogStepper, PointSampling, element_max_eigenvalues
from ..sem.wavelets import ricker

#: Fraction of the leapfrog stability limit used for the CFL-derived time step: at 0.8 the
#: time (dispersion) error of the leapfrog scheme dominated the spatial one by 20x at the
#: tutorial resolution (1.4% trace error against the analytic solution); 0.5 gives 0.5%.
COURANT_FACTOR = 0.5


@dataclass(frozen=True)
class TimeAxis:
    """Samples ``t_n = start_time + n dt`` for ``n = 0..n_steps`` (s)."""

    dt: float
    n_steps: int
    start_time: float = 0.0

    @property
    def times(self) -> np.ndarray:
        return self.start_time + self.dt * np.arange(self.n_steps + 1)


@dataclass(frozen=True)
class PointSource:
    """``ScalarPoint2D``: position (m) and amplitude ``f``."""

    x: float
    y: float
    f: float


def _identity(a: np.ndarray) -> None:
    return None


class ForwardProblem:
    """Operators of the acoustic wave equation on ``elements`` of ``mesh``.

    ``vp``, ``rho`` are given at the global points ``(mesh.n_points,)`` or by a callable
    evaluating them at points ``(Q, 2)``; only the local points are evaluated.
    """

    def __init__(
        self,
        mesh: StructuredMesh,
        model: Callable[[np.ndarray], dict[str, np.ndarray]],
        elements: np.ndarray | None = None,
        points: np.ndarray | None = None,
        absorbing_width: float = 0.0,
        reference_velocity: float = 1.0,
        assemble: Callable[[np.ndarray], None] = _identity,
        reduce_max: Callable[[float], float] = lambda v: v,
        work: np.ndarray | None = None,
    ):
        self.mesh = mesh
        self.elements = np.arange(mesh.n_elements) if elements is None else np.asarray(elements)
        ibool_global = mesh.ibool(self.elements)
        # local points: the given order (a subdomain's owned points, then ghosts) or sorted
        self.points = np.unique(ibool_global) if points is None else np.asarray(points)
        lookup = np.full(mesh.n_points, -1, dtype=np.int64)
        lookup[self.points] = np.arange(len(self.points))
        self.ibool = lookup[ibool_global]
        if (self.ibool < 0).any():
            raise ValueError("points must include every point of the elements")
        self.assemble = assemble
        self.reduce_max = reduce_max
        self.work = work
        #: ``progress(steps_done)`` handed to every stepper this problem makes (or None)
        self.progress = None
        xy = mesh.points[self.points]
        values = model(xy)
        self.vp, self.rho = values["VP"], values["RHO"]
        self.geometry = mesh.geometry(self.elements)
        m0 = 1.0 / (self.rho * self.vp**2)
        m1 = 1.0 / self.rho
        self.stiffness = AcousticStiffness(self.geometry, self.ibool, m1)
        self.weights = assembled_sum(self.ibool, self.geometry.jw, len(self.points))
        assemble(self.weights)  # w: assembled quadrature weights (lumped unit mass), m^2
        self.mass = m0 * self.weights
        d = damping_profile(
            xy, (mesh.domain.x0, mesh.domain.x1, mesh.domain.y0, mesh.domain.y1),
            absorbing_width, reference_velocity,
        )
        self.damping = self.mass * d
        lam = element_max_eigenvalues(self.geometry, m0[self.ibool], m1[self.ibool])
        self.stable_dt = 2.0 / np.sqrt(reduce_max(float(lam.max()) if lam.size else 0.0))

    @property
    def n_local_points(self) -> int:
        return len(self.points)

    def time_axis(self, end_time: float, dt: float | None = None) -> TimeAxis:
        """Steps to reach ``end_time`` (s) with ``dt`` or ``COURANT_FACTOR`` of the limit."""
        if dt is None:
            dt = COURANT_FACTOR * self.stable_dt
        elif dt > self.stable_dt:
            raise ValueError(f"time step {dt:g} s exceeds the stability limit {self.stable_dt:g} s")
        return TimeAxis(float(dt), int(np.ceil(end_time / dt - 1e-9)))

    def sampling(self, xy: np.ndarray) -> tuple[np.ndarray, PointSampling]:
        """Interpolation rows for points ``(Q, 2)`` that fall in this problem's elements.

        Returns the indices ``(q,)`` of the points kept and their ``PointSampling`` over
        local points (a point on an edge shared with another subdomain belongs to the
        lowest-numbered element, so exactly one subdomain keeps it).
        """
        xy = np.atleast_2d(np.asarray(xy, dtype=float)).reshape(-1, 2)
        elem, ref = self.mesh.locate(xy)
        local = np.full(self.mesh.n_elements, -1)
        local[self.elements] = np.arange(len(self.elements))
        keep = np.flatnonzero(local[elem] >= 0)
        le = local[elem[keep]]
        idx = self.ibool[le].reshape(len(keep), (self.mesh.order + 1) ** 2)
        return keep, PointSampling(idx, point_weights(self.mesh.order, ref[keep]))

    def stepper(self, dt: float) -> LeapfrogStepper:
        stepper = LeapfrogStepper(self.stiffness, self.mass, self.damping, dt, self.assemble,
                                  self.work)
        stepper.progress = self.progress
        return stepper

    def source_signals(self, sources: list[PointSource], axis: TimeAxis,
                       center_frequency: float, time_shift: float | None
                       ) -> tuple[PointSampling, np.ndarray]:
        """The sources in this problem's elements and their signals ``(S, n_steps)``:
        amplitude ``f`` times the Ricker at the steps' times."""
        keep, src = self.sampling(np.array([[s.x, s.y] for s in sources]))
        amps = np.array([sources[k].f for k in keep], dtype=float)
        signal = ricker(axis.times[:-1], center_frequency, time_shift)
        return src, amps[:, None] * signal[None, :]

    def simulate(
        self,
        sources: list[PointSource],
        receivers_xy: np.ndarray,
        axis: TimeAxis,
        center_frequency: float,
        time_shift: float | None = None,
        on_step=None,
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """Run one event: returns (kept receiver indices, traces ``(r, n_steps+1)``, seconds).

        The seconds are the wall time of the time loop alone.
        """
        src, signals = self.source_signals(sources, axis, center_frequency, time_shift)
        keep_r, rec = self.sampling(receivers_xy)
        stepper = self.stepper(axis.dt)
        t0 = time.perf_counter()
        traces = stepper.run(axis.n_steps, src, signals, rec, on_step=on_step)
        return keep_r, traces, time.perf_counter() - t0
