"""Real MPI runs (mpirun --oversubscribe): identical products on 1, 2, 3 and 4 ranks."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from launch import MPIRUN, exec_on_ranks, mpirun
from test_cli import SMALL_JOB

HERE = Path(__file__).parent
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")

JOB = SMALL_JOB.replace("end_time_in_seconds: 0.6", "end_time_in_seconds: 0.5").replace(
    "{linspace: [100.0, 900.0, 5]}", "{linspace: [0.0, 1000.0, 11]}").replace(
    "y: 0.0, fields", "y: -250.0, fields").replace(  # receivers on edges and rank interfaces
    "output: out", """mappings:
  - {name: map_a, inversion_parameters: [VP], scaling: absolute,
     source_cutout_radius_in_meters: 150.0}
  - {name: map_b, inversion_parameters: [VP, RHO], scaling: relative_deviation_from_prior,
     receiver_cutout_radius_in_meters: 60.0, region_of_interest: "y < -100.0"}
smoothing:
  apply_to: map_b
  type: ConstantSmoothing
  smoothing_lengths_in_meters: {VP: [100.0, 50.0], RHO: [60.0, 60.0]}
output: out""")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The small job run by ``fwimpi exec`` on 1, 2, 3 and 4 ranks."""
    return exec_on_ranks(JOB, tmp_path_factory)


def read(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][...]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_receivers_equal_the_one_rank_run(runs, n):
    ref = read(runs[1] / "events/ev1/receivers.h5", "ev1/phi")
    got = read(runs[n] / "events/ev1/receivers.h5", "ev1/phi")
    assert ref.shape == got.shape and np.abs(ref).max() > 0
    assert np.linalg.norm(got - ref) <= 1e-12 * np.linalg.norm(ref)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_model_file_equals_the_one_rank_file(runs, n):
    for name in ("/mesh/points", "/mesh/cells", "/mesh/quads", "/fields/VP", "/fields/RHO"):
        assert np.array_equal(read(runs[1] / "model.h5", name), read(runs[n] / "model.h5", name)), name
    ref, got = read(runs[1] / "model.h5", "/mesh/mass"), read(runs[n] / "model.h5", "/mesh/mass")
    assert np.allclose(got, ref, rtol=1e-13, atol=0)
    with h5py.File(runs[n] / "model.h5", "r") as f:
        assert f.attrs["nprocs"] == n and "job_spec" in f.attrs and "fwimpi_version" in f.attrs


@pytest.mark.parametrize("n", [1, 4])
def test_summary_reports_ranks_and_misfit(runs, n):
    summary = json.loads((runs[n] / "summary.json").read_text())
    assert summary["simulation"]["ranks"] == n
    ref = json.loads((runs[1] / "summary.json").read_text())["events"]["ev1"]["misfit"]
    assert np.isclose(summary["events"]["ev1"]["misfit"], ref, rtol=1e-12)


def test_run_launches_mpirun_itself(tmp_path):
    (tmp_path / "job.yaml").write_text(JOB.replace("ranks_per_job: 1", "ranks_per_job: 3"))
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    proc = subprocess.run([sys.executable, "-m", "fwimpi.cli", "run", str(tmp_path / "job.yaml")],
                          capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out/summary.json").read_text())["simulation"]["ranks"] == 3


def test_a_rank_raising_mid_run_ends_the_job_quickly_without_partial_files(tmp_path):
    (tmp_path / "job.yaml").write_text(JOB)
    start = time.monotonic()
    proc = mpirun(3, str(HERE / "mpi" / "raise_mid_run.py"), str(tmp_path / "job.yaml"), timeout=120)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert "injected failure at step 50" in proc.stderr
    assert elapsed < 60
    out = tmp_path / "out"
    assert not (out / "summary.json").exists() and not (out / "events").exists()
    assert not list(out.rglob(".*tmp*"))  # no temp files left behind


@pytest.mark.parametrize("n", [2, 3, 4])
def test_gradients_equal_the_one_rank_gradients(runs, n):
    summary = json.loads((runs[n] / "summary.json").read_text())
    path = summary["events"]["ev1"]["gradient"]
    assert path == "events/ev1/gradient.h5" and summary["gradient"] == "gradient.h5"
    for name in ("/fields/VP", "/fields/RHO"):
        ref, got = read(runs[1] / path, name), read(runs[n] / path, name)
        assert np.abs(ref).max() > 0
        assert np.linalg.norm(got - ref) <= 1e-12 * np.linalg.norm(ref), name
        assert np.array_equal(read(runs[n] / "gradient.h5", name), got)  # one event: sum = it
    with h5py.File(runs[n] / path, "r") as f:
        assert f.attrs["kind"] == "raw_gradient" and f.attrs["nprocs"] == n
        assert np.isclose(f.attrs["misfit"], summary["events"]["ev1"]["misfit"], rtol=1e-12)


def test_checkpoints_are_reused_only_with_the_same_settings(runs, tmp_path):
    # A copy of the 2-rank run: the rerun on 3 ranks below must not turn the shared 2-rank
    # products into 3-rank ones (the comparisons with one rank would then test 3 ranks).
    folder = tmp_path / "np2"
    shutil.copytree(runs[2].parent, folder)
    out = folder / "out"
    before = read(out / "events/ev1/gradient.h5", "/fields/VP")
    cached = mpirun(2, "-m", "fwimpi.cli", "exec", str(folder / "job.yaml"))
    assert cached.returncode == 0 and "already computed; not run again" in cached.stderr
    shutil.rmtree(out / ".fwimpi-state")  # forget the products, keep the checkpoints
    again = mpirun(2, "-m", "fwimpi.cli", "exec", str(folder / "job.yaml"))
    assert again.returncode == 0, again.stderr
    assert "checkpoints of an earlier run reused" in again.stderr
    after = read(out / "events/ev1/gradient.h5", "/fields/VP")
    assert np.allclose(after, before, rtol=0, atol=1e-13 * np.abs(before).max())
    shutil.rmtree(out / ".fwimpi-state")
    other = mpirun(3, "-m", "fwimpi.cli", "exec", str(folder / "job.yaml"))
    assert other.returncode == 0, other.stderr
    assert "ranks_per_job 2 -> 3" in other.stderr and "runs again" in other.stderr
    assert np.allclose(read(out / "events/ev1/gradient.h5", "/fields/VP"), before,
                       rtol=0, atol=1e-12 * np.abs(before).max())
    with h5py.File(out / "events/ev1/gradient.h5", "r") as f:
        assert f.attrs["nprocs"] == 3  # really recomputed on 3 ranks


def assert_products_of_an_n_rank_run(out: Path, n: int) -> None:
    """The mapped and smoothed files in ``out`` derive from gradients computed on ``n`` ranks.

    Rank 0 writes them alone (``nprocs`` 1), so their own attributes cannot say so. Instead:
    the summary says ``n`` ranks, the model and raw gradients carry ``nprocs = n``, and the
    mapped and smoothed values are exactly those of these raw gradients: ``map_a`` (absolute
    scaling, 0/1 cutout) is the raw dJ/dVP where it is not cut out, ``map_b`` (relative to
    the prior) the raw gradient times the prior model, and the smoothed file the smoothing
    of that ``map_b`` (recomputed here). The raw gradients of different rank counts differ in
    the last bits, so products of another run fail these equalities.
    """
    from fwimpi.inversion.postprocess import smooth_gradient
    from fwimpi.jobs.spec import load_job_spec
    from fwimpi.mesh.files import read_mesh_h5

    assert json.loads((out / "summary.json").read_text())["simulation"]["ranks"] == n
    for rel in ("model.h5", "events/ev1/gradient.h5", "gradient.h5"):
        with h5py.File(out / rel, "r") as f:
            assert f.attrs["nprocs"] == n, rel
    raw = read_mesh_h5(out / "events/ev1/gradient.h5").fields
    prior = read_mesh_h5(out / "model.h5").fields
    map_a = read_mesh_h5(out / "mappings/map_a.h5").fields["VP"]
    kept = map_a != 0
    assert 0 < kept.sum() < len(map_a)
    assert np.array_equal(map_a[kept], raw["VP"][kept])
    map_b = read_mesh_h5(out / "mappings/map_b.h5")
    for name in ("VP", "RHO"):
        kept = map_b.fields[name] != 0
        expected = raw[name] * prior[name]
        assert kept.any()
        assert np.allclose(map_b.fields[name][kept], expected[kept], rtol=1e-15, atol=0), name
    spec = load_job_spec(out.parent / "job.yaml")
    again = smooth_gradient(spec.smoothing, map_b.fields, map_b.points, map_b.cells, map_b.mass,
                            map_b.order)
    smoothed = read_mesh_h5(out / "smoothed/map_b.h5").fields
    for name in ("VP", "RHO"):
        assert np.allclose(smoothed[name], again[name], rtol=0,
                           atol=1e-14 * np.abs(again[name]).max()), name


@pytest.mark.parametrize("n", [2, 4])
def test_mapped_and_smoothed_files_equal_the_one_rank_files(runs, n):
    assert_products_of_an_n_rank_run(runs[1], 1)
    assert_products_of_an_n_rank_run(runs[n], n)
    summary = json.loads((runs[n] / "summary.json").read_text())
    ref = json.loads((runs[1] / "summary.json").read_text())
    assert summary["mappings"] == {"map_a": "mappings/map_a.h5", "map_b": "mappings/map_b.h5"}
    assert summary["smoothed"] == {"map_b": "smoothed/map_b.h5"}
    assert summary["plots"] == ref["plots"] and all((runs[n] / p).exists() for p in summary["plots"])
    for rel, fields in (("mappings/map_a.h5", ["VP"]), ("mappings/map_b.h5", ["VP", "RHO"]),
                        ("smoothed/map_b.h5", ["VP", "RHO"])):
        for name in fields:
            a, b = read(runs[1] / rel, f"/fields/{name}"), read(runs[n] / rel, f"/fields/{name}")
            assert np.abs(a).max() > 0
            assert np.linalg.norm(b - a) <= 1e-12 * np.linalg.norm(a), (rel, name)
    with h5py.File(runs[n] / "smoothed/map_b.h5", "r") as f:
        assert f.attrs["kind"] == "smoothed_gradient"
        assert "RHO" in f["fields"] and "VP" in f["fields"]


TWO_EVENTS = JOB.replace("output: out", "output: out").replace(
    "events:\n", """events:
  - event_name: ev0
    sources: [{type: ScalarPoint2D, x: 700.0, y: -300.0, f: 1.0}]
    receivers:
      - {type: ArrayPoint2D, x: {linspace: [0.0, 1000.0, 11]}, y: -250.0, fields: [phi]}
""", 1).replace("end_time_in_seconds: 0.5", "end_time_in_seconds: 1.5")


def test_killed_job_resumes_and_gives_the_same_products(tmp_path):
    import signal

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "job.yaml").write_text(TWO_EVENTS)
    # b: uninterrupted
    full = mpirun(2, "-m", "fwimpi.cli", "exec", str(tmp_path / "b/job.yaml"))
    assert full.returncode == 0, full.stderr
    # a: killed (SIGKILL to one rank) once the first event is done
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    job = str(tmp_path / "a/job.yaml")
    proc = subprocess.Popen([MPIRUN, "-n", "2", "--oversubscribe", sys.executable, "-m", "mpi4py",
                             "-m", "fwimpi.cli", "exec", job], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "a/out/.fwimpi-state/event--ev0.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the job ended before it could be killed"
    ranks = subprocess.run(["pgrep", "-f", f"fwimpi.cli exec {job}"], capture_output=True,
                           text=True).stdout.split()
    ranks = [int(p) for p in ranks if int(p) != proc.pid]
    assert ranks
    os.kill(max(ranks), signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert not (tmp_path / "a/out/summary.json").exists()
    for _ in range(100):  # the surviving rank may take a moment to be reaped
        if not any(os.path.exists(f"/proc/{p}") for p in ranks):
            break
        time.sleep(0.1)
    # rerun: the first event is reused, the rest computed
    again = mpirun(2, "-m", "fwimpi.cli", "exec", job)
    assert again.returncode == 0, again.stderr
    assert "event ev0: already computed; not run again" in again.stderr
    # what the kill interrupted (the second event, or the mappings after it) is computed now
    assert "event ev1 (2 of 2, on group 1 of 1): forward" in again.stderr or "written" in again.stderr
    assert "all products" not in again.stderr
    for rel in ("events/ev0/gradient.h5", "events/ev1/gradient.h5", "gradient.h5",
                "mappings/map_b.h5", "smoothed/map_b.h5"):
        a, b = read(tmp_path / "a/out" / rel, "/fields/VP"), read(tmp_path / "b/out" / rel, "/fields/VP")
        assert np.linalg.norm(a - b) <= 1e-12 * np.linalg.norm(b), rel
    assert not list((tmp_path / "a/out").rglob(".*tmp*"))


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, capsys):
    from fwimpi.jobs.state import OutputLock

    (tmp_path / "job.yaml").write_text(JOB)
    with OutputLock(tmp_path / "out"):
        proc = subprocess.run([sys.executable, "-m", "fwimpi.cli", "run", str(tmp_path / "job.yaml")],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "another fwimpi run" in proc.stderr and proc.stderr.count("\n") == 1
