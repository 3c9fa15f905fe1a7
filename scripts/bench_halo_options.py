"""Benchmark of the ways to apply the decomposed stiffness operator ``y = K x`` via PETSc.

Run under mpirun by scripts/bench_halo_options for 1 and 2 ranks. Meshes: the tutorial's
(78 x 32 elements of order 4) and one 16x larger (element size 75/4). Methods:

* ``ghost``: numba matrix-free ``AcousticStiffness.add`` on the local points, then
  ``HaloExchange.assemble`` (ghosted vector: ``ghostUpdate`` ADD/REVERSE, INSERT/FORWARD),
  what the time loop does;
* ``scatter-all``: the same local product, the halo sum by an explicit ``PETSc.Scatter``
  of all local points from a sequential work vector into a separate global vector
  (ADD_VALUES, forward) and back (INSERT_VALUES, reverse);
* ``scatter-ghost``: the same, but the scatter moves only the ghosts and the global
  vector's storage is the work vector's owned part (what a ghosted vector does inside);
* ``aij``: an assembled MPIAIJ matrix and ``MatMult``. Each rank assembles its owned rows
  from the element matrices ``K_e`` of every element touching an owned point (one layer
  of elements is computed on both sides of an interface), summed into CSR and given to
  PETSc, which preallocates exactly from it;
* ``local only``: the matrix-free local product without any exchange (a reference);
* ``... exchange``: the halo sum of each matrix-free method alone.

Input ``x`` is the same random field for all; the matrix-free methods keep it at owned
and ghost points (as the time loop does, where the assembled update keeps ghosts current),
``MatMult`` at owned points (it fetches the ghost values of x itself: one scatter per
product instead of two). All results must agree to a relative 1e-12 before timing. Prints
one JSON list: per method, the best time of ``--repeats`` runs of ``--applications``
products (slowest rank; methods take turns), the operator's memory (all ranks together)
and the deviation.
"""

import argparse
import json
import time

import numpy as np
import scipy.sparse
from mpi4py import MPI
from petsc4py import PETSc

from benchcase import tutorial
from fwimpi.parallel.petsc import HaloExchange
from fwimpi.sem.gll import derivative_matrix

ADD, INSERT = PETSc.InsertMode.ADD_VALUES, PETSc.InsertMode.INSERT_VALUES
FORWARD, REVERSE = PETSc.ScatterMode.FORWARD, PETSc.ScatterMode.REVERSE


class ScatterHalo:
    """Halo sum of a local array with an explicit ``PETSc.Scatter`` (no ghosted vector)."""

    def __init__(self, comm, part, petsc_index, ghosts_only: bool):
        n_local, n_owned = len(part.points), part.n_owned
        self.buffer = np.zeros(n_local)
        self.work = PETSc.Vec().createWithArray(self.buffer, comm=PETSc.COMM_SELF)
        self.ghosts_only = ghosts_only
        if ghosts_only:  # the global vector *is* the owned part; move the ghosts only
            self.glob = PETSc.Vec().createWithArray(
                self.buffer[:n_owned], size=(n_owned, PETSc.DECIDE), comm=comm)
            src, dst = (n_owned, n_local), part.ghosts
        else:  # a separate global vector; move every local point
            self.glob = PETSc.Vec().createMPI((n_owned, PETSc.DECIDE), comm=comm)
            src, dst = (0, n_local), petsc_index[part.points]
        src = PETSc.IS().createStride(src[1] - src[0], first=src[0], step=1, comm=PETSc.COMM_SELF)
        dst = PETSc.IS().createGeneral(np.asarray(dst, dtype=PETSc.IntType), comm=PETSc.COMM_SELF)
        self.scatter = PETSc.Scatter().create(self.work, src, self.glob, dst)

    def assemble(self) -> None:
        if not self.ghosts_only:
            self.glob.zeroEntries()
        self.scatter.scatter(self.work, self.glob, ADD, FORWARD)
        self.scatter.scatter(self.glob, self.work, INSERT, REVERSE)


def halo_options(comm, part, dec) -> dict:
    """``(buffer, assemble)`` of each matrix-free halo sum: accumulate into ``buffer``,
    then ``assemble()`` sums it in place across ranks."""
    ghost = HaloExchange(comm, part)
    options = {"ghost": (ghost.buffer, lambda: ghost.assemble(ghost.buffer))}
    for name, ghosts_only in (("scatter-all", False), ("scatter-ghost", True)):
        halo = ScatterHalo(comm, part, dec.petsc, ghosts_only)
        options[name] = (halo.buffer, halo.assemble)
    return options


def element_matrices(m1_elem: np.ndarray, geometry, rectangles: bool) -> np.ndarray:
    """``K_e (E, n^2, n^2)`` from ``m1`` at element points ``(E, n, n)``; node a = i + n j.

    ``K_e = Dxi^T (C11 Dxi + C12 Deta) + Deta^T (C12 Dxi + C22 Deta)``, ``C = diag(m1 g)``:
    the matrix of the numba kernel (as in ``element_max_eigenvalues``). ``rectangles``:
    ``g12 = 0`` exactly (it is round-off here), as the rectangle kernel assumes; then a node
    couples only to the nodes of its element row and column (2n - 1, not n^2).
    """
    n = geometry.order + 1
    d, eye = derivative_matrix(geometry.order), np.eye(n)
    dxi, deta = np.kron(eye, d), np.kron(d, eye)
    g = geometry.metric
    c11, c12, c22 = ((m1_elem * a).reshape(-1, n * n, 1)
                     for a in (g[0, 0], 0 * g[0, 1] if rectangles else g[0, 1], g[1, 1]))
    return dxi.T @ (c11 * dxi + c12 * deta) + deta.T @ (c12 * dxi + c22 * deta)


def assembled_matrix(comm, mesh, dec, m1: np.ndarray, rectangles: bool) -> PETSc.Mat:
    """MPIAIJ ``K`` in PETSc numbering; this rank's owned rows, exactly preallocated
    (exact zeros dropped)."""
    lo, hi = dec.offsets[comm.rank], dec.offsets[comm.rank + 1]
    n = dec.offsets[-1]
    ibool = mesh.ibool()
    elements = np.flatnonzero((dec.owner[ibool] == comm.rank).any(axis=(1, 2)))
    ib = ibool[elements]
    ke = element_matrices(m1[ib], mesh.geometry(elements), rectangles)
    idx = dec.petsc[ib.reshape(len(elements), -1)]
    rows = np.broadcast_to(idx[:, :, None], ke.shape).ravel()
    cols = np.broadcast_to(idx[:, None, :], ke.shape).ravel()
    keep = (rows >= lo) & (rows < hi)
    csr = scipy.sparse.coo_matrix((ke.ravel()[keep], (rows[keep] - lo, cols[keep])),
                                  shape=(hi - lo, n)).tocsr()  # sums duplicates
    csr.eliminate_zeros()
    csr.sort_indices()
    it = PETSc.IntType
    return PETSc.Mat().createAIJ(
        size=((hi - lo, n), (hi - lo, n)), comm=comm,
        csr=(csr.indptr.astype(it), csr.indices.astype(it), csr.data))


def best_times(comm, methods: dict, applications: int, repeats: int) -> dict:
    """Best (over repeats) of the slowest rank's seconds per application, per method.

    Methods take turns within each repeat, so load from elsewhere hits all of them alike.
    """
    best = dict.fromkeys(methods, np.inf)
    for apply in methods.values():
        apply()
    for _ in range(repeats):
        for name, apply in methods.items():
            comm.Barrier()
            t = time.perf_counter()
            for _ in range(applications):
                apply()
            best[name] = min(best[name], comm.allreduce(time.perf_counter() - t, op=MPI.MAX))
    return {name: t / applications for name, t in best.items()}


def bench(comm, refine: int, applications: int, repeats: int) -> list[dict]:
    sim = tutorial(comm, refine, steps=1)
    mesh, dist = sim.plan.mesh, sim.mesh
    dec, part = dist.decomposition, dist.part
    m1 = 1.0 / sim.plan.model(mesh.points)["RHO"]
    stiffness = sim.solver.stiffness
    x_natural = np.random.default_rng(1).standard_normal(mesh.n_points)
    x = x_natural[part.points]  # owned then ghosts

    matrices = {name: assembled_matrix(comm, mesh, dec, m1, rectangles)
                for name, rectangles in (("aij", False), ("aij g12=0", True))}
    xv, yv = matrices["aij"].createVecs()
    xv.getArray()[:] = x[: part.n_owned]

    def matrix_free(buffer, assemble):
        def apply():
            buffer.fill(0.0)
            stiffness.add(x, buffer)
            assemble()
        return apply, buffer.copy

    def mat_mult(matrix):
        return lambda: matrix.mult(xv, yv), lambda: yv.getArray().copy()

    local = np.zeros(len(x))

    def local_only():
        local.fill(0.0)
        stiffness.add(x, local)

    methods = {**{k: matrix_free(*h) for k, h in halo_options(comm, part, dec).items()},
               **{k: mat_mult(m) for k, m in matrices.items()},
               "local only": (local_only, None),
               # the halo sums alone (on separate, all-zero buffers)
               **{f"{k} exchange": (h[1], None)
                  for k, h in halo_options(comm, part, dec).items()}}

    # every method gives y = K x of the (general) matrix: at owned and ghost points
    # (matrix-free) or at owned points (aij)
    matrices["aij"].mult(xv, yv)
    expected = np.concatenate(comm.allgather(yv.getArray()))[dec.petsc[part.points]]
    deviation = {}
    for name, (apply, result) in methods.items():
        if result is None:
            continue
        apply()
        y = result()
        diff, ref = y - expected[: len(y)], expected[: len(y)]
        deviation[name] = np.sqrt(comm.allreduce(float(diff @ diff))
                                  / comm.allreduce(float(ref @ ref)))
        if deviation[name] > 1e-12:
            raise AssertionError(f"{name}: relative deviation {deviation[name]:.2e} from K x")

    # memory (all ranks): AIJ values + column indices + row pointers of the diagonal and
    # off-diagonal blocks; matrix-free: the blocked ibool, m1 and the metric the kernel reads
    int_bytes = np.dtype(PETSc.IntType).itemsize
    nnz = {k: int(m.getInfo(PETSc.Mat.InfoType.GLOBAL_SUM)["nz_allocated"])
           for k, m in matrices.items()}
    row_bytes = comm.allreduce(2 * (part.n_owned + 1) * int_bytes)
    free_bytes = comm.allreduce(stiffness.ibool.nbytes + sum(
        a.nbytes for a in stiffness._args if isinstance(a, np.ndarray)))
    seconds = best_times(comm, {k: m[0] for k, m in methods.items()}, applications, repeats)
    rows = []
    for name, s in seconds.items():
        memory = nnz[name] * (8 + int_bytes) + row_bytes if name in nnz else free_bytes
        rows.append({
            "elements": f"{mesh.nex} x {mesh.ney}", "points": mesh.n_points, "ranks": comm.size,
            "method": name, "ms": 1e3 * s,
            "mpoint_per_s_per_rank": mesh.n_points / s / 1e6 / comm.size,
            "operator_mib": memory / 2**20, "nnz": nnz.get(name), "deviation": deviation.get(name),
            "ghosts": comm.allreduce(len(part.ghosts)),
        })
    for obj in (*matrices.values(), xv, yv):
        obj.destroy()
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--applications", type=int, default=100)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--refine", type=int, nargs="+", default=[1, 4])
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    rows = [row for refine in args.refine
            for row in bench(comm, refine, args.applications, args.repeats)]
    if comm.rank == 0:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
