"""``fwimpi exec`` where one event fails (a test fixture, run under mpirun by
tests/test_events.py):

    mpirun -n N python -m mpi4py tests/mpi/failing_event.py EVENT TIMES JOB [exec arguments]

EVENT fails with a NumericalError (on every rank of the group running it) its first TIMES
attempts.
"""

import sys

import fwimpi.jobs.execution as execution
from fwimpi.cli import main
from fwimpi.errors import NumericalError

EVENT, TIMES = sys.argv[1], int(sys.argv[2])
real = execution._run_event
failures = [0]


def failing(spec, plan, state, solver, event, *args, **kwargs):
    if event.name == EVENT and failures[0] < TIMES:
        failures[0] += 1
        raise NumericalError(f"event {event.name}: injected failure {failures[0]}")
    return real(spec, plan, state, solver, event, *args, **kwargs)


execution._run_event = failing
sys.exit(main(["exec", *sys.argv[3:]]))
