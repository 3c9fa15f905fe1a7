"""The parallel layer on a 3D mesh, on N ranks (tests/test_parallel3d.py runs it on 1 to 4):

    mpirun -n N python -m mpi4py tests/mpi/parallel3d.py DIR

Each check compares a distributed result with the same quantity computed serially from the
whole mesh (every rank can: the mesh is small). As in ``parallel_units.py`` a check never
raises: failures are recorded, the collective calls go on in the same order on every rank,
and each test's failures are agreed with an ``allgather`` on a communicator of its own; a
watchdog ends a stuck run (``MPI_Abort``, status 2). Rank 0 writes ``DIR/summary.json``
(passed and failed tests, measured figures); ``DIR/mesh3d.h5`` is the mesh file written by
``DistributedMesh.write_fields`` on N ranks, for the caller to compare across rank counts.
Every rank exits with status 1 if any check failed on any rank.
"""

import json
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from mpi4py import MPI

from fwimpi.mesh.files import read_mesh_h5, write_mesh_h5
from fwimpi.mesh.structured3d import Box3, build_mesh3d
from fwimpi.parallel.checkpoints import EventCheckpoints
from fwimpi.parallel.distributed import DistributedMesh
from fwimpi.sem.operators import AcousticStiffness, assembled_sum
from fwimpi.sem.timestepper import State

WATCHDOG_SECONDS = 30.0

# 300 x 200 x 200 m plus 100 m margins: 5 x 4 x 3 elements of order 2, 11 x 9 x 7 = 693
# points. On 3 and 4 ranks points are shared by three and more ranks (edges and corners).
MESH = build_mesh3d(Box3(0.0, 300.0, 0.0, 200.0, -200.0, 0.0), 100.0, 100.0, 2)
INDEX = np.arange(MESH.n_points)
NATURAL = np.sin(INDEX * 0.37) + INDEX / 7.0  # distinct, not integers
M1 = 1.0 + 0.5 * np.cos(INDEX * 0.11)  # 1/rho, varying


class Checks:
    """Failures and measured figures of one test on this rank."""

    def __init__(self):
        self.failures: list[str] = []
        self.figures: dict[str, float] = {}

    def __call__(self, condition, message: str) -> bool:
        if not condition:
            self.failures.append(message)
        return bool(condition)


def relative(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


# --------------------------------------------------------------------------- tests


def test_ownership_and_numbering(comm, dm, folder, check):
    dec = dm.decomposition
    owned = np.zeros(MESH.n_points)
    owned[dm.points[: dm.n_owned]] = 1
    owned = comm.allreduce(owned, op=MPI.SUM)
    check(np.array_equal(owned, np.ones(MESH.n_points)), "every point owned once")
    # the owner is the lowest rank among those whose elements touch the point
    lowest = np.full(MESH.n_points, comm.size)
    ib = MESH.ibool().reshape(MESH.n_elements, -1)
    np.minimum.at(lowest, ib, np.repeat(dec.part[:, None], ib.shape[1], axis=1))
    check(np.array_equal(dec.owner, lowest), "owner = lowest touching rank")
    # PETSc: rank r owns offsets[r]:offsets[r+1], its points in natural order within
    ranges = comm.allgather((dm.offset, dm.offset + dm.n_owned))
    check(ranges[0][0] == 0 and ranges[-1][1] == MESH.n_points
          and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])),
          f"PETSc ranges contiguous in rank order: {ranges}")
    mine = dm.points[: dm.n_owned]
    check(np.array_equal(dec.petsc[mine], np.arange(*ranges[comm.rank])),
          "owned points numbered offset.. in order")
    check(np.all(np.diff(mine) > 0), "owned points in natural order")
    check(np.array_equal(np.unique(MESH.ibool(dm.elements)), np.sort(dm.points)),
          "local points = the points of the local elements")
    check(dm.ibool.shape == (len(dm.elements), 3, 3, 3)
          and np.array_equal(dm.points[dm.ibool], MESH.ibool(dm.elements)),
          "local ibool (E, n, n, n) maps to the mesh's points")
    elements = np.concatenate(comm.allgather(dm.elements))
    check(np.array_equal(np.sort(elements), np.arange(MESH.n_elements)),
          "every element on one rank")
    # halo: element multiplicity of each point, assembled over ranks
    multiplicity = np.bincount(ib.ravel(), minlength=MESH.n_points).astype(float)
    local = np.bincount(dm.ibool.ravel(), minlength=dm.n_local).astype(float)
    dm.assemble(local)
    check(np.array_equal(local, multiplicity[dm.points]), "assemble: element multiplicity")
    ones = np.ones(dm.n_local)
    dm.assemble(ones)
    shared = int(dm.max(float(ones.max())))
    check.figures["most ranks sharing a point"] = shared
    check(comm.size < 3 or shared >= 3, f"points shared by >= 3 ranks: {shared}")
    values = NATURAL[dm.points].copy()
    values[dm.n_owned:] = -1.0
    dm.update_ghosts(values)
    check(np.array_equal(values, NATURAL[dm.points]), "update_ghosts: owners' values")


def test_weights_and_stiffness(comm, dm, folder, check):
    geometry = MESH.geometry()
    ib = MESH.ibool()
    serial_w = assembled_sum(ib, geometry.jw, MESH.n_points)
    err = relative(dm.weights, serial_w[dm.points])
    check.figures["weights: max relative difference"] = dm.max(err)
    check(err <= 1e-12, f"assembled weights = serial: {err:.1e}")
    volume = dm.sum(float(dm.weights[: dm.n_owned].sum()))
    box = np.prod([hi - lo for lo, hi in MESH.extended.bounds])
    check(abs(volume - box) <= 1e-12 * box, f"sum of weights = volume: {volume} vs {box}")
    serial_k = AcousticStiffness(geometry, ib, M1).apply(NATURAL)
    k = AcousticStiffness(dm.geometry, dm.ibool, M1[dm.points]).apply(NATURAL[dm.points])
    dm.assemble(k)
    err = relative(k, serial_k[dm.points])
    check.figures["K u: max relative difference"] = dm.max(err)
    check(err <= 1e-12, f"halo-assembled K u = serial K u: {err:.1e}")


def test_natural_order(comm, dm, folder, check):
    lo, hi = dm.natural_range
    ranges = comm.allgather((lo, hi))
    check(ranges[0][0] == 0 and ranges[-1][1] == MESH.n_points
          and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])),
          f"natural ranges tile the points: {ranges}")
    check(np.array_equal(dm.to_natural(NATURAL[dm.points]), NATURAL[lo:hi]), "to_natural")
    check(np.array_equal(dm.from_natural(NATURAL[lo:hi]), NATURAL[dm.points]),
          "from_natural (ghosts filled)")


def test_point_sampling(comm, dm, folder, check):
    ext = MESH.extended
    # element corners, edges and faces shared by ranks, and interior points
    axes = [np.concatenate((np.linspace(lo, hi, 6), [lo + 0.37 * (hi - lo)]))
            for lo, hi in ext.bounds]
    xyz = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    keep, sampling = dm.point_sampling(xyz)
    counts = np.bincount(np.concatenate(comm.allgather(keep)), minlength=len(xyz))
    check(np.array_equal(counts, np.ones(len(xyz))), "every point kept by exactly one rank")
    check(sampling.indices.shape == (len(keep), 27) and sampling.weights.shape == (len(keep), 27),
          f"rows of (order+1)^3: {sampling.indices.shape}, {sampling.weights.shape}")

    def trilinear(p):
        return 2.0 + p[:, 0] / 300.0 - p[:, 1] / 700.0 + p[:, 2] / 500.0 \
            + p[:, 0] * p[:, 1] * p[:, 2] / 1e7

    field = trilinear(dm.coordinates)
    rows = np.einsum("rk,rk->r", sampling.weights, field[sampling.indices])
    gathered = dm.gather_rows(keep, rows, len(xyz))
    if comm.rank == 0:
        err = relative(gathered, trilinear(xyz))
        check.figures["trilinear field at points: max relative error"] = err
        check(err <= 1e-13, f"sampling interpolates a trilinear field exactly: {err:.1e}")


def test_mesh_file(comm, dm, folder, check):
    lo, hi = dm.natural_range
    path = folder / "mesh3d.h5"
    fields = {"VP": 1500.0 + NATURAL[lo:hi], "RHO": 2.0 * NATURAL[lo:hi] + 1.0}
    dm.write_fields(path, fields, {"kind": "model", "job": "parallel3d"}, kernels=True)
    got = dm.read_fields(path)
    check(sorted(got) == ["RHO", "VP"]
          and all(np.array_equal(got[k], v) for k, v in fields.items()),
          "read_fields = the slices written (kernels left out)")
    if comm.rank != 0:
        return
    f = read_mesh_h5(path)
    check(f.dim == 3 and f.order == MESH.order, f"dim {f.dim}, order {f.order}")
    check(np.array_equal(f.points, MESH.points) and np.array_equal(f.cells, MESH.cells),
          "points (P, 3) and cells (E, (N+1)^3) in natural order")
    check(np.array_equal(f.fields["VP"], 1500.0 + NATURAL), "fields in natural order")
    serial_w = assembled_sum(MESH.ibool(), MESH.geometry().jw, MESH.n_points)
    check(np.allclose(f.mass, serial_w, rtol=1e-13, atol=0), "mass = the serial weights")
    check(np.allclose(f.fields["VP_kernel"], f.fields["VP"] / f.mass, rtol=1e-15, atol=0),
          "kernel = field / mass")
    # the same content as the serial writer's file of the whole arrays
    serial = folder / "serial3d.h5"
    write_mesh_h5(serial, MESH.points, MESH.cells, f.mass, f.fields, {"kind": "model"})
    import h5py

    with h5py.File(path, "r") as a, h5py.File(serial, "r") as b:
        names = sorted(k for g in ("mesh", "fields") for k in (f"{g}/{n}" for n in a[g]))
        check(names == sorted(k for g in ("mesh", "fields") for k in (f"{g}/{n}" for n in b[g])),
              f"datasets: {names}")
        check(all(np.array_equal(a[n][...], b[n][...]) for n in names),
              "every dataset equals the serial writer's")
        check("mesh/hexes" in a and "mesh/quads" not in a
              and a["mesh/hexes"].shape == (MESH.n_elements * 8, 8),
              "sub-hexahedra (E*N^3, 8)")
        check(int(a.attrs["nprocs"]) == comm.size, "nprocs")
    root = ET.parse(path.with_suffix(".xdmf")).getroot()
    topology = root.find("Domain/Grid/Topology")
    geometry = root.find("Domain/Grid/Geometry")
    check(topology.get("TopologyType") == "Hexahedron"
          and topology.get("NumberOfElements") == str(MESH.n_elements * 8)
          and topology.find("DataItem").get("Dimensions") == f"{MESH.n_elements * 8} 8"
          and geometry.get("GeometryType") == "XYZ"
          and geometry.find("DataItem").get("Dimensions") == f"{MESH.n_points} 3",
          "XDMF: hexahedra on XYZ points")


def test_checkpoints(comm, dm, folder, check):
    path = folder / "event.h5"
    settings = {"model": "a", "event": "ev", "ranks_per_job": comm.size}
    first = EventCheckpoints(dm, path, settings, 5, "event ev")
    for step in (0, 5):
        first.save(step, State(step, NATURAL[dm.points] * (1.0 + step), M1[dm.points] + step))
    first.finish(np.ones((2, 3)) if comm.rank == 0 else None, (2, 3))
    again = EventCheckpoints(dm, path, settings, 5, "event ev")
    check(comm.allgather(again.reuse) == [True] * comm.size, "same settings: reused")
    state = again.load(5)
    check(np.array_equal(state.u, NATURAL[dm.points] * 6.0)
          and np.array_equal(state.u_old, M1[dm.points] + 5),
          "load: the local states saved, ghosts filled")
    again.finish(None, (2, 3))


TESTS = (test_ownership_and_numbering, test_weights_and_stiffness, test_natural_order,
         test_point_sampling, test_mesh_file, test_checkpoints)


# --------------------------------------------------------------------------- runner


def main() -> int:
    comm = MPI.COMM_WORLD.Dup()  # the tests' communicator
    agreement = MPI.COMM_WORLD.Dup()  # only the runner's allgathers
    folder = Path(sys.argv[1])
    current = {"test": "setting up"}

    def expire():
        print(f"parallel3d: rank {comm.rank} stuck in {current['test']} after "
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
            print(f"parallel3d: rank {comm.rank}, {test.__name__}: "
                  f"{traceback.format_exc(limit=-3)}", file=sys.stderr, flush=True)
            check.failures.append(f"{type(err).__name__}: {err}")
        failures = agreement.allgather(check.failures)
        timer.cancel()
        results.append((test.__name__, failures, time.perf_counter() - start, check.figures))
    dm.destroy()
    failed = [name for name, failures, _, _ in results if any(failures)]
    if comm.rank == 0:
        for name, failures, seconds, figures in results:
            print(f"{'FAIL' if any(failures) else 'ok  '} {name} ({seconds:.2f} s) {figures}")
            for rank, messages in enumerate(failures):
                for message in messages:
                    print(f"     rank {rank}: {message}")
        print(f"parallel3d: {len(results) - len(failed)} passed, {len(failed)} failed on "
              f"{comm.size} ranks", flush=True)
        (folder / "summary.json").write_text(json.dumps(
            {"ranks": comm.size, "passed": [n for n, *_ in results if n not in failed],
             "failed": failed, "figures": {n: f for n, _, _, f in results}}))
    agreement.Barrier()
    comm.Free()
    agreement.Free()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
