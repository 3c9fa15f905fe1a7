"""Micro-benchmark: one adjoint step (with the gradient kernels) over one forward step, on the
tutorial mesh, one rank, the forward wavefield held in memory (no checkpoints, no
recomputation). Forward and adjoint runs alternate, so a loaded machine slows both alike;
the ratio per repetition and its median are printed.

    .venv/bin/python scripts/bench_adjoint_step.py --steps 600 --repeats 5 [--refine 1]
"""

import argparse
import time

import numpy as np
from mpi4py import MPI

from benchcase import tutorial


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--refine", type=int, default=1)
    args = p.parse_args()
    sim = tutorial(MPI.COMM_SELF, args.refine, steps=args.steps)
    solver, event, n = sim.solver, sim.spec.events[0], args.steps
    stepper = solver.stepper
    src, signals = solver._signals(event)
    _, rec = solver.mesh.point_sampling(event.receiver_coordinates)
    store = np.zeros((n + 1, stepper.n_points))  # u[0..n]

    def keep(k, u, _):
        store[k] = u

    traces = np.zeros((len(rec), n + 1))
    stepper.advance(stepper.initial_state(), n, src, signals, rec, traces, keep)
    print(f"{solver.mesh.n_local:,d} points, {n} steps, {type(stepper).__name__}")
    ratios = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        stepper.advance(stepper.initial_state(), n, src, signals, rec, traces)
        t1 = time.perf_counter()
        stepper.adjoint(n, rec, traces, lambda m: store[m])
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
        print(f"forward {1e6 * (t1 - t0) / n:7.1f} us/step  adjoint {1e6 * (t2 - t1) / n:7.1f} "
              f"us/step  ratio {ratios[-1]:.3f}", flush=True)
    print(f"median adjoint/forward step: {np.median(ratios):.3f}")


if __name__ == "__main__":
    main()
