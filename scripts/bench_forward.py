"""Benchmark of the forward time loop: GLL points, steps, seconds, point-updates per second.

Meshes: the tutorial's (78 x 32 elements of order 4, 40,377 points) and one 4x larger
(twice the elements per axis). 1000 steps each, the best and median of several repeats.
Goal (issue 2): >= 70 M point-updates/s per core (SPECFEM2D 8.1: 0.56 s best, 0.69 s median
for 1000 steps on the tutorial mesh), stretch 140 M.
"""

import argparse
import statistics

from mpi4py import MPI

from benchcase import tutorial


def bench(refine: int, steps: int, repeats: int) -> None:
    sim = tutorial(MPI.COMM_SELF, refine, steps=steps)
    mesh, event = sim.plan.mesh, sim.spec.events[0]
    seconds = [sim.solver.forward(event).seconds for _ in range(repeats)]
    sim.close()
    best, median = min(seconds), statistics.median(seconds)
    rate = mesh.n_points * steps / best / 1e6
    print(f"{mesh.nex:>4} x {mesh.ney:<4} {mesh.n_points:>10,d} {steps:>6d} {best:>9.3f} "
          f"{median:>9.3f} {rate:>10.1f} {mesh.n_points * steps / median / 1e6:>10.1f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print("forward time loop, order 4, one core")
    print(f"{'elements':<11} {'GLL points':>10} {'steps':>6} {'best s':>9} {'median s':>9} "
          f"{'Mupd/s best':>10} {'Mupd/s med':>10}")
    for refine in (1, 2):
        bench(refine, args.steps, args.repeats)


if __name__ == "__main__":
    main()
