"""Job-spec schema: the reference spec, defaults, `resolved`, and a corpus of bad specs.

Each file in `tests/specs/bad/` is a full spec with one defect; its first line is
`# expect: <field path>`, the start of the one-line ConfigError message (for YAML-level
errors, the file name, which the message contains).
"""

import copy
import dataclasses
import functools
import json
import math
import operator
from pathlib import Path

import numpy as np
import pytest
import yaml

from fwimpi.errors import ConfigError
from fwimpi.jobs.spec import (AbsorbingBoundaries, Compression, JobSpec, Receiver, Ricker,
                              load_job_spec, parse_job_spec)

# A copy of the reference spec `examples/mapping_tutorial.yaml` beside DESIGN.md, in the
# project's shared folder next to the repository (`../shared`), where there is one.
REFERENCE = Path(__file__).parent / "specs" / "mapping_tutorial.yaml"
SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED_REFERENCE = SHARED / "examples" / "mapping_tutorial.yaml"
BAD_DIR = Path(__file__).parent / "specs" / "bad"
BAD_SPECS = sorted(BAD_DIR.glob("*.yaml"))


def expected_path(spec_file: Path) -> str:
    """The `# expect: ...` value on the first line of a bad spec."""
    first = spec_file.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), spec_file
    return first.removeprefix("# expect: ").strip()


def minimal() -> dict:
    """The smallest valid spec: every optional block absent."""
    return {
        "name": "tiny",
        "domain": {"dimension": 2, "x": [0, 100], "y": [-50, 0]},
        "model": {"vp": 1500, "rho": "1000"},
        "events": [{"event_name": "e0",
                    "sources": [{"x": 50, "y": -25, "f": 1}],
                    "receivers": [{"type": "Point2D", "x": 10, "y": 0}]}],
        "simulation_configuration": {
            "elements_per_wavelength": 2, "tensor_order": 4, "max_frequency_in_hertz": 10,
            "end_time_in_seconds": 1, "wavelet": {"type": "Ricker", "center_frequency": 5}},
    }


@pytest.fixture(scope="module")
def reference() -> JobSpec:
    return load_job_spec(REFERENCE)


def test_reference_spec_values(reference):
    spec = reference
    assert (spec.name, spec.ranks_per_job, spec.site) == ("mapping-tutorial", 4, "local")
    assert spec.domain.x == (0.0, 3000.0) and spec.domain.y == (-1000.0, 0.0)
    assert (spec.model.vp, spec.model.rho, spec.model.file) == ("1500.0 - y", "1000.0 - y", None)
    (event,) = spec.events
    assert event.name == "event"
    assert [(s.x, s.y, s.f) for s in event.sources] == [(500, -500, 1)]
    assert len(event.receivers) == 10
    np.testing.assert_allclose([r.x for r in event.receivers], np.linspace(100, 2900, 10))
    assert all(r.y == 0.0 and r.fields == ("phi",) for r in event.receivers)
    assert [r.station for r in event.receivers][:2] == ["R0000", "R0001"]
    sim = spec.simulation
    assert (sim.name, sim.elements_per_wavelength, sim.tensor_order) == ("sim_model", 2, 4)
    assert (sim.max_frequency_in_hertz, sim.end_time_in_seconds) == (10.0, 2.0)
    assert sim.time_step_in_seconds is None
    assert sim.wavelet == Ricker(5.0) and sim.wavelet.t0 == pytest.approx(0.24)
    assert sim.absorbing.width_in_meters == pytest.approx(1400.0)
    assert spec.misfit.misfit_function == "L2_energy_no_observed_data"
    assert spec.misfit.observed_data is None and spec.misfit.receiver_field == "phi"
    assert spec.compression == Compression(1, 128.0)
    assert [m.name for m in spec.mappings] == ["map1", "map2", "map3", "map4", "map5"]
    m3, m5 = spec.mappings[2], spec.mappings[4]
    assert m3.inversion_parameters == ("VP",)
    assert (m3.source_cutout_radius_in_meters, m3.receiver_cutout_radius_in_meters) == (200, 100)
    assert (m5.scaling, m5.region_of_interest) == ("relative_deviation_from_prior", "y < -100.0")
    assert spec.mappings[0].source_cutout_radius_in_meters is None
    assert spec.smoothing_applies_to == "map5"
    assert spec.smoothing.smoothing_lengths_in_meters == {"VP": (100.0, 50.0)}
    assert spec.output == REFERENCE.parent / "runs" / "mapping-tutorial"
    assert spec.base_dir == REFERENCE.parent


@pytest.mark.skipif(not SHARED.is_dir(),
                    reason=f"no shared folder {SHARED} beside the repository (a clone alone)")
def test_reference_copy_is_current():
    assert SHARED_REFERENCE.is_file(), f"the shared folder has no {SHARED_REFERENCE.name}"
    assert REFERENCE.read_text() == SHARED_REFERENCE.read_text()


def test_reference_is_frozen_with_tuples(reference):
    with pytest.raises(AttributeError):
        reference.name = "other"
    assert isinstance(reference.events, tuple) and isinstance(reference.mappings, tuple)
    assert isinstance(reference.events[0].receivers, tuple)


def test_resolved_is_json_and_parses_back(reference, tmp_path):
    text = json.dumps(reference.resolved, allow_nan=False)
    data = json.loads(text)
    assert data["output"] == str(reference.output)
    assert data["simulation_configuration"]["tensor_order"] == 4
    assert len(data["events"][0]["receivers"]) == 10
    again = parse_job_spec(data, base_dir=tmp_path)
    assert again.resolved == reference.resolved
    assert dataclasses.replace(again, base_dir=reference.base_dir) == reference


@pytest.mark.parametrize("without", [("mappings", "smoothing"), ("mappings", "smoothing",
                                                                   "misfit_configuration")])
def test_resolved_without_optional_blocks_parses_back(reference, tmp_path, without):
    data = copy.deepcopy(reference.resolved)
    for key in without:
        data.pop(key, None)
    spec = parse_job_spec(data, base_dir=tmp_path)
    again = parse_job_spec(json.loads(json.dumps(spec.resolved)), base_dir=tmp_path)
    assert again == spec and again.mappings == ()


def test_defaults_when_optional_blocks_absent(tmp_path):
    spec = parse_job_spec(minimal(), base_dir=tmp_path)
    assert (spec.ranks_per_job, spec.site) == (1, "local")
    assert (spec.model.vp, spec.model.rho) == ("1500", "1000")
    assert spec.resolved["events"][0]["sources"][0]["type"] == "ScalarPoint2D"
    assert spec.events[0].receivers == (Receiver((10.0, 0.0), "R0000", ("phi",)),)
    assert spec.simulation.name == "simulation"
    assert spec.simulation.absorbing is None and spec.simulation.time_step_in_seconds is None
    assert spec.simulation.wavelet.t0 == pytest.approx(1.2 / 5)
    assert spec.misfit is None and spec.mappings == () and spec.smoothing is None
    assert spec.compression == Compression()
    assert spec.output == tmp_path / "runs" / "tiny"
    assert json.loads(json.dumps(spec.resolved))["misfit_configuration"] is None


def test_null_optional_blocks_mean_absent(tmp_path):
    data = minimal()
    data.update(misfit_configuration=None, wavefield_compression=None, mappings=None,
                smoothing=None, output=None, site=None)
    data["simulation_configuration"]["absorbing_boundaries"] = None
    assert parse_job_spec(data, tmp_path) == parse_job_spec(minimal(), tmp_path)


def test_receiver_sets_broadcast_and_station_names(tmp_path):
    data = minimal()
    data["events"][0]["receivers"] = [
        {"type": "Point2D", "x": 0, "y": -50, "station_code": "corner"},
        {"type": "ArrayPoint2D", "x": [10, 20, 30], "y": {"linspace": [-1, -1, 1]}},
        {"type": "ArrayPoint2D", "x": 100, "y": {"linspace": [-50, 0, 3]}},
    ]
    receivers = parse_job_spec(data, tmp_path).events[0].receivers
    assert [(r.x, r.y, r.station) for r in receivers] == [
        (0, -50, "corner"), (10, -1, "R0001"), (20, -1, "R0002"), (30, -1, "R0003"),
        (100, -50, "R0004"), (100, -25, "R0005"), (100, 0, "R0006")]


def test_points_on_the_boundary_within_tolerance_are_clamped(tmp_path):
    data = minimal()
    data["events"][0]["receivers"] = [{"type": "Point2D", "x": 100 + 1e-8, "y": 0}]
    assert parse_job_spec(data, tmp_path).events[0].receivers[0].x == 100.0
    data["events"][0]["receivers"] = [{"type": "Point2D", "x": 100 + 1e-6, "y": 0}]
    with pytest.raises(ConfigError, match=r"^events\[0\]\.receivers\[0\]\.x: .*\[0\.0, 100\.0\]"):
        parse_job_spec(data, tmp_path)


def test_files_resolve_against_base_dir(tmp_path):
    (tmp_path / "model.h5").write_bytes(b"")
    (tmp_path / "obs.h5").write_bytes(b"")
    data = minimal()
    data["model"] = {"file": "model.h5"}
    data["misfit_configuration"] = {"misfit_function": "L2", "observed_data": "obs.h5"}
    data["output"] = "out/../results"
    spec = parse_job_spec(data, tmp_path)
    assert spec.model == type(spec.model)(None, None, tmp_path / "model.h5")
    assert spec.misfit.observed_data == tmp_path / "obs.h5" and spec.misfit.name == "misfit"
    assert spec.output == tmp_path / "results"


def test_mappings_smoothing_and_compression(tmp_path):
    data = minimal()
    data["misfit_configuration"] = {"misfit_function": "L2_energy_no_observed_data"}
    data["mappings"] = [{"name": "both", "inversion_parameters": ["RHO", "VP"],
                         "scaling": "logarithmic"}]
    data["smoothing"] = {"apply_to": "both", "type": "ConstantSmoothing",
                         "smoothing_lengths_in_meters": {"RHO": [0, 5], "VP": [1.5, 2]}}
    data["wavefield_compression"] = {"forward_wavefield_sampling_interval": 4,
                                     "memory_per_rank_in_mb": 256}
    spec = parse_job_spec(data, tmp_path)
    assert spec.mappings[0].inversion_parameters == ("RHO", "VP")
    assert spec.mappings[0].scaling == "logarithmic"
    assert spec.smoothing.smoothing_lengths_in_meters == {"RHO": (0.0, 5.0), "VP": (1.5, 2.0)}
    assert spec.compression == Compression(4, 256.0)


def test_absorbing_width():
    assert AbsorbingBoundaries(2000.0, 3.5, 5.0).width_in_meters == pytest.approx(1400.0)
    assert AbsorbingBoundaries(2000.0, 0.0, 5.0).width_in_meters == 0.0


def test_exponent_floats_are_numbers(tmp_path):
    """PyYAML alone reads `1e-3` as a string; job specs read it as a float."""
    text = REFERENCE.read_text().replace("end_time_in_seconds: 2.0",
                                         "end_time_in_seconds: 2e0\n  time_step_in_seconds: 1e-3")
    (tmp_path / "job.yaml").write_text(text)
    sim = load_job_spec(tmp_path / "job.yaml").simulation
    assert (sim.end_time_in_seconds, sim.time_step_in_seconds) == (2.0, 1e-3)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read job spec"):
        load_job_spec(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="cannot read job spec"):
        load_job_spec(tmp_path)
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="latin1.yaml: not a UTF-8 text file"):
        load_job_spec(tmp_path / "latin1.yaml")


def test_corpus_is_large_enough():
    assert len(BAD_SPECS) >= 35


@pytest.mark.parametrize("spec_file", BAD_SPECS, ids=lambda p: p.stem)
def test_bad_spec(spec_file, monkeypatch):
    # A payload (python_tag.yaml: os.system) must never run: record any call instead of
    # looking for the file it would create.
    import os
    import subprocess

    ran = []
    monkeypatch.setattr(os, "system", lambda *a, **k: ran.append(("os.system", a)) or 0)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: ran.append(("Popen", a)))
    expect = expected_path(spec_file)
    with pytest.raises(ConfigError) as info:
        load_job_spec(spec_file)
    message = str(info.value)
    assert "\n" not in message and message == message.strip()
    if expect.endswith(".yaml"):
        assert expect in message
    else:
        assert message.startswith(f"{expect}: "), message
        assert "got" in message or "allowed keys" in message or "missing" in message
    assert not ran, ran


JUNK = [None, True, False, 0, -1, 1, 11, 0.5, -1e300, math.nan, math.inf, 10**400, "",
        " ", "x", "../evil", "$(rm -rf /)", [], [1], [1, 2, 3], ["phi", "phi"], {}, {"a": 1},
        {"linspace": [0, 1, 10**12]}, {"linspace": [0, 1]}, [[1]], [None], b"bytes",
        np.float64(1.0), np.int64(2), np.bool_(True), 1 + 2j, object()]


DELETE = object()


def _nodes(data, path=()):
    """All (path, value) pairs of a nested dict/list."""
    yield path, data
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list):
        items = enumerate(data)
    else:
        return
    for key, value in items:
        yield from _nodes(value, path + (key,))


def _defects(base):
    """Copies of `base` with one node replaced by junk or removed."""
    for path, _ in list(_nodes(base))[1:]:
        for junk in JUNK + [DELETE]:
            data = copy.deepcopy(base)
            parent = functools.reduce(operator.getitem, path[:-1], data)
            if junk is DELETE:
                parent.pop(path[-1])
            else:
                parent[path[-1]] = junk
            yield data


def test_every_single_defect_raises_only_config_error(tmp_path):
    """Junk in any node of the reference: a one-line ConfigError, or a valid spec."""
    base = yaml.safe_load(REFERENCE.read_text())
    errors = 0
    for data in _defects(base):
        try:
            spec = parse_job_spec(data, tmp_path)
        except ConfigError as err:
            assert "\n" not in str(err) and len(str(err)) < 400, str(err)
            errors += 1
        else:
            json.dumps(spec.resolved, allow_nan=False)
    assert errors > 2500


@pytest.mark.parametrize("data", [None, [], "name: x", 3])
def test_top_level_not_a_mapping(data, tmp_path):
    with pytest.raises(ConfigError, match="^job spec: the top level must be a mapping"):
        parse_job_spec(data, tmp_path)
