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
from ..inversion.forward import ForwardProblem, PointSource, TimeAxis
from ..mesh.files import ReceiverData, read_receivers_h5, write_json_atomic, write_mesh_h5, write_receivers_h5
from ..mesh.model import ModelEvaluator, ModelSource
from ..mesh.structured import Box, StructuredMesh, build_mesh
from ..sem.misfits import l2, l2_energy
from .spec import JobSpec

log = logging.getLogger("fwimpi")

IMPLEMENTED_MISFITS = ("L2_energy_no_observed_data", "L2")


@dataclass
class Setup:
    """The discretised job: mesh, operators and time axis (built once, validated)."""

    spec: JobSpec
    mesh: StructuredMesh
    problem: ForwardProblem
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


def prepare(spec: JobSpec) -> Setup:
    """Build mesh, model and operators and check the time step. Raises ConfigError."""
    sim = spec.simulation
    domain = Box(spec.domain.x[0], spec.domain.x[1], spec.domain.y[0], spec.domain.y[1])
    evaluator = ModelEvaluator(ModelSource(spec.model.vp, spec.model.rho, spec.model.file), domain)
    mesh, vmin, h = _mesh_for(spec, evaluator)
    if mesh.n_points > 50_000_000:
        raise ConfigError(
            f"simulation_configuration.elements_per_wavelength: the mesh would have "
            f"{mesh.n_points} points; lower elements_per_wavelength or max_frequency_in_hertz"
        )
    problem = ForwardProblem(
        mesh, evaluator,
        absorbing_width=sim.absorbing.width_in_meters if sim.absorbing else 0.0,
        reference_velocity=sim.absorbing.reference_velocity if sim.absorbing else 1.0,
    )
    dt = sim.time_step_in_seconds
    if dt is not None and dt > problem.stable_dt:
        raise ConfigError(
            f"simulation_configuration.time_step_in_seconds: {dt:g} s exceeds the CFL "
            f"stability limit {problem.stable_dt:.4g} s of this mesh and model; leave it "
            f"out to use {0.5 * problem.stable_dt:.4g} s"
        )
    axis = problem.time_axis(sim.end_time_in_seconds, dt)
    observed = _observed_data(spec, axis)
    return Setup(spec, mesh, problem, axis, vmin, h, observed)


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


def describe(setup: Setup) -> dict:
    """The derived sizes that ``fwimpi validate`` prints and ``summary.json`` records."""
    mesh = setup.mesh
    return {
        "n_elements": mesh.n_elements,
        "elements_x": mesh.nex,
        "elements_y": mesh.ney,
        "n_points": mesh.n_points,
        "element_size_m": [mesh.hx, mesh.hy],
        "absorbing_margin_m": mesh.margin,
        "min_velocity_m_per_s": setup.min_velocity,
        "dt": setup.axis.dt,
        "stable_dt": setup.problem.stable_dt,
        "n_steps": setup.axis.n_steps,
    }


def run_job(spec: JobSpec, forward_only: bool = False) -> dict:
    """Run the job on one rank, write its products and return the summary."""
    setup = prepare(spec)
    out = Path(spec.output)
    info = describe(setup)
    log.info("mesh: %d x %d elements of order %d, %d points; dt = %.4g s, %d steps",
             setup.mesh.nex, setup.mesh.ney, setup.mesh.order, setup.mesh.n_points,
             setup.axis.dt, setup.axis.n_steps)
    attrs = {"fwimpi_version": __version__, "nprocs": 1, "job": spec.name,
             "job_spec": spec.resolved}
    problem = setup.problem
    write_mesh_h5(out / "model.h5", setup.mesh.points, setup.mesh.cells, problem.weights,
                  {"VP": problem.vp, "RHO": problem.rho}, {**attrs, "kind": "model"})
    summary = {"job": spec.name, "model": "model.h5", "events": {}, "mappings": {},
               "smoothed": {}, "plots": []}
    forward_seconds = 0.0
    for event in spec.events:
        xy = np.array([[r.x, r.y] for r in event.receivers])
        keep, traces, seconds = problem.simulate(
            [PointSource(s.x, s.y, s.f) for s in event.sources], xy, setup.axis,
            spec.simulation.wavelet.center_frequency, spec.simulation.wavelet.time_shift_in_seconds,
        )
        assert np.array_equal(keep, np.arange(len(xy))), "serial run must keep every receiver"
        forward_seconds += seconds
        rate = setup.mesh.n_points * setup.axis.n_steps / seconds / 1e6
        log.info("event %s: forward %.3f s (%.1f M point-updates/s)", event.name, seconds, rate)
        rel = Path("events") / event.name / "receivers.h5"
        data = ReceiverData({"phi": traces}, xy, setup.axis.dt, setup.axis.start_time,
                            tuple(r.station for r in event.receivers))
        write_receivers_h5(out / rel, {event.name: data}, {**attrs, "kind": "receivers"})
        entry = {"receivers": str(rel)}
        if spec.misfit is not None:
            entry["misfit"] = _misfit(spec, event.name, traces, setup)
            log.info("event %s: misfit %s = %.6e", event.name, spec.misfit.misfit_function,
                     entry["misfit"])
        summary["events"][event.name] = entry
    if spec.misfit is not None and not forward_only:
        log.warning("gradients, mappings and smoothing are not implemented yet in fwimpi %s: "
                    "computed the receivers and the misfit only", __version__)
    summary["simulation"] = {
        "ranks": 1, **info,
        "forward_seconds": forward_seconds, "adjoint_seconds": 0.0,
        "peak_memory_mb_per_rank": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    write_json_atomic(out / "summary.json", summary)
    log.info("wrote %s", out / "summary.json")
    return summary


def _misfit(spec: JobSpec, event: str, traces: np.ndarray, setup: Setup) -> float:
    if spec.misfit.misfit_function == "L2":
        return l2(traces, setup.observed[event], setup.axis.dt)[0]
    return l2_energy(traces, setup.axis.dt)[0]
