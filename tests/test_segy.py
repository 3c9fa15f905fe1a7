"""SEG-Y in and out: receivers -> SEG-Y (`fwimpi export`) -> observed data gives the HDF5
path's misfit to float32 precision, geometry reads back to 1 mm, shuffled traces still match
by position, SU files read, and what cannot be matched or written is a one-line error."""

import json

import numpy as np
import pytest
import segyio

from fwimpi.cli import main
from fwimpi.mesh.files import ReceiverData, read_receivers_h5, write_receivers_h5
from fwimpi.mesh.segy import read_segy, segy_time_axis, write_segy
from test_cli import write_job

FIXED = {"end_time_in_seconds: 0.6": "end_time_in_seconds: 0.6\n  time_step_in_seconds: 0.001"}
L2 = {"misfit_function: L2_energy_no_observed_data": "misfit_function: L2"}


@pytest.fixture(scope="module")
def true_run(tmp_path_factory):
    """Observed data: receivers of a forward run on another model, as HDF5 and SEG-Y."""
    root = tmp_path_factory.mktemp("segy")
    (root / "true").mkdir()
    job = write_job(root / "true", **FIXED, **{'vp: "1500.0 - y"': 'vp: "1450.0 - y"'})
    assert main(["-q", "run", str(job), "--forward-only"]) == 0
    receivers = root / "true/out/events/ev1/receivers.h5"
    assert main(["export", str(receivers), "-o", str(root / "{event}.sgy")]) == 0
    return root, receivers


def _misfit(folder, observed) -> float:
    folder.mkdir()
    job = write_job(folder, **FIXED, **L2,
                    **{"observed_data: null": f"observed_data: {observed}"})
    assert main(["-q", "run", str(job), "--forward-only"]) == 0
    return json.loads((folder / "out/summary.json").read_text())["events"]["ev1"]["misfit"]


def test_exported_geometry_and_samples_read_back(true_run):
    root, receivers = true_run
    rec = read_receivers_h5(receivers)["ev1"]
    segy = read_segy(root / "ev1.sgy", "phi")
    assert np.abs(segy.data.coordinates - rec.coordinates).max() <= 1e-3
    assert np.abs(segy.sources - [300.0, -250.0]).max() <= 1e-3
    assert segy.data.dt == rec.dt and segy.data.start_time == rec.start_time
    phi = rec.traces["phi"]
    assert np.array_equal(segy.data.traces["phi"], phi.astype(np.float32).astype(np.float64))
    with segyio.open(root / "ev1.sgy", ignore_geometry=True) as f:  # what other tools read
        assert f.bin[segyio.BinField.Interval] == 1000 and f.tracecount == len(phi)
        assert list(f.attributes(segyio.TraceField.GroupX)[:]) == [100000, 300000, 500000,
                                                                  700000, 900000]
        assert f.header[0][segyio.TraceField.SourceGroupScalar] == -1000


def test_segy_observed_data_gives_the_hdf5_misfit_to_float32(true_run):
    root, receivers = true_run
    j_h5 = _misfit(root / "h5", receivers)
    j_segy = _misfit(root / "sgy", root / "{event}.sgy")
    # data rounded to float32 (relative 6e-8) moves J by at most that times ||d|| / ||u - d||
    assert j_h5 > 0 and abs(j_segy - j_h5) <= 1e-6 * j_h5


def test_shuffled_segy_traces_match_by_position(true_run):
    root, _ = true_run
    segy = read_segy(root / "ev1.sgy", "phi").data
    order = np.array([3, 0, 4, 2, 1])
    shuffled = ReceiverData({"phi": segy.traces["phi"][order]}, segy.coordinates[order],
                            segy.dt, segy.start_time, segy.stations)
    (root / "shuffled").mkdir()
    write_segy(root / "shuffled/ev1.sgy", shuffled, "phi", (300.0, -250.0))
    j = _misfit(root / "sgy_shuffled", root / "shuffled/{event}.sgy")
    assert j == _misfit(root / "sgy_ordered", root / "{event}.sgy")


def test_su_file_reads_like_segy(true_run, tmp_path):
    root, _ = true_run
    raw = (root / "ev1.sgy").read_bytes()
    (tmp_path / "ev1.su").write_bytes(raw[3600:])  # SU: SEG-Y without its file headers
    su, segy = read_segy(tmp_path / "ev1.su", "phi"), read_segy(root / "ev1.sgy", "phi")
    assert np.array_equal(su.data.traces["phi"], segy.data.traces["phi"])
    assert np.array_equal(su.data.coordinates, segy.data.coordinates)
    assert su.data.dt == segy.data.dt


def test_segy_back_to_a_receivers_file(true_run, tmp_path):
    root, _ = true_run
    target = tmp_path / "back.h5"
    assert main(["export", str(root / "ev1.sgy"), "-o", str(target)]) == 0
    back = read_receivers_h5(target)["ev1"]
    segy = read_segy(root / "ev1.sgy", "phi").data
    assert np.array_equal(back.traces["phi"], segy.traces["phi"])
    assert np.array_equal(back.coordinates, segy.coordinates)


def test_a_time_axis_of_fractional_microseconds_is_resampled(tmp_path):
    dt = 1.2345e-3
    t = dt * np.arange(800)
    signal = np.exp(-((t - 0.4) / 0.05) ** 2) * np.cos(2 * np.pi * 6 * (t - 0.4))
    rec = ReceiverData({"p": np.vstack([signal, 2 * signal])}, np.array([[0.0, 0.0], [5.0, 0.0]]),
                       dt, 0.0, ("A", "B"))
    write_segy(tmp_path / "x.sgy", rec, "p", None)
    back = read_segy(tmp_path / "x.sgy", "p")
    assert segy_time_axis(dt, 0.0, 800) == (1234, 0, 800)
    assert back.data.dt == 1.234e-3 and np.isnan(back.sources).all()
    tb = back.data.dt * np.arange(back.data.traces["p"].shape[1])
    exact = np.exp(-((tb - 0.4) / 0.05) ** 2) * np.cos(2 * np.pi * 6 * (tb - 0.4))
    assert np.abs(back.data.traces["p"][1] - 2 * exact).max() <= 1e-5 * 2  # of the peak


@pytest.mark.parametrize("case, message", [
    ("source", "trace 1 was shot at (310, -250), not at the event's source (300, -250)"),
    ("receiver", "no trace for receiver R0004 at (900, 0)"),
])
def test_segy_that_does_not_fit_the_event_is_a_one_line_error(true_run, tmp_path, capsys,
                                                              case, message):
    root, _ = true_run
    segy = read_segy(root / "ev1.sgy", "phi").data
    keep = slice(None) if case == "source" else slice(0, 4)
    cut = ReceiverData({"phi": segy.traces["phi"][keep]}, segy.coordinates[keep], segy.dt,
                       segy.start_time, segy.stations[keep])
    write_segy(tmp_path / "ev1.sgy", cut, "phi", (310.0 if case == "source" else 300.0, -250.0))
    (tmp_path / "job").mkdir()
    job = write_job(tmp_path / "job", **FIXED, **L2,
                    **{"observed_data: null": f"observed_data: {tmp_path / '{event}.sgy'}"})
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "misfit_configuration.observed_data: event 'ev1'" in err
    assert message in err
    assert not (tmp_path / "job/out").exists()


def test_export_never_overwrites_and_names_what_is_wrong(true_run, tmp_path, capsys):
    root, receivers = true_run
    assert main(["export", str(receivers), "-o", str(root / "{event}.sgy")]) == 2
    assert "ev1.sgy exists" in capsys.readouterr().err
    model = root / "true/out/model.h5"
    assert main(["export", str(model), "-o", str(tmp_path / "m.vtu")]) == 0
    assert main(["export", str(model), "-o", str(tmp_path / "m.vtu")]) == 2  # VTU too
    assert "m.vtu exists" in capsys.readouterr().err
    assert main(["export", str(receivers), "-o", str(tmp_path / "x.sgy"), "--field", "p"]) == 2
    assert "--field: event 'ev1'" in capsys.readouterr().err
    assert main(["export", str(receivers), "-o", str(tmp_path / "x.sgy"), "--dt", "1e-7"]) == 2
    assert "--dt" in capsys.readouterr().err
    assert not (tmp_path / "x.sgy").exists()
    assert main(["export", str(receivers), "-o", str(tmp_path / "y.sgy"), "--dt", "0.002"]) == 0
    assert read_segy(tmp_path / "y.sgy", "phi").data.dt == 0.002
