"""Guard rails: `fwimpi validate` summarises a job in a few lines (JSON with --json), and an
implausible model, wavelet or duration gets a warning or a one-line error before anything is
allocated; each case is the spec that tripped it, with its message."""

import json

import pytest

from fwimpi.cli import main
from test_cli import write_job


def _validate(tmp_path, capsys, *args, **replace):
    job = write_job(tmp_path, **replace)
    code = main(["validate", str(job), *args])
    out, err = capsys.readouterr()
    assert not (tmp_path / "out").exists()
    return code, out, err.strip()


def test_validate_prints_a_short_summary(tmp_path, capsys):
    code, out, _ = _validate(tmp_path, capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) <= 10
    assert lines[0].startswith("job small: 1 event, 1 rank per event")
    text = "\n".join(lines)
    for words in ("mesh: ", " elements of order 4, ", " points", "steps of ", "CFL limit",
                  "memory: about ", " MB per rank", "time estimate: about ",
                  "products: receivers, misfit L2_energy_no_observed_data, gradient"):
        assert words in text
    assert "warning" not in text


def test_validate_json_holds_the_resolved_spec(tmp_path, capsys):
    code, out, _ = _validate(tmp_path, capsys, "--json")
    data = json.loads(out)
    assert code == 0 and data["job"]["name"] == "small" and data["derived"]["n_steps"] > 0


@pytest.mark.parametrize("vp, message", [
    ('"1.5 - 0.001 * y"', "model: VP from 1.5 to 2 m/s is no wave speed of rock, water or "
                          "air (km/s? give m/s)"),
    ('"1.5e6"', "model: VP from 1.5e+06 to 1.5e+06 m/s is no wave speed"),
])
def test_a_model_in_other_units_is_an_error(tmp_path, capsys, vp, message):
    code, out, err = _validate(tmp_path, capsys, **{'vp: "1500.0 - y"': f"vp: {vp}"})
    assert code == 2 and out == "" and "\n" not in err
    assert err == f"fwimpi: error: {message}" or err.startswith(f"fwimpi: error: {message}")


def test_unusual_velocities_and_densities_are_warned_of(tmp_path, capsys):
    code, out, _ = _validate(tmp_path, capsys, **{'vp: "1500.0 - y"': 'vp: "12000.0 - y"',
                                                  'rho: "1000.0 - y"': 'rho: "1.0 - 0.001 * y"'})
    assert code == 0
    assert ("warning: model: VP from 12000 to 12500 m/s lies outside the usual 100-10,000 m/s; "
            "check the units (m/s)") in out
    assert ("warning: model: RHO from 1 to 1.5 kg/m^3 lies outside the usual 100-30,000 "
            "kg/m^3; check the units (kg/m^3, not g/cm^3)") in out


def test_a_wavelet_above_the_mesh_frequency_is_an_error(tmp_path, capsys):
    code, _, err = _validate(tmp_path, capsys, **{"center_frequency: 5.0": "center_frequency: 15.0"})
    assert code == 2 and "\n" not in err
    assert err.startswith("fwimpi: error: simulation_configuration.wavelet: ")
    assert ("of the wavelet's energy lies above max_frequency_in_hertz = 10 Hz, which the mesh "
            "resolves; raise max_frequency_in_hertz to at least 30 Hz") in err


def test_a_wavelet_near_the_mesh_frequency_is_warned_of(tmp_path, capsys):
    code, out, _ = _validate(tmp_path, capsys, **{"center_frequency: 5.0": "center_frequency: 5.9"})
    assert code == 0
    assert "warning: simulation_configuration.wavelet: " in out and "at least 11.8 Hz" in out


def test_a_duration_in_other_units_is_warned_of_with_its_steps(tmp_path, capsys):
    code, out, _ = _validate(tmp_path, capsys,
                             **{"end_time_in_seconds: 0.6": "end_time_in_seconds: 2000"})
    assert code == 0
    line = next(w for w in out.splitlines() if "end_time_in_seconds" in w)
    assert line.startswith("warning: simulation_configuration.end_time_in_seconds: 2000 s lets "
                           "the fastest wave (2000 m/s) cross the domain ")
    assert " steps; check the units (seconds)" in line


def test_run_says_the_warnings_before_it_runs(tmp_path, caplog):
    job = write_job(tmp_path, **{'vp: "1500.0 - y"': 'vp: "12000.0 - y"',
                                 "end_time_in_seconds: 0.6": "end_time_in_seconds: 0.05"})
    assert main(["-q", "run", str(job), "--forward-only"]) == 0
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warned and warned[0].getMessage().startswith("model: VP from 12000 to 12500 m/s")


def test_a_job_larger_than_the_machine_is_refused_before_it_starts(tmp_path, capsys):
    # 9 million steps of a stored forward wavefield: hundreds of GB on one rank
    job = write_job(tmp_path, **{
        "end_time_in_seconds: 0.6": "end_time_in_seconds: 0.9\n  time_step_in_seconds: 1.0e-7",
        "output: out": "wavefield_compression: {memory_per_rank_in_mb: 10000000}\noutput: out"})
    assert main(["run", str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("fwimpi: error: ranks_per_job: the job needs about ")
    assert "this machine has" in err
    assert not (tmp_path / "out").exists()
