"""Run ``fwimpi exec JOB`` with rank 1 raising at step 50 of the time loop (a test fixture).

Usage: mpirun -n N python -m mpi4py tests/mpi/raise_mid_run.py JOB.yaml
"""

import sys

from mpi4py import MPI

import fwimpi.inversion.forward as forward
from fwimpi.cli import main

_simulate = forward.ForwardProblem.simulate


def _failing_step(n, u, u_prev):
    if n == 50:
        raise RuntimeError("injected failure at step 50")


def simulate(self, *args, **kwargs):
    if MPI.COMM_WORLD.rank == 1:
        kwargs["on_step"] = _failing_step
    return _simulate(self, *args, **kwargs)


forward.ForwardProblem.simulate = simulate
sys.exit(main(["exec", sys.argv[1]]))
