"""Pressure receivers (``fields: [phi, p]``, ``p = -d2phi/dt2``) and custom wavelets
(``{type: Custom, file: PATH}``): the pressure misfit's gradient is the exact derivative
(Taylor test), pressure traces match their definition, and a Ricker given as samples
reproduces the Ricker job."""

import json

import h5py
import numpy as np
import pytest

from fwimpi.cli import main
from fwimpi.mesh.files import read_receivers_h5, write_wavelet_h5
from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.sem.misfits import MISFITS, PressureMisfit
from fwimpi.sem.signals import pressure_operator
from fwimpi.sem.wavelets import ricker
from problems import event, margins, solver, stable_dt
from test_cli import write_job

MESH = build_mesh(Box(0.0, 1000.0, -500.0, 0.0), 300.0, 75.0, 4)
EVENT = event([(300.0, -250.0)], np.column_stack((np.linspace(50.0, 950.0, 7), np.zeros(7))))


def direction(points):
    """The model perturbation of the Taylor test (the same at every point it is used)."""
    return np.sin(points[:, 0] / 170.0) * np.cos(points[:, 1] / 130.0)


def model(dvp=0.0, scale=1.0):
    def evaluate(points):
        x, y = points[:, 0], np.clip(points[:, 1], -500.0, 0.0)
        return {"VP": scale * (1500.0 - y) + dvp * direction(points),
                "RHO": 1000.0 - y}
    return evaluate


DT = 0.5 * stable_dt(MESH, model(scale=1.1))


def simulate(m):
    return solver(MESH, m, 0.6, DT, absorbing=margins(300.0, 2000.0))


def test_pressure_operator_is_the_second_derivative_and_has_an_exact_transpose():
    t = np.linspace(0.0, 1.0, 2001)
    dt = t[1]
    phi = np.exp(-((t - 0.5) / 0.05) ** 2)
    p = (phi[None] @ pressure_operator(len(t), dt).T)[0]
    exact = -phi * (4 * (t - 0.5) ** 2 / 0.05**4 - 2 / 0.05**2)
    assert np.abs(p - exact)[2:-2].max() < 2e-3 * np.abs(exact).max()  # O(dt^2)
    a, b = np.random.default_rng(1).standard_normal((2, 3, 50))
    d = pressure_operator(50, 0.01)
    assert abs(np.sum((a @ d.T) * b) - np.sum(a * (b @ d))) < 1e-10 * np.sum(np.abs(a @ d.T))


def test_taylor_pressure_misfit():
    observed = simulate(model(scale=1.03)).forward(EVENT).traces
    observed = observed @ pressure_operator(observed.shape[1], DT).T
    misfit = PressureMisfit(MISFITS["L2"])
    s = simulate(model())
    result = s.gradient(EVENT, lambda keep, tr: misfit.evaluate(tr, observed[keep], DT))
    predicted = result.gradient["VP"] @ direction(s.mesh.coordinates)

    def j(h):
        return misfit.evaluate(simulate(model(h)).forward(EVENT).traces, observed, DT)[0]

    h = 0.25
    central = (j(h) - j(-h)) / (2 * h)
    rel = abs(central - predicted) / abs(predicted)
    print(f"pressure L2: relative difference {rel:.2e}")
    assert rel < 1e-6


def test_jobs_record_pressure_and_fit_it(tmp_path):
    fields = {"fields: [phi]": "fields: [phi, p]"}
    (tmp_path / "true").mkdir()
    true = write_job(tmp_path / "true", **fields, **{'vp: "1500.0 - y"': 'vp: "1450.0 - y"'})
    assert main(["-q", "run", str(true), "--forward-only"]) == 0
    rec = read_receivers_h5(tmp_path / "true/out/events/ev1/receivers.h5")["ev1"]
    p = rec.traces["phi"] @ pressure_operator(rec.traces["phi"].shape[1], rec.dt).T
    assert np.array_equal(rec.traces["p"], p)
    job = write_job(tmp_path, **fields, **{
        "observed_data: null": f"observed_data: {tmp_path / 'true/out'}",
        "misfit_function: L2_energy_no_observed_data": "misfit_function: L2",
        "receiver_field: phi": "receiver_field: p"})
    assert main(["-q", "run", str(job)]) == 0
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["events"]["ev1"]["misfit"] > 0


@pytest.mark.parametrize("resample", [False, True])
def test_a_custom_wavelet_reproduces_the_ricker(resample, tmp_path):
    (tmp_path / "ricker").mkdir()
    ricker_job = write_job(tmp_path / "ricker")
    assert main(["-q", "run", str(ricker_job), "--forward-only"]) == 0
    ref = read_receivers_h5(tmp_path / "ricker/out/events/ev1/receivers.h5")["ev1"]
    dt = ref.dt / 2 if resample else ref.dt  # resampled from a finer axis, or exact
    t = dt * np.arange(int(0.7 / dt))
    write_wavelet_h5(tmp_path / "stf.h5", ricker(t, 5.0), dt)
    job = write_job(tmp_path, **{"wavelet: {type: Ricker, center_frequency: 5.0}":
                                 f"wavelet: {{type: Custom, file: {tmp_path / 'stf.h5'}}}"})
    assert main(["-q", "run", str(job), "--forward-only"]) == 0
    got = read_receivers_h5(tmp_path / "out/events/ev1/receivers.h5")["ev1"]
    err = np.linalg.norm(got.traces["phi"] - ref.traces["phi"]) / np.linalg.norm(ref.traces["phi"])
    print(f"custom wavelet ({'resampled' if resample else 'same dt'}): {err:.2e}")
    assert err < (1e-4 if resample else 1e-14)


def test_bad_custom_wavelet_files_are_refused(tmp_path, capsys):
    with h5py.File(tmp_path / "stf.h5", "w") as f:
        f["stf"] = np.ones(10)  # no dt
    job = write_job(tmp_path, **{"wavelet: {type: Ricker, center_frequency: 5.0}":
                                 f"wavelet: {{type: Custom, file: {tmp_path / 'stf.h5'}}}"})
    assert main(["validate", str(job)]) == 2
    assert "simulation_configuration.wavelet.file: cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("field", ["phi", "p"])
def test_source_estimation_recovers_a_shifted_scaled_phase_rotated_ricker(tmp_path, field):
    """Data made with 2.5 x a Ricker delayed by 70 ms and rotated by 40 degrees; the job
    simulates with the plain Ricker and estimates each event's wavelet from the data (the
    potential or the pressure: the same filter of the source either way)."""
    from scipy.signal import hilbert

    from fwimpi.mesh.files import read_wavelet_h5

    dt = 0.0005
    t = dt * np.arange(int(1.0 / dt))
    base = ricker(t - 0.07, 5.0)
    rotation = np.deg2rad(40.0)
    true = 2.5 * (np.cos(rotation) * base - np.sin(rotation) * np.imag(hilbert(base)))
    write_wavelet_h5(tmp_path / "true_stf.h5", true, dt)
    (tmp_path / "true").mkdir()
    more = {"{linspace: [100.0, 900.0, 5]}, y: 0.0, fields: [phi]":
            "{linspace: [50.0, 950.0, 19]}, y: 0.0, fields: [phi, p]",
            "end_time_in_seconds: 0.6": "end_time_in_seconds: 1.0"}
    assert main(["-q", "run", str(write_job(tmp_path / "true", **more, **{
        "wavelet: {type: Ricker, center_frequency: 5.0}":
        f"wavelet: {{type: Custom, file: {tmp_path / 'true_stf.h5'}}}"})), "--forward-only"]) == 0
    job = write_job(tmp_path, **more, **{
        "observed_data: null": f"observed_data: {tmp_path / 'true/out'}",
        "misfit_function: L2_energy_no_observed_data": "misfit_function: L2",
        "receiver_field: phi": f"receiver_field: {field}\n  estimate_wavelet: true"})
    assert main(["-q", "run", str(job)]) == 0
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    samples, sdt, _ = read_wavelet_h5(tmp_path / "out" / summary["events"]["ev1"]["wavelet"])
    times = sdt * np.arange(len(samples))
    expected = np.interp(times, t, true)
    window = times < 0.8  # the estimate is reliable where the data carries energy
    err = np.linalg.norm((samples - expected)[window]) / np.linalg.norm(expected[window])
    print(f"estimated wavelet from {field}: relative L2 error {err:.2e}")
    assert err < 0.01
    assert (tmp_path / "out/events/ev1/wavelet.png").is_file()
