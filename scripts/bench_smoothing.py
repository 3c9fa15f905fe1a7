"""Benchmark of the smoothing (root-only, one core) against one forward run.

The tutorial's smoothing (sigma = 100 m along x, 50 m along y, of a gradient-like field)
on the tutorial mesh and a 16x larger one, next to the forward time loop on the same mesh
(2 s of simulated time). Goal (issue 5): smoothing costs less than one forward run.
"""

import time

import numpy as np

from fwimpi.inversion.forward import ForwardProblem, PointSource
from fwimpi.inversion.smoothing import ConstantSmoothing
from fwimpi.mesh.model import ModelEvaluator, ModelSource
from fwimpi.mesh.structured import Box, build_mesh


def main() -> None:
    from petsc4py import PETSc  # noqa: F401 - initialise PETSc (and MPI) outside the timing

    print(f"{'elements':<10} {'points':>9} {'steps':>6} {'forward s':>10} {'smoothing s':>12} "
          f"{'ratio':>6} {'cold s':>8} {'cold ratio':>10}")
    domain = Box(0.0, 3000.0, -1000.0, 0.0)
    model = ModelEvaluator(ModelSource("1500.0 - y", "1000.0 - y"), domain)
    for refine in (1, 4):
        mesh = build_mesh(domain, 1400.0, 75.0 / refine, 4)
        problem = ForwardProblem(mesh, model, absorbing_width=1400.0, reference_velocity=2000.0)
        axis = problem.time_axis(2.0)
        receivers = np.column_stack((np.linspace(100, 2900, 10), np.zeros(10)))
        _, _, forward = problem.simulate([PointSource(500.0, -500.0, 1.0)], receivers, axis, 5.0)
        rng = np.random.default_rng(0)
        field = {"VP": problem.weights * rng.standard_normal(mesh.n_points)}
        smoothing = ConstantSmoothing({"VP": (100.0, 50.0)})
        times = []
        for _ in range(2):  # cold (first in the process: kernels loaded, KSP set up), warm
            start = time.perf_counter()
            smoothing.apply(field, mesh.points, mesh.cells, problem.weights, mesh.order,
                            mass_weighted=True)
            times.append(time.perf_counter() - start)
        cold, warm = times
        print(f"{mesh.nex:>4} x {mesh.ney:<3} {mesh.n_points:>9,d} {axis.n_steps:>6d} "
              f"{forward:>10.3f} {warm:>12.3f} {warm / forward:>6.2f} {cold:>8.3f} "
              f"{cold / forward:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
