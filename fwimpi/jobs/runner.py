"""Run a job spec on the ranks of a communicator: mesh, model, forward and adjoint runs per
event, the root-only mappings and smoothing, the products and ``summary.json``.

Everything that can reject the input (model expressions and files, CFL check of a given
time step, observed data, mappings) is checked by ``validate`` (serially, without MPI, before
any output) and again, alike on every rank, by ``prepare``.
"""

import json
import logging
import math
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError, FwimpiError
from ..inversion.forward import COURANT_FACTOR, ForwardProblem, PointSource, TimeAxis
from ..inversion.gradient import CheckpointIO, event_gradient, plan_chunks
from ..mesh.files import ReceiverData, read_receivers_h5, write_json_atomic, write_receivers_h5
from ..mesh.model import ModelEvaluator, ModelSource
from ..mesh.structured import Box, StructuredMesh, build_mesh
from ..parallel.decomposition import decompose, local_part
from ..sem.misfits import cross_correlation_time_shift, l2, l2_energy
from ..sem.timestepper import State
from .progress import Progress
from .state import JobState, product_hashes
from .spec import JobSpec

log = logging.getLogger("fwimpi")

IMPLEMENTED_MISFITS = ("L2_energy_no_observed_data", "L2", "cross_correlation_time_shift")


@dataclass
class Setup:
    """The discretised job on one rank: mesh, its share of operators, time axis."""

    spec: JobSpec
    comm: object
    mesh: StructuredMesh
    problem: ForwardProblem
    natural: object  # parallel.petsc.NaturalOrder
    halo: object  # parallel.petsc.HaloExchange
    offset: int  # first PETSc index owned by this rank
    axis: TimeAxis
    min_velocity: float
    observed: dict[str, np.ndarray]


def _mesh_for(spec: JobSpec, evaluator: ModelEvaluator) -> tuple[StructuredMesh, float]:
    sim = spec.simulation
    domain = Box(spec.domain.x[0], spec.domain.x[1], spec.domain.y[0], spec.domain.y[1])
    margin = sim.absorbing.width_in_meters if sim.absorbing else 0.0
    vmin = evaluator.min_velocity()
    for _ in range(3):  # refine if the GLL points find a lower velocity than the sampling
        h = vmin / (sim.max_frequency_in_hertz * sim.elements_per_wavelength)
        mesh = build_mesh(domain, margin, h, sim.tensor_order)
        vmin_mesh = float(evaluator(mesh.points)["VP"].min())
        if vmin_mesh >= vmin * (1 - 1e-12):
            break
        vmin = vmin_mesh
    return mesh, vmin


def _check_time_step(spec: JobSpec, stable_dt: float) -> None:
    dt = spec.simulation.time_step_in_seconds
    if dt is not None and dt > stable_dt:
        raise ConfigError(
            f"simulation_configuration.time_step_in_seconds: {dt:g} s exceeds the CFL "
            f"stability limit {stable_dt:.4g} s of this mesh and model; leave it "
            f"out to use {COURANT_FACTOR * stable_dt:.4g} s"
        )


def _model(spec: JobSpec) -> tuple[ModelEvaluator, StructuredMesh, float]:
    domain = Box(spec.domain.x[0], spec.domain.x[1], spec.domain.y[0], spec.domain.y[1])
    evaluator = ModelEvaluator(ModelSource(spec.model.vp, spec.model.rho, spec.model.file), domain)
    mesh, vmin = _mesh_for(spec, evaluator)
    if mesh.n_points > 50_000_000:
        raise ConfigError(
            f"simulation_configuration.elements_per_wavelength: the mesh would have "
            f"{mesh.n_points} points; lower elements_per_wavelength or max_frequency_in_hertz"
        )
    return evaluator, mesh, vmin


def _absorbing(spec: JobSpec) -> dict:
    ab = spec.simulation.absorbing
    return {"absorbing_width": ab.width_in_meters if ab else 0.0,
            "reference_velocity": ab.reference_velocity if ab else 1.0}


def _check_mappings(spec: JobSpec) -> None:
    """Build every mapping and the smoothing once, so that bad settings (an unsafe or
    invalid region-of-interest expression, say) stop the job before any work."""
    from ..inversion.mapping import Mapping, MappingError
    from ..inversion.smoothing import ConstantSmoothing, SmoothingError

    try:
        for index, config in enumerate(spec.mappings):
            Mapping.from_config(config, index)
        if spec.smoothing is not None:
            ConstantSmoothing.from_config(spec.smoothing)
    except (MappingError, SmoothingError) as err:
        raise ConfigError(str(err)) from None


def validate(spec: JobSpec, ranks: int) -> dict:
    """Every check of a run, serially and without MPI; returns the derived settings.

    Raises ConfigError. This is what ``fwimpi validate`` and ``fwimpi run`` do before
    any MPI work or output.
    """
    _check_mappings(spec)
    evaluator, mesh, vmin = _model(spec)
    decompose(mesh, ranks)  # rejects more ranks than the mesh can take
    problem = ForwardProblem(mesh, evaluator, **_absorbing(spec))
    _check_time_step(spec, problem.stable_dt)
    axis = problem.time_axis(spec.simulation.end_time_in_seconds, spec.simulation.time_step_in_seconds)
    _observed_data(spec, axis)
    return describe(mesh, problem.stable_dt, axis, vmin)


def prepare(spec: JobSpec, comm) -> Setup:
    """Build mesh, decomposition, model and operators; check the time step.

    Collective on comm. Raises ConfigError on every rank alike (all checks see global data).
    """
    from mpi4py import MPI

    from ..parallel.petsc import HaloExchange, NaturalOrder

    _check_mappings(spec)
    evaluator, mesh, vmin = _model(spec)
    decomposition = decompose(mesh, comm.size)
    part = local_part(mesh, decomposition, comm.rank)
    halo = HaloExchange(comm, part)
    problem = ForwardProblem(
        mesh, evaluator, elements=part.elements, points=part.points, **_absorbing(spec),
        assemble=halo.assemble, reduce_max=lambda v: comm.allreduce(v, op=MPI.MAX),
        work=halo.buffer,
    )
    natural = NaturalOrder(comm, part, decomposition.petsc)
    _check_time_step(spec, problem.stable_dt)
    axis = problem.time_axis(spec.simulation.end_time_in_seconds, spec.simulation.time_step_in_seconds)
    observed = _observed_data(spec, axis)
    return Setup(spec, comm, mesh, problem, natural, halo, int(decomposition.offsets[comm.rank]),
                 axis, vmin, observed)


def _observed_data(spec: JobSpec, axis: TimeAxis) -> dict[str, np.ndarray]:
    """Observed traces per event for misfits that need them, checked against the axis."""
    misfit = spec.misfit
    if misfit is not None and misfit.misfit_function not in IMPLEMENTED_MISFITS:
        raise ConfigError(
            f"misfit_configuration.misfit_function: '{misfit.misfit_function}' is not "
            f"implemented yet; use one of {', '.join(IMPLEMENTED_MISFITS)}"
        )
    if misfit is None or misfit.observed_data is None:
        return {}
    field = "misfit_configuration.observed_data"
    try:
        data = read_receivers_h5(misfit.observed_data)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{field}: cannot read {misfit.observed_data}: {err}") from None
    out = {}
    for event in spec.events:
        if event.name not in data:
            raise ConfigError(f"{field}: no event '{event.name}' in {misfit.observed_data}")
        rec = data[event.name]
        trace = rec.traces.get(misfit.receiver_field)
        shape = (len(event.receivers), axis.n_steps + 1)
        if trace is None or trace.shape != shape or not math.isclose(rec.dt, axis.dt, rel_tol=1e-9):
            got = None if trace is None else trace.shape
            raise ConfigError(
                f"{field}: event '{event.name}' needs '{misfit.receiver_field}' traces of shape "
                f"{shape} at dt={axis.dt:.6g} s, got {got} at dt={rec.dt:.6g} s"
            )
        out[event.name] = trace
    return out


def describe(mesh: StructuredMesh, stable_dt: float, axis: TimeAxis, vmin: float) -> dict:
    """The derived sizes that ``fwimpi validate`` prints and ``summary.json`` records."""
    return {
        "n_elements": mesh.n_elements,
        "elements_x": mesh.nex,
        "elements_y": mesh.ney,
        "n_points": mesh.n_points,
        "element_size_m": [mesh.hx, mesh.hy],
        "absorbing_margin_m": mesh.margin,
        "min_velocity_m_per_s": vmin,
        "dt": axis.dt,
        "stable_dt": stable_dt,
        "n_steps": axis.n_steps,
    }


def _gather_traces(comm, keep: np.ndarray, traces: np.ndarray, n_receivers: int):
    """Receiver traces ``(R, S)`` in receiver order on rank 0 (None elsewhere)."""
    parts = comm.gather((keep, traces), root=0)
    if comm.rank != 0:
        return None
    out = np.zeros((n_receivers, traces.shape[1]))
    seen = np.zeros(n_receivers, dtype=int)
    for k, t in parts:
        out[k] = t
        seen[k] += 1
    if not (seen == 1).all():
        raise AssertionError("every receiver must be recorded by exactly one rank")
    return out


def _misfit_function(spec: JobSpec, event: str, setup: Setup):
    """``(kept receiver indices, local traces) -> (J part, dJ/dtraces)`` of the event."""
    dt = setup.axis.dt
    function = spec.misfit.misfit_function
    if function == "L2_energy_no_observed_data":
        return lambda keep, traces: l2_energy(traces, dt)
    observed = setup.observed[event]
    measure = l2 if function == "L2" else cross_correlation_time_shift
    return lambda keep, traces: measure(traces, observed[keep], dt)


def _chunk(spec: JobSpec, setup: Setup) -> int:
    """Checkpoint spacing from the per-rank memory budget, the same on every rank."""
    from mpi4py import MPI

    points = setup.comm.allreduce(setup.problem.n_local_points, op=MPI.MAX)
    budget = spec.compression.memory_per_rank_in_mb * 2**20
    try:
        return plan_chunks(setup.axis.n_steps, spec.compression.forward_wavefield_sampling_interval,
                           points, budget)
    except ValueError as err:
        raise ConfigError(f"wavefield_compression.memory_per_rank_in_mb: the gradient {err}") from None


def _checkpoint_settings(spec: JobSpec, event, setup: Setup, interval: int, spacing: int) -> dict:
    """Everything an event's forward states depend on (JSON), to decide on reuse."""
    resolved = spec.resolved
    model = dict(resolved["model"])
    if spec.model.file is not None:
        stat = Path(spec.model.file).stat()
        model["file_size"], model["file_mtime_ns"] = stat.st_size, stat.st_mtime_ns
    return {
        "fwimpi_version": __version__,
        "domain": resolved["domain"],
        "model": model,
        "simulation_configuration": resolved["simulation_configuration"],
        "event": next(e for e in resolved["events"] if e["event_name"] == event.name),
        "dt": setup.axis.dt,
        "n_steps": setup.axis.n_steps,
        "ranks_per_job": setup.comm.size,
        "forward_wavefield_sampling_interval": interval,
        "checkpoint_spacing": spacing,
    }


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    shown = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" if not isinstance(new.get(k), dict)
             else f"{k} changed" for k in keys]
    return ", ".join(shown)


class _Checkpoints:
    """The checkpoint file of one event: reuse it if its settings match, else write it."""

    def __init__(self, setup: Setup, path: Path, settings: dict, spacing: int):
        from ..parallel.checkpoints import CheckpointReader, CheckpointWriter, stored_settings

        self.setup, self.path = setup, path
        comm, problem = setup.comm, setup.problem
        n_owned = setup.halo.n_owned
        stored = stored_settings(path)
        self.reuse = stored == settings
        self.reader = self.writer = None
        if comm.rank == 0:
            if self.reuse:
                log.info("event %s: checkpoints of an earlier run reused; the forward "
                         "simulation is not run again", settings["event"]["event_name"])
            elif stored is not None:
                log.info("event %s: checkpoints exist for other settings (%s); the forward "
                         "simulation runs again", settings["event"]["event_name"],
                         _differences(stored, settings))
        if self.reuse:
            self.reader = CheckpointReader(comm, path, setup.offset, n_owned)
            self.traces = self.reader.traces()
            self.io = CheckpointIO(spacing, load=self._load)
        else:
            self.traces = None
            self.writer = CheckpointWriter(comm, path, setup.offset, n_owned,
                                           setup.halo.n_global, settings)
            self.io = CheckpointIO(spacing, save=lambda n, st: self.writer.save(n, st.u, st.u_old),
                                   load=self._load)
        self.n_points = problem.n_local_points

    def _load(self, step: int) -> State:
        u_owned, u_old_owned = (self.reader or self.writer).load(step)
        state = State(step, np.zeros(self.n_points), np.zeros(self.n_points))
        for target, owned in ((state.u, u_owned), (state.u_old, u_old_owned)):
            target[: len(owned)] = owned
            self.setup.halo.update_ghosts(target)
        return state

    def finish(self, traces_on_root, shape) -> None:
        if self.writer is not None:
            self.writer.commit(traces_on_root, shape)
        if self.reader is not None:
            self.reader.close()


def run_job(spec: JobSpec, comm, forward_only: bool = False) -> dict | None:
    """Run the job on the ranks of ``comm``; write its products. Collective on comm.

    Receivers for every event; with a misfit also the misfit and, unless ``forward_only``,
    the raw gradient per event and summed over events, then the mappings and smoothing
    (root-only). Products already computed with the same settings (the output folder's
    state file) are reused, not run again. Returns the summary on rank 0.
    """
    from mpi4py import MPI

    from ..parallel.h5io import block_range, read_mesh_h5_collective, write_mesh_h5_collective

    root = comm.rank == 0
    out = Path(spec.output)
    gradients = spec.misfit is not None and not forward_only
    state = JobState(out, product_hashes(spec, gradients))
    if state.all_done() and (out / "summary.json").is_file():
        if root:
            log.info("all products of job %s are already computed; not run again", spec.name)
            return json.loads((out / "summary.json").read_text())
        return None
    setup = prepare(spec, comm)
    mesh, problem, natural, axis = setup.mesh, setup.problem, setup.natural, setup.axis
    info = describe(mesh, problem.stable_dt, axis, setup.min_velocity)
    chunk = _chunk(spec, setup) if gradients else None
    interval = spec.compression.forward_wavefield_sampling_interval
    if root:
        log.info("mesh: %d x %d elements of order %d, %d points on %d rank(s); dt = %.4g s, "
                 "%d steps", mesh.nex, mesh.ney, mesh.order, mesh.n_points, comm.size,
                 axis.dt, axis.n_steps)
        if gradients:
            log.info("gradient: forward wavefield kept every %d step(s); %s", interval,
                     "all in memory" if chunk >= axis.n_steps else
                     f"checkpoints every {chunk} steps, chunks recomputed")
    attrs = {"fwimpi_version": __version__, "job": spec.name, "job_spec": spec.resolved}
    elo, ehi = block_range(mesh.n_elements, comm)
    point_range = (natural.lo, natural.hi)

    def write_fields(rel: str, fields: dict[str, np.ndarray], **extra) -> str:
        """Collective: fields given as this rank's natural-order slices."""
        write_mesh_h5_collective(
            comm, out / rel, n_points=mesh.n_points, point_range=point_range,
            points=mesh.points[natural.lo:natural.hi], mass=natural.to_natural(problem.weights),
            fields=fields, n_elements=mesh.n_elements, element_range=(elo, ehi),
            cells=mesh.cells[elo:ehi], order=mesh.order, attrs={**attrs, **extra})
        return rel

    def done(key: str, **entry) -> None:
        if root:
            state.record(key, **entry)

    def reused(key: str, what: str) -> dict | None:
        entry = state.done(key)
        if entry is not None and root:
            log.info("%s: already computed; not run again", what)
        return entry

    if reused("model", "model") is None:
        write_fields("model.h5", {"VP": natural.to_natural(problem.vp),
                                  "RHO": natural.to_natural(problem.rho)}, kind="model")
        done("model", files=["model.h5", "model.xdmf"])
    progress = Progress(mesh.n_points, active=root)
    problem.progress = progress
    seconds = {"forward": 0.0, "adjoint": 0.0}
    total = {"VP": np.zeros(natural.hi - natural.lo), "RHO": np.zeros(natural.hi - natural.lo)}
    total_misfit = 0.0
    for event in spec.events:
        key = f"event/{event.name}"
        entry = reused(key, f"event {event.name}")
        if entry is None:
            entry, fwd, adj, grad = _run_event(spec, setup, event, gradients, chunk, interval,
                                               progress, write_fields, attrs)
            seconds["forward"] += fwd
            seconds["adjoint"] += adj
            files = [entry["receivers"]] + ([entry["gradient"]] if gradients else [])
            done(key, files=files, summary=entry)
        else:
            entry = entry["summary"]
            grad = None
            if gradients:
                grad, _, _ = read_mesh_h5_collective(comm, out / entry["gradient"], point_range)
        if gradients:
            total_misfit += entry["misfit"]
            for name in total:
                total[name] += grad[name]
    summary = {"job": spec.name, "model": "model.h5",
               "events": {e.name: state.done(f"event/{e.name}")["summary"] if root else None
                          for e in spec.events},
               "mappings": {}, "smoothed": {}, "plots": []}
    if gradients:
        summary["gradient"] = write_fields("gradient.h5", total, kind="raw_gradient",
                                           event="sum", misfit=total_misfit,
                                           forward_wavefield_sampling_interval=interval)
    if gradients and spec.mappings:
        products = _on_root(comm, lambda: map_and_smooth(spec, mesh, state, out, attrs))
        summary.update(products or {})
    peak = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, op=MPI.MAX)
    if not root:
        return None
    summary["simulation"] = {
        "ranks": comm.size, **info,
        "forward_seconds": seconds["forward"], "adjoint_seconds": seconds["adjoint"],
        "peak_memory_mb_per_rank": peak,
    }
    write_json_atomic(out / "summary.json", summary)
    log.info("wrote %s", out / "summary.json")
    return summary


def _run_event(spec: JobSpec, setup: Setup, event, gradients: bool, chunk: int | None,
               interval: int, progress: Progress, write_fields, attrs: dict):
    """Collective: simulate one event (and its gradient); write its receivers (rank 0) and
    gradient. Returns (summary entry, forward s, adjoint s, gradient natural slices)."""
    from mpi4py import MPI

    comm, problem, axis, mesh, natural = (setup.comm, setup.problem, setup.axis, setup.mesh,
                                          setup.natural)
    root = comm.rank == 0
    out = Path(spec.output)
    xy = np.array([[r.x, r.y] for r in event.receivers])
    sources = [PointSource(s.x, s.y, s.f) for s in event.sources]
    wavelet = spec.simulation.wavelet
    comm.Barrier()
    recomputed = ((axis.n_steps - 1) // chunk) * chunk if gradients else 0
    progress.start(f"event {event.name}", axis.n_steps * (2 if gradients else 1) + recomputed)
    entry = {"receivers": str(Path("events") / event.name / "receivers.h5")}
    adj, grad = 0.0, None
    if gradients:
        checkpoints = _Checkpoints(
            setup, out / "checkpoints" / f"{event.name}.h5",
            _checkpoint_settings(spec, event, setup, interval, chunk), chunk)
        result = event_gradient(
            problem, axis, sources, xy, wavelet.center_frequency,
            wavelet.time_shift_in_seconds, _misfit_function(spec, event.name, setup),
            reduce_sum=lambda v: comm.allreduce(v, op=MPI.SUM), interval=interval,
            chunk=chunk, checkpoints=checkpoints.io, stored_traces=checkpoints.traces)
        keep, traces, fwd = result.receivers_kept, result.traces, result.forward_seconds
        adj = comm.allreduce(result.adjoint_seconds, op=MPI.MAX)
        entry["misfit"] = result.misfit
        grad = {"VP": natural.to_natural(result.dvp), "RHO": natural.to_natural(result.drho)}
        entry["gradient"] = write_fields(
            str(Path("events") / event.name / "gradient.h5"), grad, kind="raw_gradient",
            event=event.name, misfit=result.misfit,
            forward_wavefield_sampling_interval=interval)
    else:
        keep, traces, fwd = problem.simulate(
            sources, xy, axis, wavelet.center_frequency, wavelet.time_shift_in_seconds)
    fwd = comm.allreduce(fwd, op=MPI.MAX)
    traces = _gather_traces(comm, keep, traces, len(xy))
    if gradients:
        checkpoints.finish(traces, (len(xy), axis.n_steps + 1))
    if root:
        if gradients and checkpoints.reuse:
            log.info("event %s: forward reused, adjoint %.3f s (chunks recomputed from "
                     "checkpoints)", event.name, adj)
        else:
            log.info("event %s: forward %.3f s (%.1f M point-updates/s)%s", event.name, fwd,
                     mesh.n_points * axis.n_steps / fwd / 1e6,
                     f", adjoint {adj:.3f} s" if gradients else "")
        data = ReceiverData({"phi": traces}, xy, axis.dt, axis.start_time,
                            tuple(r.station for r in event.receivers))
        write_receivers_h5(out / entry["receivers"], {event.name: data},
                           {**attrs, "nprocs": comm.size, "kind": "receivers"})
        if spec.misfit is not None and not gradients:
            entry["misfit"] = _misfit_function(spec, event.name, setup)(
                np.arange(len(xy)), traces)[0]
        if "misfit" in entry:
            log.info("event %s: misfit %s = %.6e", event.name, spec.misfit.misfit_function,
                     entry["misfit"])
    entry = comm.bcast(entry, root=0)
    return entry, fwd, adj, grad


def _on_root(comm, step):
    """Run ``step()`` on rank 0 while the others wait; an error there ends every rank.

    Returns the step's result on rank 0 (None elsewhere).
    """
    result, error = None, None
    if comm.rank == 0:
        try:
            result = step()
        except Exception as err:  # noqa: BLE001 - re-raised below, on every rank
            error = err
    message = comm.bcast(None if error is None else f"{type(error).__name__}: {error}", root=0)
    if error is not None:
        raise error
    if message is not None:
        raise FwimpiError(f"the root-only step failed on rank 0: {message}")
    return result


#: Clip levels of the PNGs of every mapped and smoothed gradient (None: no clipping);
#: the tutorial shows its gradients at these.
PLOT_CLIPS = (None, 0.1, 0.8)


def map_and_smooth(spec: JobSpec, mesh: StructuredMesh, state: JobState, out: Path,
                   attrs: dict) -> dict:
    """Root-only: each mapping of the raw gradients (per event, with that event's cutouts,
    summed over events), the smoothing of one of them, their files and plots. Reads the
    raw gradients and the prior model from their files; reuses finished products."""
    from ..inversion.mapping import EventGeometry, Mapping
    from ..inversion.smoothing import ConstantSmoothing
    from ..mesh.files import read_mesh_h5, write_mesh_h5
    from .plotting import plot_field

    model = read_mesh_h5(out / "model.h5")
    points, cells, mass = model.points, model.cells, model.mass
    products = {"mappings": {}, "smoothed": {}, "plots": []}

    def write(key: str, rel: str, fields: dict, **extra) -> None:
        write_mesh_h5(out / rel, points, cells, mass, fields, {**attrs, "nprocs": 1, **extra})
        plots = []
        for clip in PLOT_CLIPS:
            png = Path(rel).with_suffix("").as_posix() + (f"_clip{clip:g}" if clip else "") + ".png"
            plot_field(out / rel, out / png, clip=clip)
            plots.append(png)
        state.record(key, files=[rel, str(Path(rel).with_suffix(".xdmf")), *plots], path=rel,
                     plots=plots)

    def collect(key: str, kind: str, name: str) -> None:
        entry = state.done(key)
        products[kind][name] = entry["path"]
        products["plots"].extend(entry["plots"])

    raw = None
    for index, config in enumerate(spec.mappings):
        key = f"mapping/{config.name}"
        if state.done(key) is not None:
            log.info("mapping %s: already computed; not run again", config.name)
        else:
            mapping = Mapping.from_config(config, index)
            if raw is None:
                raw = {e.name: read_mesh_h5(out / state.done(f"event/{e.name}")["summary"]
                                            ["gradient"]).fields for e in spec.events}
            fields = None
            for event in spec.events:
                g = mapping.adjoint(raw[event.name], model.fields, points,
                                    EventGeometry.from_events([event]))
                fields = g if fields is None else {k: fields[k] + g[k] for k in g}
            write(key, f"mappings/{config.name}.h5", fields, kind="mapped_gradient",
                  mapping=config.name, scaling=config.scaling)
            log.info("mapping %s written", config.name)
        collect(key, "mappings", config.name)
    if spec.smoothing is not None:
        name = spec.smoothing.apply_to
        key = f"smoothed/{name}"
        if state.done(key) is not None:
            log.info("smoothing of %s: already computed; not run again", name)
        else:
            mapped = read_mesh_h5(out / state.done(f"mapping/{name}")["path"]).fields
            smoothed = ConstantSmoothing.from_config(spec.smoothing).apply(
                mapped, points, cells, mass, mesh.order, mass_weighted=True)
            write(key, f"smoothed/{name}.h5", smoothed, kind="smoothed_gradient", mapping=name,
                  smoothing_lengths_in_meters=dict(spec.smoothing.smoothing_lengths_in_meters))
            log.info("smoothed gradient of %s written", name)
        collect(key, "smoothed", name)
    return products
