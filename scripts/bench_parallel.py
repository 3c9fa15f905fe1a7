"""Benchmark of the decomposed time loop: time per step on the ranks of COMM_WORLD.

Run under mpirun by scripts/bench_parallel for 1 and 2 ranks. Meshes: the tutorial's
(78 x 32 elements of order 4) and one 16x larger (4x the elements per axis). Prints the
time per step, the halo volume per step (values sent by all ranks together) and the time
spent in the halo exchange (the slowest rank's).
"""

import argparse
import json
import time

import numpy as np
from mpi4py import MPI

from fwimpi.inversion.forward import ForwardProblem, PointSource
from fwimpi.mesh.model import ModelEvaluator, ModelSource
from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.parallel.decomposition import decompose, local_part
from fwimpi.parallel.petsc import HaloExchange


def bench(comm, refine: int, steps: int, repeats: int) -> dict:
    domain = Box(0.0, 3000.0, -1000.0, 0.0)
    model = ModelEvaluator(ModelSource("1500.0 - y", "1000.0 - y"), domain)
    mesh = build_mesh(domain, 1400.0, 75.0 / refine, 4)
    part = local_part(mesh, decompose(mesh, comm.size), comm.rank)
    halo = HaloExchange(comm, part)
    halo_seconds = [0.0]

    def assemble(a):
        t = time.perf_counter()
        halo.assemble(a)
        halo_seconds[0] += time.perf_counter() - t

    problem = ForwardProblem(
        mesh, model, elements=part.elements, points=part.points, absorbing_width=1400.0,
        reference_velocity=2000.0, assemble=assemble, work=halo.buffer,
        reduce_max=lambda v: comm.allreduce(v, op=MPI.MAX),
    )
    axis = problem.time_axis(1.0, None)
    axis = type(axis)(axis.dt, steps)
    receivers = np.column_stack((np.linspace(100, 2900, 10), np.zeros(10)))
    best = None
    for _ in range(repeats):
        halo_seconds[0] = 0.0
        comm.Barrier()
        _, _, s = problem.simulate([PointSource(500.0, -500.0, 1.0)], receivers, axis, 5.0)
        s = comm.allreduce(s, op=MPI.MAX)
        h = comm.allreduce(halo_seconds[0], op=MPI.MAX)
        if best is None or s < best[0]:
            best = (s, h)
    ghosts = comm.allreduce(len(part.ghosts))
    return {"elements": f"{mesh.nex} x {mesh.ney}", "points": mesh.n_points, "ranks": comm.size,
            "step_ms": 1e3 * best[0] / steps, "halo_ms": 1e3 * best[1] / steps,
            # each ghost value travels twice a step: to its owner (ADD) and back (INSERT)
            "halo_values_per_step": 2 * ghosts,
            "mupd_per_s_per_rank": mesh.n_points * steps / best[0] / 1e6 / comm.size}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--refine", type=int, nargs="+", default=[1, 4])
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    rows = [bench(comm, r, args.steps, args.repeats) for r in args.refine]
    if comm.rank == 0:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
