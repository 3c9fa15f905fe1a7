"""Events at once: ``concurrent_events`` K groups of ``ranks_per_job`` ranks take the events
as they become free; every product equals the K = 1 product (1e-12); a failed event is
retried, then reported, and a rerun computes only the missing events."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from test_cli import SMALL_JOB

HERE = Path(__file__).parent
MPIRUN = shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}

EVENT = """  - event_name: ev{k}
    sources: [{{type: ScalarPoint2D, x: {x}, y: -250.0, f: 1.0}}]
    receivers:
      - {{type: ArrayPoint2D, x: {{linspace: [100.0, 900.0, 5]}}, y: 0.0, fields: [phi]}}
"""
EVENTS = "".join(EVENT.format(k=k, x=x) for k, x in enumerate((150.0, 400.0, 650.0, 850.0)))
JOB = SMALL_JOB.replace("""  - event_name: ev1
    sources: [{type: ScalarPoint2D, x: 300.0, y: -250.0, f: 1.0}]
    receivers:
      - {type: ArrayPoint2D, x: {linspace: [100.0, 900.0, 5]}, y: 0.0, fields: [phi]}
""", EVENTS).replace("output: out", """mappings:
  - {name: m, inversion_parameters: [VP], scaling: relative_deviation_from_prior,
     source_cutout_radius_in_meters: 100.0}
output: out""")
NAMES = [f"ev{k}" for k in range(4)]


def mpirun(n: int, *argv, timeout=240) -> subprocess.CompletedProcess:
    cmd = [MPIRUN, "-n", str(n), "--oversubscribe", sys.executable, "-m", "mpi4py", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def exec_job(folder: Path, groups: int, ranks: int, *extra) -> subprocess.CompletedProcess:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.yaml").write_text(JOB.replace("ranks_per_job: 1", f"ranks_per_job: {ranks}"))
    return mpirun(groups * ranks, *extra, "-m", "fwimpi.cli", "exec", str(folder / "job.yaml"),
                  "--concurrent-events", str(groups))


def read(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][...]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for groups, ranks in ((1, 1), (2, 1), (4, 1), (2, 2)):
        folder = tmp_path_factory.mktemp(f"k{groups}r{ranks}")
        proc = exec_job(folder, groups, ranks)
        assert proc.returncode == 0, proc.stderr
        out[groups, ranks] = (folder / "out", proc.stderr)
    return out


@pytest.mark.parametrize("layout", [(2, 1), (4, 1), (2, 2)])
def test_products_equal_the_one_group_products(runs, layout):
    ref, _ = runs[1, 1]
    out, log = runs[layout]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["simulation"]["concurrent_events"] == layout[0]
    assert summary["simulation"]["ranks_per_job"] == layout[1]
    assert summary["simulation"]["ranks"] == layout[0] * layout[1]
    reference = json.loads((ref / "summary.json").read_text())
    for name in NAMES:
        assert summary["events"][name]["misfit"] == pytest.approx(
            reference["events"][name]["misfit"], rel=1e-12)
        a = read(out / f"events/{name}/receivers.h5", f"{name}/phi")
        b = read(ref / f"events/{name}/receivers.h5", f"{name}/phi")
        assert np.abs(a - b).max() <= 1e-12 * np.abs(b).max()
    for rel in [f"events/{n}/gradient.h5" for n in NAMES] + ["gradient.h5", "mappings/m.h5"]:
        for field in ("VP", "RHO") if "mappings" not in rel else ("VP",):
            a, b = read(out / rel, f"fields/{field}"), read(ref / rel, f"fields/{field}")
            assert np.abs(a - b).max() <= 1e-12 * np.abs(b).max(), (rel, field)
    # every group took events, as they became free
    for g in range(1, layout[0] + 1):
        assert f"on group {g} of {layout[0]})" in log


def test_a_failing_event_is_retried(tmp_path):
    folder = tmp_path / "retry"
    folder.mkdir()
    (folder / "job.yaml").write_text(JOB)
    proc = mpirun(2, str(HERE / "mpi" / "failing_event.py"), "ev2", "1",
                  str(folder / "job.yaml"), "--concurrent-events", "2")
    assert proc.returncode == 0, proc.stderr
    assert "failed (attempt 1 of 2)" in proc.stderr and "injected failure 1" in proc.stderr
    assert (folder / "out/summary.json").is_file()


def test_an_event_that_keeps_failing_is_reported_and_a_rerun_computes_only_it(tmp_path):
    folder = tmp_path / "fail"
    folder.mkdir()
    (folder / "job.yaml").write_text(JOB)
    proc = mpirun(2, str(HERE / "mpi" / "failing_event.py"), "ev2", "99",
                  str(folder / "job.yaml"), "--concurrent-events", "2")
    assert proc.returncode == 1
    assert "1 of 4 event(s) failed after 2 attempt(s) each: ev2: NumericalError" in proc.stderr
    out = folder / "out"
    assert not (out / "summary.json").exists()
    for name in ("ev0", "ev1", "ev3"):
        assert (out / f".fwimpi-state/event--{name}.json").is_file()
    assert not (out / ".fwimpi-state/event--ev2.json").exists()
    again = mpirun(2, "-m", "fwimpi.cli", "exec", str(folder / "job.yaml"),
                   "--concurrent-events", "2")
    assert again.returncode == 0, again.stderr
    for name in ("ev0", "ev1", "ev3"):
        assert f"event {name}: already computed; not run again" in again.stderr
    assert "event ev2 (3 of 4" in again.stderr


def test_a_killed_rank_ends_every_group_and_a_rerun_finishes_the_rest(tmp_path):
    folder = tmp_path / "killed"
    folder.mkdir()
    (folder / "job.yaml").write_text(JOB.replace("end_time_in_seconds: 0.6",
                                                 "end_time_in_seconds: 3.0"))
    job = str(folder / "job.yaml")
    proc = subprocess.Popen([MPIRUN, "-n", "2", "--oversubscribe", sys.executable, "-m", "mpi4py",
                             "-m", "fwimpi.cli", "exec", job, "--concurrent-events", "2"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = folder / "out/.fwimpi-state"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if records.is_dir() and len([p for p in records.glob("event--*")]) >= 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be killed"
    ranks = subprocess.run(["pgrep", "-f", f"fwimpi.cli exec {job}"], capture_output=True,
                           text=True).stdout.split()
    ranks = [int(p) for p in ranks if int(p) != proc.pid]
    os.kill(max(ranks), signal.SIGKILL)
    start = time.monotonic()
    proc.communicate(timeout=120)
    assert proc.returncode != 0 and time.monotonic() - start < 60
    out = folder / "out"
    assert not (out / "summary.json").exists()
    for product in out.rglob("*.h5"):  # no half-written product: only hidden temp files
        if not product.name.startswith("."):
            with h5py.File(product) as f:
                assert f.attrs["format"]
    done = {p.stem.split("--")[1] for p in records.glob("event--*.json")}
    for _ in range(100):  # the lock names the job's processes: wait until they are reaped
        if not any(os.path.exists(f"/proc/{p}") for p in ranks):
            break
        time.sleep(0.1)
    again = mpirun(2, "-m", "fwimpi.cli", "exec", job, "--concurrent-events", "2")
    assert again.returncode == 0, again.stderr
    assert not [p for p in out.rglob("*") if ".fwimpi-tmp" in p.name]
    for name in done:
        assert f"event {name}: already computed; not run again" in again.stderr
    assert len(done) < 4
