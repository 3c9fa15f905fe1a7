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
from ..errors import ConfigError, FwimpiError, NumericalError
from ..inversion.solver import ModelError, WaveSolver
from ..mesh.files import (ReceiverData, write_json_atomic, write_receivers_h5,
                          write_wavelet_h5)
from ..parallel.checkpoints import EventCheckpoints, checkpoint_bytes
from ..parallel.collective import decide_on_root, on_root
from ..parallel.distributed import DistributedMesh
from ..parallel.groups import EventGroups
from ..sem.acquisition import Event
from ..sem.signals import pressure_operator
from .plan import JobPlan, plan_job
from .plotting import plot_wavelets
from .postprocessing import map_and_smooth
from .progress import Progress
from .spec import JobSpec
from .state import JobState, product_hashes

log = logging.getLogger("fwimpi")


def run_job(spec: JobSpec, world, forward_only: bool = False,
            concurrent_events: int | None = None,
            only_events: tuple[str, ...] | None = None) -> dict | None:
    """Run the job on the ranks of ``world``; write its products. Collective on world.

    Receivers for every event; with a misfit also the misfit and, unless ``forward_only``,
    the raw gradient per event and summed over events, then the mappings and smoothing
    (rank 0). ``concurrent_events`` K (default: the spec's) splits ``world`` into K groups of
    ``world.size / K`` ranks that take the events as they become free. ``only_events``: run
    just these events (recorded as products) and nothing after them: what a SLURM site with
    isolation runs as one job step per event. Returns the summary on rank 0 (None elsewhere).
    """
    root = world.rank == 0
    out = Path(spec.output)
    groups_count = concurrent_events or spec.concurrent_events
    if world.size % groups_count:
        raise ConfigError(f"concurrent_events: {world.size} ranks cannot form {groups_count} "
                          f"equal groups")
    gradients = spec.misfit is not None and not forward_only
    hashes = decide_on_root(world, lambda: product_hashes(spec, gradients))
    products = decide_on_root(world, lambda: JobState.read(out, hashes).products)
    state = JobState(out, hashes, products)
    if only_events is not None:
        unknown = sorted(set(only_events) - {e.name for e in spec.events})
        if unknown:
            raise ConfigError(f"--events: no event {', '.join(unknown)} in the job")
    elif state.all_done() and decide_on_root(world, (out / "summary.json").is_file):
        if root:
            log.info("all products of job %s are already computed; not run again", spec.name)
            return json.loads((out / "summary.json").read_text())
        return None
    ranks = world.size // groups_count
    plan = decide_on_root(world, lambda: plan_job(spec, ranks, gradients))
    with EventGroups(world, ranks) as groups, DistributedMesh(groups.comm, plan.mesh) as mesh:
        return _run(spec, plan, groups, mesh, state, gradients, only_events)


def _run(spec: JobSpec, plan: JobPlan, groups: EventGroups, mesh: DistributedMesh,
         state: JobState, gradients: bool, only_events=None) -> dict | None:
    world, comm, out = groups.world, mesh.comm, Path(spec.output)
    root, leader = world.rank == 0, comm.rank == 0
    axis = plan.axis
    try:
        solver = WaveSolver(mesh, plan.model(mesh.coordinates), axis, plan.wavelet,
                            spec.simulation.absorbing, top_boundary=spec.simulation.top_boundary)
    except ModelError as err:
        raise ConfigError(str(err)) from None
    chunk = plan.chunk
    interval = spec.compression.forward_wavefield_sampling_interval
    if root:
        m = plan.mesh
        log.info("mesh: %d x %d elements of order %d, %d points on %d rank(s) per event, %d "
                 "event(s) at once; dt = %.4g s, %d steps", m.nex, m.ney, m.order, m.n_points,
                 comm.size, groups.count, axis.dt, axis.n_steps)
        if gradients:
            lossy = spec.compression.lossy
            log.info("gradient: forward wavefield kept every %d step(s)%s; %s", interval,
                     "" if lossy is None else
                     f", ZFP-compressed to {lossy.tolerance:g} of its peak",
                     "all in memory" if chunk >= axis.n_steps else
                     f"checkpoints every {chunk} steps, chunks recomputed")
    attrs = {"fwimpi_version": __version__, "job": spec.name, "job_spec": spec.resolved,
             "mesh": plan.mesh.description(), "dt": axis.dt}

    def write_fields(rel: str, fields: dict[str, np.ndarray], kernels: bool = False,
                     **extra) -> str:
        mesh.write_fields(out / rel, fields, {**attrs, **extra}, kernels=kernels)
        return rel

    if groups.index == 0:  # the model file: written by the first group
        if state.done("model") is None:
            model = solver.model
            write_fields("model.h5", {p: mesh.to_natural(model[p])
                                      for p in solver.physics.parameters}, kind="model")
            if leader:
                state.record("model", files=["model.h5", "model.xdmf"])
        elif leader:
            log.info("model: already computed; not run again")
    progress = Progress(plan.mesh.n_points, active=leader)
    solver.progress = progress
    seconds = {"forward": 0.0, "adjoint": 0.0}
    lo, hi = mesh.natural_range
    total = {p: np.zeros(hi - lo) for p in solver.physics.parameters}
    summed = gradients and state.done("gradient") is None  # the summed gradient to write
    events = spec.events
    pending = [e for e in events if state.done(f"event/{e.name}") is None
               and (only_events is None or e.name in only_events)]
    for e in events if only_events is None else ():
        entry = state.done(f"event/{e.name}")
        if entry is not None:
            if root:
                log.info("event %s: already computed; not run again", e.name)
            if summed and groups.index == 0:  # reused gradients: added by the first group
                grad = mesh.read_fields(out / entry["summary"]["gradient"])
                for name in total:
                    total[name] += grad[name]

    def task(i: int):
        """One event on this group (retried); its summary entry, or its failure."""
        event = pending[i]
        label = (f"event {event.name} ({events.index(event) + 1} of {len(events)}, on group "
                 f"{groups.index + 1} of {groups.count})")
        for attempt in range(spec.retries + 1):
            try:
                entry, fwd, adj, grad = _run_event(spec, plan, state, solver, event, gradients,
                                                   chunk, interval, progress, write_fields,
                                                   label)
            except FwimpiError as err:  # agreed by the group's ranks: retry, or report it
                if isinstance(err, ConfigError):
                    raise
                if leader:
                    log.warning("%s failed (attempt %d of %d): %s", label, attempt + 1,
                                spec.retries + 1, err)
                failure = f"{type(err).__name__}: {err}"
                continue
            seconds["forward"] += fwd
            seconds["adjoint"] += adj
            if summed:
                for name in total:
                    total[name] += grad[name]
            if leader:
                files = [entry[k] for k in ("receivers", "gradient", "wavelet") if k in entry]
                state.record(f"event/{event.name}", files=files, summary=entry)
            return ("done", entry)
        return ("failed", failure)

    outcomes = groups.gather_to_root({pending[i].name: r for i, r in
                                      groups.run(len(pending), task).items()})
    failed = decide_on_root(world, lambda: {k: v[1] for k, v in outcomes.items()
                                            if v[0] == "failed"})
    if failed:
        raise FwimpiError(f"{len(failed)} of {len(events)} event(s) failed after "
                          f"{spec.retries + 1} attempt(s) each: " + "; ".join(
                              f"{name}: {reason}" for name, reason in failed.items())
                          + "; the other events are done, a rerun computes only these")
    if only_events is not None:
        return None  # the job step of these events is done; the rest is another step's
    if root:
        for name, (_, entry) in outcomes.items():
            state.products[f"event/{name}"] = {"summary": entry}
    if summed:
        total = {name: groups.sum_over_groups(v) for name, v in total.items()}
    total_misfit = decide_on_root(world, lambda: sum(
        state.done(f"event/{e.name}")["summary"].get("misfit", 0.0) for e in events))
    summary = {"job": spec.name, "model": "model.h5",
               "events": {e.name: state.done(f"event/{e.name}")["summary"] if root else None
                          for e in events},
               "mappings": {}, "smoothed": {}, "plots": []}
    if summed and groups.index == 0:
        write_fields("gradient.h5", total, kernels=True, kind="raw_gradient", event="sum",
                     misfit=total_misfit, forward_wavefield_sampling_interval=interval)
        if leader:
            state.record("gradient", files=["gradient.h5", "gradient.xdmf"], misfit=total_misfit)
    elif gradients and root:
        log.info("summed gradient: already computed; not run again")
    world.Barrier()
    if gradients:
        summary["gradient"] = "gradient.h5"
    if gradients and spec.mappings:
        products = on_root(world, lambda: map_and_smooth(spec, state, out, attrs))
        summary.update(products or {})
    peak = groups.max_over_groups(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    forward = groups.max_over_groups(seconds["forward"])  # the groups run side by side
    adjoint = groups.max_over_groups(seconds["adjoint"])
    if not root:
        return None
    summary["simulation"] = {
        "ranks": world.size, "ranks_per_job": comm.size, "concurrent_events": groups.count,
        **plan.describe(), "forward_seconds": forward, "adjoint_seconds": adjoint,
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


def _local_misfit(spec: JobSpec, plan: JobPlan, event: Event, comm=None):
    """``(kept receiver indices, traces) -> (J part, dJ/dtraces)`` of the event, and the
    misfit object (with ``estimate_wavelet``, the estimator: its ``last`` filter). With ``estimate_wavelet`` the wavelet filter sums spectra over the ranks
    of ``comm`` (collective; None: one process holds every receiver)."""
    misfit, dt = spec.misfit.on_potential, plan.axis.dt
    estimator = misfit
    if spec.misfit.estimate_wavelet:
        reduce = ((lambda n, d: (n, d)) if comm is None else
                  (lambda n, d: (comm.allreduce(n), comm.allreduce(d))))
        misfit, estimator = spec.misfit.estimating(reduce)
    observed = plan.observed.get(event.name)
    return (lambda keep, traces: misfit.evaluate(
        traces, None if observed is None else observed[keep], dt)), estimator


def _write_estimated_wavelet(out: Path, event: Event, plan: JobPlan, estimate) -> str:
    """Rank 0: an event's estimated source time function (a Custom wavelet file) and its
    picture next to the wavelet it was simulated with."""
    times = plan.axis.times
    original = plan.wavelet(times)
    estimated = estimate.wavelet(original)
    rel = Path("events") / event.name / "wavelet.h5"
    write_wavelet_h5(out / rel, estimated, plan.axis.dt, plan.axis.start_time,
                     {"event": event.name, "kind": "estimated_wavelet"})
    plot_wavelets(times, original, estimated, out / rel.with_suffix(".png"),
                  f"event {event.name}: estimated source wavelet")
    return str(rel)


def _run_event(spec: JobSpec, plan: JobPlan, state: JobState, solver: WaveSolver, event: Event,
               gradients: bool, chunk: int | None, interval: int, progress: Progress,
               write_fields, label: str):
    """Collective: simulate one event (and its gradient); write its receivers (rank 0) and
    gradient. Returns (summary entry, forward s, adjoint s, gradient natural slices)."""
    mesh, axis = solver.mesh, plan.axis
    comm, root, out = mesh.comm, mesh.comm.rank == 0, Path(spec.output)
    n_receivers = len(event.receivers)
    comm.Barrier()
    recomputed = ((axis.n_steps - 1) // chunk) * chunk if gradients else 0
    progress.start(label, axis.n_steps * (2 if gradients else 1) + recomputed)
    entry = {"receivers": str(Path("events") / event.name / "receivers.h5")}
    adj, grad, checkpoints = 0.0, None, None
    if gradients:
        checkpoints = EventCheckpoints(
            mesh, out / "checkpoints" / f"{event.name}.h5",
            _checkpoint_settings(spec, event, plan, state, comm.size, interval, chunk), chunk,
            f"event {event.name}", checkpoint_bytes(mesh.n_global, -(-axis.n_steps // chunk),
                                                    n_receivers, axis.n_steps))
        try:
            local, misfit = _local_misfit(spec, plan, event, comm)
            lossy = spec.compression.lossy  # ZFP-compressed samples (or None: exact)
            result = solver.gradient(event, local, interval=interval, chunk=chunk,
                                     checkpoints=checkpoints,
                                     lossy=None if lossy is None else lossy.tolerance)
            keep, traces, fwd = result.receivers_kept, result.traces, result.forward_seconds
            adj = mesh.max(result.adjoint_seconds)
            entry["misfit"] = result.misfit
            grad = {p: mesh.to_natural(g) for p, g in result.gradient.items()}
            entry["gradient"] = write_fields(
                str(Path("events") / event.name / "gradient.h5"), grad, kernels=True,
                kind="raw_gradient", event=event.name, misfit=result.misfit,
                forward_wavefield_sampling_interval=interval)
        except FwimpiError:
            # agreed by every rank of the group: close the checkpoint file together now
            # (an open parallel file closed later by the garbage collector would hang)
            checkpoints.abandon()
            raise
    else:
        rec = solver.forward(event)
        keep, traces, fwd = rec.receivers_kept, rec.traces, rec.seconds
    fwd = mesh.max(fwd)
    traces = mesh.gather_rows(keep, traces, n_receivers)
    if checkpoints is not None:
        checkpoints.finish(traces, (n_receivers, axis.n_steps + 1))
    if root:
        if checkpoints is not None and checkpoints.reuse:
            log.info("%s: forward reused, adjoint %.3f s (chunks recomputed from "
                     "checkpoints)", label, adj)
        else:
            log.info("%s: forward %.3f s (%.1f M point-updates/s)%s", label, fwd,
                     plan.mesh.n_points * axis.n_steps / max(fwd, 1e-9) / 1e6,
                     f", adjoint {adj:.3f} s" if gradients else "")
        fields = {"phi": traces}
        if any("p" in r.fields for r in event.receivers):
            fields["p"] = np.asarray(traces @ pressure_operator(traces.shape[1], axis.dt).T)
        data = ReceiverData(fields, event.receiver_coordinates, axis.dt, axis.start_time,
                            event.stations)
        write_receivers_h5(out / entry["receivers"], {event.name: data},
                           {"fwimpi_version": __version__, "job": spec.name,
                            "job_spec": spec.resolved, "nprocs": comm.size, "kind": "receivers"})
        if spec.misfit is not None and not gradients:
            local, misfit = _local_misfit(spec, plan, event)
            entry["misfit"] = local(np.arange(n_receivers), traces)[0]
            if not math.isfinite(entry["misfit"]):
                raise NumericalError(f"event {event.name}: the misfit is not finite "
                                     f"({entry['misfit']})")
        if "misfit" in entry:
            log.info("%s: misfit %s = %.6e", label, spec.misfit.misfit_function,
                     entry["misfit"])
        if spec.misfit is not None and spec.misfit.estimate_wavelet:
            entry["wavelet"] = _write_estimated_wavelet(out, event, plan, misfit.last[0])
    entry = comm.bcast(entry, root=0)
    return entry, fwd, adj, grad
