"""Benchmark of the smoothing (root-only, one core) against one forward run.

The tutorial's smoothing (sigma = 100 m along x, 50 m along y, of a gradient-like field)
on the tutorial mesh and a 16x larger one, next to the forward time loop on the same mesh
(2 s of simulated time). Goal (issue 5): smoothing costs less than one forward run.
"""

import time

import numpy as np
from mpi4py import MPI

from benchcase import tutorial


def main() -> None:
    from petsc4py import PETSc  # noqa: F401 - initialise PETSc (and MPI) outside the timing

    print(f"{'elements':<10} {'points':>9} {'steps':>6} {'forward s':>10} {'smoothing s':>12} "
          f"{'ratio':>6} {'cold s':>8} {'cold ratio':>10}")
    for refine in (1, 4):
        sim = tutorial(MPI.COMM_SELF, refine, end_time=2.0)
        mesh, axis, weights = sim.plan.mesh, sim.axis, sim.mesh.weights  # one rank: natural
        forward = sim.solver.forward(sim.spec.events[0]).seconds
        rng = np.random.default_rng(0)
        field = {"VP": weights * rng.standard_normal(mesh.n_points)}
        smoothing = sim.spec.smoothing  # the tutorial's: VP (100 m, 50 m)
        times = []
        for _ in range(2):  # cold (first in the process: kernels loaded, KSP set up), warm
            start = time.perf_counter()
            smoothing.apply(field, mesh.points, mesh.cells, weights, mesh.order,
                            mass_weighted=True)
            times.append(time.perf_counter() - start)
        cold, warm = times
        print(f"{mesh.nex:>4} x {mesh.ney:<3} {mesh.n_points:>9,d} {axis.n_steps:>6d} "
              f"{forward:>10.3f} {warm:>12.3f} {warm / forward:>6.2f} {cold:>8.3f} "
              f"{cold / forward:>10.2f}", flush=True)
        sim.close()


if __name__ == "__main__":
    main()
