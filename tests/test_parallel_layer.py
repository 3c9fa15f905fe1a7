"""Unit tests of the parallel layer (halo exchange, natural order, reductions, decisions on
rank 0, point sampling and gathers, checkpoint and mesh files, WaveSolver.set_model) on 3
ranks: tests/mpi/parallel_units.py under ``mpirun -n 3 --oversubscribe``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "mpi" / "parallel_units.py"
MPIRUN = shutil.which("mpirun")
RANKS = 3


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (openmpi-bin)")
def test_parallel_layer_on_three_ranks(tmp_path):
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    cmd = [MPIRUN, "-n", str(RANKS), "--oversubscribe", sys.executable, "-m", "mpi4py",
           str(SCRIPT), str(tmp_path)]
    # the script's watchdog ends a stuck run after 20 s per test; this is the last resort
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    output = proc.stdout + proc.stderr
    print(output)
    assert proc.returncode == 0, output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ranks"] == RANKS and not summary["failed"]
    assert len(summary["passed"]) >= 11
    assert f"parallel_units: {len(summary['passed'])} passed, 0 failed on {RANKS} ranks" in proc.stdout
