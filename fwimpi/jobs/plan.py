"""Planning a job, serially and without MPI: every check of the input and every size a run
derives (mesh, time step, steps, observed data), before any MPI work or output.

``fwimpi validate`` and ``fwimpi run`` call ``plan_job`` in the launching process; the ranks
of ``fwimpi exec`` get the plan that rank 0 made. This module imports neither mpi4py nor
petsc4py (a test checks it), so a launcher never initialises MPI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..mesh.files import ReceiverData, read_receivers_h5
from ..mesh.model import ModelEvaluator
from ..mesh.structured import MeshTooLarge, StructuredMesh, mesh_for_model
from ..parallel.decomposition import decompose
from ..sem.acquisition import Event
from ..sem.timestepper import COURANT_FACTOR, TimeAxis, stable_time_step
from .spec import JobSpec

#: The largest mesh a job may ask for (points): about 2 GB of model and wavefield per field.
MAX_POINTS = 50_000_000
#: Receivers of observed data match the spec's within this distance (m), by position.
POSITION_TOLERANCE = 1e-3


@dataclass(frozen=True)
class JobPlan:
    """What a run of a job derives from its spec: the mesh (sized from the starting model,
    kept for the whole job), the model evaluator, the CFL limit ``stable_dt`` (s) of the
    starting model, the fixed time axis, and each event's observed traces ``(R, n_steps + 1)``
    in the order of the spec's receivers (empty without observed data). Picklable."""

    mesh: StructuredMesh
    model: ModelEvaluator
    min_velocity: float
    stable_dt: float
    axis: TimeAxis
    observed: dict[str, np.ndarray]

    def describe(self) -> dict:
        """The derived sizes that ``fwimpi validate`` prints and ``summary.json`` records."""
        mesh = self.mesh
        return {
            "n_elements": mesh.n_elements, "elements_x": mesh.nex, "elements_y": mesh.ney,
            "n_points": mesh.n_points, "element_size_m": [mesh.hx, mesh.hy],
            "absorbing_margin_m": mesh.margin, "min_velocity_m_per_s": self.min_velocity,
            "dt": self.axis.dt, "stable_dt": self.stable_dt, "n_steps": self.axis.n_steps,
        }


def plan_job(spec: JobSpec, ranks: int) -> JobPlan:
    """Check everything about ``spec`` on ``ranks`` ranks and derive the plan. Raises
    ConfigError naming the field."""
    sim = spec.simulation
    model = ModelEvaluator(spec.model, spec.domain.box)
    margin = sim.absorbing.width_in_meters if sim.absorbing else 0.0
    try:
        mesh, vmin = mesh_for_model(spec.domain.box, margin, sim.tensor_order,
                                    sim.elements_per_wavelength, sim.max_frequency_in_hertz,
                                    model.velocity, max_points=MAX_POINTS)
    except MeshTooLarge as err:
        raise ConfigError(
            f"simulation_configuration.elements_per_wavelength: the mesh would have "
            f"{err.n_points} points (at most {MAX_POINTS}); lower elements_per_wavelength or "
            f"max_frequency_in_hertz") from None
    decompose(mesh, ranks)  # rejects more ranks than the mesh can take
    stable = starting_stable_dt(mesh, model)
    dt = sim.time_step_in_seconds
    if dt is not None and dt > stable:
        raise ConfigError(
            f"simulation_configuration.time_step_in_seconds: {dt:g} s exceeds the CFL "
            f"stability limit {stable:.4g} s of this mesh and model; leave it "
            f"out to use {COURANT_FACTOR * stable:.4g} s")
    axis = TimeAxis.covering(sim.end_time_in_seconds, COURANT_FACTOR * stable if dt is None
                             else dt)
    observed = read_observed(spec, axis)
    return JobPlan(mesh, model, vmin, stable, axis, observed)


def starting_stable_dt(mesh: StructuredMesh, model: ModelEvaluator) -> float:
    """The leapfrog stability limit (s) of ``model`` on ``mesh`` (element eigenvalue bound)."""
    m0, m1 = model.physics.coefficients(model(mesh.points))
    ibool = mesh.ibool()
    return stable_time_step(mesh.geometry(), m0[ibool], m1[ibool])


def read_observed(spec: JobSpec, axis: TimeAxis) -> dict[str, np.ndarray]:
    """Each event's observed traces ``(R, n_steps + 1)`` in the spec's receiver order, for
    misfits that compare with data; ``{}`` otherwise."""
    misfit = spec.misfit
    if misfit is None or misfit.observed_data is None:
        return {}
    field = "misfit_configuration.observed_data"
    try:
        data = read_receivers_h5(misfit.observed_data)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{field}: cannot read {misfit.observed_data}: {err}") from None
    out = {}
    for event in spec.events:
        if event.name not in data:
            raise ConfigError(f"{field}: no event '{event.name}' in {misfit.observed_data}")
        rec = data[event.name]
        traces = rec.traces.get(misfit.receiver_field)
        n = axis.n_steps + 1
        if traces is None or traces.shape[1] != n or not math.isclose(rec.dt, axis.dt,
                                                                      rel_tol=1e-9):
            got = None if traces is None else traces.shape[1]
            raise ConfigError(
                f"{field}: event '{event.name}' needs '{misfit.receiver_field}' traces of "
                f"{n} samples at dt={axis.dt:.6g} s, got {got} samples at dt={rec.dt:.6g} s")
        rows = match_receivers(event, rec, f"{field}: event '{event.name}'")
        out[event.name] = np.ascontiguousarray(traces[rows])
    return out


def match_receivers(event: Event, data: ReceiverData, where: str) -> np.ndarray:
    """Row of ``data`` for each receiver of ``event`` ``(R,)``: the trace of the same station
    name when it lies within ``POSITION_TOLERANCE`` of the receiver, else the one trace at
    the receiver's position. The order in the file never matters; a receiver with no trace
    (or a name whose trace lies elsewhere and no trace at its position) is a ConfigError
    naming it."""
    coords = np.asarray(data.coordinates, dtype=float)
    by_name = {name: k for k, name in enumerate(data.stations)}
    rows = np.empty(len(event.receivers), dtype=np.int64)
    for i, receiver in enumerate(event.receivers):
        position = np.asarray(receiver.position, dtype=float)
        distance = np.linalg.norm(coords - position, axis=1)
        k = by_name.get(receiver.station)
        if k is not None and distance[k] <= POSITION_TOLERANCE:
            rows[i] = k
            continue
        near = np.flatnonzero(distance <= POSITION_TOLERANCE)
        if len(near) == 1:
            rows[i] = near[0]
            continue
        at = ", ".join(f"{v:g}" for v in position)
        if len(near) > 1:
            raise ConfigError(f"{where}: {len(near)} traces lie at receiver {receiver.station} "
                              f"({at}) and none of them is named {receiver.station}")
        elsewhere = ("" if k is None else f"; the trace named {receiver.station} lies at "
                     f"({', '.join(f'{v:g}' for v in coords[k])})")
        raise ConfigError(f"{where}: no trace for receiver {receiver.station} at ({at}), "
                          f"by name or within {POSITION_TOLERANCE * 1e3:g} mm{elsewhere}")
    return rows
