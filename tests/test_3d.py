"""The whole chain in 3D through the command line (DESIGN.md, "Three dimensions"): the
example job validates, and a small 3D job gives the same receivers, gradients, mapped and
smoothed files on 1, 2, 3 and 4 real MPI ranks."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fwimpi.cli import main
from fwimpi.jobs.spec import load_job_spec
from launch import exec_on_ranks

ROOT = Path(__file__).resolve().parents[1]

JOB = """
name: small3d
ranks_per_job: 1
domain: {dimension: 3, x: [0.0, 600.0], y: [0.0, 400.0], z: [-400.0, 0.0]}
model: {vp: "1500.0 - z", rho: "1000.0 - z"}
events:
  - event_name: ev1
    sources: [{type: ScalarPoint3D, x: 200.0, y: 200.0, z: -200.0, f: 1.0}]
    receivers:
      - {type: ArrayPoint3D, x: {linspace: [100.0, 500.0, 3]}, y: [150.0, 250.0], fields: [phi]}
simulation_configuration:
  name: sim
  elements_per_wavelength: 1.5
  tensor_order: 3
  max_frequency_in_hertz: 8.0
  end_time_in_seconds: 0.4
  wavelet: {type: Ricker, center_frequency: 4.0}
  absorbing_boundaries: {reference_velocity: 2000.0, number_of_wavelengths: 0.25,
                         reference_frequency: 4.0}
misfit_configuration:
  name: misfit
  observed_data: null
  misfit_function: L2_energy_no_observed_data
  receiver_field: phi
mappings:
  - {name: map_a, inversion_parameters: [VP, RHO], scaling: absolute,
     source_cutout_radius_in_meters: 100.0}
  - {name: map_b, inversion_parameters: [VP], scaling: relative_deviation_from_prior,
     receiver_cutout_radius_in_meters: 50.0, region_of_interest: "z < -50.0 and y > 100"}
smoothing:
  apply_to: map_b
  type: ConstantSmoothing
  smoothing_lengths_in_meters: {VP: [80.0, 60.0, 40.0]}
output: out
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The small 3D job run by ``fwimpi exec`` on 1, 2, 3 and 4 ranks."""
    return exec_on_ranks(JOB, tmp_path_factory)


def read(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][...]


def test_the_example_job_validates(capsys):
    assert main(["validate", str(ROOT / "jobs" / "tutorial_3d.yaml")]) == 0
    text = capsys.readouterr().out
    assert " x " in text.splitlines()[1] and text.splitlines()[1].count(" x ") >= 3


def test_spec_grids_receivers_and_defaults_their_depth_to_the_surface(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    spec = load_job_spec(path)
    coords = spec.events[0].receiver_coordinates
    assert coords.shape == (6, 3)
    assert np.allclose(coords[:, 2], 0.0)  # z defaults to the top
    assert np.allclose(coords[:3, 0], [100, 300, 500]) and np.allclose(coords[:3, 1], 150)
    assert spec.domain.box.bounds[2] == (-400.0, 0.0)
    # the resolved spec parses again to the same spec
    again = tmp_path / "again.yaml"
    again.write_text(json.dumps(spec.resolved))
    assert load_job_spec(again).events == spec.events


def test_products_have_three_dimensional_points_and_hexahedra(runs):
    out = runs[1]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["mappings"]) == {"map_a", "map_b"} and summary["smoothed"]
    points = read(out / "model.h5", "/mesh/points")
    cells = read(out / "model.h5", "/mesh/cells")
    assert points.shape[1] == 3 and cells.shape[1] == 4**3
    with h5py.File(out / "events/ev1/receivers.h5", "r") as f:
        assert f["ev1/coordinates"].shape == (6, 3)
    assert "Hexahedron" in (out / "model.xdmf").read_text()
    grad = read(out / "gradient.h5", "/fields/VP")
    assert np.isfinite(grad).all() and np.abs(grad).max() > 0


@pytest.mark.parametrize("n", [2, 3, 4])
def test_products_equal_the_one_rank_run(runs, n):
    files = [("events/ev1/receivers.h5", "ev1/phi"), ("gradient.h5", "/fields/VP"),
             ("gradient.h5", "/fields/RHO")]
    summary = json.loads((runs[1] / "summary.json").read_text())
    files += [(path, "/fields/VP") for path in summary["mappings"].values()]
    files += [(path, "/fields/VP") for path in summary["smoothed"].values()]
    for path, name in files:
        ref, got = read(runs[1] / path, name), read(runs[n] / path, name)
        assert ref.shape == got.shape and np.abs(ref).max() > 0, (path, name)
        assert np.linalg.norm(got - ref) <= 1e-12 * np.linalg.norm(ref), (path, name)
    misfits = [json.loads((runs[k] / "summary.json").read_text())["events"]["ev1"]["misfit"]
               for k in (1, n)]
    assert abs(misfits[1] - misfits[0]) <= 1e-12 * abs(misfits[0])


TRUE = """
name: true3d
ranks_per_job: 1
domain: {dimension: 3, x: [0.0, 600.0], y: [0.0, 400.0], z: [-400.0, 0.0]}
model:
  vp: "1500.0 - z + 150*exp(-((x-300)**2 + (y-200)**2 + (z+200)**2)/8000)"
  rho: "1000.0 - z"
events:
  - event_name: ev1
    sources: [{type: ScalarPoint3D, x: 150.0, y: 200.0, z: -100.0, f: 1.0}]
    receivers:
      - {type: ArrayPoint3D, x: {linspace: [50.0, 550.0, 6]}, y: [100.0, 300.0], z: -20.0}
  - event_name: ev2
    sources: [{type: ScalarPoint3D, x: 450.0, y: 200.0, z: -100.0, f: 1.0}]
    receivers:
      - {type: ArrayPoint3D, x: {linspace: [50.0, 550.0, 6]}, y: [100.0, 300.0], z: -20.0}
simulation_configuration:
  name: sim
  elements_per_wavelength: 1.5
  tensor_order: 3
  max_frequency_in_hertz: 8.0
  end_time_in_seconds: 0.6
  wavelet: {type: Ricker, center_frequency: 4.0}
  absorbing_boundaries: {reference_velocity: 2000.0, number_of_wavelengths: 0.25,
                         reference_frequency: 4.0}
output: truth
"""

INVERSION = TRUE.replace("name: true3d", "name: inv3d").replace(
    " + 150*exp(-((x-300)**2 + (y-200)**2 + (z+200)**2)/8000)", "").replace(
    "output: truth", """misfit_configuration:
  name: misfit
  observed_data: truth
  misfit_function: L2
  receiver_field: phi
mappings:
  - {name: m, inversion_parameters: [VP], scaling: absolute, source_cutout_radius_in_meters: 60.0}
smoothing: {apply_to: m, type: ConstantSmoothing,
            smoothing_lengths_in_meters: {VP: [40.0, 40.0, 40.0]}}
inversion:
  mapping: m
  preconditioner: smoothing
  iterations: 3
  bounds: {VP: [1400.0, 2200.0]}
output: inverted""")


def test_a_3d_inversion_lowers_the_misfit_and_its_iterates_rerun(tmp_path):
    """A Gaussian VP anomaly under two shots: three L-BFGS updates lower the misfit, the
    update peaks above the anomaly at its depth, and an iterate's model file run again (bringing its 3D
    mesh) reproduces that iterate's misfit."""
    (tmp_path / "true.yaml").write_text(TRUE)
    (tmp_path / "inv.yaml").write_text(INVERSION)
    assert main(["-q", "run", str(tmp_path / "true.yaml"), "--forward-only"]) == 0
    assert main(["-q", "invert", str(tmp_path / "inv.yaml")]) == 0
    out = tmp_path / "inverted"
    iterations = json.loads((out / "summary.json").read_text())["inversion"]["iterations"]
    misfits = [it["misfit"] for it in iterations]
    print("3D misfit / initial:", [round(m / misfits[0], 4) for m in misfits])
    assert len(misfits) == 4 and misfits[-1] < 0.6 * misfits[0]
    start, final = (read(out / iterations[k]["model"], "/fields/VP") for k in (0, -1))
    points = read(out / iterations[-1]["model"], "/mesh/points")
    # at the anomaly's depth, the update peaks above it (near the surface the receivers'
    # footprint dominates, as in any surface-acquisition FWI)
    depth = np.abs(points[:, 2] + 200.0) < 30.0
    peak = points[depth][np.argmax((final - start)[depth])]
    assert np.linalg.norm(peak[:2] - [300.0, 200.0]) < 100.0, peak
    rerun = tmp_path / "rerun.yaml"
    assert 'vp: "1500.0 - z"\n  rho: "1000.0 - z"' in INVERSION
    rerun.write_text(INVERSION.replace(
        'vp: "1500.0 - z"\n  rho: "1000.0 - z"',
        f"file: {out / iterations[2]['model']}").replace("output: inverted", "output: rerun"))
    assert main(["-q", "run", str(rerun), "--forward-only"]) == 0
    events = json.loads((tmp_path / "rerun" / "summary.json").read_text())["events"]
    assert sum(e["misfit"] for e in events.values()) == pytest.approx(iterations[2]["misfit"],
                                                                      rel=1e-12)


def test_segy_observed_data_of_a_3d_job_gives_the_hdf5_misfit(tmp_path, capsys):
    """Receivers of a 3D run exported to SEG-Y (x, y, elevation in the headers) and read
    back as observed data: the misfit of the HDF5 path to float32; observed data of the
    other dimension is one line and exit 2."""
    job = JOB.replace("end_time_in_seconds: 0.4", "end_time_in_seconds: 0.4\n  "
                      "time_step_in_seconds: 0.002")  # whole microseconds: SEG-Y as it is
    (tmp_path / "true.yaml").write_text(job.replace("output: out", "output: truth"))
    assert main(["-q", "run", str(tmp_path / "true.yaml"), "--forward-only"]) == 0
    receivers = tmp_path / "truth/events/ev1/receivers.h5"
    assert main(["-q", "export", str(receivers), "-o", str(tmp_path / "{event}.sgy")]) == 0
    misfits = {}
    for name, observed in (("h5", receivers), ("sgy", tmp_path / "{event}.sgy")):
        text = job.replace("observed_data: null", f"observed_data: {observed}").replace(
            "L2_energy_no_observed_data", "L2").replace("f: 1.0", "f: 1.1")
        (tmp_path / f"{name}.yaml").write_text(text.replace("output: out", f"output: {name}"))
        assert main(["-q", "run", str(tmp_path / f"{name}.yaml"), "--forward-only"]) == 0
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        misfits[name] = summary["events"]["ev1"]["misfit"]
    assert misfits["h5"] > 0
    assert abs(misfits["sgy"] - misfits["h5"]) <= 1e-5 * misfits["h5"], misfits
    flat = tmp_path / "flat.yaml"  # a 2D line's file for a 3D job
    assert main(["-q", "export", str(tmp_path / "ev1.sgy"), "-o", str(tmp_path / "flat.h5"),
                 "--event", "ev1"]) == 0
    flat.write_text(job.replace("observed_data: null", f"observed_data: {tmp_path / 'flat.h5'}")
                    .replace("L2_energy_no_observed_data", "L2").replace("output: out",
                                                                         "output: flat"))
    capsys.readouterr()
    assert main(["run", str(flat), "--forward-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "shape (6, 2), but the domain is 3D" in err, err
    assert not (tmp_path / "flat").exists()
