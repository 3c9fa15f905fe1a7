"""The fwimpi command line: exit codes, one-line errors, products and their layout."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import numpy as np
import pytest

from fwimpi.cli import main
from fwimpi.mesh.files import (ReceiverData, read_mesh_h5, read_receivers_h5,
                               write_receivers_h5)

HERE = Path(__file__).parent
BAD_SPECS = sorted((HERE / "specs" / "bad").glob("*.yaml"))

SMALL_JOB = """
name: small
ranks_per_job: 1
domain: {dimension: 2, x: [0.0, 1000.0], y: [-500.0, 0.0]}
model: {vp: "1500.0 - y", rho: "1000.0 - y"}
events:
  - event_name: ev1
    sources: [{type: ScalarPoint2D, x: 300.0, y: -250.0, f: 1.0}]
    receivers:
      - {type: ArrayPoint2D, x: {linspace: [100.0, 900.0, 5]}, y: 0.0, fields: [phi]}
simulation_configuration:
  name: sim
  elements_per_wavelength: 2
  tensor_order: 4
  max_frequency_in_hertz: 10.0
  end_time_in_seconds: 0.6
  wavelet: {type: Ricker, center_frequency: 5.0}
  absorbing_boundaries: {reference_velocity: 2000.0, number_of_wavelengths: 1.0,
                         reference_frequency: 5.0}
misfit_configuration:
  name: misfit
  observed_data: null
  misfit_function: L2_energy_no_observed_data
  receiver_field: phi
output: out
"""


def write_job(folder: Path, text: str = SMALL_JOB, **replace) -> Path:
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = folder / "job.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("spec", BAD_SPECS, ids=[p.stem for p in BAD_SPECS])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_bad_spec_exit_2_one_line_nothing_written(spec, command, tmp_path, capsys):
    job = tmp_path / spec.name
    shutil.copy(spec, job)
    assert main([command, str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fwimpi: error: ") and "\n" not in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name]


def test_bad_spec_through_the_console_script(tmp_path):
    job = write_job(tmp_path, **{"tensor_order: 4": "tensor_order: 0"})
    proc = subprocess.run([sys.executable, "-m", "fwimpi.cli", "run", str(job)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fwimpi: error: simulation_configuration.tensor_order: ")
    assert not (tmp_path / "out").exists()


def test_time_step_above_cfl_is_rejected_before_any_output(tmp_path, capsys):
    job = write_job(tmp_path, **{"end_time_in_seconds: 0.6": "end_time_in_seconds: 0.6\n  time_step_in_seconds: 0.05"})
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "simulation_configuration.time_step_in_seconds" in err and "CFL" in err
    assert not (tmp_path / "out").exists()


def test_expression_payload_is_rejected_and_nothing_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    job = write_job(tmp_path, **{'"1500.0 - y"': f"\"__import__('os').system('touch {marker}')\""})
    assert main(["run", str(job)]) == 2
    assert "model.vp" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_run_writes_the_contract_products(tmp_path):
    job = write_job(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "fwimpi.cli", "run", str(job), "--forward-only"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["job"] == "small"
    sim = summary["simulation"]
    for key in ("ranks", "n_elements", "n_points", "n_steps", "dt", "forward_seconds",
                "adjoint_seconds", "peak_memory_mb_per_rank"):
        assert key in sim
    assert sim["ranks"] == 1 and sim["forward_seconds"] > 0
    event = summary["events"]["ev1"]
    receivers = out / event["receivers"]
    with h5py.File(receivers, "r") as f:
        phi = f["ev1/phi"][...]
        assert phi.shape == (5, sim["n_steps"] + 1)
        assert f["ev1/coordinates"].shape == (5, 2)
        assert np.isclose(f["ev1"].attrs["dt"], sim["dt"]) and f["ev1"].attrs["start_time"] == 0.0
    assert np.allclose(read_receivers_h5(receivers)["ev1"].coordinates[:, 0],
                       np.linspace(100, 900, 5))
    # misfit as DESIGN.md defines it on the discrete traces
    assert np.isclose(event["misfit"], 0.5 * sim["dt"] * np.sum(phi**2), rtol=1e-12)
    assert np.abs(phi).max() > 0
    model = read_mesh_h5(out / summary["model"])
    assert model.cells.shape == (sim["n_elements"], 25) and model.points.shape == (sim["n_points"], 2)
    assert np.allclose(model.fields["VP"], 1500.0 - np.clip(model.points[:, 1], -500, 0))
    assert (out / "model.xdmf").exists()
    assert not list(out.rglob(".*tmp*"))
    # export to VTU
    proc = subprocess.run([sys.executable, "-m", "fwimpi.cli", "export", str(out / "model.h5")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.vtu").stat().st_size > 0


def test_time_step_and_time_shift_are_honoured(tmp_path):
    dt = 1e-3
    base = {"end_time_in_seconds: 0.6": f"end_time_in_seconds: 0.6\n  time_step_in_seconds: {dt}"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shifted = "center_frequency: 5.0, time_shift_in_seconds: {}}}"
    ja = write_job(tmp_path / "a", **{**base, "center_frequency: 5.0}": shifted.format(0.4)})
    jb = write_job(tmp_path / "b", **{**base, "center_frequency: 5.0}": shifted.format(0.42)})
    assert main(["-q", "run", str(ja)]) == 0 and main(["-q", "run", str(jb)]) == 0
    sa = json.loads((tmp_path / "a/out/summary.json").read_text())
    assert sa["simulation"]["dt"] == dt and sa["simulation"]["n_steps"] == 600
    a = read_receivers_h5(tmp_path / "a/out/events/ev1/receivers.h5")["ev1"].traces["phi"]
    b = read_receivers_h5(tmp_path / "b/out/events/ev1/receivers.h5")["ev1"].traces["phi"]
    # shifts of 0.4 s (a Ricker tail of 1e-17 at t = 0) and 0.42 s: exactly 20 steps apart
    assert np.allclose(b[:, 20:], a[:, :-20], atol=1e-9 * np.abs(a).max())
    assert not np.allclose(a, b)


def test_validate_prints_the_derived_settings(tmp_path, capsys):
    job = write_job(tmp_path)
    assert main(["validate", str(job), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["derived"]["n_points"] > 0 and out["derived"]["dt"] > 0
    assert not (tmp_path / "out").exists()


def test_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "fwimpi.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for word in ("validate", "run", "exec", "export", "examples"):
        assert word in proc.stdout


@pytest.mark.parametrize("function", ["L2", "cross_correlation_time_shift"])
def test_misfit_against_observed_data_from_an_earlier_run(tmp_path, function):
    fixed_dt = {"end_time_in_seconds: 0.6": "end_time_in_seconds: 0.6\n  time_step_in_seconds: 0.001"}
    (tmp_path / "true").mkdir()
    true = write_job(tmp_path / "true", **fixed_dt, **{'vp: "1500.0 - y"': 'vp: "1450.0 - y"'})
    assert main(["-q", "run", str(true), "--forward-only"]) == 0
    observed = tmp_path / "true/out/events/ev1/receivers.h5"
    job = write_job(tmp_path, **fixed_dt, **{
        "observed_data: null": f"observed_data: {observed}",
        "misfit_function: L2_energy_no_observed_data": f"misfit_function: {function}"})
    assert main(["-q", "run", str(job)]) == 0
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    misfit = summary["events"]["ev1"]["misfit"]
    u = read_receivers_h5(tmp_path / "out/events/ev1/receivers.h5")["ev1"].traces["phi"]
    d = read_receivers_h5(observed)["ev1"].traces["phi"]
    if function == "L2":
        assert np.isclose(misfit, 0.5 * 0.001 * np.sum((u - d) ** 2), rtol=1e-12)
    assert misfit > 0
    grad = read_mesh_h5(tmp_path / "out" / summary["events"]["ev1"]["gradient"])
    assert np.abs(grad.fields["VP"]).max() > 0


def test_observed_data_on_another_time_axis_is_resampled(tmp_path, capsys):
    """The same data recorded every 1 ms and every 2 ms (every other sample) give the same
    misfit against a simulation at 1 ms, to the accuracy of
    the band-limited resampling; an fwimpi output folder serves as observed data."""
    fixed = {"end_time_in_seconds: 0.6": "end_time_in_seconds: 0.6\n  time_step_in_seconds: 0.001"}
    (tmp_path / "same").mkdir()
    assert main(["-q", "run", str(write_job(tmp_path / "same", **fixed, **{
        'vp: "1500.0 - y"': 'vp: "1450.0 - y"'})), "--forward-only"]) == 0
    rec = read_receivers_h5(tmp_path / "same/out/events/ev1/receivers.h5")["ev1"]
    coarse = ReceiverData({"phi": rec.traces["phi"][:, ::2]}, rec.coordinates, 2 * rec.dt,
                          rec.start_time, rec.stations)
    write_receivers_h5(tmp_path / "coarse.h5", {"ev1": coarse}, {})
    misfits = []
    for name, observed in (("same", tmp_path / "same/out"), ("coarse", tmp_path / "coarse.h5")):
        folder = tmp_path / f"inv_{name}"
        folder.mkdir()
        job = write_job(folder, **{
            "end_time_in_seconds: 0.6": "end_time_in_seconds: 0.58\n  time_step_in_seconds: 0.001",
            "observed_data: null": f"observed_data: {observed}",
            "misfit_function: L2_energy_no_observed_data": "misfit_function: L2"})
        assert main(["-q", "run", str(job), "--forward-only"]) == 0
        misfits.append(json.loads((folder / "out/summary.json").read_text())
                       ["events"]["ev1"]["misfit"])
    print(f"misfit with data at 1 ms {misfits[0]:.10g}, resampled from 2 ms {misfits[1]:.10g}")
    assert misfits[0] > 0 and abs(misfits[1] - misfits[0]) < 1e-4 * misfits[0], misfits


def test_observed_data_that_cannot_be_resampled_is_refused(tmp_path, capsys):
    (tmp_path / "true").mkdir()
    assert main(["-q", "run", str(write_job(tmp_path / "true")), "--forward-only"]) == 0
    observed = tmp_path / "true/out/events/ev1/receivers.h5"
    fixed = {"end_time_in_seconds: 0.6": "end_time_in_seconds: 0.6\n  time_step_in_seconds: 0.001",
             "observed_data: null": f"observed_data: {observed}",
             "misfit_function: L2_energy_no_observed_data": "misfit_function: L2"}
    with h5py.File(observed, "r+") as f:  # white noise: its band reaches its Nyquist frequency
        f["ev1/phi"][...] = np.random.default_rng(0).standard_normal(f["ev1/phi"].shape)
    assert main(["run", str(write_job(tmp_path, **fixed))]) == 2
    assert "not band-limited" in capsys.readouterr().err
    longer = {**fixed, "end_time_in_seconds: 0.6": "end_time_in_seconds: 0.9\n  time_step_in_seconds: 0.001"}
    assert main(["run", str(write_job(tmp_path, **longer))]) == 2
    assert "the data covers t in [0, 0.6" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("roi", ["__import__('os').system('touch pwned')", "z < 1", "y <"])
def test_bad_region_of_interest_is_rejected_before_any_work(tmp_path, capsys, roi):
    job = write_job(tmp_path, **{"output: out": f"""mappings:
  - {{name: m, inversion_parameters: [VP], region_of_interest: "{roi}"}}
output: out"""})
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err
    assert "mappings[0].region_of_interest" in err and err.count(chr(10)) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "pwned").exists()


def test_validation_does_not_initialise_mpi(tmp_path):
    # A launcher that initialised MPI (importing mpi4py.MPI or petsc4py.PETSc) as a singleton
    # cannot start mpirun children: validation must stay free of both.
    job = write_job(tmp_path, **{"output: out": """mappings:
  - {name: m, inversion_parameters: [VP], region_of_interest: "y < -100.0"}
smoothing: {apply_to: m, type: ConstantSmoothing, smoothing_lengths_in_meters: {VP: [50.0, 50.0]}}
output: out"""})
    code = ("import sys; from fwimpi.jobs.spec import load_job_spec; "
            "from fwimpi.jobs.plan import plan_job; "
            f"plan_job(load_job_spec({str(job)!r}), 2); "
            "bad = [m for m in ('mpi4py.MPI', 'petsc4py.PETSc') if m in sys.modules]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_compression_study_prints_the_table(tmp_path, capsys):
    job = write_job(tmp_path, **{"output: out": """mappings:
  - {name: m, inversion_parameters: [VP], scaling: relative_deviation_from_prior}
output: out"""})
    assert main(["-q", "compression-study", str(job), "--intervals", "1", "5", "10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[-4:-1]
    assert [line.split()[0] for line in table] == ["1", "5", "10"]
    raw5, raw10 = float(table[1].split()[1]), float(table[2].split()[1])
    assert float(table[0].split()[1]) == 0.0 and 0 < raw5 < raw10 < 0.5
    study = json.loads((tmp_path / "out/compression/study.json").read_text())
    assert study["mapping"] == "m" and len(study["rows"]) == 3
    # one side-by-side figure: a panel per interval, titled with its difference
    figure = tmp_path / "out/compression/study.png"
    assert lines[-1] == f"figure: {figure}" and study["figure"] == "study.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    width = matplotlib.image.imread(figure).shape[1]
    assert width > 1000  # three panels side by side (one alone is about 500 pixels)


def test_gridded_model_file_written_by_xarray_gives_the_expression_model(tmp_path):
    xr = pytest.importorskip("xarray")
    x = np.linspace(0.0, 1000.0, 10)
    y = np.linspace(-500.0, 0.0, 10)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    xr.Dataset({"vp": (["x", "y"], 1500.0 - yy), "rho": (["x", "y"], 1000.0 - yy)},
               coords={"x": x, "y": y}).to_netcdf(tmp_path / "model.nc")
    (tmp_path / "a").mkdir()
    expr = write_job(tmp_path / "a")
    grid = write_job(tmp_path, **{'model: {vp: "1500.0 - y", rho: "1000.0 - y"}': "model: {file: model.nc}"})
    assert main(["-q", "run", str(expr), "--forward-only"]) == 0
    assert main(["-q", "run", str(grid), "--forward-only"]) == 0
    a = read_mesh_h5(tmp_path / "a/out/model.h5").fields
    b = read_mesh_h5(tmp_path / "out/model.h5").fields
    for name in ("VP", "RHO"):  # bilinear interpolation of a linear model is exact
        assert np.allclose(a[name], b[name], rtol=1e-12)
