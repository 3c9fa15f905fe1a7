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
from ..mesh.files import ReceiverData, read_receivers_h5, read_wavelet_h5
from ..mesh.model import ModelEvaluator
from ..mesh.segy import is_segy, read_segy
from ..mesh.structured import MeshTooLarge, StructuredMesh, mesh_for_model
from ..inversion.gradient import plan_chunks
from ..inversion.mapping import EventGeometry
from ..parallel.decomposition import decompose, local_point_counts
from ..sem.acquisition import Event
from ..sem.signals import resample
from ..sem.timestepper import COURANT_FACTOR, TimeAxis, stable_time_step
from ..sem.wavelets import SampledWavelet
from .spec import EVENT_PLACEHOLDER, CustomWavelet, JobSpec, observed_file

#: The largest mesh a job may ask for (points): about 2 GB of model and wavefield per field.
MAX_POINTS = 50_000_000
#: The most time steps a job may ask for.
MAX_STEPS = 10_000_000
#: The most trace samples (receivers times samples) of one event: 2 GB as float64 on rank 0.
MAX_TRACE_SAMPLES = 250_000_000
#: Receivers of observed data match the spec's within this distance (m), by position.
POSITION_TOLERANCE = 1e-3
#: Memory (bytes) per local point of a running rank: model, coefficients, fields, operator
#: (measured on the tutorial mesh, rounded up; plus 13 B since the kernel keeps ``m1`` per
#: element point), and per global point (the mesh's points, kept on every rank), plus what
#: a rank takes before any array (the imports; rank 0 also loads the plotting: 300 MB makes
#: the plan cover the measured largest peak over the ranks, 399 MB against 408 planned for
#: the main job on 4 ranks and 418 against 434 for the 3D example, where 250 MB fell 10%
#: short).
BYTES_PER_LOCAL_POINT = 413
#: The same in 3D: a point has twice the element points and three coordinates (measured:
#: 894 MB peak per rank for 571,000 local points of the 3D example refined 2x, with the
#: default budget; plus 16 B for ``m1`` per element point).
BYTES_PER_LOCAL_POINT_3D = 1016
BYTES_PER_GLOBAL_POINT = 40
BASE_BYTES_PER_RANK = 300 * 2**20
#: Wave speeds (m/s) outside USUAL_VP draw a warning, outside POSSIBLE_VP an error: the
#: model is in other units (km/s) or mistyped. Densities (kg/m^3) outside USUAL_RHO warn.
USUAL_VP = (100.0, 10_000.0)
POSSIBLE_VP = (10.0, 100_000.0)
USUAL_RHO = (100.0, 30_000.0)
#: Fractions of the wavelet's energy above ``max_frequency_in_hertz`` (the mesh resolves up
#: to it) that draw a warning and an error. A Ricker of center frequency fc on a mesh of
#: 2 fc has 0.7% there, on 1.5 fc 11%.
WAVELET_BAND_WARNING = 0.01
WAVELET_BAND_ERROR = 0.10
#: Domain crossings of the fastest wave beyond which the duration draws a warning.
CROSSINGS_WARNING = 50
#: The forward rate (point-updates per second per rank) behind `fwimpi validate`'s time
#: estimate; ``scripts/bench_forward`` measures a machine's own. An adjoint with its
#: recomputation costs about ``ADJOINT_COST`` forwards.
ESTIMATE_RATE = 100e6
ADJOINT_COST = 2.7


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
    wavelet: object = None  # the source time function (Ricker or SampledWavelet)
    #: implausible but possible settings, one line each (``fwimpi validate`` and ``run`` say
    #: them before anything runs)
    warnings: tuple[str, ...] = ()
    max_velocity: float = 0.0

    def describe(self) -> dict:
        """The derived sizes that ``fwimpi validate`` prints and ``summary.json`` records."""
        mesh = self.mesh
        return {
            "n_elements": mesh.n_elements,
            **{f"elements_{a}": n for a, n in zip("xyz", mesh.shape)},
            "n_points": mesh.n_points, "element_size_m": list(mesh.sizes),
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
    extent = max(hi - lo for lo, hi in box.bounds)
    if not margin <= 10.0 * extent:
        raise ConfigError(f"simulation_configuration.absorbing_boundaries: the margins would be "
                          f"{margin:.3g} m wide, more than 10 times the domain ({extent:g} m)")
    warnings = []
    if model.mesh is not None:  # a model file written by fwimpi brings its own mesh
        mesh = _file_mesh(spec, model, margin)
        warnings += check_model_units(model(mesh.points))
        vmin = float(model(mesh.points)["VP"].min())
    else:
        with np.errstate(all="ignore"):  # overflowing extents are reported below
            axes = [np.linspace(lo, hi, 65 if len(box.bounds) == 2 else 17)
                    for lo, hi in box.bounds]
            sample = model(np.column_stack([a.ravel() for a in np.meshgrid(*axes)]))
        warnings += check_model_units(sample)
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
    wavelet = load_wavelet(sim.wavelet)
    with np.errstate(all="ignore"):
        signal = wavelet(axis.times)
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
    warnings += check_wavelet_band(wavelet, axis, sim.max_frequency_in_hertz)
    vmax = float(values["VP"].max())
    diameter = math.hypot(*(hi - lo for lo, hi in box.bounds))
    crossings = sim.end_time_in_seconds * vmax / diameter
    if crossings > CROSSINGS_WARNING:
        warnings.append(
            f"simulation_configuration.end_time_in_seconds: {sim.end_time_in_seconds:g} s lets "
            f"the fastest wave ({vmax:g} m/s) cross the domain {crossings:,.0f} times in "
            f"{axis.n_steps:,} steps; check the units (seconds)")
    _check_postprocessing(spec, mesh)
    local = int(local_point_counts(mesh.shape, mesh.order, part).max())
    chunk = _chunk(spec, axis, local) if gradients else None
    budget = spec.compression.memory_per_rank_in_mb * 2**20
    if gradients and spec.compression.lossy is None:  # the stored chunk, at most the budget
        interval = spec.compression.forward_wavefield_sampling_interval
        budget = min(budget, (chunk // interval + 2) * 8.0 * local)
    memory = (BASE_BYTES_PER_RANK + BYTES_PER_GLOBAL_POINT * mesh.n_points
              + (BYTES_PER_LOCAL_POINT_3D if mesh.dim == 3 else BYTES_PER_LOCAL_POINT) * local
              + (budget if gradients else 0))
    observed = read_observed(spec, axis)
    return JobPlan(mesh, model, vmin, stable, axis, observed, chunk, local, int(memory), wavelet,
                   tuple(warnings), vmax)


def check_model_units(values: dict[str, np.ndarray]) -> list[str]:
    """Warnings for a model whose ``VP`` (m/s) or ``RHO`` (kg/m^3) lie outside the usual
    ranges; a ConfigError for wave speeds no medium has (the model is in km/s, say)."""
    out = []
    with np.errstate(all="ignore"):
        lo, hi = float(np.nanmin(values["VP"])), float(np.nanmax(values["VP"]))
    if lo < POSSIBLE_VP[0] or hi > POSSIBLE_VP[1]:
        hint = "km/s? give m/s" if lo < POSSIBLE_VP[0] else "check the units, m/s"
        raise ConfigError(f"model: VP from {lo:g} to {hi:g} m/s is no wave speed of rock, water "
                          f"or air ({hint})")
    if lo < USUAL_VP[0] or hi > USUAL_VP[1]:
        out.append(f"model: VP from {lo:g} to {hi:g} m/s lies outside the usual "
                   f"{USUAL_VP[0]:g}-{USUAL_VP[1]:,.0f} m/s; check the units (m/s)")
    if "RHO" in values:
        with np.errstate(all="ignore"):
            lo, hi = float(np.nanmin(values["RHO"])), float(np.nanmax(values["RHO"]))
        if lo < USUAL_RHO[0] or hi > USUAL_RHO[1]:
            out.append(f"model: RHO from {lo:g} to {hi:g} kg/m^3 lies outside the usual "
                       f"{USUAL_RHO[0]:g}-{USUAL_RHO[1]:,.0f} kg/m^3; check the units "
                       f"(kg/m^3, not g/cm^3)")
    return out


def wavelet_band_fraction(wavelet, axis: TimeAxis, max_frequency: float) -> float:
    """The fraction of the source time function's energy above ``max_frequency`` (Hz): its
    spectrum over its own span (a Ricker's ``t0 +- 2 / fc``, a sampled wavelet's samples;
    else the simulated time), sampled every ``1 / (20 f_max)`` (finer for a finer sampled
    wavelet; at most 2^22 samples)."""
    dt = 1.0 / (20.0 * max_frequency)
    if isinstance(wavelet, SampledWavelet):
        start, span = wavelet.start_time, (len(wavelet.samples) - 1) * wavelet.dt
        dt = min(dt, wavelet.dt)
    elif getattr(wavelet, "center_frequency", None):
        start, span = wavelet.t0 - 2.0 / wavelet.center_frequency, 4.0 / wavelet.center_frequency
    else:
        start, span = axis.start_time, axis.n_steps * axis.dt
    dt = max(dt, span / (2**22 - 1))  # at most 2^22 samples
    n = int(span / dt) + 1
    with np.errstate(all="ignore"):
        signal = np.asarray(wavelet(start + dt * np.arange(n)), dtype=float)
    power = np.abs(np.fft.rfft(signal, 2 * n)) ** 2
    freqs = np.fft.rfftfreq(2 * n, dt)
    total = float(power.sum())
    return float(power[freqs > max_frequency].sum()) / total if total > 0 else 0.0


def check_wavelet_band(wavelet, axis: TimeAxis, max_frequency: float) -> list[str]:
    """A warning when more than ``WAVELET_BAND_WARNING`` of the wavelet's energy lies above
    the frequency the mesh resolves, a ConfigError beyond ``WAVELET_BAND_ERROR``."""
    fraction = wavelet_band_fraction(wavelet, axis, max_frequency)
    centre = getattr(wavelet, "center_frequency", None)
    hint = (f"raise max_frequency_in_hertz to at least {2 * centre:g} Hz (twice the Ricker's "
            f"center frequency) or lower the wavelet's frequency" if centre else
            "raise max_frequency_in_hertz or low-pass the wavelet")
    text = (f"{fraction:.1%} of the wavelet's energy lies above max_frequency_in_hertz = "
            f"{max_frequency:g} Hz, which the mesh resolves; {hint}")
    if fraction > WAVELET_BAND_ERROR:
        raise ConfigError(f"simulation_configuration.wavelet: {text}")
    return [f"simulation_configuration.wavelet: {text}"] if fraction > WAVELET_BAND_WARNING else []


def summary_text(spec: JobSpec, plan: JobPlan, ranks: int, gradients: bool) -> str:
    """What ``fwimpi validate`` prints: the mesh, time axis, memory and time estimates, the
    products, and the plan's warnings, a few lines for a person."""
    mesh, axis = plan.mesh, plan.axis
    events = len(spec.events)
    k = spec.concurrent_events
    forward = mesh.n_points * axis.n_steps / (ESTIMATE_RATE * ranks)
    per_event = forward * (1 + ADJOINT_COST) if gradients else forward
    total = per_event * -(-events // k)
    products = ["receivers"]
    if spec.misfit is not None:
        products.append(f"misfit {spec.misfit.misfit_function}")
        if gradients:
            products.append("gradient")
    products += [f"mapping {m.name}" for m in spec.mappings]
    if spec.smoothing is not None:
        products.append("smoothing")
    if spec.inversion is not None:
        products.append(f"inversion ({spec.inversion.iterations} updates, with fwimpi invert)")
    lines = [
        f"job {spec.name}: {events} event{'s' * (events != 1)}, {ranks} rank"
        f"{'s' * (ranks != 1)} per event, {k} event{'s' * (k != 1)} at a time; "
        f"output {spec.output}",
        f"mesh: {' x '.join(map(str, mesh.shape))} elements of order {mesh.order}, "
        f"{mesh.n_points:,} points, elements {' x '.join(f'{h:.4g}' for h in mesh.sizes)} m, "
        f"absorbing margins "
        f"{mesh.margin:g} m",
        f"model: VP {plan.min_velocity:g} to {plan.max_velocity:g} m/s (the mesh resolves "
        f"{spec.simulation.max_frequency_in_hertz:g} Hz at {plan.min_velocity:g} m/s)",
        f"time: {axis.n_steps:,} steps of {axis.dt:.4g} s to "
        f"{axis.n_steps * axis.dt:.4g} s (CFL limit {plan.stable_dt:.4g} s)",
        f"memory: about {plan.memory_per_rank / 2**20:,.0f} MB per rank, "
        f"{plan.memory_per_rank * ranks * k / 2**30:.2f} GB in all",
        f"time estimate: about {_duration(forward)} per forward, {_duration(total)} for the "
        f"job{' with gradients' if gradients else ''} (at {ESTIMATE_RATE / 1e6:g} M "
        f"point-updates/s per rank; scripts/bench_forward measures this machine's rate)",
        f"products: {', '.join(products)}",
    ]
    lines += [f"warning: {w}" for w in plan.warnings]
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.2g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def load_wavelet(wavelet):
    """The source time function of the spec: a Ricker as it is, a Custom wavelet's file read
    into a SampledWavelet. Raises ConfigError."""
    if not isinstance(wavelet, CustomWavelet):
        return wavelet
    field = "simulation_configuration.wavelet.file"
    try:
        samples, dt, start = read_wavelet_h5(wavelet.file)
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{field}: cannot read {wavelet.file}: "
                          f"{' '.join(str(err).split())}") from None
    return SampledWavelet(samples, dt, start)


def _file_mesh(spec: JobSpec, model: ModelEvaluator, margin: float):
    """The mesh (2D or 3D) of a model file written by fwimpi, checked against the spec."""
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
    """Checkpoint spacing from the per-rank memory budget (the largest rank's points); with
    lossy compression, from the compressed samples' estimated size (``plan_chunks``)."""
    budget = spec.compression.memory_per_rank_in_mb * 2**20
    lossy = spec.compression.lossy
    try:
        return plan_chunks(axis.n_steps, spec.compression.forward_wavefield_sampling_interval,
                           local_points, budget,
                           lossy=None if lossy is None else lossy.tolerance)
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
        reach = 10.0 * max(hi - lo for lo, hi in mesh.extended.bounds)
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
                    f"{_at(mesh.points[k])} make the coefficient "
                    f"{name} = {c[k]:g} unusable; check the model's values and units")
        factors = physics.chain_rule(values, np.ones_like(m0), np.ones_like(m1))
        for name, f in factors.items():
            bad = ~np.isfinite(f) | (np.abs(f) < np.finfo(float).tiny)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise ConfigError(
                    f"model: VP = {values['VP'][k]:g} m/s, RHO = {values['RHO'][k]:g} kg/m^3 at "
                    f"{_at(mesh.points[k])} leave no usable gradient "
                    f"with respect to {name} ({f[k]:g}); check the model's values and units")
        ibool = mesh.ibool()
        stable = stable_time_step(mesh.geometry(), m0[ibool], m1[ibool])
    if not (math.isfinite(stable) and stable > 0):
        raise ConfigError(f"model: no stable time step for this model ({stable:g} s)")
    return stable


def _at(point: np.ndarray) -> str:
    """``x=.., y=..[, z=..]`` of a point, for messages."""
    return ", ".join(f"{a}={v:g}" for a, v in zip("xyz", point))


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
        where = f"{field}: event '{event.name}'"
        tolerance = POSITION_TOLERANCE
        try:
            if is_segy(path):
                if len(spec.events) > 1 and EVENT_PLACEHOLDER not in str(misfit.observed_data):
                    raise ConfigError(f"{field}: a SEG-Y file holds one event's traces; name "
                                      f"one file per event with a pattern such as "
                                      f"data/{EVENT_PLACEHOLDER}.sgy")
                segy = read_segy(path, misfit.receiver_field, spec.domain.dimension)
                rec = segy.data
                tolerance = segy_tolerance(segy.resolution)
                check_segy_source(event, segy.sources, tolerance, f"{where}: {path}")
            else:
                data = read_receivers_h5(path)
                if event.name in data:
                    rec = data[event.name]
                elif len(data) == 1 and EVENT_PLACEHOLDER in str(misfit.observed_data):
                    (rec,) = data.values()  # one event per file: its name is the file's
                else:
                    raise ConfigError(f"{field}: no event '{event.name}' in {path}")
        except (OSError, ValueError, KeyError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"{field}: cannot read {path}: {' '.join(str(err).split())}"
                              ) from None
        if np.shape(rec.coordinates)[1:] != (spec.domain.dimension,):
            raise ConfigError(f"{where}: {path} holds receivers at positions of shape "
                              f"{np.shape(rec.coordinates)}, but the domain is "
                              f"{spec.domain.dimension}D")
        traces = rec.traces.get(misfit.receiver_field)
        if traces is None:
            raise ConfigError(f"{where}: no '{misfit.receiver_field}' traces in {path}")
        rows = match_receivers(event, rec, where, tolerance)
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
    if start_time > axis.start_time + dt or data_end < end - dt:  # within one data sample
        raise ConfigError(f"{where}: the data covers t in [{start_time:g}, {data_end:g}] s, the "
                          f"simulation t in [{axis.start_time:g}, {end:g}] s")
    try:
        return resample(traces, dt, start_time, axis.dt, axis.start_time, n)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def segy_tolerance(resolution: float) -> float:
    """Distance (m) within which a SEG-Y trace matches a receiver: ``POSITION_TOLERANCE``,
    or half the file's coordinate step (``resolution``, m) when that is coarser."""
    return max(POSITION_TOLERANCE, 0.5 * resolution * (1 + 1e-9))


def check_segy_source(event: Event, sources: np.ndarray, tolerance: float, where: str) -> None:
    """Every trace's source position ``sources (R, 2)`` (NaN: not in the headers) lies within
    ``tolerance`` (m) of one of ``event``'s sources; else a ConfigError naming both."""
    known = np.isfinite(sources).all(axis=1)
    if not known.any():
        return
    positions = event.source_coordinates
    distance = np.linalg.norm(sources[known][:, None, :] - positions[None, :, :], axis=2)
    far = distance.min(axis=1) > tolerance
    if far.any():
        k = int(np.flatnonzero(known)[np.flatnonzero(far)[0]])
        at = ", ".join(f"{v:g}" for v in sources[k])
        ours = "; ".join(", ".join(f"{v:g}" for v in p) for p in positions)
        raise ConfigError(f"{where}: trace {k + 1} was shot at ({at}), not at the event's "
                          f"source ({ours})")


def match_receivers(event: Event, data: ReceiverData, where: str,
                    tolerance: float = POSITION_TOLERANCE) -> np.ndarray:
    """Row of ``data`` for each receiver of ``event`` ``(R,)``: the trace of the same station
    name when it lies within ``tolerance`` (m) of the receiver, else the one trace at
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
        if k is not None and distance[k] <= tolerance:
            rows[i] = k
            continue
        near = np.flatnonzero(distance <= tolerance)
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
                          f"by name or within {tolerance * 1e3:g} mm{elsewhere}")
    return rows
