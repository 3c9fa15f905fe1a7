"""Serial wave solvers for the numerics tests: one rank (``COMM_SELF``), where the local
points are the mesh's points in natural order."""

import numpy as np
from mpi4py import MPI

from fwimpi.inversion.solver import WaveSolver
from fwimpi.parallel.distributed import DistributedMesh
from fwimpi.sem.absorbing import AbsorbingBoundaries
from fwimpi.sem.acquisition import Event, PointSource, Receiver
from fwimpi.sem.timestepper import COURANT_FACTOR, TimeAxis, stable_time_step
from fwimpi.sem.wavelets import Ricker


def margins(width: float, reference_velocity: float) -> AbsorbingBoundaries | None:
    """Absorbing margins ``width`` m wide for ``reference_velocity`` m/s (None for 0)."""
    if width <= 0:
        return None
    return AbsorbingBoundaries(reference_velocity, width / reference_velocity, 1.0)


def event(sources, receivers, amplitudes=None, name="event") -> Event:
    """An Event from source positions ``(S, 2)`` and receiver positions ``(R, 2)``."""
    sources = np.atleast_2d(np.asarray(sources, float))
    amplitudes = np.ones(len(sources)) if amplitudes is None else amplitudes
    return Event(name,
                 tuple(PointSource(tuple(map(float, p)), float(a))
                       for p, a in zip(sources, amplitudes)),
                 tuple(Receiver(tuple(map(float, p)), f"R{k:04d}")
                       for k, p in enumerate(np.atleast_2d(np.asarray(receivers, float)))))


def stable_dt(mesh, model) -> float:
    """The leapfrog limit (s) of ``model(points) -> {VP, RHO}`` on ``mesh``."""
    values = model(mesh.points)
    m0, m1 = 1.0 / (values["RHO"] * values["VP"] ** 2), 1.0 / values["RHO"]
    ib = mesh.ibool()
    return stable_time_step(mesh.geometry(), m0[ib], m1[ib])


def solver(mesh, model, end_time: float = 1.0, dt: float | None = None, n_steps=None,
           absorbing: AbsorbingBoundaries | None = None, fc: float = 5.0,
           time_shift: float | None = None, top_boundary: str = "neumann") -> WaveSolver:
    """A WaveSolver on all of ``mesh`` (COMM_SELF) for ``model(points) -> {VP, RHO}``, with
    ``dt`` (default: COURANT_FACTOR of the limit) up to ``end_time`` (or ``n_steps``)."""
    dt = COURANT_FACTOR * stable_dt(mesh, model) if dt is None else dt
    axis = TimeAxis.covering(end_time, dt) if n_steps is None else TimeAxis(dt, n_steps)
    dist = DistributedMesh(MPI.COMM_SELF, mesh)
    return WaveSolver(dist, model(dist.coordinates), axis, Ricker(fc, time_shift), absorbing,
                      top_boundary=top_boundary)
