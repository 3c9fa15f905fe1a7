"""Hostile and careless input: every case ends with exit status 2 (bad input) or 1 (a fault),
one line naming the field or the cause, and nothing written but what fwimpi made.

``tests/specs/bad_plan/`` holds specs that parse but cannot run (overflowing numbers, resource
bombs, non-finite models); their first line ``# expect: <field>`` starts the message.
"""

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from fwimpi.cli import main
from test_cli import SMALL_JOB, write_job

HERE = Path(__file__).parent
BAD_PLAN = sorted((HERE / "specs" / "bad_plan").glob("*.yaml"))


def expected(spec: Path) -> str:
    first = spec.read_text().splitlines()[0]
    assert first.startswith("# expect: ")
    return first.removeprefix("# expect: ")


def one_error_line(capsys, status_word="error") -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"fwimpi: {status_word}: "), err
    return err.removeprefix(f"fwimpi: {status_word}: ")


def test_corpus_covers_every_family():
    families = {p.stem.split("_")[0] for p in BAD_PLAN}
    assert {"overflow", "bomb", "nan", "zero"} <= families and len(BAD_PLAN) >= 18


@pytest.mark.parametrize("spec", BAD_PLAN, ids=[p.stem for p in BAD_PLAN])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_plan_level_defects_exit_2_one_line_nothing_written(spec, command, tmp_path, capsys):
    job = tmp_path / spec.name
    shutil.copy(spec, job)
    assert main([command, str(job)]) == 2
    message = one_error_line(capsys)
    assert message.startswith(f"{expected(spec)}: "), message
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name]


# --------------------------------------------------------------------------- hostile files


@pytest.mark.parametrize("kind", ["dev_zero", "fifo", "directory", "huge"])
def test_spec_that_is_not_a_small_regular_file(kind, tmp_path, capsys):
    if kind == "dev_zero":
        job = Path("/dev/zero")
    elif kind == "fifo":
        job = tmp_path / "job.yaml"
        os.mkfifo(job)
    elif kind == "directory":
        job = tmp_path / "job.yaml"
        job.mkdir()
    else:
        job = tmp_path / "job.yaml"
        with open(job, "wb") as f:
            f.truncate(11 * 2**20)
    assert main(["validate", str(job)]) == 2
    assert "cannot read job spec" in one_error_line(capsys)


def test_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path, capsys):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 10) + "]" for k in range(1, 9)]
    (tmp_path / "job.yaml").write_text("\n".join(lines) + "\nname: bomb\n")
    assert main(["validate", str(tmp_path / "job.yaml")]) == 2
    assert "expands to" in one_error_line(capsys)


def test_model_file_declaring_huge_datasets_is_not_read(tmp_path, capsys):
    model = tmp_path / "model.h5"
    with h5py.File(model, "w") as f:  # 1.6 MB on disk, 75 GiB declared (chunked, empty)
        f["x"] = np.linspace(0.0, 1000.0, 100_000)
        f["y"] = np.linspace(-500.0, 0.0, 100_000)
        for name in ("vp", "rho"):
            f.create_dataset(name, shape=(100_000, 100_000), dtype="f8", chunks=(1000, 1000))
    job = write_job(tmp_path, **{'model: {vp: "1500.0 - y", rho: "1000.0 - y"}':
                                 f"model: {{file: {model}}}"})
    assert main(["validate", str(job)]) == 2
    assert "declares 10,000,000,000 values" in one_error_line(capsys)


@pytest.mark.parametrize("damage", ["missing_coordinates", "dangling_link", "huge", "nan"])
def test_damaged_observed_data_is_one_line(damage, tmp_path, capsys):
    (tmp_path / "true").mkdir()
    true = write_job(tmp_path / "true")
    assert main(["-q", "run", str(true), "--forward-only"]) == 0
    observed = tmp_path / "true/out/events/ev1/receivers.h5"
    with h5py.File(observed, "r+") as f:
        g = f["ev1"]
        if damage == "missing_coordinates":
            del g["coordinates"]
        elif damage == "dangling_link":
            del g["phi"]
            g["phi"] = h5py.SoftLink("/nowhere")
        elif damage == "huge":
            del g["phi"]
            g.create_dataset("phi", shape=(5, 10**9), dtype="f8", chunks=(1, 1000))
        else:
            g["phi"][2, 17] = np.nan
    job = write_job(tmp_path, **{"observed_data: null": f"observed_data: {observed}",
                                 "misfit_function: L2_energy_no_observed_data": "misfit_function: L2"})
    assert main(["run", str(job)]) == 2
    message = one_error_line(capsys)
    assert message.startswith("misfit_configuration.observed_data: "), message
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- output paths


def test_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("my thesis")
    assert main(["run", str(write_job(tmp_path))]) == 2
    assert one_error_line(capsys).startswith("output: ")
    assert (tmp_path / "out").read_text() == "my thesis"


def test_output_path_too_long(tmp_path, capsys):
    assert main(["run", str(write_job(tmp_path, **{"output: out": "output: " + "o" * 300}))]) == 2
    assert one_error_line(capsys).startswith("output: the path is too long")


def test_foreign_folder_is_refused_and_its_temp_like_files_kept(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("...")
    (out / ".thesis.tex.tmp").write_text("draft")
    assert main(["run", str(write_job(tmp_path))]) == 2
    assert "is not empty and not an fwimpi output folder" in one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == [".thesis.tex.tmp", "thesis.tex"]


def test_fwimpi_folder_sweep_removes_only_fwimpi_temp_files(tmp_path):
    job = write_job(tmp_path)
    assert main(["-q", "run", str(job), "--forward-only"]) == 0
    out = tmp_path / "out"
    (out / ".notes.txt.tmp").write_text("mine")
    (out / "events" / ".receivers.h5.fwimpi-tmp999999").write_text("left by a killed run")
    (out / "summary.json").unlink()  # something to recompute
    assert main(["-q", "run", str(job), "--forward-only"]) == 0
    assert (out / ".notes.txt.tmp").read_text() == "mine"
    assert not (out / "events" / ".receivers.h5.fwimpi-tmp999999").exists()


@pytest.mark.parametrize("where", ["folder", "file"])
def test_symbolic_links_in_the_output_folder_are_refused(where, tmp_path, capsys):
    job = write_job(tmp_path)
    assert main(["-q", "run", str(job), "--forward-only"]) == 0
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    if where == "folder":
        shutil.rmtree(out / "events")
        (out / "events").symlink_to(elsewhere)
    else:
        (out / "model.h5").unlink()
        (out / "model.h5").symlink_to(elsewhere / "model.h5")
    assert main(["run", str(job), "--forward-only"]) == 2
    assert "is a symbolic link" in one_error_line(capsys)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("content", ["", "[]", "null", '{"pid": "x"}'])
def test_unreadable_state_or_lock_files_are_no_traceback(content, tmp_path, capsys):
    job = write_job(tmp_path)
    assert main(["-q", "run", str(job), "--forward-only"]) == 0
    out = tmp_path / "out"
    for record in (out / ".fwimpi-state").glob("*.json"):
        record.write_text(content)
    (out / ".fwimpi.lock").write_text(content)  # not fwimpi's: fwimpi writes it whole
    assert main(["-q", "run", str(job), "--forward-only"]) == 0
    assert not (out / ".fwimpi.lock").exists()


def test_plot_and_export_of_malformed_files_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["format"] = "fwimpi-mesh-1"
        f["fields/VP"] = np.ones(3)
    for command in ("plot", "export"):
        assert main([command, str(bad)]) == 2
        assert one_error_line(capsys).startswith("file: ")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert main(["plot", str(tmp_path / "junk.h5")]) == 2
    assert one_error_line(capsys).startswith("file: ")


def test_many_receivers_are_checked_quickly(tmp_path):
    import time

    from fwimpi.jobs.spec import load_job_spec

    job = write_job(tmp_path, **{"{linspace: [100.0, 900.0, 5]}": "{linspace: [0.0, 1000.0, 40000]}"})
    start = time.perf_counter()
    assert len(load_job_spec(job).events[0].receivers) == 40_000
    assert time.perf_counter() - start < 30  # a quadratic check took minutes


def test_png_names_of_two_mappings_cannot_collide(tmp_path, capsys):
    job = write_job(tmp_path, **{"output: out": """mappings:
  - {name: a, inversion_parameters: [VP]}
  - {name: a_clip0.1, inversion_parameters: [VP]}
output: out"""})
    assert main(["validate", str(job)]) == 2
    assert one_error_line(capsys).startswith("mappings[1].name: must not end in _clip")


def test_compression_study_reads_specs_like_run(tmp_path, capsys):
    job = write_job(tmp_path, **{"end_time_in_seconds: 0.6": "end_time_in_seconds: 6e-1"})
    text = job.read_text() + "name: twice\n"  # a duplicate key: run refuses it
    job.write_text(text)
    assert main(["compression-study", str(job), "--intervals", "1"]) == 2
    assert "duplicate key" in one_error_line(capsys)


def test_local_site_refuses_more_ranks_than_the_machine_can_run(tmp_path, capsys):
    cores = os.cpu_count() or 1
    assert main(["run", str(write_job(tmp_path)), "--ranks", str(8 * cores + 1)]) == 2
    assert one_error_line(capsys).startswith(f"--ranks: {8 * cores + 1} ranks on this machine")
    assert not (tmp_path / "out").exists()
