"""``fwimpi invert``: a restartable full-waveform inversion (the ``inversion`` block).

Rank 0 runs the optimizer, a generator that yields the models it needs evaluated
(``fwimpi.inversion.optimize``); every rank takes part in each evaluation: rank 0 scatters
the model's natural slices, each rank sets them in the ``WaveSolver`` (mesh, decomposition,
time step and operators stay), and every event's misfit and raw gradient are computed and
gathered on rank 0, which maps them into the inversion space (``InversionSpace``: the
mapping's parameters, scaling and cutouts, optionally on a coarser mesh) and preconditions
them with the job's smoothing. Stages low-pass filter observed and synthetic traces in the
misfit (exact adjoint).

Restart: every event's evaluation is cached (``inversion/evaluations/``, keyed by the model's
content, the stage and the settings) and every accepted iterate writes its state last
(``inversion/iteration_<kkk>/state.npz``): a killed inversion, rerun, continues from the
last iterate, reusing the finished simulations, and produces the same iterates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import resource
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError, FwimpiError
from ..inversion.gradient import plan_chunks
from ..inversion.optimize import LBFGS, LineSearchFailed, iterate
from ..inversion.solver import ModelError, WaveSolver
from ..inversion.space import InversionSpace, SpaceError, coarse_mesh
from ..mesh.files import atomic_path, with_kernels, write_json_atomic, write_mesh_h5
from ..parallel.collective import decide_on_root, on_root
from ..parallel.distributed import DistributedMesh
from ..parallel.groups import EventGroups
from ..sem.misfits import FilteredMisfit
from ..sem.operators import assembled_sum
from ..sem.signals import ZeroPhaseLowpass, pressure_operator
from .plan import JobPlan, plan_job
from .plotting import plot_misfit_history, plot_model_pair, plot_trace_overlay
from .spec import JobSpec

log = logging.getLogger("fwimpi")

FOLDER = "inversion"


def run_inversion(spec: JobSpec, world, concurrent_events: int | None = None) -> dict | None:
    """Run the job's inversion on the ranks of ``world``, ``concurrent_events`` (default: the
    spec's) groups of ranks simulating events side by side. Collective on world. Returns the
    summary on rank 0 (None elsewhere)."""
    if spec.inversion is None:
        raise ConfigError("inversion: the job spec has no inversion block")
    count = concurrent_events or spec.concurrent_events
    if world.size % count:
        raise ConfigError(f"concurrent_events: {world.size} ranks cannot form {count} equal "
                          f"groups")
    ranks = world.size // count
    plan = decide_on_root(world, lambda: plan_job(spec, ranks, True, inversion=True))
    with EventGroups(world, ranks) as groups, DistributedMesh(groups.comm, plan.mesh) as mesh:
        try:
            solver = WaveSolver(mesh, plan.model(mesh.coordinates), plan.axis,
                                plan.wavelet, spec.simulation.absorbing,
                                top_boundary=spec.simulation.top_boundary)
        except ModelError as err:
            raise ConfigError(str(err)) from None
        driver = _Driver(spec, plan, groups, mesh, solver)
        try:
            return driver.run()
        finally:
            driver.close()


def settings_hash(spec: JobSpec, plan: JobPlan) -> str:
    """What the iterates depend on: the spec (less its output folder), the time axis and
    fwimpi's version."""
    resolved = {k: v for k, v in spec.resolved.items()
                if k not in ("output", "ranks_per_job", "site", "name", "concurrent_events",
                             "retries")}
    text = json.dumps([__version__, resolved, plan.axis.dt, plan.axis.n_steps,
                       plan.mesh.description()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


class _Driver:
    """Collective: the inversion loop. Rank 0 holds the optimizer; the others serve the
    evaluations it requests."""

    def __init__(self, spec: JobSpec, plan: JobPlan, groups: EventGroups, mesh: DistributedMesh,
                 solver: WaveSolver):
        self.spec, self.plan, self.mesh, self.solver = spec, plan, mesh, solver
        self.groups = groups
        self.comm = groups.world
        self.root = self.comm.rank == 0
        self.folder = Path(spec.output) / FOLDER
        self.inv = spec.inversion
        self.ranges = self.comm.gather(mesh.natural_range, root=0)  # per world rank
        self.interval = spec.compression.forward_wavefield_sampling_interval
        budget = spec.compression.memory_per_rank_in_mb * 2**20
        lossy = spec.compression.lossy
        self.lossy = None if lossy is None else lossy.tolerance  # ZFP tolerance, or exact
        self.chunk = plan_chunks(plan.axis.n_steps, self.interval, plan.max_local_points,
                                 budget, checkpoints_on_disk=False, lossy=self.lossy)
        self.settings = settings_hash(spec, plan)
        self.simulations = 0
        self.stopped = None
        self.space = on_root(self.comm, self._space)  # world rank 0 only

    def close(self) -> None:
        if self.space is not None:
            self.space.close()

    # ------------------------------------------------------------------ set-up (rank 0)

    def _space(self) -> InversionSpace:
        mesh, spec, inv = self.plan.mesh, self.spec, self.inv
        prior = self.plan.model(mesh.points)
        self.prior = prior
        mass = assembled_sum(mesh.ibool(), mesh.geometry().jw, mesh.n_points)
        self.mass = mass
        coarse = (None if inv.mesh_element_size_in_meters is None
                  else coarse_mesh(mesh.domain, inv.mesh_element_size_in_meters))
        smoothing = spec.smoothing if inv.preconditioner == "smoothing" else None
        try:
            return InversionSpace(spec.mapping(inv.mapping), prior, mesh.points, mesh.cells,
                                  mass, mesh.order, spec.events, inv.bounds, smoothing, coarse)
        except SpaceError as err:
            raise ConfigError(str(err)) from None

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict | None:
        """Collective: serve rank 0's requests until it is done; write the summary."""
        started = self.started = time.perf_counter()
        steps = self._optimize() if self.root else None
        result = None
        while True:
            def next_request(result=result):
                try:
                    return steps.send(result) if result is not None else next(steps)
                except StopIteration:
                    return None
            request = on_root(self.comm, next_request)  # the model stays on rank 0
            meta = self.comm.bcast(None if request is None else request[1:], root=0)
            if meta is None:
                break
            result = self._evaluate(request[0] if self.root else None, *meta)
        peak = self.groups.max_over_groups(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
        if not self.root:
            return None
        return self._summary(time.perf_counter() - started, peak)

    def _optimize(self):
        """Rank 0: the optimizer as a generator of evaluation requests ``(model, stage,
        label)``; it receives ``(misfit, raw gradients, traces of the first event)``."""
        space, inv = self.space, self.inv
        opt = LBFGS(space.lower, space.upper, space.weights, inv.memory, space.precondition)
        self.records, x, f, g, k, done_in_stage, stage = self._restart(opt)
        total = inv.iterations
        for s in range(stage, len(inv.stages)):
            iterations = inv.stages[s].iterations
            if s != stage or f is None:  # a new stage (or the start): the misfit at x
                opt.s.clear()  # curvature pairs of another misfit do not carry over
                opt.y.clear()
                f, g, traces = yield from self._request(x, s, f"iteration {k}")
                if not np.isfinite(f):
                    raise ConfigError("model: the starting model cannot be simulated at the "
                                      "inversion's time step")
                if k == 0 and not self.records:
                    self._accept(k, s, x, f, g, traces, opt, first=True)
                done_in_stage = 0
            while done_in_stage < iterations:
                label = f"iteration {k + 1} of {total} (stage {s + 1} of {len(inv.stages)})"
                update = iterate(opt, x, f, g, first=not opt.s)
                try:
                    trial = next(update)
                    while True:
                        ft, gt, tr = yield from self._request(trial, s, label)
                        self._trial_traces = tr
                        trial = update.send((ft, gt))
                except StopIteration as accepted:
                    step = accepted.value
                except LineSearchFailed as err:
                    log.warning("%s: %s; the inversion stops here", label, err)
                    self.stopped = str(err)
                    return
                k += 1
                done_in_stage += 1
                x, f, g = step.x, step.f, step.g
                log.info("%s: misfit %.6e (%.3g of the initial), step %.3g, %d trial(s)",
                         label, f, f / self.records[0]["misfit"], step.alpha, step.trials)
                self._accept(k, s, x, f, g, self._trial_traces, opt)

    def _request(self, x: np.ndarray, stage: int, label: str):
        """Ask for an evaluation of the inversion point ``x``; returns ``(f, dJ/dx,
        traces)`` (``f = inf`` for a model the solver refuses)."""
        model = self.space.model(x)
        f, raw, traces = yield (model, stage, label)
        if raw is None:
            return np.inf, None, None
        return f, self.space.gradient(raw, x), traces

    # ------------------------------------------------------------------ evaluation

    def _misfit(self, stage: int):
        misfit = self.spec.misfit.on_potential
        if self.spec.misfit.estimate_wavelet:  # per event, summed over the group's ranks
            comm = self.mesh.comm
            misfit, _ = self.spec.misfit.estimating(
                lambda n, d: (comm.allreduce(n), comm.allreduce(d)))
        fmax = self.inv.stages[stage].max_frequency_in_hertz
        if fmax is not None:
            misfit = FilteredMisfit(misfit, ZeroPhaseLowpass(fmax, self.plan.axis.dt))
        return misfit

    def _key(self, model: dict, stage: int, event: str) -> str:
        h = hashlib.sha256()
        for p in sorted(model):
            h.update(np.ascontiguousarray(model[p]).tobytes())
        h.update(json.dumps([self.settings, stage, event, self.interval]).encode())
        return h.hexdigest()[:24]

    def _evaluate(self, model: dict | None, stage: int, label: str):
        """Collective: the misfit and every event's raw gradient (natural order, rank 0) of
        ``model`` (given on rank 0)."""
        comm, mesh = self.comm, self.mesh
        if self.root:
            parts = [{p: v[lo:hi] for p, v in model.items()} for lo, hi in self.ranges]
        else:
            parts = None
        mine = comm.scatter(parts, root=0)
        local = {p: mesh.from_natural(v) for p, v in mine.items()}
        try:
            self.solver.set_model(local)
        except ModelError as err:
            if self.root:
                log.info("%s: trial model refused (%s)", label, err)
            return np.inf, None, None
        events = self.spec.events
        found = ([self._cached(self._key(model, stage, e.name)) for e in events]
                 if self.root else None)
        reused = decide_on_root(comm, lambda: [c is not None for c in found])
        pending = [i for i, r in enumerate(reused) if not r]
        misfit, dt = self._misfit(stage), self.plan.axis.dt
        groups = self.groups

        def task(n: int):
            """Event ``pending[n]`` on this group: (misfit, raw gradient, traces) on its
            leader."""
            i = pending[n]
            event = events[i]
            if groups.leader:
                log.info("%s, event %d of %d (%s) on group %d of %d", label, i + 1, len(events),
                         event.name, groups.index + 1, groups.count)
            observed = self.plan.observed[event.name]
            result = self.solver.gradient(
                event, lambda keep, tr: misfit.evaluate(tr, observed[keep], dt),
                interval=self.interval, chunk=self.chunk, lossy=self.lossy)
            gradient = {p: self._gather(mesh.to_natural(g)) for p, g in result.gradient.items()}
            traces = mesh.gather_rows(result.receivers_kept, result.traces, len(event.receivers))
            return result.misfit, gradient, traces

        computed = groups.gather_to_root(groups.run(len(pending), task))
        if not self.root:
            return None, None, None
        total, raw, first_traces = 0.0, {}, None
        for i, event in enumerate(events):
            if reused[i]:
                j, gradient, traces = found[i]
                log.info("%s, event %d of %d (%s): already computed; not run again", label,
                         i + 1, len(events), event.name)
            else:
                j, gradient, traces = computed[pending.index(i)]
                self.simulations += 1
                self._store(self._key(model, stage, event.name), j, gradient, traces)
            total += j
            raw[event.name] = gradient
            if i == 0:
                first_traces = traces
        return total, raw, first_traces

    def _gather(self, natural_slice: np.ndarray) -> np.ndarray | None:
        """A natural-order array from this group's slices, on the group's leader."""
        parts = self.mesh.comm.gather(natural_slice, root=0)
        return np.concatenate(parts) if self.groups.leader else None

    def _cache_path(self, key: str) -> Path:
        return self.folder / "evaluations" / f"{key}.npz"

    def _cached(self, key: str):
        """Rank 0: ``(misfit, raw gradient, traces)`` of a finished evaluation, or None."""
        path = self._cache_path(key)
        try:
            with np.load(path) as data:
                gradient = {p: data[f"gradient_{p}"] for p in self.prior}
                return float(data["misfit"]), gradient, data["traces"]
        except (OSError, KeyError, ValueError, EOFError):
            return None

    def _store(self, key: str, misfit: float, gradient: dict, traces: np.ndarray) -> None:
        path = self._cache_path(key)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, misfit=misfit, traces=traces,
                         **{f"gradient_{p}": v for p, v in gradient.items()})

    # ------------------------------------------------------------------ iterates (rank 0)

    def _iteration_folder(self, k: int) -> Path:
        return self.folder / f"iteration_{k:03d}"

    def _accept(self, k: int, stage: int, x, f, g, traces, opt: LBFGS, first=False) -> None:
        """Write iterate ``k``: its model, preconditioned gradient, plots and state."""
        folder = self._iteration_folder(k)
        mesh, space = self.plan.mesh, self.space
        model = space.model(x)
        attrs = {"fwimpi_version": __version__, "job": self.spec.name,
                 "job_spec": self.spec.resolved, "mesh": mesh.description(),
                 "dt": self.plan.axis.dt, "iteration": k, "stage": stage, "misfit": f}
        write_mesh_h5(folder / "model.h5", mesh.points, mesh.cells, self.mass,
                      {p: model[p] for p in self.prior}, {**attrs, "kind": "model",
                                                          "nprocs": self.comm.size})
        points, cells, weights, order = space.mesh_arrays
        kernel = g / space.weights
        preconditioned = space.precondition(kernel)
        fields = with_kernels(space.split(g), weights)
        fields.update({f"{p}_preconditioned": v for p, v in space.split(preconditioned).items()})
        on_space = {k: v for k, v in attrs.items() if k not in ("mesh", "dt")}  # not a model
        write_mesh_h5(folder / "gradient.h5", points, cells, weights, fields,
                      {**on_space, "kind": "inversion_gradient", "nprocs": self.comm.size})
        self.records.append({"iteration": k, "stage": stage, "misfit": f,
                             "model": str(Path(FOLDER) / folder.name / "model.h5"),
                             "gradient": str(Path(FOLDER) / folder.name / "gradient.h5"),
                             "simulations": self.simulations,
                             "seconds": time.perf_counter() - self.started})
        self.simulations = 0
        plots = self._plots(folder, k, stage, model, traces)
        self.records[-1]["plots"] = plots
        with atomic_path(folder / "state.npz") as tmp:  # last: the iterate is complete
            with open(tmp, "wb") as fh:
                np.savez(fh, x=x, f=f, g=g, k=k, stage=stage, settings=self.settings,
                         records=json.dumps(self.records), **opt.state())

    def _plots(self, folder: Path, k: int, stage: int, model: dict, traces) -> list[str]:
        out, mesh = Path(self.spec.output), self.plan.mesh
        box = tuple(v for b in mesh.domain.bounds for v in b)  # (x0, x1, y0, y1[, z0, z1])
        p = self.space.parameters[0]
        plot_model_pair(mesh.points, mesh.cells, mesh.order, self.prior[p], model[p], p, box,
                        folder / "model.png", f"iteration {k}, misfit {self.records[-1]['misfit']:.4g}")
        plot_misfit_history([r["misfit"] for r in self.records],
                            [r["stage"] for r in self.records], self.folder / "misfit.png")
        plots = [str((folder / "model.png").relative_to(out)),
                 str((self.folder / "misfit.png").relative_to(out))]
        if traces is not None:
            event = self.spec.events[0]
            observed = self.plan.observed[event.name]
            misfit = self._misfit(stage)
            show = (misfit.filter if isinstance(misfit, FilteredMisfit) else (lambda a: a))
            if self.spec.misfit.receiver_field == "p":  # compare pressure with pressure
                traces = np.asarray(traces @ pressure_operator(traces.shape[1],
                                                               self.plan.axis.dt).T)
            plot_trace_overlay(self.plan.axis.times, show(observed), show(traces),
                               event.receiver_coordinates, folder / "traces.png",
                               f"event {event.name}, iteration {k}")
            plots.append(str((folder / "traces.png").relative_to(out)))
        return plots

    def _restart(self, opt: LBFGS):
        """The last complete iterate of these settings: (records, x, f, g, k, updates done
        in its stage, its stage); a fresh start when there is none."""
        best = None
        for folder in sorted(self.folder.glob("iteration_*")):
            try:
                with np.load(folder / "state.npz") as data:
                    if str(data["settings"]) != self.settings:
                        continue
                    state = {key: data[key] for key in data.files}
            except (OSError, KeyError, ValueError, EOFError):
                continue
            if best is None or int(state["k"]) > int(best["k"]):
                best = state
        if best is None:
            return [], self.space.start(), None, None, 0, 0, 0
        records = json.loads(str(best["records"]))
        opt.restore(best)
        k, stage = int(best["k"]), int(best["stage"])
        done = sum(1 for r in records if r["stage"] == stage and r["iteration"] > 0)
        log.info("inversion: iterations 0 to %d of an earlier run reused; continuing", k)
        return (records, np.asarray(best["x"]), float(best["f"]), np.asarray(best["g"]), k,
                done, stage)

    # ------------------------------------------------------------------ the summary (rank 0)

    def _summary(self, seconds: float, peak: float) -> dict:
        out = Path(self.spec.output)
        records = self.records
        summary = {
            "job": self.spec.name, "model": records[0]["model"], "events": {},
            "mappings": {}, "smoothed": {},
            "plots": sorted({p for r in records for p in r.get("plots", [])}),
            "inversion": {"iterations": [{k: r[k] for k in ("iteration", "stage", "misfit",
                                                            "model", "simulations", "seconds")
                                          if k in r} for r in records],
                          "final_model": records[-1]["model"]},
            "simulation": {"ranks": self.comm.size, "ranks_per_job": self.groups.comm.size,
                           "concurrent_events": self.groups.count, **self.plan.describe(),
                           "inversion_seconds": seconds, "peak_memory_mb_per_rank": peak},
        }
        if self.stopped:
            summary["inversion"]["stopped"] = self.stopped
        write_json_atomic(out / "summary.json", summary)
        log.info("wrote %s", out / "summary.json")
        return summary
