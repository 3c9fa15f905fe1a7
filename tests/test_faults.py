"""Fault injection: a full disk (at the start and mid-write), SIGTERM and SIGINT at several
points, corrupted checkpoints and products, non-finite simulations. Each ends with a one-line
reason, a non-zero status and nothing half-written or locked; a rerun after the fault is
removed gives the products of an uninterrupted run.

Subprocess timeouts guard against hangs (the faults end in seconds; a hang fails the test).
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from test_cli import SMALL_JOB

HERE = Path(__file__).parent
MPIRUN = shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
       "FWIMPI_WATCHDOG_SECONDS": "3"}
FWIMPI = [sys.executable, "-m", "fwimpi.cli"]
PRODUCTS = ("events/ev1/receivers.h5", "events/ev1/gradient.h5", "gradient.h5",
            "mappings/map_a.h5", "smoothed/map_a.h5")
# the small job with a mapping and a smoothing, on 2 ranks
JOB = SMALL_JOB.replace("ranks_per_job: 1", "ranks_per_job: 2").replace("output: out", """mappings:
  - {name: map_a, inversion_parameters: [VP], scaling: relative_deviation_from_prior,
     source_cutout_radius_in_meters: 150.0}
smoothing:
  apply_to: map_a
  type: ConstantSmoothing
  smoothing_lengths_in_meters: {VP: [100.0, 50.0]}
output: out""")
# a longer job (tutorial domain, 4x the points, 2 s) to interrupt while it runs
LONG_JOB = JOB.replace("x: [0.0, 1000.0], y: [-500.0, 0.0]", "x: [0.0, 3000.0], y: [-1000.0, 0.0]"
                       ).replace("elements_per_wavelength: 2", "elements_per_wavelength: 4"
                                 ).replace("end_time_in_seconds: 0.6", "end_time_in_seconds: 2.0")


def job_in(folder: Path, text: str = JOB, output: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if output is not None:
        text = text.replace("output: out", f"output: {output}")
    (folder / "job.yaml").write_text(text)
    return folder / "job.yaml"


def run(*argv, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*FWIMPI, *argv], capture_output=True, text=True, env=ENV,
                          timeout=timeout, **kw)


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("fwimpi: ")]
    assert lines, stderr
    return lines[-1]


def read(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][...]


def assert_same_products(out: Path, reference: Path) -> None:
    for rel in PRODUCTS:
        name = "/ev1/phi" if rel.endswith("receivers.h5") else "/fields/VP"
        a, b = read(out / rel, name), read(reference / rel, name)
        assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(b), rel


def assert_clean(out: Path) -> None:
    """No lock, no temp file, no fwimpi process of this job left."""
    assert not (out / ".fwimpi.lock").exists()
    assert not [p for p in out.rglob("*") if ".fwimpi-tmp" in p.name]
    left = subprocess.run(["pgrep", "-f", f"fwimpi.cli exec {out.parent}"], capture_output=True,
                          text=True).stdout.split()
    assert not left, left


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Products of an uninterrupted run of JOB."""
    job = job_in(tmp_path_factory.mktemp("reference"))
    proc = run("-q", "run", str(job))
    assert proc.returncode == 0, proc.stderr
    return job.parent / "out"


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KB tmpfs (root only); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_at_start_ends_with_one_line_and_a_rerun_completes(tiny_disk, tmp_path,
                                                                        reference):
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (200 * 1024))  # leaves a few KB
    job = job_in(tmp_path / "job", output=str(tiny_disk / "out"))
    proc = run("run", str(job), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "not enough space" in last_line(proc.stderr) or "No space left" in proc.stderr
    out = tiny_disk / "out"
    assert_clean(out)
    assert not (out / "summary.json").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    filler.unlink()
    proc = run("-q", "run", str(job))
    assert proc.returncode == 0, proc.stderr
    assert_same_products(out, reference)


def test_disk_filling_mid_write_on_one_rank_ends_every_rank(tmp_path, reference):
    job = job_in(tmp_path / "job")
    proc = subprocess.run([MPIRUN, "-n", "2", "--oversubscribe", sys.executable, "-m", "mpi4py",
                           str(HERE / "mpi" / "faulty_exec.py"), "enospc:gradient.h5", str(job)],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode != 0
    assert "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    out = job.parent / "out"
    assert not [p for p in out.rglob("*") if ".fwimpi-tmp" in p.name]
    assert not (out / "events/ev1/gradient.h5").exists()
    # rerun without the fault: the stale lock (its processes are gone) is taken over
    proc = run("-q", "run", str(job))
    assert proc.returncode == 0, proc.stderr
    assert_same_products(out, reference)
    assert_clean(out)


def test_ranks_stuck_in_different_collectives_are_ended_by_the_watchdog(tmp_path):
    proc = subprocess.run([MPIRUN, "-n", "2", "--oversubscribe", sys.executable, "-m", "mpi4py",
                           str(HERE / "mpi" / "faulty_exec.py"), "desync", "none"],
                          capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode != 0
    assert "did not answer within 3 s" in proc.stderr


# --------------------------------------------------------------------------- signals


def _interrupt(job: Path, signum: int, after: str, delay: float) -> subprocess.Popen:
    """Start ``fwimpi run job``, send ``signum`` ``delay`` s after a log line containing
    ``after``; return the finished process."""
    proc = subprocess.Popen([*FWIMPI, "run", str(job)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    seen = threading.Event()
    lines = []

    def follow():
        for line in proc.stderr:
            lines.append(line)
            if after in line:
                seen.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert seen.wait(120), "".join(lines)
    time.sleep(delay)
    assert proc.poll() is None, "the job ended before it could be interrupted"
    proc.send_signal(signum)
    proc.wait(timeout=90)
    reader.join(10)
    proc.stderr_text = "".join(lines)
    return proc


@pytest.mark.parametrize("signum, after, delay", [
    (signal.SIGTERM, "launching:", 0.0),           # while the ranks start up
    (signal.SIGTERM, "mesh:", 0.3),                # in the forward run
    (signal.SIGINT, "mesh:", 1.5),                 # later: the adjoint
    (signal.SIGTERM, ": misfit L2_energy", 0.0),    # writing products, mapping, smoothing
])
def test_signal_to_the_launcher_stops_every_rank_and_a_rerun_resumes(signum, after, delay,
                                                                      tmp_path):
    job = job_in(tmp_path / "job", LONG_JOB)
    out = job.parent / "out"
    proc = _interrupt(job, signum, after, delay)
    if proc.returncode == 0:
        pytest.skip("the job finished before the signal arrived")
    assert proc.returncode == 128 + signum, proc.stderr_text
    assert last_line(proc.stderr_text).startswith(
        f"fwimpi: interrupted by {signal.Signals(signum).name}")
    assert "Traceback" not in proc.stderr_text
    time.sleep(0.5)
    assert_clean(out)
    again = run("-q", "run", str(job))
    assert again.returncode == 0, again.stderr
    assert (out / "summary.json").is_file()
    assert_clean(out)


def test_interrupted_long_job_resumes_to_the_products_of_an_uninterrupted_one(tmp_path):
    full, cut = job_in(tmp_path / "full", LONG_JOB), job_in(tmp_path / "cut", LONG_JOB)
    assert run("-q", "run", str(full)).returncode == 0
    proc = _interrupt(cut, signal.SIGTERM, ": misfit L2_energy", 0.0)
    assert proc.returncode in (0, 143), proc.stderr_text
    assert run("-q", "run", str(cut)).returncode == 0
    assert_same_products(cut.parent / "out", full.parent / "out")


# --------------------------------------------------------------------------- corrupted files


def flip_bytes(path: Path, where: float = 0.6, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    k = int(len(data) * where)
    data[k:k + count] = bytes(b ^ 0xFF for b in data[k:k + count])
    path.write_bytes(bytes(data))


def test_corrupted_checkpoint_is_not_reused(tmp_path, reference):
    job = job_in(tmp_path / "job")
    assert run("-q", "run", str(job)).returncode == 0
    out = job.parent / "out"
    flip_bytes(out / "checkpoints/ev1.h5")
    (out / "events/ev1/gradient.h5").unlink()  # the event's gradient must be recomputed
    proc = run("run", str(job))
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint file" in proc.stderr and "is damaged" in proc.stderr
    assert_same_products(out, reference)


@pytest.mark.parametrize("damage", ["flipped", "truncated"])
def test_damaged_product_is_recomputed(damage, tmp_path, reference):
    job = job_in(tmp_path / "job")
    assert run("-q", "run", str(job)).returncode == 0
    out = job.parent / "out"
    target = out / "events/ev1/gradient.h5"
    if damage == "flipped":
        flip_bytes(target)
    else:
        target.write_bytes(target.read_bytes()[:1000])
    proc = run("run", str(job))
    assert proc.returncode == 0, proc.stderr
    assert "event ev1: already computed" not in proc.stderr
    assert_same_products(out, reference)


def test_model_file_changed_in_place_is_seen(tmp_path):
    grid = tmp_path / "model.h5"

    def write(vp0):
        with h5py.File(grid, "w") as f:
            f["x"], f["y"] = np.linspace(0.0, 1000.0, 11), np.linspace(-500.0, 0.0, 6)
            f["vp"] = np.full((11, 6), vp0)
            f["rho"] = np.full((11, 6), 1000.0)

    write(1500.0)
    stat = grid.stat()
    job = job_in(tmp_path / "job", JOB.replace('model: {vp: "1500.0 - y", rho: "1000.0 - y"}',
                                               f"model: {{file: {grid}}}"))
    assert run("-q", "run", str(job), "--forward-only").returncode == 0
    write(1600.0)
    os.utime(grid, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    assert grid.stat().st_size == stat.st_size
    proc = run("run", str(job), "--forward-only")
    assert proc.returncode == 0
    assert "already computed" not in proc.stderr
    with h5py.File(job.parent / "out/model.h5") as f:
        assert f["fields/VP"][0] == 1600.0


# --------------------------------------------------------------------------- non-finite results


def test_a_blowing_up_simulation_is_not_a_success(tmp_path):
    job = job_in(tmp_path / "job", JOB.replace("f: 1.0}", "f: 1.0e308}"))
    proc = run("run", str(job), timeout=120)
    assert proc.returncode == 1, proc.stderr
    line = last_line(proc.stderr)
    assert "event ev1" in line and "non-finite by step" in line, line
    out = job.parent / "out"
    assert not (out / "summary.json").exists()
    assert not (out / "events/ev1/gradient.h5").exists()
    assert_clean(out)
