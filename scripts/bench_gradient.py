"""Benchmark of the gradient: forward time, gradient time (forward with checkpoints +
adjoint), their ratio and peak memory per rank, for several sampling intervals and memory
budgets, on the tutorial mesh and a 16x larger one. Each configuration runs in a fresh
process (one rank) so that its peak memory (max RSS) is its own; with ``--compare`` it
also prints the relative L2 difference of the intervals' gradients against interval 1.

Goals (issue 4): gradient / forward <= 2.5 with all chunks in memory, <= 3.5 with
recomputation; peak memory of the gradient run <= 2x the forward run's under the default
budget (``wavefield_compression.memory_per_rank_in_mb``, 128 MB).

``--lossy T ...`` adds, per budget and interval, the gradient with the forward wavefield
stored ZFP-compressed at each tolerance (``wavefield_compression.lossy``); with
``--compare`` it prints each one's difference against the exact interval-1 gradient. Goal
(issue "Solver core", item 4), 4000 steps of the tutorial mesh (``--refine 1 --end-time
6.2395``): ZFP at a tolerance whose gradient error is at most 1e-3, at most 2.6x the
forward and no recomputation.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def one(refine: int, interval: int, budget_mb: float | None, save: str | None,
        end_time: float, lossy: float | None = None) -> dict:
    """Run one configuration here; budget None means a forward run only; ``lossy`` the
    ZFP tolerance (None: the samples stored exactly)."""
    from mpi4py import MPI

    from benchcase import tutorial
    from fwimpi.inversion.gradient import CheckpointIO, plan_chunks
    from fwimpi.sem.misfits import l2_energy
    from fwimpi.sem.timestepper import State

    sim = tutorial(MPI.COMM_SELF, refine, end_time=end_time)
    mesh, problem, axis, event = sim.plan.mesh, sim.solver, sim.axis, sim.spec.events[0]
    n_points = sim.mesh.n_local
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    row = {"points": mesh.n_points, "steps": axis.n_steps, "interval": interval,
           "budget_mb": budget_mb, "setup_rss_mb": base}
    if budget_mb is None:
        row.update(seconds=problem.forward(event).seconds)
    else:
        chunk = plan_chunks(axis.n_steps, interval, n_points, budget_mb * 2**20, lossy=lossy)
        with tempfile.TemporaryDirectory() as tmp:  # checkpoints on disk, as in a job
            from fwimpi.parallel.checkpoints import CheckpointWriter

            cold = None
            for attempt in range(2):  # cold: first touch of fresh memory; then warm
                writer = CheckpointWriter(MPI.COMM_SELF, Path(tmp) / f"cp{attempt}.h5", 0,
                                          n_points, n_points, {})

                def load(n, writer=writer):
                    u, u_old = writer.load(n)
                    return State(n, u.copy(), u_old.copy())

                io = CheckpointIO(chunk, save=lambda n, st, w=writer: w.save(n, st.u, st.u_old),
                                  load=load)
                result = problem.gradient(event, lambda keep, tr: l2_energy(tr, axis.dt),
                                          interval=interval, chunk=chunk, checkpoints=io,
                                          lossy=lossy)
                seconds = result.forward_seconds + result.adjoint_seconds
                cold = seconds if cold is None else cold
                writer.abandon()
        row.update(seconds=seconds, cold_seconds=cold, forward_seconds=result.forward_seconds,
                   adjoint_seconds=result.adjoint_seconds, chunk=chunk,
                   in_memory=chunk >= axis.n_steps, recomputed=result.recomputed_steps,
                   wavefield_mb=result.wavefield_bytes / 2**20)
        if save:
            np.save(save, result.gradient["VP"])
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return row


def spawn(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", *map(str, args)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--one", nargs=6, help=argparse.SUPPRESS)
    p.add_argument("--end-time", type=float, nargs="+", default=[2.0, 0.5],
                   help="simulated seconds per mesh (the 16x mesh has a 4x smaller time step)")
    p.add_argument("--refine", type=int, nargs="+", default=[1, 4])
    p.add_argument("--budgets", type=float, nargs="+", default=[128.0, 2048.0],
                   help="per-rank budgets in MB (the first is the default)")
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--lossy", type=float, nargs="*", default=[],
                   help="ZFP tolerances (wavefield_compression.lossy) to run too")
    p.add_argument("--compare", action="store_true", help="print gradient differences")
    args = p.parse_args()
    if args.one:
        refine, interval, budget, save, end, lossy = args.one
        print(json.dumps(one(int(refine), int(interval),
                             None if budget == "none" else float(budget),
                             None if save == "none" else save, float(end),
                             None if lossy == "none" else float(lossy))))
        return
    print("time loops only; grad = forward with checkpoints + adjoint (warm: second run in "
          "the process; cold: first)")
    print(f"{'points':>9} {'steps':>6} {'interval':>8} {'budget MB':>9} {'lossy':>6} "
          f"{'chunk':>6} {'fwd s':>7} {'grad s':>7} {'ratio':>6} {'cold s':>7} "
          f"{'recomp':>6} {'field MB':>8} {'peak MB':>8} {'fwd peak MB':>11} {'mem ratio':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for refine, end in zip(args.refine, args.end_time):
            fwd = spawn(refine, 1, "none", "none", end, "none")
            for budget in args.budgets:
                runs = [(interval, None) for interval in args.intervals]
                runs += [(interval, t) for t in args.lossy for interval in args.intervals]
                for interval, lossy in runs:
                    save = (f"{tmp}/g{refine}_{interval}_{budget}_{lossy}.npy" if args.compare
                            else "none")
                    r = spawn(refine, interval, budget, save, end,
                              "none" if lossy is None else lossy)
                    print(f"{r['points']:>9,d} {r['steps']:>6d} {interval:>8d} {budget:>9.0f} "
                          f"{'-' if lossy is None else f'{lossy:g}':>6} "
                          f"{r['chunk']:>6d} {fwd['seconds']:>7.3f} {r['seconds']:>7.3f} "
                          f"{r['seconds'] / fwd['seconds']:>6.2f} {r['cold_seconds']:>7.3f} "
                          f"{r['recomputed']:>6d} {r['wavefield_mb']:>8.1f} "
                          f"{r['peak_rss_mb']:>8.0f} "
                          f"{fwd['peak_rss_mb']:>11.0f} "
                          f"{r['peak_rss_mb'] / fwd['peak_rss_mb']:>9.2f}"
                          f"{'  (all in memory)' if r['in_memory'] else ''}", flush=True)
                if args.compare:
                    ref = np.load(f"{tmp}/g{refine}_1_{budget}_None.npy")
                    for interval, lossy in runs:
                        if (interval, lossy) == (1, None):
                            continue
                        g = np.load(f"{tmp}/g{refine}_{interval}_{budget}_{lossy}.npy")
                        what = f"interval {interval:>2}" + ("" if lossy is None else
                                                            f", ZFP {lossy:g}")
                        print(f"    {what}: relative L2 difference of dJ/dVP against "
                              f"interval 1: {np.linalg.norm(g - ref) / np.linalg.norm(ref):.3e}")


if __name__ == "__main__":
    main()
