"""Running a job on the ranks of a communicator: its products and ``summary.json``.

``run_job`` takes the plan and the state of the output folder from rank 0, decomposes the
mesh (``DistributedMesh``), builds the ``WaveSolver`` and computes, per event, the receivers
and (with a misfit) the misfit and raw gradient, then the summed gradient and, on rank 0, the
mappings and the smoothing. Products already computed with the same settings are reused.
Collective on comm.
"""

from __future__ import annotations

import json
import logging
import math
import resource
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError, NumericalError
from ..inversion.solver import ModelError, WaveSolver
from ..mesh.files import ReceiverData, write_json_atomic, write_receivers_h5
from ..parallel.checkpoints import EventCheckpoints, checkpoint_bytes
from ..parallel.collective import decide_on_root
from ..parallel.distributed import DistributedMesh
from ..sem.acquisition import Event
from .plan import JobPlan, plan_job
from .postprocessing import map_and_smooth
from .progress import Progress
from .spec import JobSpec
from .state import JobState, product_hashes

log = logging.getLogger("fwimpi")


def run_job(spec: JobSpec, comm, forward_only: bool = False) -> dict | None:
    """Run the job on the ranks of ``comm``; write its products. Collective on comm.

    Receivers for every event; with a misfit also the misfit and, unless ``forward_only``,
    the raw gradient per event and summed over events, then the mappings and smoothing
    (rank 0). Returns the summary on rank 0 (None elsewhere).
    """
    root = comm.rank == 0
    out = Path(spec.output)
    gradients = spec.misfit is not None and not forward_only
    hashes = decide_on_root(comm, lambda: product_hashes(spec, gradients))
    products = decide_on_root(comm, lambda: JobState.read(out, hashes).products)
    state = JobState(out, hashes, products)
    if state.all_done() and decide_on_root(comm, (out / "summary.json").is_file):
        if root:
            log.info("all products of job %s are already computed; not run again", spec.name)
            return json.loads((out / "summary.json").read_text())
        return None
    plan = decide_on_root(comm, lambda: plan_job(spec, comm.size, gradients))
    with DistributedMesh(comm, plan.mesh) as mesh:
        return _run(spec, plan, mesh, state, gradients)


def _run(spec: JobSpec, plan: JobPlan, mesh: DistributedMesh, state: JobState,
         gradients: bool) -> dict | None:
    comm, out, root = mesh.comm, Path(spec.output), mesh.comm.rank == 0
    axis = plan.axis
    try:
        solver = WaveSolver(mesh, plan.model(mesh.coordinates), axis, spec.simulation.wavelet,
                            spec.simulation.absorbing)
    except ModelError as err:
        raise ConfigError(str(err)) from None
    chunk = plan.chunk
    interval = spec.compression.forward_wavefield_sampling_interval
    if root:
        m = plan.mesh
        log.info("mesh: %d x %d elements of order %d, %d points on %d rank(s); dt = %.4g s, "
                 "%d steps", m.nex, m.ney, m.order, m.n_points, comm.size, axis.dt, axis.n_steps)
        if gradients:
            log.info("gradient: forward wavefield kept every %d step(s); %s", interval,
                     "all in memory" if chunk >= axis.n_steps else
                     f"checkpoints every {chunk} steps, chunks recomputed")
    attrs = {"fwimpi_version": __version__, "job": spec.name, "job_spec": spec.resolved,
             "mesh": plan.mesh.description(), "dt": axis.dt}

    def write_fields(rel: str, fields: dict[str, np.ndarray], kernels: bool = False,
                     **extra) -> str:
        mesh.write_fields(out / rel, fields, {**attrs, **extra}, kernels=kernels)
        return rel

    def reused(key: str, what: str) -> dict | None:
        entry = state.done(key)
        if entry is not None and root:
            log.info("%s: already computed; not run again", what)
        return entry

    if reused("model", "model") is None:
        model = solver.model
        write_fields("model.h5", {p: mesh.to_natural(model[p]) for p in solver.physics.parameters},
                     kind="model")
        if root:
            state.record("model", files=["model.h5", "model.xdmf"])
    progress = Progress(plan.mesh.n_points, active=root)
    solver.progress = progress
    seconds = {"forward": 0.0, "adjoint": 0.0}
    lo, hi = mesh.natural_range
    total = {p: np.zeros(hi - lo) for p in solver.physics.parameters}
    total_misfit = 0.0
    summed = gradients and state.done("gradient") is None  # the summed gradient to write
    for event in spec.events:
        key = f"event/{event.name}"
        entry = reused(key, f"event {event.name}")
        if entry is None:
            entry, fwd, adj, grad = _run_event(spec, plan, state, solver, event, gradients,
                                               chunk, interval, progress, write_fields)
            seconds["forward"] += fwd
            seconds["adjoint"] += adj
            if root:
                files = [entry["receivers"]] + ([entry["gradient"]] if gradients else [])
                state.record(key, files=files, summary=entry)
        else:
            entry = entry["summary"]
            grad = mesh.read_fields(out / entry["gradient"]) if summed else None
        if summed:
            total_misfit += entry["misfit"]
            for name in total:
                total[name] += grad[name]
    summary = {"job": spec.name, "model": "model.h5",
               "events": {e.name: state.done(f"event/{e.name}")["summary"] if root else None
                          for e in spec.events},
               "mappings": {}, "smoothed": {}, "plots": []}
    if summed:
        write_fields("gradient.h5", total, kernels=True, kind="raw_gradient", event="sum",
                     misfit=total_misfit, forward_wavefield_sampling_interval=interval)
        if root:
            state.record("gradient", files=["gradient.h5", "gradient.xdmf"], misfit=total_misfit)
    elif gradients and root:
        log.info("summed gradient: already computed; not run again")
    if gradients:
        summary["gradient"] = "gradient.h5"
    if gradients and spec.mappings:
        products = mesh.on_root(lambda: map_and_smooth(spec, state, out, attrs))
        summary.update(products or {})
    peak = mesh.max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    if not root:
        return None
    summary["simulation"] = {
        "ranks": comm.size, **plan.describe(),
        "forward_seconds": seconds["forward"], "adjoint_seconds": seconds["adjoint"],
        "peak_memory_mb_per_rank": peak,
    }
    write_json_atomic(out / "summary.json", summary)
    log.info("wrote %s", out / "summary.json")
    return summary


def _checkpoint_settings(spec: JobSpec, event: Event, plan: JobPlan, state: JobState,
                         ranks: int, interval: int, spacing: int) -> dict:
    """Everything an event's forward states depend on (JSON), to decide on reuse: the
    model product's hash (domain, model and its file's content, simulation settings), the
    event, the time axis, the decomposition and the sampling."""
    return {
        "fwimpi_version": __version__,
        "model": state.hashes["model"],
        "event": next(e for e in spec.resolved["events"] if e["event_name"] == event.name),
        "dt": plan.axis.dt,
        "n_steps": plan.axis.n_steps,
        "ranks_per_job": ranks,
        "forward_wavefield_sampling_interval": interval,
        "checkpoint_spacing": spacing,
    }


def _local_misfit(spec: JobSpec, plan: JobPlan, event: Event):
    """``(kept receiver indices, traces) -> (J part, dJ/dtraces)`` of the event."""
    misfit, dt = spec.misfit.misfit, plan.axis.dt
    observed = plan.observed.get(event.name)
    return lambda keep, traces: misfit.evaluate(
        traces, None if observed is None else observed[keep], dt)


def _run_event(spec: JobSpec, plan: JobPlan, state: JobState, solver: WaveSolver, event: Event,
               gradients: bool, chunk: int | None, interval: int, progress: Progress,
               write_fields):
    """Collective: simulate one event (and its gradient); write its receivers (rank 0) and
    gradient. Returns (summary entry, forward s, adjoint s, gradient natural slices)."""
    mesh, axis = solver.mesh, plan.axis
    comm, root, out = mesh.comm, mesh.comm.rank == 0, Path(spec.output)
    n_receivers = len(event.receivers)
    comm.Barrier()
    recomputed = ((axis.n_steps - 1) // chunk) * chunk if gradients else 0
    progress.start(f"event {event.name}", axis.n_steps * (2 if gradients else 1) + recomputed)
    entry = {"receivers": str(Path("events") / event.name / "receivers.h5")}
    adj, grad, checkpoints = 0.0, None, None
    if gradients:
        checkpoints = EventCheckpoints(
            mesh, out / "checkpoints" / f"{event.name}.h5",
            _checkpoint_settings(spec, event, plan, state, comm.size, interval, chunk), chunk,
            f"event {event.name}", checkpoint_bytes(mesh.n_global, -(-axis.n_steps // chunk),
                                                    n_receivers, axis.n_steps))
        result = solver.gradient(event, _local_misfit(spec, plan, event), interval=interval,
                                 chunk=chunk, checkpoints=checkpoints)
        keep, traces, fwd = result.receivers_kept, result.traces, result.forward_seconds
        adj = mesh.max(result.adjoint_seconds)
        entry["misfit"] = result.misfit
        grad = {p: mesh.to_natural(g) for p, g in result.gradient.items()}
        entry["gradient"] = write_fields(
            str(Path("events") / event.name / "gradient.h5"), grad, kernels=True,
            kind="raw_gradient",
            event=event.name, misfit=result.misfit,
            forward_wavefield_sampling_interval=interval)
    else:
        rec = solver.forward(event)
        keep, traces, fwd = rec.receivers_kept, rec.traces, rec.seconds
    fwd = mesh.max(fwd)
    traces = mesh.gather_rows(keep, traces, n_receivers)
    if checkpoints is not None:
        checkpoints.finish(traces, (n_receivers, axis.n_steps + 1))
    if root:
        if checkpoints is not None and checkpoints.reuse:
            log.info("event %s: forward reused, adjoint %.3f s (chunks recomputed from "
                     "checkpoints)", event.name, adj)
        else:
            log.info("event %s: forward %.3f s (%.1f M point-updates/s)%s", event.name, fwd,
                     plan.mesh.n_points * axis.n_steps / max(fwd, 1e-9) / 1e6,
                     f", adjoint {adj:.3f} s" if gradients else "")
        data = ReceiverData({"phi": traces}, event.receiver_coordinates, axis.dt,
                            axis.start_time, event.stations)
        write_receivers_h5(out / entry["receivers"], {event.name: data},
                           {"fwimpi_version": __version__, "job": spec.name,
                            "job_spec": spec.resolved, "nprocs": comm.size, "kind": "receivers"})
        if spec.misfit is not None and not gradients:
            entry["misfit"] = _local_misfit(spec, plan, event)(
                np.arange(n_receivers), traces)[0]
            if not math.isfinite(entry["misfit"]):
                raise NumericalError(f"event {event.name}: the misfit is not finite "
                                     f"({entry['misfit']})")
        if "misfit" in entry:
            log.info("event %s: misfit %s = %.6e", event.name, spec.misfit.misfit_function,
                     entry["misfit"])
    entry = comm.bcast(entry, root=0)
    return entry, fwd, adj, grad
