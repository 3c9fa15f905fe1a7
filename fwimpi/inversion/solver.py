"""The wave solver of one distributed mesh: forward runs and exact adjoint gradients of an
event, for a model that can be replaced.

``WaveSolver(mesh, model, axis, wavelet)`` builds the operators once on the local elements of
a ``DistributedMesh``; ``set_model`` replaces the model in place (mesh, decomposition, time
axis and the operators' structure are kept), checking that the fixed time step stays
stable. ``forward(event)`` records the receivers; ``gradient(event, misfit)`` also runs the
adjoint and returns ``dJ/dp`` at the local points, p the physics' parameters (VP, RHO).

Collective on ``mesh.comm``: every rank calls every method with the same arguments.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from ..errors import FwimpiError, NumericalError
from ..parallel.distributed import DistributedMesh
from ..sem.absorbing import AbsorbingBoundaries, AbsorbingStepper
from ..sem.ftz import flush_denormals
from ..sem.acquisition import Event
from ..sem.operators import AcousticStiffness
from ..sem.physics import ACOUSTIC, AcousticPhysics, ModelValueError
from ..sem.timestepper import LeapfrogStepper, PointSampling, TimeAxis, stable_time_step
from ..sem.wavelets import Ricker
from .gradient import ForwardWavefield, WavefieldBuffer

#: ``misfit(kept receiver indices (r,), traces (r, S)) -> (J of these receivers, dJ/dtraces)``
LocalMisfit = Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]


class ModelError(FwimpiError, ValueError):
    """A model the solver cannot take: invalid values, or unstable at the fixed time step."""


@dataclass(frozen=True)
class Recording:
    """One event's forward run on one rank: the receivers it holds ``receivers_kept (r,)``,
    their traces ``(r, n_steps + 1)`` and the time loop's wall time (s, this rank)."""

    receivers_kept: np.ndarray
    traces: np.ndarray
    seconds: float


@dataclass(frozen=True)
class EventGradient:
    """One event's gradient on one rank: the misfit (summed over ranks), ``gradient``
    ``{parameter: (n_local,)}`` (``dJ/dp_i`` at the local points, assembled), the forward
    traces it held, time-loop wall times (s) and the wavefield bookkeeping."""

    misfit: float
    gradient: dict[str, np.ndarray]
    receivers_kept: np.ndarray
    traces: np.ndarray
    forward_seconds: float
    adjoint_seconds: float
    recomputed_steps: int
    wavefield_bytes: int


class WaveSolver:
    """Collective on ``mesh.comm``: the wave equation of ``physics`` on the local elements of
    ``mesh`` with the time axis ``axis`` (s; fixed for the solver's life) and ``wavelet``.

    ``model`` gives each parameter at the local points ``(n_local,)``. ``absorbing`` adds the
    damping margins outside ``mesh.mesh.domain`` (None: a closed box). ``progress(step)`` (if
    set) is called after every step of every time loop.
    """

    def __init__(self, mesh: DistributedMesh, model: Mapping[str, np.ndarray], axis: TimeAxis,
                 wavelet: Ricker, absorbing: AbsorbingBoundaries | None = None,
                 physics: AcousticPhysics = ACOUSTIC, top_boundary: str = "neumann"):
        self.mesh, self.axis, self.wavelet, self.physics = mesh, axis, wavelet, physics
        # from now on this thread's FPU flushes subnormal values (ahead of the front, in the
        # decay) to 0: x86 computes with them up to ~100x slower (fwimpi.sem.ftz)
        flush_denormals()
        if top_boundary not in ("neumann", "dirichlet"):
            raise ValueError(f"top_boundary: 'neumann' or 'dirichlet', got {top_boundary!r}")
        self.top_boundary = top_boundary
        # the boxes as (x0, x1, y0, y1[, z0, z1])
        box = tuple(v for b in mesh.mesh.domain.bounds for v in b)
        ext = tuple(v for b in mesh.mesh.extended.bounds for v in b)
        # C = M d + C_Gamma: the layer's fixed rate d and the Stacey term on the outer edges
        # (faces in 3D), which depends on the model; damping_rate = C / M for the current model
        self.layer_rate = (np.zeros(mesh.n_local) if absorbing is None else
                           absorbing.damping(mesh.coordinates, box))
        self.boundary = (None if absorbing is None else
                         absorbing.boundary(mesh.geometry, mesh.ibool, mesh.n_local, ext,
                                            mesh.assemble))
        self._model = self._checked(model)
        m0, m1 = physics.coefficients(self._model)
        self.stiffness = AcousticStiffness(mesh.geometry, mesh.ibool, m1)
        mass = m0 * mesh.weights
        self.damping_rate = self.layer_rate + (0.0 if self.boundary is None else
                                               self.boundary.damping(m0, m1) / mass)
        args = (self.stiffness, mass, mass * self.damping_rate, axis.dt, mesh.assembler,
                mesh.work, mesh.all if mesh.comm.size > 1 else None)
        self.stepper = (LeapfrogStepper(*args) if self.boundary is None else
                        AbsorbingStepper(self.boundary, m0, m1, *args))
        if top_boundary == "dirichlet":  # the pressure-free surface: phi = 0 on the top
            bottom, top = mesh.mesh.extended.bounds[-1]  # the vertical axis is the last
            at_top = np.abs(mesh.coordinates[:, -1] - top) <= 1e-9 * (top - bottom)
            self.stepper.fix(at_top, mass, mass * self.damping_rate)
        self.stable_dt = self._stable_dt(m0, m1)
        self._check_stable(self.stable_dt)
        self.buffer = WavefieldBuffer()
        self.progress: Callable[[int], None] | None = None

    # ------------------------------------------------------------------ the model

    @property
    def model(self) -> dict[str, np.ndarray]:
        """The current model at the local points (copies)."""
        return {k: v.copy() for k, v in self._model.items()}

    def set_model(self, model: Mapping[str, np.ndarray]) -> None:
        """Replace the model (``{parameter: (n_local,)}``) in place. Raises ModelError on
        every rank, leaving the solver unchanged, if it is invalid or unstable at ``dt``."""
        checked = self._checked(model)
        m0, m1 = self.physics.coefficients(checked)
        stable = self._stable_dt(m0, m1)
        self._check_stable(stable)
        self._model, self.stable_dt = checked, stable
        self.stiffness.set_coefficient(m1)
        mass = m0 * self.mesh.weights
        self.damping_rate = self.layer_rate + (0.0 if self.boundary is None else
                                               self.boundary.damping(m0, m1) / mass)
        if self.boundary is not None:
            self.stepper.set_boundary_model(m0, m1)
        self.stepper.set_coefficients(mass, mass * self.damping_rate)

    def _checked(self, model: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        error = None
        try:
            out = {p: np.array(model[p], dtype=float) for p in self.physics.parameters}
            for p, v in out.items():
                if v.shape != (self.mesh.n_local,):
                    raise ModelValueError(f"{p}: expected shape ({self.mesh.n_local},), got "
                                          f"{v.shape}")
            self.physics.check(out)
        except (KeyError, ModelValueError) as err:
            error = ModelError(f"model: {err}")
        self.mesh.agree(error)
        return out

    def _stable_dt(self, m0: np.ndarray, m1: np.ndarray) -> float:
        ib = self.mesh.ibool
        return self.mesh.min(stable_time_step(self.mesh.geometry, m0[ib], m1[ib]))

    def _check_stable(self, stable_dt: float) -> None:
        if self.axis.dt > stable_dt:
            raise ModelError(f"model: the time step {self.axis.dt:.6g} s exceeds the stability "
                             f"limit {stable_dt:.6g} s of this model (velocities too high)")

    # ------------------------------------------------------------------ runs

    def _signals(self, event: Event) -> tuple[PointSampling, np.ndarray]:
        """The event's sources in this rank's elements and their signals ``(s, n_steps)``:
        amplitude ``f`` times the wavelet at the steps' times."""
        keep, src = self.mesh.point_sampling(event.source_coordinates)
        amps = np.array([event.sources[k].f for k in keep], dtype=float)
        return src, amps[:, None] * self.wavelet(self.axis.times[:-1])[None, :]

    def _stepper(self) -> LeapfrogStepper:
        self.stepper.progress = self.progress
        return self.stepper

    def forward(self, event: Event) -> Recording:
        """Run one event from rest; this rank's receivers and their traces. Raises
        NumericalError on every rank if the wavefield becomes non-finite."""
        src, signals = self._signals(event)
        keep, rec = self.mesh.point_sampling(event.receiver_coordinates)
        stepper = self._stepper()
        traces = np.zeros((len(rec), self.axis.n_steps + 1))
        t0 = time.perf_counter()
        try:
            stepper.advance(stepper.initial_state(), self.axis.n_steps, src, signals, rec,
                            traces)
        except NumericalError as err:
            raise NumericalError(f"event {event.name}: {err}") from None
        return Recording(keep, traces, time.perf_counter() - t0)

    def gradient(self, event: Event, misfit: LocalMisfit, interval: int = 1,
                 chunk: int | None = None, checkpoints=None,
                 lossy: float | None = None) -> EventGradient:
        """Misfit and raw gradient ``dJ/dp`` at the local points, exact for ``interval = 1``.

        ``interval`` is ``forward_wavefield_sampling_interval``; ``chunk`` the checkpoint
        spacing in steps (default: everything in memory). ``checkpoints`` (optional) has
        ``spacing``, ``save(step, state)``, ``load(step) -> State`` and ``traces``: when its
        ``traces`` (all receivers, ``(R, n_steps + 1)``) are given, the forward run is not
        repeated and the adjoint recomputes the chunks from the stored states. ``lossy`` (the
        ``wavefield_compression.lossy`` tolerance, relative to the wavefield's peak) stores
        the samples ZFP-compressed; None (default) stores them exactly.
        Raises NumericalError on every rank if a wavefield, the misfit or the gradient is
        not finite.
        """
        try:
            return self._gradient(event, misfit, interval, chunk, checkpoints, lossy)
        except NumericalError as err:
            raise NumericalError(f"event {event.name}: {err}") from None

    def _gradient(self, event: Event, misfit: LocalMisfit, interval: int, chunk: int | None,
                  checkpoints, lossy: float | None = None) -> EventGradient:
        axis = self.axis
        src, signals = self._signals(event)
        keep, rec = self.mesh.point_sampling(event.receiver_coordinates)
        stepper = self._stepper()
        if chunk is None:
            chunk = interval * math.ceil(axis.n_steps / interval)
        stored = None if checkpoints is None else checkpoints.traces
        # the wavefield's memory is taken (and faulted in) here, before the time loop's clock
        if stored is not None:
            wavefield = ForwardWavefield(stepper, src, signals, axis.n_steps, interval,
                                         checkpoints.spacing, self.buffer, load=checkpoints.load,
                                         lossy=lossy)
            t0 = time.perf_counter()
            traces = np.ascontiguousarray(stored[keep])
        else:
            save = None if checkpoints is None else checkpoints.save
            wavefield = ForwardWavefield(
                stepper, src, signals, axis.n_steps, interval, chunk, self.buffer, save=save,
                save_every=None if checkpoints is None else checkpoints.spacing,
                load=None if checkpoints is None else checkpoints.load, lossy=lossy)
            t0 = time.perf_counter()
            traces = wavefield.run_forward(rec)
        t1 = time.perf_counter()
        j_part, adjoint_sources = misfit(keep, traces)
        j = self.mesh.sum(j_part)
        if not (math.isfinite(j) and self.mesh.all(np.isfinite(adjoint_sources).all())):
            raise NumericalError(f"the misfit is not finite ({j}): check the observed data "
                                 f"and the traces")
        t2 = time.perf_counter()
        g0, g1, _ = stepper.adjoint(axis.n_steps, rec, adjoint_sources, wavefield)
        t3 = time.perf_counter()
        # dJ/dm0 = -w g0 / dt^2, dJ/dm1 = -g1 (LeapfrogStepper.adjoint)
        gradient = self.physics.chain_rule(self._model, -self.mesh.weights * g0 / axis.dt**2,
                                           -g1)
        if not self.mesh.all(all(np.isfinite(g).all() for g in gradient.values())):
            raise NumericalError("the gradient is not finite")
        return EventGradient(j, gradient, keep, traces, t1 - t0, t3 - t2,
                             wavefield.recomputed_steps, wavefield.peak_bytes)
