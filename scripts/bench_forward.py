"""Benchmark of the forward time loop: GLL points, steps, seconds, point-updates per second.

Meshes: the tutorial's (78 x 32 elements of order 4, 40,377 points) and the same refined 4x
per axis (312 x 128 elements, 636,633 points), each over the tutorial's full 2 s (1283 and
5112 steps), so that the run covers the wave field's start from rest, when it holds
subnormal values ahead of its front, and its decay. The best and median of several repeats.
Goals: >= 70 M point-updates/s per core (issue 2; SPECFEM2D 8.1: 0.56 s best, 0.69 s median
for 1000 steps on the tutorial mesh), stretch 140 M; the refined mesh within 15% of the
tutorial mesh's rate (issue "Solver core", item 1: no denormal slowdown).

``--dimension 3``: the 3D example job (``jobs/tutorial_3d.yaml``, order 4, about 155,000
points) and the same refined 2x per axis (about 1.2 million points), over 0.5 s each (issue
"Three dimensions": a per-point rate at least 60% of the 2D kernel's).

``--keep-denormals`` clears flush-to-zero after the solver set it (``fwimpi.sem.ftz``): the
time loop as it ran before, for comparison.
"""

import argparse
import statistics

from mpi4py import MPI

from benchcase import tutorial, tutorial_spec
from fwimpi.sem.ftz import denormals_flushed, flush_denormals


def tutorial_spec_points(refine: float, dimension: int) -> int:
    """Points of the tutorial mesh (2D or 3D) refined ``refine`` times per axis."""
    from fwimpi.jobs.plan import plan_job

    return plan_job(tutorial_spec(refine, 0.01, dimension), 1).mesh.n_points


def bench(refine: float, repeats: int, keep_denormals: bool, end_time: float | None,
          dimension: int = 2) -> float:
    """Print one row; return the best rate (M point-updates/s)."""
    sim = tutorial(MPI.COMM_SELF, refine, end_time=end_time, dimension=dimension)
    if keep_denormals:
        flush_denormals(False)
    mesh, event, steps = sim.plan.mesh, sim.spec.events[0], sim.plan.axis.n_steps
    seconds = [sim.solver.forward(event).seconds for _ in range(repeats)]
    sim.close()
    best, median = min(seconds), statistics.median(seconds)
    rate = mesh.n_points * steps / best / 1e6
    shape = " x ".join(map(str, mesh.shape))
    print(f"{shape:<14} {mesh.n_points:>10,d} {steps:>6d} {best:>9.3f} "
          f"{median:>9.3f} {rate:>10.1f} {mesh.n_points * steps / median / 1e6:>10.1f}",
          flush=True)
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="runs on the tutorial mesh")
    p.add_argument("--refined-repeats", type=int, default=2, help="runs on the refined mesh")
    p.add_argument("--end-time", type=float, default=None,
                   help="simulated seconds (default: the tutorial's 2 s)")
    p.add_argument("--keep-denormals", action="store_true",
                   help="clear flush-to-zero after the solver set it (the loop as before)")
    p.add_argument("--dimension", type=int, choices=(2, 3), default=2,
                   help="3: the 3D example job and it refined 2x per axis")
    args = p.parse_args()
    if args.dimension == 3:
        # each 3D mesh against the 2D tutorial mesh refined to about as many points, over
        # the same simulated time: the per-point rates compared at equal working sets
        end = 0.5 if args.end_time is None else args.end_time
        print("3D forward time loop against 2D at about as many points, order 4, one core")
        print(f"{'elements':<14} {'GLL points':>10} {'steps':>6} {'best s':>9} "
              f"{'median s':>9} {'Mupd/s best':>10} {'Mupd/s med':>10}")
        ratios = []
        for refine, t in ((1, end), (2, end / 2)):
            rate3 = bench(refine, args.repeats if refine == 1 else args.refined_repeats,
                          args.keep_denormals, t, 3)
            points3 = tutorial_spec_points(refine, 3)
            rate2 = bench((points3 / tutorial_spec_points(1, 2)) ** 0.5,
                          args.repeats if refine == 1 else args.refined_repeats,
                          args.keep_denormals, t, 2)
            ratios.append(rate3 / rate2)
        print(f"3D / 2D per-point rate: {ratios[0]:.2f} at ~150k points, {ratios[1]:.2f} at "
              f"~1.1M points (goal: >= 0.6)")
        return
    print("forward time loop, order 4, one core")
    print(f"{'elements':<14} {'GLL points':>10} {'steps':>6} {'best s':>9} {'median s':>9} "
          f"{'Mupd/s best':>10} {'Mupd/s med':>10}")
    tutorial_rate = bench(1, args.repeats, args.keep_denormals, args.end_time)
    refined_rate = bench(4, args.refined_repeats, args.keep_denormals, args.end_time)
    print(f"flush-to-zero: {'on' if denormals_flushed() else 'off'}; refined / tutorial rate: "
          f"{refined_rate / tutorial_rate:.2f} (goal: >= 0.85)")


if __name__ == "__main__":
    main()
