"""The result cache: a rerun recomputes nothing, and a changed setting recomputes only the
products it touches (README, "Results are cached").

One job (SMALL_JOB with two mappings and the smoothing of one) is run into the same folder
again and again through ``fwimpi run``, changing one setting at a time. What was recomputed
is read three ways that must agree: the product files (a rewrite is a new file: new inode
and mtime), the hashes in the records of ``<output>/.fwimpi-state/``, and the log ("already computed;
not run again" for every product that was not).
"""

import json
import logging
import os
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from fwimpi.cli import main
from test_cli import SMALL_JOB

JOB = SMALL_JOB.replace("output: out", """mappings:
  - {name: map_a, inversion_parameters: [VP], scaling: absolute,
     source_cutout_radius_in_meters: 150.0, region_of_interest: "y < -50.0"}
  - {name: map_b, inversion_parameters: [VP, RHO], scaling: relative_deviation_from_prior,
     receiver_cutout_radius_in_meters: 60.0, region_of_interest: "y < -100.0"}
smoothing:
  apply_to: map_b
  type: ConstantSmoothing
  smoothing_lengths_in_meters: {VP: [100.0, 50.0], RHO: [60.0, 60.0]}
output: out""")
assert JOB != SMALL_JOB

# the products every such job has (the state file may hold more, e.g. the summed gradient)
PRODUCTS = {"model", "event/ev1", "mapping/map_a", "mapping/map_b", "smoothed/map_b"}
# what the log says of a product that is reused
REUSED_LOG = {"model": "model: already computed",
              "event/ev1": "event ev1: already computed",
              "gradient": "summed gradient: already computed",
              "mapping/map_a": "mapping map_a: already computed",
              "mapping/map_b": "mapping map_b: already computed",
              "smoothed/map_b": "smoothing of map_b: already computed"}


def snapshot(out: Path) -> dict:
    """{product: (hash, {file: (inode, mtime_ns)})} from the state file, and summary.json."""
    state = {p.stem.replace("--", "/"): json.loads(p.read_text())
             for p in (out / ".fwimpi-state").glob("*.json")}
    snap = {}
    for key, entry in state.items():
        stats = {rel: (os.stat(out / rel).st_ino, os.stat(out / rel).st_mtime_ns)
                 for rel in entry["files"]}
        snap[key] = (entry["hash"], stats)
    return snap


def recomputed(before: dict, after: dict) -> set[str]:
    """Products whose files were rewritten; their hash must have changed (and only theirs)."""
    assert set(after) >= set(before)
    rewritten = {k for k in after if k not in before or any(
        before[k][1].get(rel) != stat for rel, stat in after[k][1].items())}
    rehashed = {k for k in after if k not in before or before[k][0] != after[k][0]}
    assert rewritten == rehashed, (rewritten, rehashed)
    return rewritten


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    path = folder / "job.yaml"
    path.write_text(JOB)
    return path


def run(job: Path, caplog) -> tuple[dict, str]:
    """``fwimpi -q run job``; (snapshot of the products, the fwimpi log of this run)."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fwimpi"):
        assert main(["-q", "run", str(job)]) == 0
    log = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("fwimpi"))
    return snapshot(job.parent / "out"), log


def edit(job: Path, old: str, new: str) -> None:
    text = job.read_text()
    assert text.count(old) == 1, old
    job.write_text(text.replace(old, new))


def field(job: Path, rel: str, name: str = "VP") -> np.ndarray:
    with h5py.File(job.parent / "out" / rel, "r") as f:
        return f[f"fields/{name}"][...]


def assert_only(log: str, products: set[str], recomputed_products: set[str]) -> None:
    """The log says "already computed" for every other product, and not for these."""
    for key in products & set(REUSED_LOG):
        assert (REUSED_LOG[key] in log) == (key not in recomputed_products), (key, log)


def test_a_changed_setting_recomputes_only_what_it_touches(job, caplog):
    out = job.parent / "out"
    first, log = run(job, caplog)
    everything = set(first)
    assert everything >= PRODUCTS
    assert "already computed" not in log

    # 1. the same job again: nothing is computed, not even the summary is rewritten
    summary = os.stat(out / "summary.json").st_mtime_ns
    again, log = run(job, caplog)
    assert recomputed(first, again) == set()
    assert "all products of job small are already computed; not run again" in log
    assert "forward" not in log and "written" not in log
    assert os.stat(out / "summary.json").st_mtime_ns == summary

    # 2. the region of interest of map_a (not smoothed): map_a only
    before_a = field(job, "mappings/map_a.h5")
    edit(job, 'region_of_interest: "y < -50.0"', 'region_of_interest: "y < -200.0"')
    after_roi_a, log = run(job, caplog)
    assert recomputed(again, after_roi_a) == {"mapping/map_a"}
    assert_only(log, everything, {"mapping/map_a"})
    assert "mapping map_a written" in log
    assert not np.array_equal(field(job, "mappings/map_a.h5"), before_a)

    # 3. the region of interest of map_b: map_b and its smoothing
    before_smoothed = field(job, "smoothed/map_b.h5")
    edit(job, 'region_of_interest: "y < -100.0"', 'region_of_interest: "x > 200.0"')
    after_roi_b, log = run(job, caplog)
    assert recomputed(after_roi_a, after_roi_b) == {"mapping/map_b", "smoothed/map_b"}
    assert_only(log, everything, {"mapping/map_b", "smoothed/map_b"})
    assert not np.array_equal(field(job, "smoothed/map_b.h5"), before_smoothed)

    # 4. the smoothing lengths: the smoothed product only
    before_smoothed = field(job, "smoothed/map_b.h5", "RHO")
    edit(job, "RHO: [60.0, 60.0]", "RHO: [90.0, 30.0]")
    after_lengths, log = run(job, caplog)
    assert recomputed(after_roi_b, after_lengths) == {"smoothed/map_b"}
    assert_only(log, everything, {"smoothed/map_b"})
    assert "smoothed gradient of map_b written" in log
    assert not np.array_equal(field(job, "smoothed/map_b.h5", "RHO"), before_smoothed)

    # 5. the model: everything
    before_gradient = field(job, "events/ev1/gradient.h5")
    edit(job, 'vp: "1500.0 - y"', 'vp: "1550.0 - y"')
    after_model, log = run(job, caplog)
    assert recomputed(after_lengths, after_model) == everything
    assert_only(log, everything, everything)
    assert re.search(r"event ev1 \(1 of 1, on group 1 of 1\): forward", log)
    assert not np.array_equal(field(job, "events/ev1/gradient.h5"), before_gradient)

    # and the result is what a fresh run of the final job gives
    fresh = job.parent / "fresh"
    fresh.mkdir()
    (fresh / "job.yaml").write_text(job.read_text())
    assert main(["-q", "run", str(fresh / "job.yaml")]) == 0
    for rel, name in (("events/ev1/gradient.h5", "VP"), ("mappings/map_a.h5", "VP"),
                      ("mappings/map_b.h5", "RHO"), ("smoothed/map_b.h5", "RHO")):
        a = field(job, rel, name)
        with h5py.File(fresh / "out" / rel, "r") as f:
            b = f[f"fields/{name}"][...]
        assert np.array_equal(a, b), rel
