"""Run ``fwimpi exec JOB`` with rank 1 raising at step 50 of the time loop (a test fixture).

Usage: mpirun -n N python -m mpi4py tests/mpi/raise_mid_run.py JOB.yaml
"""

import sys

from mpi4py import MPI

import fwimpi.sem.timestepper as timestepper
from fwimpi.cli import main

_update = timestepper._update
calls = [0]


def failing_update(*args):
    calls[0] += 1
    if calls[0] == 50:
        raise RuntimeError("injected failure at step 50")
    return _update(*args)


if MPI.COMM_WORLD.rank == 1:
    timestepper._update = failing_update
sys.exit(main(["exec", sys.argv[1]]))
