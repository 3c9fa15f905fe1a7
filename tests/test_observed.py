"""Observed data is matched to the spec's receivers by station name, else by position (1 mm),
never by order: a file whose traces come in another order gives the same misfit."""

import json

import numpy as np
import pytest

from fwimpi.cli import main
from fwimpi.errors import ConfigError
from fwimpi.jobs.plan import match_receivers
from fwimpi.mesh.files import ReceiverData, read_receivers_h5, write_receivers_h5
from fwimpi.sem.acquisition import Event, PointSource, Receiver
from test_cli import write_job

EVENT = Event("e", (PointSource((0.0, -1.0), 1.0),),
              (Receiver((0.0, 0.0), "A"), Receiver((10.0, 0.0), "B"), Receiver((20.0, 0.0), "C")))


def data(coords, stations):
    coords = np.asarray(coords, float)
    return ReceiverData({"phi": np.arange(len(coords))[:, None] * np.ones((1, 4))}, coords,
                        0.1, 0.0, stations)


def test_match_by_name_and_position_whatever_the_order():
    d = data([(20.0, 0.0), (0.0, 0.0), (10.0, 0.0)], ["C", "A", "B"])
    assert match_receivers(EVENT, d, "obs").tolist() == [1, 2, 0]


def test_match_by_position_when_names_differ():
    d = data([(10.0, 0.0005), (20.0, 0.0), (0.0, 0.0)], ["X1", "X2", "X3"])
    assert match_receivers(EVENT, d, "obs").tolist() == [2, 0, 1]


def test_a_name_whose_trace_lies_elsewhere_falls_back_to_the_position():
    # the file's "A" sits at 20 m (another job's numbering): the receiver at 0 m takes the
    # trace at 0 m, never the one of the same name
    d = data([(20.0, 0.0), (0.0, 0.0), (10.0, 0.0)], ["A", "B", "C"])
    assert match_receivers(EVENT, d, "obs").tolist() == [1, 2, 0]


def test_a_receiver_without_a_trace_is_an_error_naming_it():
    d = data([(0.0, 0.0), (10.0, 0.0)], ["A", "B"])
    with pytest.raises(ConfigError, match=r"^obs: no trace for receiver C at \(20, 0\)"):
        match_receivers(EVENT, d, "obs")
    d = data([(0.0, 0.0), (10.0, 0.0), (20.002, 0.0)], ["A", "B", "C"])
    with pytest.raises(ConfigError, match="the trace named C lies at"):
        match_receivers(EVENT, d, "obs")


def test_two_traces_at_one_position_need_the_name():
    d = data([(0.0, 0.0), (0.0, 0.0), (10.0, 0.0), (20.0, 0.0)], ["Y", "A", "B", "C"])
    assert match_receivers(EVENT, d, "obs").tolist() == [1, 2, 3]
    d = data([(0.0, 0.0), (0.0, 0.0), (10.0, 0.0), (20.0, 0.0)], ["Y", "Z", "B", "C"])
    with pytest.raises(ConfigError, match="2 traces lie at receiver A"):
        match_receivers(EVENT, d, "obs")


def test_shuffled_observed_file_gives_the_same_misfit(tmp_path):
    fixed = {"end_time_in_seconds: 0.6": "end_time_in_seconds: 0.6\n  time_step_in_seconds: 0.001"}
    (tmp_path / "true").mkdir()
    true = write_job(tmp_path / "true", **fixed, **{'vp: "1500.0 - y"': 'vp: "1450.0 - y"'})
    assert main(["-q", "run", str(true), "--forward-only"]) == 0
    observed = tmp_path / "true/out/events/ev1/receivers.h5"
    rec = read_receivers_h5(observed)["ev1"]
    order = np.array([3, 0, 4, 2, 1])
    shuffled = ReceiverData({"phi": rec.traces["phi"][order]}, rec.coordinates[order], rec.dt,
                            rec.start_time, tuple(np.array(rec.stations)[order]))
    renamed = ReceiverData({"phi": rec.traces["phi"][order]}, rec.coordinates[order], rec.dt,
                           rec.start_time, tuple(f"S{k}" for k in range(5)))
    misfits = []
    for name, d in (("as_is", rec), ("shuffled", shuffled), ("renamed", renamed)):
        path = tmp_path / f"{name}.h5"
        write_receivers_h5(path, {"ev1": d}, {})
        folder = tmp_path / name
        folder.mkdir()
        job = write_job(folder, **fixed, **{
            "observed_data: null": f"observed_data: {path}",
            "misfit_function: L2_energy_no_observed_data": "misfit_function: L2"})
        assert main(["-q", "run", str(job), "--forward-only"]) == 0
        misfits.append(json.loads((folder / "out/summary.json").read_text())
                       ["events"]["ev1"]["misfit"])
    assert misfits[0] > 0 and misfits[1] == misfits[0] and misfits[2] == misfits[0]
