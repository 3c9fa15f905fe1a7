"""Unit tests of the parallel layer on N ranks (tests/test_parallel_layer.py runs them on 3):

    mpirun -n 3 python -m mpi4py tests/mpi/parallel_units.py DIR

Each check compares a distributed result with the same quantity computed serially from the
whole mesh (every rank can: the mesh is small). A check never raises: it records a failure
and the collective calls go on in the same order on every rank; each test's failures are then
agreed with an ``allgather`` before anything is reported, so a failure on one rank never
leaves the others waiting. The agreement uses a communicator of its own, so it never mixes
with the tests' messages. An unexpected exception is printed at once (rank, test, traceback)
and recorded the same way; if it left the other ranks inside a collective, a watchdog ends the
run (``MPI_Abort``, status 2) after WATCHDOG_SECONDS instead of a hang. Rank 0 prints one
line per test and a summary line; every rank exits with status 1 if any check failed on any
rank.
"""

import json
import sys
import threading
import time
import traceback
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: problems.py

from fwimpi.errors import ConfigError, FwimpiError  # noqa: E402
from fwimpi.inversion.solver import ModelError, WaveSolver  # noqa: E402
from fwimpi.mesh.structured import Box, build_mesh  # noqa: E402
from fwimpi.parallel import checkpoints  # noqa: E402
from fwimpi.parallel.checkpoints import (CheckpointReader, CheckpointWriter,  # noqa: E402
                                         EventCheckpoints)
from fwimpi.parallel.distributed import DistributedMesh, decide_on_root  # noqa: E402
from fwimpi.sem.timestepper import State, TimeAxis  # noqa: E402
from fwimpi.sem.wavelets import Ricker  # noqa: E402
from problems import event, margins, stable_dt  # noqa: E402

WATCHDOG_SECONDS = 20.0

# 600 m x 600 m plus 100 m margins: 8 x 7 elements of order 3, 550 points. On 3 ranks the
# bisection cuts x first (3 | 5 columns), then the 5 x 7 block along y: points shared by two
# and by three ranks.
MESH = build_mesh(Box(0.0, 600.0, -600.0, 0.0), 100.0, 100.0, 3)
# natural-order test data: distinct, not integers
NATURAL = np.sin(np.arange(MESH.n_points) * 0.37) + np.arange(MESH.n_points) / 7.0


def model_a(points):
    y = np.minimum(points[:, 1], 0.0)
    return {"VP": 1500.0 - y, "RHO": 1000.0 - 0.5 * y}


def model_b(points):
    x, y = points[:, 0], np.minimum(points[:, 1], 0.0)
    return {"VP": 1600.0 - 0.8 * y + 50.0 * np.sin(x / 120.0), "RHO": 1100.0 - 0.3 * y}


class Checks:
    """Failures of one test on this rank."""

    def __init__(self):
        self.failures: list[str] = []
        self.notes: list[str] = []  # measured values, printed by rank 0

    def note(self, text: str) -> None:
        self.notes.append(text)

    def __call__(self, condition, message: str) -> bool:
        if not condition:
            self.failures.append(message)
        return bool(condition)

    def raises(self, cls, fn, match: str = "") -> BaseException | None:
        """Call ``fn``; record a failure unless it raises ``cls`` (a class or a tuple) with
        ``match`` in the text."""
        names = "/".join(c.__name__ for c in (cls if isinstance(cls, tuple) else (cls,)))
        try:
            fn()
        except cls as err:
            self(match in str(err), f"{type(err).__name__} without {match!r}: {err}")
            return err
        except Exception as err:  # noqa: BLE001 - recorded
            self.failures.append(f"expected {names}, got {type(err).__name__}: {err}")
            return err
        self.failures.append(f"expected {names}, nothing raised")
        return None


# --------------------------------------------------------------------------- tests


def test_halo_exchange(comm, dm, folder, check):
    # assemble: per element 1 at each of its points, summed over ranks = the number of
    # elements touching each point (computed serially from the whole mesh)
    multiplicity = np.bincount(MESH.ibool().ravel(), minlength=MESH.n_points).astype(float)
    local = np.bincount(dm.ibool.ravel(), minlength=dm.n_local).astype(float)
    dm.assemble(local)
    check(np.array_equal(local, multiplicity[dm.points]), "assemble: element multiplicity")
    # ones on each rank's points: the number of ranks touching each point
    part = dm.decomposition.part
    ranks = np.zeros(MESH.n_points)
    for r in range(comm.size):
        ranks[np.unique(MESH.ibool(np.flatnonzero(part == r)))] += 1
    ones = np.ones(dm.n_local)
    dm.assemble(ones)
    check(np.array_equal(ones, ranks[dm.points]), "assemble: ones -> ranks per point")
    shared = int(dm.sum(float((ones[: dm.n_owned] > 1).sum())))
    triple = int(dm.sum(float((ones[: dm.n_owned] > 2).sum())))
    check(comm.size == 1 or shared > 0, f"shared points: {shared}")
    check(comm.size < 3 or triple > 0, f"points shared by three ranks: {triple}")
    # assemble on the time loop's own buffer (no copy)
    work = dm.work
    work[:] = np.bincount(dm.ibool.ravel(), minlength=dm.n_local)
    dm.assemble(work)
    check(np.array_equal(dm.work, multiplicity[dm.points]), "assemble in place on work")
    # ghosts hold the owners' values only after the update
    # rank 0 owns every point it touches (the lowest rank owns); the others have ghosts
    check(dm.n_owned < dm.n_local if comm.rank > 0 else dm.n_owned == dm.n_local,
          f"ghosts: {dm.n_local - dm.n_owned} on rank {comm.rank}")
    values = NATURAL[dm.points].copy()
    values[dm.n_owned:] = -1.0
    dm.update_ghosts(values)
    check(np.array_equal(values, NATURAL[dm.points]), "update_ghosts: ghosts = owners' values")
    # ownership: every point owned by exactly one rank, the lowest touching it
    owned = np.zeros(MESH.n_points)
    owned[dm.points[: dm.n_owned]] = 1
    owned = comm.allreduce(owned, op=MPI.SUM)
    check(np.array_equal(owned, np.ones(MESH.n_points)), "every point owned once")
    check(dm.n_global == MESH.n_points and dm.sum(dm.n_owned) == MESH.n_points, "sizes")


def test_weights_equal_the_serial_weights(comm, dm, folder, check):
    with DistributedMesh(MPI.COMM_SELF, MESH) as serial:
        expected = np.empty(MESH.n_points)
        expected[serial.points] = serial.weights
    check(np.allclose(dm.weights, expected[dm.points], rtol=1e-14, atol=0),
          "assembled quadrature weights = the 1-rank ones")


def test_natural_order_round_trip(comm, dm, folder, check):
    lo, hi = dm.natural_range
    ranges = comm.allgather((lo, hi))
    check(ranges[0][0] == 0 and ranges[-1][1] == MESH.n_points
          and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])),
          f"natural ranges tile the points: {ranges}")
    got = dm.to_natural(NATURAL[dm.points])
    check(np.array_equal(got, NATURAL[lo:hi]), "to_natural = the serial natural slice")
    back = dm.from_natural(NATURAL[lo:hi])
    check(back.shape == (dm.n_local,) and np.array_equal(back, NATURAL[dm.points]),
          "from_natural (ghosts filled) = the serial array at the local points")
    # only the owned entries count: garbage in the ghosts does not reach the file order
    dirty = NATURAL[dm.points].copy()
    dirty[dm.n_owned:] = np.nan
    check(np.array_equal(dm.to_natural(dirty), NATURAL[lo:hi]), "to_natural ignores ghosts")


def test_reductions(comm, dm, folder, check):
    r, n = comm.rank, comm.size
    check(dm.sum(r + 1.0) == n * (n + 1) / 2, "sum")
    check(dm.max(float(r)) == n - 1 and dm.min(float(r)) == 0, "max, min")
    check(dm.all(True) and not dm.all(r != n - 1), "all")
    check(dm.bcast({"rank": r}, root=n - 1) == {"rank": n - 1}, "bcast")


def test_decide_on_root(comm, dm, folder, check):
    calls = []

    def step():
        calls.append(comm.rank)
        return {"from": comm.rank, "plan": [1, 2, 3]}

    check(decide_on_root(comm, step) == {"from": 0, "plan": [1, 2, 3]}, "result of rank 0")
    check(comm.allgather(len(calls)) == [1] + [0] * (comm.size - 1), "run on rank 0 only")

    def bad():
        raise ConfigError("ranks_per_job: must be 1..4, got 7")

    err = check.raises(ConfigError, lambda: decide_on_root(comm, bad),
                       "ranks_per_job: must be 1..4, got 7")
    check(err is None or str(err) == "ranks_per_job: must be 1..4, got 7",
          f"the same message on every rank: {err}")

    def broken():
        raise KeyError("plan")

    # not an FwimpiError: the others raise an FwimpiError naming it (rank 0 raises the
    # KeyError itself today; an FwimpiError there would be as good)
    expected = (KeyError, FwimpiError) if comm.rank == 0 else FwimpiError
    err = check.raises(expected, lambda: decide_on_root(comm, broken), "plan")
    check(comm.rank == 0 or "KeyError" in str(err), f"the others name the error type: {err}")


def test_agree_and_on_root(comm, dm, folder, check):
    dm.agree(None)  # nobody failed: nothing raised
    last = comm.size - 1
    mine = ConfigError(f"field: bad value on rank {last}") if comm.rank == last else None
    err = check.raises(ConfigError, lambda: dm.agree(mine), f"field: bad value on rank {last}")
    check(comm.rank != last or err is mine, "the failing rank raises its own error")

    def root_step():
        raise ConfigError("output: cannot write")

    check.raises(ConfigError, lambda: dm.on_root(root_step), "output: cannot write")
    check(dm.on_root(lambda: 42) == (42 if comm.rank == 0 else None), "on_root result")


def test_point_sampling_and_gather_rows(comm, dm, folder, check):
    # element corners, edges shared by ranks, GLL points and interior points
    ext = MESH.extended
    xs = np.concatenate((np.linspace(ext.x0, ext.x1, 17), [150.0, 233.3, 412.0]))
    ys = np.concatenate((np.linspace(ext.y0, ext.y1, 15), [-310.0, -0.0]))
    xy = np.array([(x, y) for x in xs for y in ys])
    keep, sampling = dm.point_sampling(xy)
    counts = np.bincount(np.concatenate(comm.allgather(keep)), minlength=len(xy))
    check(np.array_equal(counts, np.ones(len(xy))), "every point kept by exactly one rank "
                                                    f"(counts {np.unique(counts)})")
    # the element polynomial interpolates a bilinear field exactly
    field = 2.0 + MESH.points[dm.points, 0] / 300.0 - MESH.points[dm.points, 1] / 700.0 \
        + MESH.points[dm.points, 0] * MESH.points[dm.points, 1] / 1e5
    rows = np.einsum("rk,rk->r", sampling.weights, field[sampling.indices])
    rows2 = np.column_stack((rows, -rows))
    gathered = dm.gather_rows(keep, rows2, len(xy))
    if comm.rank == 0:
        exact = 2.0 + xy[:, 0] / 300.0 - xy[:, 1] / 700.0 + xy[:, 0] * xy[:, 1] / 1e5
        check(gathered.shape == (len(xy), 2), f"gathered shape {gathered.shape}")
        check(np.allclose(gathered[:, 0], exact, rtol=1e-13, atol=0)
              and np.array_equal(gathered[:, 1], -gathered[:, 0]),
              "gather_rows puts each rank's rows at their indices")
    else:
        check(gathered is None, "gather_rows: None off rank 0")
    # a row held by several ranks, or by none, is an error (raised on rank 0, which
    # assembles): every rank holds row 0, none row 1
    def held_wrong():
        return dm.gather_rows(np.array([0]), np.ones((1, 2)), 2)

    if comm.rank == 0:
        check.raises(FwimpiError, held_wrong, "exactly one rank")
    else:
        check(held_wrong() is None, "None off rank 0")


def owned_values(dm, step):
    return NATURAL[dm.points] * (1.0 + step), np.cos(NATURAL[dm.points]) + step


def test_checkpoint_writer_and_reader(comm, dm, folder, check):
    path = folder / "states.h5"
    settings = {"model": "a", "ranks_per_job": comm.size}
    writer = CheckpointWriter(comm, path, dm.offset, dm.n_owned, dm.n_global, settings)
    steps = (0, 7, 14)
    for step in steps:
        u, u_old = owned_values(dm, step)
        writer.save(step, u, u_old)
    traces = np.arange(12.0).reshape(3, 4) if comm.rank == 0 else None
    writer.commit(traces, (3, 4))
    check(decide_on_root(comm, path.is_file), "committed file in place")
    check(decide_on_root(comm, lambda: checkpoints.stored_settings(path)) == settings,
          "settings stored")
    reader = CheckpointReader(comm, path, dm.offset, dm.n_owned)
    if hasattr(reader, "verify"):
        damage = reader.verify()
        check(damage is None, f"verify: {damage}")
    check(list(reader.steps) == list(steps), f"steps {reader.steps}")
    for step in steps:
        u, u_old = owned_values(dm, step)
        got_u, got_old = reader.load(step)
        check(np.array_equal(got_u, u[: dm.n_owned]) and np.array_equal(got_old, u_old[: dm.n_owned]),
              f"load({step}) = the owned values saved")
    check(np.array_equal(reader.traces(), np.arange(12.0).reshape(3, 4)), "traces")
    reader.close()


def test_event_checkpoints_reuse_decision(comm, dm, folder, check):
    path = folder / "event.h5"
    settings = {"model": "a", "event": "ev", "ranks_per_job": comm.size}
    first = EventCheckpoints(dm, path, settings, 5, "event ev")
    check(comm.allgather(first.reuse) == [False] * comm.size, "no file: written")
    for step in (0, 5):
        u, u_old = owned_values(dm, step)
        first.save(step, State(step, u, u_old))
    traces = np.linspace(0.0, 1.0, 6).reshape(2, 3)
    first.finish(traces if comm.rank == 0 else None, (2, 3))

    again = EventCheckpoints(dm, path, settings, 5, "event ev")
    check(comm.allgather(again.reuse) == [True] * comm.size, "same settings: reused everywhere")
    check(again.traces is not None and np.array_equal(again.traces, traces), "stored traces")
    state = again.load(5)
    u, u_old = owned_values(dm, 5)
    check(np.array_equal(state.u, u) and np.array_equal(state.u_old, u_old),
          "load: local states, ghosts filled")
    again.finish(None, (2, 3))

    # Decided on rank 0: the other ranks' view of the file does not matter.
    real = checkpoints.stored_settings
    if comm.rank != 0:
        checkpoints.stored_settings = lambda p: None
    try:
        blind = EventCheckpoints(dm, path, settings, 5, "event ev")
    finally:
        checkpoints.stored_settings = real
    check(comm.allgather(blind.reuse) == [True] * comm.size, "rank 0's decision everywhere")
    blind.finish(None, (2, 3))

    other = EventCheckpoints(dm, path, {**settings, "model": "b"}, 5, "event ev")
    check(comm.allgather(other.reuse) == [False] * comm.size, "other settings: not reused")
    other.abandon()
    check(decide_on_root(comm, lambda: checkpoints.stored_settings(path)) == settings,
          "an abandoned rewrite leaves the old file")


def test_write_and_read_fields(comm, dm, folder, check):
    import h5py

    lo, hi = dm.natural_range
    path = folder / "fields.h5"
    fields = {"VP": NATURAL[lo:hi], "RHO": 2.0 * NATURAL[lo:hi] + 1.0}
    dm.write_fields(path, fields, {"kind": "model", "job": "units"})
    got = dm.read_fields(path)
    check(sorted(got) == ["RHO", "VP"] and all(np.array_equal(got[k], v) for k, v in fields.items()),
          "read_fields = the slices written")

    def whole():
        with h5py.File(path, "r") as f:
            return (int(f.attrs["nprocs"]), f["fields/VP"][...], f["mesh/points"][...],
                    f["mesh/mass"][...])

    nprocs, vp, points, mass = decide_on_root(comm, whole)
    check(nprocs == comm.size, f"nprocs {nprocs}")
    check(np.array_equal(vp, NATURAL), "the file holds the natural order")
    check(np.array_equal(points, MESH.points), "mesh points in natural order")
    check(np.allclose(mass[dm.points], dm.weights, rtol=1e-14, atol=0), "mass = the weights")


def gathered_traces(dm, solver, ev):
    rec = solver.forward(ev)
    return dm.gather_rows(rec.receivers_kept, rec.traces, len(ev.receivers))


def test_wave_solver_set_model(comm, dm, folder, check):
    dt = 0.5 * min(stable_dt(MESH, model_a), stable_dt(MESH, model_b))
    axis = TimeAxis(dt, 150)
    # receivers on rank interfaces and element edges
    ev = event([(250.0, -350.0)], [(x, -300.0) for x in np.linspace(0.0, 600.0, 7)]
               + [(200.0, 0.0), (200.0, -450.0)])
    absorbing = margins(100.0, 2000.0)

    def fresh(model):
        return WaveSolver(dm, model(dm.coordinates), axis, Ricker(6.0), absorbing)

    solver = fresh(model_a)
    t_a = gathered_traces(dm, solver, ev)
    solver.set_model(model_b(dm.coordinates))
    t_set = gathered_traces(dm, solver, ev)
    t_b = gathered_traces(dm, fresh(model_b), ev)
    # an unstable model is refused on every rank and leaves the solver as it was
    fast = {k: 10.0 * v if k == "VP" else v for k, v in model_b(dm.coordinates).items()}
    check.raises(ModelError, lambda: solver.set_model(fast), "stability limit")
    t_kept = gathered_traces(dm, solver, ev)
    if comm.rank == 0:
        scale = np.abs(t_b).max()
        check(scale > 0, "traces are not zero")
        check(np.abs(t_a - t_b).max() > 1e-3 * scale, "the two models give different traces")
        check.note(f"set_model vs fresh solver: max |difference| / max |trace| = "
                   f"{np.abs(t_set - t_b).max() / scale:.1e}")
        check(np.allclose(t_set, t_b, rtol=0, atol=1e-14 * scale),
              f"set_model = a fresh solver: {np.abs(t_set - t_b).max() / scale:.1e}")
        check(np.array_equal(t_kept, t_set), "a refused model changes nothing")
        # and the same as one rank
        with DistributedMesh(MPI.COMM_SELF, MESH) as serial:
            one = WaveSolver(serial, model_b(serial.coordinates), axis, Ricker(6.0), absorbing)
            t_one = one.forward(ev).traces
        check.note(f"{comm.size} ranks vs 1 rank: relative L2 difference "
                   f"{np.linalg.norm(t_b - t_one) / np.linalg.norm(t_one):.1e}")
        check(np.linalg.norm(t_b - t_one) <= 1e-12 * np.linalg.norm(t_one),
              f"{comm.size} ranks = 1 rank: {np.linalg.norm(t_b - t_one) / np.linalg.norm(t_one):.1e}")


TESTS = [test_halo_exchange, test_weights_equal_the_serial_weights,
         test_natural_order_round_trip, test_reductions, test_decide_on_root,
         test_agree_and_on_root, test_point_sampling_and_gather_rows,
         test_checkpoint_writer_and_reader, test_event_checkpoints_reuse_decision,
         test_write_and_read_fields, test_wave_solver_set_model]


# --------------------------------------------------------------------------- runner


def main() -> int:
    comm = MPI.COMM_WORLD.Dup()  # the tests' communicator
    agreement = MPI.COMM_WORLD.Dup()  # only the runner's allgathers
    folder = Path(sys.argv[1])
    current = {"test": "setting up"}

    def expire():
        print(f"parallel_units: rank {comm.rank} stuck in {current['test']} after "
              f"{WATCHDOG_SECONDS:g} s; aborting", file=sys.stderr, flush=True)
        comm.Abort(2)

    results = []
    dm = DistributedMesh(comm, MESH)
    for test in TESTS:
        current["test"] = test.__name__
        timer = threading.Timer(WATCHDOG_SECONDS, expire)
        timer.daemon = True
        timer.start()
        check = Checks()
        start = time.perf_counter()
        try:
            test(comm, dm, folder, check)
        except Exception as err:  # noqa: BLE001 - recorded, agreed below
            text = traceback.format_exc(limit=-3)
            print(f"parallel_units: rank {comm.rank}, {test.__name__}: {text}", file=sys.stderr,
                  flush=True)
            check.failures.append(f"{type(err).__name__}: {err}")
        failures = agreement.allgather(check.failures)
        timer.cancel()
        results.append((test.__name__, failures, time.perf_counter() - start, check.notes))
    dm.destroy()
    failed = [name for name, failures, _, _ in results if any(failures)]
    if comm.rank == 0:
        for name, failures, seconds, notes in results:
            print(f"{'FAIL' if any(failures) else 'ok  '} {name} ({seconds:.2f} s)")
            for note in notes:
                print(f"     {note}")
            for rank, messages in enumerate(failures):
                for message in messages:
                    print(f"     rank {rank}: {message}")
        print(f"parallel_units: {len(results) - len(failed)} passed, {len(failed)} failed "
              f"on {comm.size} ranks" + (f": {', '.join(failed)}" if failed else ""), flush=True)
        (folder / "summary.json").write_text(json.dumps(
            {"ranks": comm.size, "passed": [n for n, *_ in results if n not in failed],
             "failed": failed}))
    agreement.Barrier()
    comm.Free()
    agreement.Free()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
