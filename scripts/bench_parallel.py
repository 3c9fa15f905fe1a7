"""Benchmark of the decomposed time loop: time per step on the ranks of COMM_WORLD.

Run under mpirun by scripts/bench_parallel for 1 and 2 ranks. Meshes: the tutorial's
(78 x 32 elements of order 4) and one 16x larger (4x the elements per axis); with
``--dimension 3`` the 3D example job's (about 155,000 points) and one 8x larger. Prints the
time per step, the halo volume per step (values sent by all ranks together) and the time
spent in the halo exchange (the slowest rank's).
"""

import argparse
import json
import time

from mpi4py import MPI

from benchcase import tutorial


def bench(comm, refine: int, steps: int, repeats: int, dimension: int = 2) -> dict:
    sim = tutorial(comm, refine, steps=steps, dimension=dimension)
    mesh, dist, event = sim.plan.mesh, sim.mesh, sim.spec.events[0]
    halo_seconds = [0.0]
    exchange = dist.halo.assemble

    def assemble(a):
        t = time.perf_counter()
        exchange(a)
        halo_seconds[0] += time.perf_counter() - t

    if sim.solver.stepper.assemble is not None:
        sim.solver.stepper.assemble = assemble
    best = None
    for _ in range(repeats):
        halo_seconds[0] = 0.0
        comm.Barrier()
        s = comm.allreduce(sim.solver.forward(event).seconds, op=MPI.MAX)
        h = comm.allreduce(halo_seconds[0], op=MPI.MAX)
        if best is None or s < best[0]:
            best = (s, h)
    ghosts = comm.allreduce(len(dist.part.ghosts))
    sim.close()
    return {"elements": " x ".join(map(str, mesh.shape)), "points": mesh.n_points, "ranks": comm.size,
            "step_ms": 1e3 * best[0] / steps, "halo_ms": 1e3 * best[1] / steps,
            # each ghost value travels twice a step: to its owner (ADD) and back (INSERT)
            "halo_values_per_step": 2 * ghosts,
            "mupd_per_s_per_rank": mesh.n_points * steps / best[0] / 1e6 / comm.size}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--refine", type=int, nargs="+", default=None,
                   help="refinements per axis (default: 1 and 4 in 2D, 1 and 2 in 3D)")
    p.add_argument("--dimension", type=int, choices=(2, 3), default=2,
                   help="3: the 3D example job (jobs/tutorial_3d.yaml)")
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    refine = args.refine or ([1, 2] if args.dimension == 3 else [1, 4])
    rows = [bench(comm, r, args.steps, args.repeats, args.dimension) for r in refine]
    if comm.rank == 0:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
