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
from ..inversion.gradient import plan_chunks
from ..inversion.mapping import EventGeometry
from ..parallel.decomposition import decompose, local_point_counts
from ..sem.acquisition import Event
from ..sem.signals import resample
from ..sem.timestepper import COURANT_FACTOR, TimeAxis, stable_time_step
from .spec import EVENT_PLACEHOLDER, JobSpec, observed_file

#: The largest mesh a job may ask for (points): about 2 GB of model and wavefield per field.
MAX_POINTS = 50_000_000
#: The most time steps a job may ask for.
MAX_STEPS = 10_000_000
#: The most trace samples (receivers times samples) of one event: 2 GB as float64 on rank 0.
MAX_TRACE_SAMPLES = 250_000_000
#: Receivers of observed data match the spec's within this distance (m), by position.
POSITION_TOLERANCE = 1e-3
#: Memory (bytes) per local point of a running rank: model, coefficients, fields, operator
#: (measured on the tutorial mesh, rounded up), and per global point (the mesh's points,
#: kept on every rank), plus what every rank takes before any array (the imports).
BYTES_PER_LOCAL_POINT = 400
BYTES_PER_GLOBAL_POINT = 40
BASE_BYTES_PER_RANK = 250 * 2**20


@dataclass(frozen=True)
class JobPlan:
    """What a run of a job derives from its spec: the mesh (sized from the starting model,
    kept for the whole job), the model evaluator, the CFL limit ``stable_dt`` (s) of the
    starting model, the fixed time axis, and each event's observed traces ``(R, n_steps + 1)``
    in the order of the spec's receivers (empty without observed data); for gradients the
    checkpoint spacing ``chunk`` (steps) under the memory budget; the largest rank's local
    points and its estimated memory (bytes). Picklable."""

    mesh: StructuredMesh
    model: ModelEvaluator
    min_velocity: float
    stable_dt: float
    axis: TimeAxis
    observed: dict[str, np.ndarray]
    chunk: int | None
    max_local_points: int
    memory_per_rank: int

    def describe(self) -> dict:
        """The derived sizes that ``fwimpi validate`` prints and ``summary.json`` records."""
        mesh = self.mesh
        return {
            "n_elements": mesh.n_elements, "elements_x": mesh.nex, "elements_y": mesh.ney,
            "n_points": mesh.n_points, "element_size_m": [mesh.hx, mesh.hy],
            "absorbing_margin_m": mesh.margin, "min_velocity_m_per_s": self.min_velocity,
            "dt": self.axis.dt, "stable_dt": self.stable_dt, "n_steps": self.axis.n_steps,
            "max_points_per_rank": self.max_local_points,
            "memory_per_rank_mb_estimate": round(self.memory_per_rank / 2**20, 1),
        }


def plan_job(spec: JobSpec, ranks: int, gradients: bool | None = None,
             inversion: bool = False) -> JobPlan:
    """Check everything about ``spec`` on ``ranks`` ranks and derive the plan; ``gradients``
    (default: the spec has a misfit) plans the gradient's memory too. For an ``inversion``
    the time step is stable for every admissible model: it comes from the upper VP bound
    (``inversion.bounds``; without one, 1.25 times the starting model's largest VP). Every
    size is bounded before it is allocated. Raises ConfigError naming the field."""
    sim = spec.simulation
    gradients = spec.misfit is not None if gradients is None else gradients
    model = ModelEvaluator(spec.model, spec.domain.box)
    margin = sim.absorbing.width_in_meters if sim.absorbing else 0.0
    box = spec.domain.box
    extent = max(box.x1 - box.x0, box.y1 - box.y0)
    if not margin <= 10.0 * extent:
        raise ConfigError(f"simulation_configuration.absorbing_boundaries: the margins would be "
                          f"{margin:.3g} m wide, more than 10 times the domain ({extent:g} m)")
    if model.mesh is not None:  # a model file written by fwimpi brings its own mesh
        mesh = _file_mesh(spec, model, margin)
        vmin = float(model(mesh.points)["VP"].min())
    else:
        try:
            with np.errstate(all="ignore"):  # overflowing extents are reported below
                mesh, vmin = mesh_for_model(spec.domain.box, margin, sim.tensor_order,
                                            sim.elements_per_wavelength,
                                            sim.max_frequency_in_hertz, model.velocity,
                                            max_points=MAX_POINTS)
        except MeshTooLarge as err:
            raise ConfigError(
                f"simulation_configuration.elements_per_wavelength: the mesh would have "
                f"{_count(err.n_points)} points (at most {MAX_POINTS:,}); lower "
                f"elements_per_wavelength or max_frequency_in_hertz, or check the units of "
                f"the model (m/s)") from None
        except (OverflowError, ValueError, MemoryError) as err:
            raise ConfigError(f"domain: cannot mesh this domain and model: {err}") from None
    values = model(mesh.points)
    stable = stable_dt(mesh, model.physics, values)
    if inversion and spec.inversion is not None:
        for name, (lo, hi) in spec.inversion.bounds.items():
            v = values[name]
            if v.min() < lo or v.max() > hi:
                raise ConfigError(f"inversion.bounds.{name}: [{lo:g}, {hi:g}] excludes the "
                                  f"starting model ({v.min():g} to {v.max():g})")
        vp_max = spec.inversion.bounds.get("VP", (None, 1.25 * float(values["VP"].max())))[1]
        stable = min(stable, stable_dt(mesh, model.physics,
                                       {**values, "VP": np.full_like(values["VP"], vp_max)}))
    part = decompose(mesh, ranks).part  # rejects more ranks than the mesh can take
    dt = sim.time_step_in_seconds
    if dt is not None and dt > stable:
        raise ConfigError(
            f"simulation_configuration.time_step_in_seconds: {dt:g} s exceeds the CFL "
            f"stability limit {stable:.4g} s of this mesh and model; leave it "
            f"out to use {COURANT_FACTOR * stable:.4g} s")
    if dt is None and model.dt is not None and model.dt <= stable and not inversion:
        dt = model.dt  # the time step the model file was simulated with: same results
    dt = COURANT_FACTOR * stable if dt is None else dt
    steps = sim.end_time_in_seconds / dt
    if not steps < MAX_STEPS + 1:
        raise ConfigError(
            f"simulation_configuration.end_time_in_seconds: {sim.end_time_in_seconds:g} s needs "
            f"{steps:.3g} steps of {dt:.4g} s, more than {MAX_STEPS:,}")
    axis = TimeAxis.covering(sim.end_time_in_seconds, dt)
    if axis.n_steps < 1:
        raise ConfigError(
            f"simulation_configuration.end_time_in_seconds: {sim.end_time_in_seconds:g} s is "
            f"less than one time step ({dt:.4g} s)")
    with np.errstate(all="ignore"):
        signal = sim.wavelet(axis.times)
    if not np.isfinite(signal).all():
        raise ConfigError("simulation_configuration.wavelet: the source time function is not "
                          "finite at the time steps; check time_shift_in_seconds")
    for i, event in enumerate(spec.events):
        for k, source in enumerate(event.sources):
            with np.errstate(all="ignore"):
                peak = abs(source.f) * np.abs(signal).max()
            if not math.isfinite(peak):
                raise ConfigError(f"events[{i}].sources[{k}].f: {source.f:g} times the wavelet "
                                  f"overflows")
        samples = len(event.receivers) * (axis.n_steps + 1)
        if samples > MAX_TRACE_SAMPLES:
            raise ConfigError(
                f"events[{i}].receivers: {len(event.receivers)} receivers of {axis.n_steps + 1} "
                f"samples are {samples:,} values, more than {MAX_TRACE_SAMPLES:,}")
    _check_postprocessing(spec, mesh)
    local = int(local_point_counts(mesh.nex, mesh.ney, mesh.order, part).max())
    chunk = _chunk(spec, axis, local) if gradients else None
    memory = (BASE_BYTES_PER_RANK + BYTES_PER_GLOBAL_POINT * mesh.n_points
              + BYTES_PER_LOCAL_POINT * local
              + (spec.compression.memory_per_rank_in_mb * 2**20 if gradients else 0))
    observed = read_observed(spec, axis)
    return JobPlan(mesh, model, vmin, stable, axis, observed, chunk, local, int(memory))


def _file_mesh(spec: JobSpec, model: ModelEvaluator, margin: float) -> StructuredMesh:
    """The mesh of a model file written by fwimpi, checked against the spec."""
    mesh, sim = model.mesh, spec.simulation
    if mesh.order != sim.tensor_order:
        raise ConfigError(f"simulation_configuration.tensor_order: {sim.tensor_order}, but "
                          f"model.file brings a mesh of order {mesh.order}")
    if not math.isclose(mesh.margin, margin, rel_tol=1e-9, abs_tol=1e-6):
        raise ConfigError(f"simulation_configuration.absorbing_boundaries: margins of "
                          f"{margin:g} m, but model.file brings a mesh with {mesh.margin:g} m")
    if mesh.n_points > MAX_POINTS:
        raise ConfigError(f"model.file: a mesh of {mesh.n_points:,} points (at most "
                          f"{MAX_POINTS:,})")
    return mesh


def _count(n: int) -> str:
    """A count for a message: exact when short, its order of magnitude when huge."""
    return f"{n:,}" if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def _chunk(spec: JobSpec, axis: TimeAxis, local_points: int) -> int:
    """Checkpoint spacing from the per-rank memory budget (the largest rank's points)."""
    budget = spec.compression.memory_per_rank_in_mb * 2**20
    try:
        return plan_chunks(axis.n_steps, spec.compression.forward_wavefield_sampling_interval,
                           local_points, budget)
    except ValueError as err:
        raise ConfigError(f"wavefield_compression.memory_per_rank_in_mb: the gradient {err}"
                          ) from None


def _check_postprocessing(spec: JobSpec, mesh: StructuredMesh) -> None:
    """What would fail after the simulations: regions of interest evaluated on the mesh
    (finite everywhere), smoothing lengths within reach of the mesh."""
    events = EventGeometry.from_events(spec.events)
    for mapping in spec.mappings:
        mapping.masks(mesh.points, events)  # a non-finite region of interest raises
    if spec.smoothing is not None:
        e = mesh.extended
        reach = 10.0 * max(e.x1 - e.x0, e.y1 - e.y0)
        for name, sigma in spec.smoothing.smoothing_lengths_in_meters.items():
            if max(sigma) > reach:
                raise ConfigError(
                    f"smoothing.smoothing_lengths_in_meters.{name}: {list(sigma)} m, more than "
                    f"10 times the mesh ({reach / 10:g} m): it would smooth the gradient to "
                    f"its mean")


def stable_dt(mesh: StructuredMesh, physics, values: dict[str, np.ndarray]) -> float:
    """The leapfrog stability limit (s) of the model ``values`` at ``mesh``'s points
    (element eigenvalue bound). Raises ConfigError when the model's wave-equation
    coefficients are not usable numbers (e.g. a density of 1e300 kg/m^3)."""
    with np.errstate(all="ignore"):
        m0, m1 = physics.coefficients(values)
        for name, c in (("m0 = 1/(rho vp^2)", m0), ("m1 = 1/rho", m1)):
            bad = ~np.isfinite(c) | (c < np.finfo(float).tiny) | (c > 1.0 / np.finfo(float).tiny)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise ConfigError(
                    f"model: VP = {values['VP'][k]:g} m/s, RHO = {values['RHO'][k]:g} kg/m^3 at "
                    f"x={mesh.points[k, 0]:g}, y={mesh.points[k, 1]:g} make the coefficient "
                    f"{name} = {c[k]:g} unusable; check the model's values and units")
        factors = physics.chain_rule(values, np.ones_like(m0), np.ones_like(m1))
        for name, f in factors.items():
            bad = ~np.isfinite(f) | (np.abs(f) < np.finfo(float).tiny)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise ConfigError(
                    f"model: VP = {values['VP'][k]:g} m/s, RHO = {values['RHO'][k]:g} kg/m^3 at "
                    f"x={mesh.points[k, 0]:g}, y={mesh.points[k, 1]:g} leave no usable gradient "
                    f"with respect to {name} ({f[k]:g}); check the model's values and units")
        ibool = mesh.ibool()
        stable = stable_time_step(mesh.geometry(), m0[ibool], m1[ibool])
    if not (math.isfinite(stable) and stable > 0):
        raise ConfigError(f"model: no stable time step for this model ({stable:g} s)")
    return stable


def read_observed(spec: JobSpec, axis: TimeAxis) -> dict[str, np.ndarray]:
    """Each event's observed traces ``(R, n_steps + 1)`` on the simulation's time axis, in
    the spec's receiver order, for misfits that compare with data; ``{}`` otherwise. Data
    on another time axis is resampled (band-limited); data that does not cover the
    simulated time, or whose band reaches its own Nyquist frequency, is refused."""
    misfit = spec.misfit
    if misfit is None or misfit.observed_data is None:
        return {}
    field = "misfit_configuration.observed_data"
    out = {}
    for event in spec.events:
        path = observed_file(misfit.observed_data, event.name)
        try:
            data = read_receivers_h5(path)
        except (OSError, ValueError, KeyError) as err:
            raise ConfigError(f"{field}: cannot read {path}: {' '.join(str(err).split())}"
                              ) from None
        if event.name in data:
            rec = data[event.name]
        elif len(data) == 1 and EVENT_PLACEHOLDER in str(misfit.observed_data):
            (rec,) = data.values()  # one event per file: its name is the file's
        else:
            raise ConfigError(f"{field}: no event '{event.name}' in {path}")
        traces = rec.traces.get(misfit.receiver_field)
        where = f"{field}: event '{event.name}'"
        if traces is None:
            raise ConfigError(f"{where}: no '{misfit.receiver_field}' traces in {path}")
        rows = match_receivers(event, rec, where)
        matched = np.ascontiguousarray(traces[rows])
        bad = ~np.isfinite(matched)
        if bad.any():
            r, n = (int(v[0]) for v in np.nonzero(bad))
            raise ConfigError(f"{where}: the trace of receiver {event.receivers[r].station} "
                              f"has a non-finite value ({matched[r, n]}) at sample {n}")
        out[event.name] = _on_axis(matched, rec.dt, rec.start_time, axis, where)
    return out


def _on_axis(traces: np.ndarray, dt: float, start_time: float, axis: TimeAxis,
             where: str) -> np.ndarray:
    """``traces`` sampled at ``start_time + k dt`` on ``axis`` (resampled when it differs)."""
    n = axis.n_steps + 1
    if (traces.shape[1] == n and math.isclose(dt, axis.dt, rel_tol=1e-9)
            and abs(start_time - axis.start_time) <= 1e-9 * axis.dt):
        return traces
    end, data_end = axis.start_time + axis.n_steps * axis.dt, start_time + (traces.shape[1] - 1) * dt
    if start_time > axis.start_time + 1e-9 * dt or data_end < end - 1e-9 * dt:
        raise ConfigError(f"{where}: the data covers t in [{start_time:g}, {data_end:g}] s, the "
                          f"simulation t in [{axis.start_time:g}, {end:g}] s")
    try:
        return resample(traces, dt, start_time, axis.dt, axis.start_time, n)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


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
