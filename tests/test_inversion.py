"""fwimpi invert end to end: a small inversion lowers the misfit more than tenfold, an
iterate's model file reproduces its misfit under `fwimpi run`, a killed inversion resumes to
the iterates of an uninterrupted one, 1 and 3 ranks give the same iterates, stages and a
coarser inversion mesh work, and bad inversion blocks are refused."""

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

from fwimpi.cli import main

MPIRUN = shutil.which("mpirun")
ENV = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}

TRUE = """name: small-true
ranks_per_job: 1
domain: {dimension: 2, x: [0.0, 1000.0], y: [-500.0, 0.0]}
model: {vp: "1500.0 - y + 60.0 * exp(-((x - 450.0)**2 + (y + 280.0)**2) / 90.0**2)",
        rho: "1000.0 - y"}
events:
  - event_name: ev1
    sources: [{type: ScalarPoint2D, x: 200.0, y: -250.0, f: 1.0}]
    receivers:
      - {type: ArrayPoint2D, x: {linspace: [50.0, 950.0, 19]}, y: 0.0, fields: [phi]}
  - event_name: ev2
    sources: [{type: ScalarPoint2D, x: 800.0, y: -250.0, f: 1.0}]
    receivers:
      - {type: ArrayPoint2D, x: {linspace: [50.0, 950.0, 19]}, y: 0.0, fields: [phi]}
simulation_configuration:
  elements_per_wavelength: 2
  tensor_order: 4
  max_frequency_in_hertz: 10.0
  end_time_in_seconds: 0.8
  wavelet: {type: Ricker, center_frequency: 5.0}
  absorbing_boundaries: {reference_velocity: 2000.0, number_of_wavelengths: 1.0,
                         reference_frequency: 5.0}
output: truth
"""
INVERSION = TRUE.replace("name: small-true", "name: small-inversion").replace(
    """model: {vp: "1500.0 - y + 60.0 * exp(-((x - 450.0)**2 + (y + 280.0)**2) / 90.0**2)",
        rho: "1000.0 - y"}""", 'model: {vp: "1500.0 - y", rho: "1000.0 - y"}').replace(
    "output: truth", """misfit_configuration: {observed_data: OBSERVED, misfit_function: L2}
mappings:
  - {name: m, inversion_parameters: [VP], scaling: relative_deviation_from_prior,
     source_cutout_radius_in_meters: 100.0, region_of_interest: "y < -50.0"}
smoothing: {apply_to: m, type: ConstantSmoothing, smoothing_lengths_in_meters: {VP: [50.0, 50.0]}}
inversion:
  mapping: m
  preconditioner: smoothing
  method: {type: lbfgs, memory: 5}
  iterations: ITERATIONS
  bounds: {VP: [1400.0, 2500.0]}
output: out""")


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("true")
    (folder / "true.yaml").write_text(TRUE)
    assert main(["-q", "run", str(folder / "true.yaml"), "--forward-only"]) == 0
    return folder / "truth"  # an fwimpi output folder as observed data


def job(folder: Path, observed: Path, iterations: int = 6, ranks: int = 1, extra=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = INVERSION
    for old, new in (extra or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    text = text.replace("OBSERVED", str(observed)).replace("ITERATIONS", str(iterations))
    text = text.replace("ranks_per_job: 1", f"ranks_per_job: {ranks}")
    (folder / "job.yaml").write_text(text)
    return folder / "job.yaml"


def summary(folder: Path) -> dict:
    return json.loads((folder / "out/summary.json").read_text())


def final_vp(folder: Path) -> np.ndarray:
    with h5py.File(folder / "out" / summary(folder)["inversion"]["final_model"]) as f:
        return f["fields/VP"][...]


@pytest.fixture(scope="module")
def inverted(observed, tmp_path_factory):
    folder = tmp_path_factory.mktemp("inversion")
    assert main(["-q", "invert", str(job(folder, observed))]) == 0
    return folder


def test_a_small_inversion_lowers_the_misfit_tenfold(inverted):
    iterations = summary(inverted)["inversion"]["iterations"]
    misfits = [it["misfit"] for it in iterations]
    print("misfit / initial:", [round(m / misfits[0], 4) for m in misfits])
    assert [it["iteration"] for it in iterations] == list(range(7))
    assert misfits[-1] < 0.1 * misfits[0]
    assert all(b < a for a, b in zip(misfits, misfits[1:]))  # every update decreases it
    assert all(it["simulations"] >= 2 for it in iterations)  # 2 events per evaluation
    simulation = summary(inverted)["simulation"]
    assert (simulation["ranks_per_job"], simulation["concurrent_events"]) == (1, 1)
    out = inverted / "out"
    for it in iterations:
        assert (out / it["model"]).is_file()
    for name in ("misfit.png", "iteration_006/model.png", "iteration_006/traces.png",
                 "iteration_006/gradient.h5", "iteration_006/model.xdmf"):
        assert (out / "inversion" / name).is_file(), name


def test_bounds_are_never_violated(inverted):
    for it in summary(inverted)["inversion"]["iterations"]:
        with h5py.File(inverted / "out" / it["model"]) as f:
            vp = f["fields/VP"][...]
        assert vp.min() >= 1400.0 - 1e-9 and vp.max() <= 2500.0 + 1e-9


def test_an_iterate_model_reproduces_its_misfit_under_run(inverted, observed, tmp_path):
    it = summary(inverted)["inversion"]["iterations"][3]
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    text = INVERSION.replace("OBSERVED", str(observed)).replace("ITERATIONS", "1").replace(
        'model: {vp: "1500.0 - y", rho: "1000.0 - y"}',
        f"model: {{file: {inverted / 'out' / it['model']}}}")
    (rerun / "job.yaml").write_text(text)
    assert main(["-q", "run", str(rerun / "job.yaml"), "--forward-only"]) == 0
    events = summary(rerun)["events"]
    total = sum(e["misfit"] for e in events.values())
    assert total == pytest.approx(it["misfit"], rel=1e-12)


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
def test_killed_inversion_resumes_to_the_same_iterates(observed, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    for folder in (full, cut):
        job(folder, observed, iterations=4, ranks=2)
    proc = subprocess.run([sys.executable, "-m", "fwimpi.cli", "-q", "invert",
                           str(full / "job.yaml")], env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    runner = subprocess.Popen([sys.executable, "-m", "fwimpi.cli", "invert", str(cut / "job.yaml")],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = cut / "out/inversion/iteration_001/state.npz"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and runner.poll() is None:
        time.sleep(0.02)
    assert runner.poll() is None, "the inversion ended before it could be killed"
    time.sleep(0.3)  # into iteration 2
    ranks = subprocess.run(["pgrep", "-f", f"fwimpi.cli exec {cut / 'job.yaml'}"],
                           capture_output=True, text=True).stdout.split()
    assert ranks
    os.kill(int(max(ranks, key=int)), signal.SIGKILL)
    runner.communicate(timeout=120)
    assert runner.returncode != 0
    assert not (cut / "out/summary.json").exists()
    again = subprocess.run([sys.executable, "-m", "fwimpi.cli", "invert", str(cut / "job.yaml")],
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "of an earlier run reused; continuing" in again.stderr
    a, b = final_vp(cut), final_vp(full)
    assert np.abs(a - b).max() <= 1e-12 * np.abs(b).max()
    assert [it["misfit"] for it in summary(cut)["inversion"]["iterations"]] == pytest.approx(
        [it["misfit"] for it in summary(full)["inversion"]["iterations"]], rel=1e-12)


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
def test_one_and_three_ranks_give_the_same_iterates(observed, tmp_path):
    models = []
    for ranks in (1, 3):
        folder = tmp_path / f"np{ranks}"
        job(folder, observed, iterations=3, ranks=ranks)
        proc = subprocess.run([sys.executable, "-m", "fwimpi.cli", "-q", "invert",
                               str(folder / "job.yaml")], env=ENV, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        models.append(final_vp(folder))
        assert summary(folder)["simulation"]["ranks"] == ranks
    assert np.abs(models[1] - models[0]).max() <= 1e-10 * np.abs(models[0]).max()


def test_stages_and_a_coarse_inversion_mesh(observed, tmp_path):
    folder = tmp_path / "staged"
    extra = {"  iterations: ITERATIONS\n": """  stages:
    - {max_frequency_in_hertz: 4.0, iterations: 2}
    - {max_frequency_in_hertz: 10.0, iterations: 2}
  mesh: {element_size_in_meters: 40.0}
"""}
    path = job(folder, observed, extra=extra)
    assert main(["-q", "invert", str(path)]) == 0
    iterations = summary(folder)["inversion"]["iterations"]
    assert [it["stage"] for it in iterations] == [0, 0, 0, 1, 1]
    for stage in (0, 1):
        misfits = [it["misfit"] for it in iterations if it["stage"] == stage]
        assert all(b < a for a, b in zip(misfits, misfits[1:]))
    with h5py.File(folder / "out/inversion/iteration_004/gradient.h5") as f:
        assert len(f["mesh/points"]) < 2000  # the coarse inversion mesh


@pytest.mark.parametrize("block, field", [
    ("inversion: {mapping: nope}", "inversion.mapping"),
    ("inversion: {mapping: m, bounds: {VP: [3000.0, 1000.0]}}", "inversion.bounds.VP"),
    ("inversion: {mapping: m, stages: [{max_frequency_in_hertz: 20.0}]}",
     "inversion.stages[0].max_frequency_in_hertz"),
    ("inversion: {mapping: m, bounds: {VP: [1800.0, 2500.0]}}", "inversion.bounds.VP"),
    ("inversion: {mapping: m, method: {type: newton}}", "inversion.method.type"),
])
@pytest.mark.parametrize("command", ["invert", "validate"])
def test_bad_inversion_blocks_are_refused(block, field, command, observed, tmp_path, capsys):
    text = INVERSION.replace("OBSERVED", str(observed))
    start = text.index("inversion:")
    text = text[:start] + block + "\noutput: out\n"
    (tmp_path / "job.yaml").write_text(text)
    assert main([command, str(tmp_path / "job.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fwimpi: error: {field}: ") and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_invert_needs_an_inversion_block(observed, tmp_path, capsys):
    (tmp_path / "job.yaml").write_text(TRUE)
    assert main(["invert", str(tmp_path / "job.yaml")]) == 2
    assert "inversion: the job spec has no inversion block" in capsys.readouterr().err
