"""Rank-parallel mesh files, run under MPI (tests/test_parallel_h5.py launches it):

    mpirun -n N python -m mpi4py tests/mpi/h5io_roundtrip.py MODE DIR

MODE ``write``: write ``DIR/mesh_np{N}.h5`` (block_range slices) and ``DIR/mesh_np{N}_uneven.h5``
(rank 0 owns nothing); ``read``: read ``DIR/mesh_np4.h5`` with both splits and check the slices;
``fail``: rank 1 passes a field one value short; ``fail-io``: rank 1 fails after its
writes (an I/O error before the rename); both record which error each rank raised in
``DIR/raised.json`` before re-raising. Checks are agreed with an allgather, so every rank raises
the same error and nothing hangs.
"""

import json
import sys
from pathlib import Path

import numpy as np

from fwimpi.parallel import h5io

NX, NY, ORDER = 5, 3, 3
ATTRS = {"kind": "model", "misfit": 1.25, "n_steps": 3, "smoothed": False,
         "config": {"VP": [1.0, 2.0], "name": "x"}, "parameters": ["VP", "RHO"]}


def build_mesh():
    """Points (P, 2), cells (E, (N+1)**2), mass (P,), fields: 5 x 3 elements of order 3."""
    gx, gy = NX * ORDER + 1, NY * ORDER + 1
    x, y = np.meshgrid(np.linspace(0.0, 5.0, gx), np.linspace(-3.0, 0.0, gy))
    points = np.column_stack([x.ravel(), y.ravel()])  # global index ix + gx * iy
    i, j = (a.ravel() for a in np.meshgrid(np.arange(ORDER + 1), np.arange(ORDER + 1)))
    cells = np.array([ex * ORDER + i + gx * (ey * ORDER + j)
                      for ey in range(NY) for ex in range(NX)], dtype=np.int64)
    index = np.arange(len(points))
    mass = 1.0 + (index % 7) / 8.0
    fields = {"VP": 1500.0 - 100.0 * y.ravel() + 0.1 * x.ravel(), "RHO": np.sin(index) + 2000.0,
              "kernel": np.cos(0.37 * index) / 3.0}
    return points, cells, mass, fields


def uneven_range(n, comm):
    """Rank 0 owns nothing; the others split ``n`` in blocks."""
    if comm.size == 1:
        return 0, n
    q, r = divmod(n, comm.size - 1)
    k = comm.rank - 1
    lo = 0 if comm.rank == 0 else k * q + min(k, r)
    return (0, 0) if comm.rank == 0 else (lo, lo + q + (k < r))


def agree(comm, failure):
    """Raise the same AssertionError on every rank if any rank reports a failure."""
    failures = [f"rank {r}: {f}" for r, f in enumerate(comm.allgather(failure)) if f]
    if failures:
        raise AssertionError("; ".join(failures))


def write(comm, path, split, fields_edit=None):
    points, cells, mass, fields = build_mesh()
    lo, hi = split(len(points), comm)
    elo, ehi = split(len(cells), comm)
    mine = {k: v[lo:hi] for k, v in fields.items()}
    if fields_edit:
        fields_edit(mine)
    h5io.write_mesh_h5_collective(
        comm, path, n_points=len(points), point_range=(lo, hi), points=points[lo:hi],
        mass=mass[lo:hi], fields=mine, n_elements=len(cells), element_range=(elo, ehi),
        cells=cells[elo:ehi], order=ORDER, attrs=ATTRS)


def check_block_range_is_petsc(comm):
    try:
        from petsc4py import PETSc
    except ImportError:
        return
    for n in (0, 1, 7, 160):
        vec = PETSc.Vec().createMPI((PETSc.DECIDE, n), comm=comm)
        ours, petsc = h5io.block_range(n, comm), vec.getOwnershipRange()
        vec.destroy()
        agree(comm, None if ours == petsc else f"block_range({n}) {ours} != PETSc {petsc}")


def read(comm, directory):
    points, cells, mass, fields = build_mesh()
    expected_attrs = ATTRS | {"format": "fwimpi-mesh-1", "order": ORDER, "nprocs": 4}
    for split in (h5io.block_range, uneven_range):
        lo, hi = split(len(points), comm)
        got_fields, got_mass, attrs = h5io.read_mesh_h5_collective(
            comm, directory / "mesh_np4.h5", (lo, hi), split(len(cells), comm))
        failure = None
        if attrs != expected_attrs:
            failure = f"attrs {attrs} != {expected_attrs}"
        elif list(got_fields) != sorted(fields):
            failure = f"fields {list(got_fields)}"
        elif not all(np.array_equal(got_fields[k], v[lo:hi]) for k, v in fields.items()):
            failure = f"{split.__name__}: field slices differ on [{lo}, {hi})"
        elif not np.array_equal(got_mass, mass[lo:hi]):
            failure = f"{split.__name__}: mass slice differs on [{lo}, {hi})"
        agree(comm, failure)


def fail(comm, mode, directory):
    def short(fields):
        if comm.rank == 1:
            fields["VP"] = fields["VP"][:-1]

    real = h5io._write_rows

    def failing(dset, start, arr):
        real(dset, start, arr)
        if comm.rank == 1 and dset.name == "/fields/kernel":  # the last write
            raise OSError("injected I/O error")

    if mode == "fail-io":
        h5io._write_rows = failing
    error = None
    try:
        write(comm, directory / "mesh_fail.h5", h5io.block_range, short if mode == "fail" else None)
    except Exception as exc:  # noqa: BLE001 - recorded, then raised again
        error = exc
    raised = comm.allgather(None if error is None else type(error).__name__)
    if comm.rank == 0:
        (directory / "raised.json").write_text(json.dumps(raised))
    if error is not None:
        raise error


def main():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD.Dup()
    mode, directory = sys.argv[1], Path(sys.argv[2])
    if mode == "write":
        check_block_range_is_petsc(comm)
        write(comm, directory / f"mesh_np{comm.size}.h5", h5io.block_range)
        write(comm, directory / f"mesh_np{comm.size}_uneven.h5", uneven_range)
    elif mode == "read":
        read(comm, directory)
    elif mode in ("fail", "fail-io"):
        fail(comm, mode, directory)
    else:
        raise SystemExit(f"unknown MODE {mode!r}: write, read, fail or fail-io")
    comm.Free()


if __name__ == "__main__":
    main()
