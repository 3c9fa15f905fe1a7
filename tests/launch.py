"""Launching fwimpi on real MPI ranks from the tests (``mpirun --oversubscribe``, as root
where the tests run as root)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

MPIRUN = shutil.which("mpirun")


def mpirun(n: int, *argv, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m mpi4py *argv`` on ``n`` ranks; the finished process."""
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    cmd = [MPIRUN, "-n", str(n), "--oversubscribe", sys.executable, "-m", "mpi4py", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def exec_on_ranks(job_text: str, tmp_path_factory, ranks=(1, 2, 3, 4)) -> dict[int, Path]:
    """The job ``job_text`` (its output ``out``) run by ``fwimpi exec`` on each rank count
    of ``ranks``, each in a folder of its own: ``{ranks: output folder}``."""
    out = {}
    for n in ranks:
        folder = tmp_path_factory.mktemp(f"np{n}")
        (folder / "job.yaml").write_text(job_text)
        proc = mpirun(n, "-m", "fwimpi.cli", "exec", str(folder / "job.yaml"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[n] = folder / "out"
    return out
