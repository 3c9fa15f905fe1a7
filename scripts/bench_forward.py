"""Benchmark of the forward time loop: GLL points, steps, seconds, point-updates per second.

Meshes: the tutorial's (78 x 32 elements of order 4, 40,377 points) and one 4x larger
(twice the elements per axis). 1000 steps each, the best and median of several repeats.
Goal (issue 2): >= 70 M point-updates/s per core (SPECFEM2D 8.1: 0.56 s best, 0.69 s median
for 1000 steps on the tutorial mesh), stretch 140 M.
"""

import argparse
import statistics

import numpy as np

from fwimpi.inversion.forward import ForwardProblem, PointSource
from fwimpi.mesh.model import ModelEvaluator, ModelSource
from fwimpi.mesh.structured import Box, build_mesh


def bench(refine: int, steps: int, repeats: int) -> None:
    domain = Box(0.0, 3000.0, -1000.0, 0.0)
    model = ModelEvaluator(ModelSource("1500.0 - y", "1000.0 - y"), domain)
    mesh = build_mesh(domain, 1400.0, 75.0 / refine, 4)
    problem = ForwardProblem(mesh, model, absorbing_width=1400.0, reference_velocity=2000.0)
    axis = problem.time_axis(1.0, None)
    axis = type(axis)(axis.dt, steps)
    receivers = np.column_stack((np.linspace(100, 2900, 10), np.zeros(10)))
    seconds = []
    for _ in range(repeats):
        _, _, s = problem.simulate([PointSource(500.0, -500.0, 1.0)], receivers, axis, 5.0)
        seconds.append(s)
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
