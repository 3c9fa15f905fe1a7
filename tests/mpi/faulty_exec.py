"""``fwimpi exec`` with an injected fault, run under mpirun by tests/test_faults.py:

    mpirun -n N python -m mpi4py tests/mpi/faulty_exec.py FAULT JOB

FAULT ``enospc:<file name>``: rank 1's transfer into that file fails with ENOSPC (a disk that
fills mid-write, on one rank only). ``desync``: rank 0 waits in a barrier while rank 1
reports an error to an agreement (ranks stuck in different collectives, as in an HDF5 close
that failed on one rank): the watchdog must end the job.
"""

import errno
import os
import sys


def main() -> None:
    from mpi4py import MPI

    from fwimpi.parallel import collective, h5io

    fault, job = sys.argv[1], sys.argv[2]
    comm = MPI.COMM_WORLD
    if fault.startswith("enospc:"):
        target = fault.split(":", 1)[1]
        real = h5io._write_rows

        def failing(dset, start, arr):
            if comm.rank == 1 and f".{target}.fwimpi-tmp" in dset.file.filename:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dset.file.filename)
            real(dset, start, arr)

        h5io._write_rows = failing
        from fwimpi.cli import main as cli

        sys.exit(cli(["exec", job]))
    if fault == "desync":
        if comm.rank == 0:
            comm.Barrier()  # never matched: rank 1 is in the agreement's allgather
        else:
            collective.agree(comm, OSError("injected failure"), "desync test")
        return
    raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    main()
