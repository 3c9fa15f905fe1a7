"""Lossy compression of the stored forward wavefield (``wavefield_compression.lossy``, ZFP):
the spec, the memory planning and the compressed store. The gradient's error per
tolerance is tested in test_gradient.py, the benchmark is scripts/bench_gradient.py."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fwimpi.errors import ConfigError
from fwimpi.inversion.gradient import CompressedRows, plan_chunks, zfp_bits_per_value
from fwimpi.jobs.plan import plan_job
from fwimpi.jobs.spec import Compression, LossyCompression, load_job_spec, parse_job_spec
from fwimpi.jobs.state import product_hashes

TUTORIAL = Path(__file__).resolve().parents[1] / "jobs" / "mapping_tutorial.yaml"


def data(lossy="absent") -> dict:
    """A small valid spec with gradients, its ``wavefield_compression.lossy`` set."""
    spec = {
        "name": "tiny",
        "domain": {"dimension": 2, "x": [0, 100], "y": [-50, 0]},
        "model": {"vp": 1500, "rho": 1000},
        "events": [{"event_name": "e0", "sources": [{"x": 50, "y": -25, "f": 1}],
                    "receivers": [{"type": "Point2D", "x": 10, "y": 0}]}],
        "simulation_configuration": {
            "elements_per_wavelength": 2, "tensor_order": 4, "max_frequency_in_hertz": 10,
            "end_time_in_seconds": 1, "wavelet": {"type": "Ricker", "center_frequency": 5}},
        "misfit_configuration": {"misfit_function": "L2_energy_no_observed_data"},
        "mappings": [{"name": "m", "inversion_parameters": ["VP"]}],
    }
    if lossy != "absent":
        spec["wavefield_compression"] = {"lossy": lossy}
    return spec


# --------------------------------------------------------------------------- the spec


def test_lossy_is_parsed_resolved_and_parsed_back(tmp_path):
    spec = parse_job_spec(data({"codec": "zfp", "tolerance": 1e-3}), tmp_path)
    assert spec.compression == Compression(1, 128.0, LossyCompression("zfp", 1e-3))
    resolved = json.loads(json.dumps(spec.resolved))
    assert resolved["wavefield_compression"]["lossy"] == {"codec": "zfp", "tolerance": 1e-3}
    assert parse_job_spec(resolved, tmp_path) == spec


def test_null_or_absent_lossy_means_none(tmp_path):
    absent = parse_job_spec(data(), tmp_path)
    assert absent.compression.lossy is None
    assert absent.resolved["wavefield_compression"]["lossy"] is None
    assert parse_job_spec(data(None), tmp_path) == absent


def test_product_hashes_change_with_lossy(tmp_path):
    def hashes(lossy):
        return product_hashes(parse_job_spec(data(lossy), tmp_path), gradients=True)

    exact, a, b = hashes("absent"), hashes({"codec": "zfp", "tolerance": 1e-3}), \
        hashes({"codec": "zfp", "tolerance": 1e-4})
    assert exact["model"] == a["model"] == b["model"]
    assert len({exact["event/e0"], a["event/e0"], b["event/e0"]}) == 3
    assert len({exact["gradient"], a["gradient"], b["gradient"]}) == 3


@pytest.mark.parametrize("lossy, message", [
    ({"codec": "zfp", "tolerance": 0}, r"lossy\.tolerance: must be a number > 0 and < 1"),
    ({"codec": "zfp", "tolerance": 1}, r"lossy\.tolerance: must be a number > 0 and < 1"),
    ({"codec": "zfp", "tolerance": -1e-3}, r"lossy\.tolerance: must be a number > 0"),
    ({"codec": "zfp", "tolerance": float("nan")}, r"lossy\.tolerance: must be a finite number"),
    ({"codec": "zfp", "tolerance": True}, r"lossy\.tolerance: must be a finite number"),
    ({"codec": "zfp", "tolerance": "fine"}, r"lossy\.tolerance: must be a finite number"),
    ({"codec": "sz", "tolerance": 1e-3}, r"lossy\.codec: must be one of zfp, got 'sz'"),
    ({"codec": "zfp"}, r"lossy\.tolerance: missing required key"),
    ({"tolerance": 1e-3}, r"lossy\.codec: missing required key"),
    ({"codec": "zfp", "tolerance": 1e-3, "rate": 8}, r"lossy\.rate: unknown key"),
    (1e-3, r"lossy: must be a mapping"),
])
def test_bad_lossy_settings_name_the_field(tmp_path, lossy, message):
    with pytest.raises(ConfigError, match="^wavefield_compression\\." + message) as err:
        parse_job_spec(data(lossy), tmp_path)
    assert "\n" not in str(err.value)


def test_lossy_without_zfpy_fails_validation(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "zfpy", None)  # import zfpy raises ImportError
    with pytest.raises(ConfigError, match=r"^wavefield_compression\.lossy\.codec: zfp needs "
                                          r"the zfpy module \(Debian package python3-zfpy") as err:
        parse_job_spec(data({"codec": "zfp", "tolerance": 1e-3}), tmp_path)
    assert "\n" not in str(err.value)
    assert parse_job_spec(data(), tmp_path).compression.lossy is None  # not needed without


# --------------------------------------------------------------------------- planning


def test_zfp_size_estimate_is_above_the_measured_densest_samples():
    # bits per value of the tutorial's densest groups of samples (after the wave has filled
    # the domain), measured at 1e-2 ... 1e-5
    for tolerance, densest in [(1e-2, 1.71), (1e-3, 2.81), (1e-4, 5.05), (1e-5, 7.17)]:
        assert 1.2 * densest < zfp_bits_per_value(tolerance) < 64
    assert zfp_bits_per_value(1e-300) == 64.0
    assert zfp_bits_per_value(0.9) == 1.0


def test_plan_chunks_keeps_the_whole_compressed_run():
    points, raw = 10_000, 80_000.0  # bytes of one sample
    budget = 20 * 2**20  # 1000 steps: 80 MB exact, 7.5 MB compressed at 1e-3
    assert plan_chunks(1000, 1, points, budget) < 1000
    assert plan_chunks(1000, 1, points, budget, lossy=1e-3) == 1000
    # 1e-12: 26.9 bits per value, 32 MB: chunks of compressed samples (2 of 500 steps,
    # against 4 of 250 exactly)
    exact = plan_chunks(1000, 1, points, budget)
    chunk = plan_chunks(1000, 1, points, budget, lossy=1e-12)
    assert exact < chunk < 1000
    sample = raw * zfp_bits_per_value(1e-12) / 64
    assert (chunk + 2) * sample + CompressedRows.BUFFERS * raw <= budget
    # checkpoints in memory: more samples per chunk than checkpoints
    chunk = plan_chunks(1000, 1, points, budget, checkpoints_on_disk=False, lossy=1e-12)
    assert chunk < 1000 and chunk > plan_chunks(1000, 1, points, budget,
                                               checkpoints_on_disk=False)
    with pytest.raises(ValueError, match="MB per rank"):  # not even the working arrays
        plan_chunks(1000, 1, points, 10 * raw, lossy=1e-3)


def test_the_plan_keeps_4000_compressed_steps_of_the_tutorial_in_the_default_budget():
    text = TUTORIAL.read_text().replace("end_time_in_seconds: 2.0", "end_time_in_seconds: 6.2395")
    spec = load_job_spec(TUTORIAL, text)
    exact = plan_job(spec, 1, True)
    assert exact.axis.n_steps == 4000 and exact.chunk < 4000  # 10 chunks, 9 recomputed
    lossy = dict(spec.resolved, wavefield_compression=dict(
        spec.resolved["wavefield_compression"], lossy={"codec": "zfp", "tolerance": 3e-3}))
    plan = plan_job(parse_job_spec(lossy, TUTORIAL.parent), 1, True)
    assert plan.chunk >= 4000  # estimated 97 MB of 128 (measured: 23 MB)
    lossy["wavefield_compression"]["lossy"]["tolerance"] = 1e-5
    plan = plan_job(parse_job_spec(lossy, TUTORIAL.parent), 1, True)
    assert exact.chunk < plan.chunk < 4000  # estimated 208 MB: two chunks of 2000 steps


# --------------------------------------------------------------------------- the store


def field(n_rows: int, n_points: int = 1000) -> np.ndarray:
    """Smooth travelling waves of amplitude 1e-3 in the first group of rows, then 1."""
    x = np.linspace(0.0, 20.0, n_points)
    t = np.arange(n_rows)[:, None]
    return np.where(t < CompressedRows.GROUP, 1e-3, 1.0) * np.sin(x[None, :] - 0.3 * t)


@pytest.mark.parametrize("tolerance", [1e-2, 1e-4])
def test_compressed_rows_are_within_the_tolerance_of_the_running_peak(tolerance):
    u = field(23)
    rows = CompressedRows(23, u.shape[1], tolerance)
    for i in range(23):
        rows[i] = u[i]
    peaks = np.maximum.accumulate(np.abs(u).max(axis=1))
    for i in reversed(range(23)):  # as the adjoint reads them
        group_end = min(23, (i // CompressedRows.GROUP + 1) * CompressedRows.GROUP) - 1
        assert np.abs(rows[i] - u[i]).max() <= tolerance * peaks[group_end]
    assert rows.peak == pytest.approx(1.0)
    assert rows.nbytes < u.nbytes / 4 + CompressedRows.BUFFERS * 8 * u.shape[1]
    # the first group, 1000x weaker, is kept within the tolerance of its own peak
    assert np.abs(rows[0] - u[0]).max() <= tolerance * 1e-3


def test_compressed_rows_skip_rows_and_take_new_chunks():
    u = field(12)
    rows = CompressedRows(12, u.shape[1], 1e-6)
    for i in (0, 1, 2, 3, 4, 5, 11):  # a chunk's samples, then its end in the last row
        rows[i] = u[i]
    for i in (11, 5, 4, 3, 0):
        assert np.abs(rows[i] - u[i]).max() <= 1e-6
    for i in range(6):  # the next chunk writes its samples again
        rows[i] = -u[i]
    rows[11] = -u[11]
    for i in (11, 5, 0):
        assert np.abs(rows[i] + u[i]).max() <= 1e-6
