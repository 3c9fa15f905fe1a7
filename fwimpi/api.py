"""The Python API: a job's simulation on a communicator, for notebooks and scripts.

>>> import fwimpi                                                    # doctest: +SKIP
>>> from mpi4py import MPI                                           # doctest: +SKIP
>>> sim = fwimpi.Simulation.from_file("jobs/mapping_tutorial.yaml", MPI.COMM_WORLD)  # doctest: +SKIP
>>> traces = sim.forward()            # (R, n_steps + 1) on rank 0     # doctest: +SKIP
>>> misfit, gradient = sim.gradient() # dJ/dVP, dJ/dRHO (P,) on rank 0 # doctest: +SKIP

``Simulation`` plans the job like ``fwimpi run`` (mesh from the starting model, fixed time
step, observed data matched to the receivers), decomposes the mesh over the ranks of
``comm`` and builds the solver. Arrays in the natural point order of the mesh (what files
hold: ``sim.points``) are gathered on rank 0; a model is given the same way. Every method
is collective on ``comm``. Nothing is written: the job's files are ``fwimpi run``'s work.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .inversion.solver import ModelError, WaveSolver
from .jobs.plan import JobPlan, plan_job
from .jobs.spec import JobSpec, load_job_spec, read_job_text
from .parallel.collective import decide_on_root
from .parallel.distributed import DistributedMesh
from .sem.acquisition import Event
from .sem.timestepper import TimeAxis


class Simulation:
    """Collective on ``comm``: the job ``spec`` ready to simulate on the ranks of ``comm``.

    ``plan`` (optional) is a ``JobPlan`` made already; ``axis`` (optional) replaces the
    plan's time axis (same or smaller ``dt`` than the stability limit). Attributes: ``spec``,
    ``plan``, ``mesh`` (the ``DistributedMesh``), ``solver`` (the ``WaveSolver``).
    """

    def __init__(self, spec: JobSpec, comm, plan: JobPlan | None = None,
                 axis: TimeAxis | None = None):
        self.spec, self.comm = spec, comm
        self.plan = plan or decide_on_root(comm, lambda: plan_job(spec, comm.size))
        self.mesh = DistributedMesh(comm, self.plan.mesh)
        try:
            self.solver = WaveSolver(self.mesh, self.plan.model(self.mesh.coordinates),
                                     axis or self.plan.axis, self.plan.wavelet,
                                     spec.simulation.absorbing,
                                     top_boundary=spec.simulation.top_boundary)
        except ModelError as err:
            self.mesh.destroy()
            raise ConfigError(str(err)) from None

    @classmethod
    def from_file(cls, path: str | os.PathLike, comm, **kwargs) -> "Simulation":
        """From a YAML job spec (read by rank 0)."""
        text = decide_on_root(comm, lambda: read_job_text(path))
        return cls(load_job_spec(Path(path), text), comm, **kwargs)

    # ------------------------------------------------------------------ arrays

    @property
    def points(self) -> np.ndarray:
        """``(P, dim)`` the mesh's GLL points (m), natural order."""
        return self.plan.mesh.points

    @property
    def axis(self) -> TimeAxis:
        return self.solver.axis

    def _event(self, event: Event | str | None) -> Event:
        if isinstance(event, Event):
            return event
        if event is None:
            return self.spec.events[0]
        for e in self.spec.events:
            if e.name == event:
                return e
        raise ConfigError(f"event: no event {event!r} in job {self.spec.name} (events: "
                          f"{', '.join(e.name for e in self.spec.events)})")

    @property
    def mass(self) -> np.ndarray | None:
        """``(P,)`` the quadrature weights ``w`` (m^2 in 2D, m^3 in 3D) in natural order on rank 0: the files'
        ``/mesh/mass``, what a gradient divided by gives its kernel."""
        return self._gather(self.mesh.weights)

    def _gather(self, local: np.ndarray) -> np.ndarray | None:
        parts = self.comm.gather(self.mesh.to_natural(local), root=0)
        return np.concatenate(parts) if self.comm.rank == 0 else None

    def model(self) -> dict[str, np.ndarray] | None:
        """The current model ``{parameter: (P,)}`` on rank 0 (None elsewhere)."""
        gathered = {p: self._gather(v) for p, v in self.solver.model.items()}
        return gathered if self.comm.rank == 0 else None

    def set_model(self, model: dict[str, np.ndarray] | None) -> None:
        """Replace the model: ``{parameter: (P,)}`` given on rank 0 (ignored elsewhere).
        Mesh, time step and operators stay; raises ConfigError on every rank if the model
        is invalid or unstable at the time step."""
        lo, hi = self.mesh.natural_range
        model = self.comm.bcast(model, root=0)
        local = {p: self.mesh.from_natural(np.asarray(v, dtype=float)[lo:hi])
                 for p, v in model.items()}
        try:
            self.solver.set_model(local)
        except ModelError as err:
            raise ConfigError(str(err)) from None

    # ------------------------------------------------------------------ runs

    def forward(self, event: Event | str | None = None) -> np.ndarray | None:
        """Receiver traces ``(R, n_steps + 1)`` of an event (default: the first) on rank 0."""
        event = self._event(event)
        rec = self.solver.forward(event)
        return self.mesh.gather_rows(rec.receivers_kept, rec.traces, len(event.receivers))

    def gradient(self, event: Event | str | None = None, interval: int | None = None,
                 chunk: int | None = None) -> tuple[float, dict[str, np.ndarray] | None]:
        """The job's misfit of an event and its raw gradient ``{parameter: (P,)}`` (rank 0;
        the misfit on every rank), as ``fwimpi run`` computes it: ``interval``
        (forward_wavefield_sampling_interval) and ``chunk`` (checkpoint spacing, steps;
        checkpoints kept in memory) default to the job's."""
        if self.spec.misfit is None:
            raise ConfigError("misfit_configuration: a gradient needs a misfit")
        if interval is None:
            interval = self.spec.compression.forward_wavefield_sampling_interval
            chunk = self.plan.chunk if chunk is None else chunk
        event = self._event(event)
        misfit, dt = self.spec.misfit.on_potential, self.solver.axis.dt
        if self.spec.misfit.estimate_wavelet:  # the wavelet fitted per event, as `run` does
            comm = self.solver.mesh.comm
            misfit, _ = self.spec.misfit.estimating(
                lambda n, d: (comm.allreduce(n), comm.allreduce(d)))
        observed = self.plan.observed.get(event.name)
        result = self.solver.gradient(
            event, lambda keep, tr: misfit.evaluate(
                tr, None if observed is None else observed[keep], dt),
            interval=interval, chunk=chunk,
            lossy=None if self.spec.compression.lossy is None else
            self.spec.compression.lossy.tolerance)
        gathered = {p: self._gather(g) for p, g in result.gradient.items()}
        return result.misfit, gathered if self.comm.rank == 0 else None

    def close(self) -> None:
        """Free the PETSc objects (collective)."""
        self.mesh.destroy()

    def __enter__(self) -> "Simulation":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:  # after a failure the other ranks may be elsewhere: no collective
            self.close()
