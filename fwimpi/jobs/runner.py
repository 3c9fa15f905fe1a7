"""Run a validated job spec: mesh, model, forward simulation per event, products, summary.

Everything that can reject the input (model expressions and files, CFL check of a given
time step, observed data) happens in ``prepare`` before any output is written.
"""

import logging
import math
import resource
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError
from ..inversion.forward import COURANT_FACTOR, ForwardProblem, PointSource, TimeAxis
from ..mesh.files import ReceiverData, read_receivers_h5, write_json_atomic, write_receivers_h5
from ..mesh.model import ModelEvaluator, ModelSource
from ..mesh.structured import Box, StructuredMesh, build_mesh
from ..parallel.decomposition import decompose, local_part
from ..sem.misfits import l2, l2_energy
from .spec import JobSpec

log = logging.getLogger("fwimpi")

IMPLEMENTED_MISFITS = ("L2_energy_no_observed_data", "L2")


@dataclass
class Setup:
    """The discretised job on one rank: mesh, its share of operators, time axis."""

    spec: JobSpec
    comm: object
    mesh: StructuredMesh
    problem: ForwardProblem
    natural: object  # parallel.petsc.NaturalOrder
    axis: TimeAxis
    min_velocity: float
    element_size: float
    observed: dict[str, np.ndarray]


def _mesh_for(spec: JobSpec, evaluator: ModelEvaluator) -> tuple[StructuredMesh, float, float]:
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
    return mesh, vmin, h


def _check_time_step(spec: JobSpec, stable_dt: float) -> None:
    dt = spec.simulation.time_step_in_seconds
    if dt is not None and dt > stable_dt:
        raise ConfigError(
            f"simulation_configuration.time_step_in_seconds: {dt:g} s exceeds the CFL "
            f"stability limit {stable_dt:.4g} s of this mesh and model; leave it "
            f"out to use {COURANT_FACTOR * stable_dt:.4g} s"
        )


def _model(spec: JobSpec) -> tuple[ModelEvaluator, StructuredMesh, float, float]:
    domain = Box(spec.domain.x[0], spec.domain.x[1], spec.domain.y[0], spec.domain.y[1])
    evaluator = ModelEvaluator(ModelSource(spec.model.vp, spec.model.rho, spec.model.file), domain)
    mesh, vmin, h = _mesh_for(spec, evaluator)
    if mesh.n_points > 50_000_000:
        raise ConfigError(
            f"simulation_configuration.elements_per_wavelength: the mesh would have "
            f"{mesh.n_points} points; lower elements_per_wavelength or max_frequency_in_hertz"
        )
    return evaluator, mesh, vmin, h


def _absorbing(spec: JobSpec) -> dict:
    ab = spec.simulation.absorbing
    return {"absorbing_width": ab.width_in_meters if ab else 0.0,
            "reference_velocity": ab.reference_velocity if ab else 1.0}


def validate(spec: JobSpec, ranks: int) -> dict:
    """Every check of a run, serially and without MPI; returns the derived settings.

    Raises ConfigError. This is what ``fwimpi validate`` and ``fwimpi run`` do before
    any MPI work or output.
    """
    evaluator, mesh, vmin, _ = _model(spec)
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

    evaluator, mesh, vmin, h = _model(spec)
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
    return Setup(spec, comm, mesh, problem, natural, axis, vmin, h, observed)


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


def run_job(spec: JobSpec, comm, forward_only: bool = False) -> dict | None:
    """Run the job on the ranks of ``comm``; write its products. Collective on comm.

    Returns the summary on rank 0, None elsewhere.
    """
    from mpi4py import MPI

    from ..parallel.h5io import block_range, write_mesh_h5_collective

    setup = prepare(spec, comm)
    root = comm.rank == 0
    out = Path(spec.output)
    mesh, problem, natural = setup.mesh, setup.problem, setup.natural
    info = describe(mesh, problem.stable_dt, setup.axis, setup.min_velocity)
    if root:
        log.info("mesh: %d x %d elements of order %d, %d points on %d rank(s); dt = %.4g s, "
                 "%d steps", mesh.nex, mesh.ney, mesh.order, mesh.n_points, comm.size,
                 setup.axis.dt, setup.axis.n_steps)
    attrs = {"fwimpi_version": __version__, "job": spec.name, "job_spec": spec.resolved}
    elo, ehi = block_range(mesh.n_elements, comm)
    write_mesh_h5_collective(
        comm, out / "model.h5", n_points=mesh.n_points, point_range=(natural.lo, natural.hi),
        points=mesh.points[natural.lo:natural.hi], mass=natural.to_natural(problem.weights),
        fields={"VP": natural.to_natural(problem.vp), "RHO": natural.to_natural(problem.rho)},
        n_elements=mesh.n_elements, element_range=(elo, ehi), cells=mesh.cells[elo:ehi],
        order=mesh.order, attrs={**attrs, "kind": "model"},
    )
    summary = {"job": spec.name, "model": "model.h5", "events": {}, "mappings": {},
               "smoothed": {}, "plots": []}
    forward_seconds = 0.0
    for event in spec.events:
        xy = np.array([[r.x, r.y] for r in event.receivers])
        comm.Barrier()
        keep, traces, seconds = problem.simulate(
            [PointSource(s.x, s.y, s.f) for s in event.sources], xy, setup.axis,
            spec.simulation.wavelet.center_frequency, spec.simulation.wavelet.time_shift_in_seconds,
        )
        seconds = comm.allreduce(seconds, op=MPI.MAX)
        forward_seconds += seconds
        traces = _gather_traces(comm, keep, traces, len(xy))
        if not root:
            continue
        rate = mesh.n_points * setup.axis.n_steps / seconds / 1e6
        log.info("event %s: forward %.3f s (%.1f M point-updates/s)", event.name, seconds, rate)
        rel = Path("events") / event.name / "receivers.h5"
        data = ReceiverData({"phi": traces}, xy, setup.axis.dt, setup.axis.start_time,
                            tuple(r.station for r in event.receivers))
        write_receivers_h5(out / rel, {event.name: data},
                           {**attrs, "nprocs": comm.size, "kind": "receivers"})
        entry = {"receivers": str(rel)}
        if spec.misfit is not None:
            entry["misfit"] = _misfit(spec, event.name, traces, setup)
            log.info("event %s: misfit %s = %.6e", event.name, spec.misfit.misfit_function,
                     entry["misfit"])
        summary["events"][event.name] = entry
    peak = comm.allreduce(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, op=MPI.MAX)
    if not root:
        return None
    if spec.misfit is not None and not forward_only:
        log.warning("gradients, mappings and smoothing are not implemented yet in fwimpi %s: "
                    "computed the receivers and the misfit only", __version__)
    summary["simulation"] = {
        "ranks": comm.size, **info,
        "forward_seconds": forward_seconds, "adjoint_seconds": 0.0,
        "peak_memory_mb_per_rank": peak,
    }
    write_json_atomic(out / "summary.json", summary)
    log.info("wrote %s", out / "summary.json")
    return summary


def _misfit(spec: JobSpec, event: str, traces: np.ndarray, setup: Setup) -> float:
    if spec.misfit.misfit_function == "L2":
        return l2(traces, setup.observed[event], setup.axis.dt)[0]
    return l2_energy(traces, setup.axis.dt)[0]
