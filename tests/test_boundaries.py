"""The pressure-free top (``top_boundary: dirichlet``, phi = 0): the adjoint stays the exact
transpose (dot-product test) and the gradient the exact derivative (Taylor test); the
job-spec key reaches the solver. (The analytic test with a negative image source is in
test_wave_analytic.py.)"""

import json

import numpy as np
import pytest

from fwimpi.cli import main
from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.sem.misfits import l2_energy
from problems import event, margins, solver, stable_dt
from test_cli import write_job

MESH = build_mesh(Box(0.0, 800.0, -500.0, 0.0), 200.0, 100.0, 4)
EVENT = event([(300.0, -150.0)], np.array([[100.0, -40.0], [450.0, -10.0], [700.0, -300.0]]))


def direction(points):
    """The model perturbation of the Taylor test (the same at every point it is used)."""
    return np.sin(points[:, 0] / 90.0) * np.cos(points[:, 1] / 70.0)


def model(dvp=0.0):
    def evaluate(points):
        x, y = points[:, 0], np.clip(points[:, 1], -500.0, 0.0)
        return {"VP": 1500.0 - 0.5 * y + dvp * direction(points),
                "RHO": 1000.0 - 0.3 * y}
    return evaluate


DT = 0.5 * stable_dt(MESH, model())


def make(m=model()):
    return solver(MESH, m, 0.4, DT, absorbing=margins(200.0, 1800.0), top_boundary="dirichlet")


def test_dirichlet_points_stay_zero_and_the_adjoint_is_the_transpose():
    s = make()
    n = s.axis.n_steps
    rng = np.random.default_rng(5)
    _, src = s.mesh.point_sampling(np.array([[300.0, -250.0], [610.0, -120.0]]))
    _, rec = s.mesh.point_sampling(np.array([[100.0, -50.0], [450.0, -10.0], [700.0, -400.0]]))
    f = rng.standard_normal((len(src), n))
    a = rng.standard_normal((len(rec), n + 1))
    top = s.stepper.fixed
    assert top.sum() == MESH.npx  # the whole top row of GLL points
    seen = []
    traces = s.stepper.run(n, src, f, rec, on_step=lambda k, u, _: seen.append(
        np.abs(u[top]).max()))
    assert max(seen) == 0.0
    _, _, lam = s.stepper.adjoint(n, rec, a, lambda m: np.zeros(s.mesh.n_local), record=src)
    lhs, rhs = np.sum(traces * a), np.sum(f * lam)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


def test_taylor_with_the_dirichlet_top():
    s = make()
    result = s.gradient(EVENT, lambda keep, tr: l2_energy(tr, DT))
    predicted = result.gradient["VP"] @ direction(s.mesh.coordinates)

    def j(h):
        return l2_energy(make(model(h)).forward(EVENT).traces, DT)[0]

    h = 0.25
    central = (j(h) - j(-h)) / (2 * h)
    rel = abs(central - predicted) / abs(predicted)
    print(f"dirichlet top: directional derivative {predicted:.10e}, central {central:.10e}, "
          f"relative difference {rel:.2e}")
    assert rel < 1e-6


def test_the_job_key_reaches_the_solver(tmp_path):
    job = write_job(tmp_path, **{"  wavelet:": "  top_boundary: dirichlet\n  wavelet:",
                                 "y: 0.0, fields": "y: -40.0, fields"})
    assert main(["-q", "run", str(job), "--forward-only"]) == 0
    summary = json.loads((tmp_path / "out/summary.json").read_text())
    assert summary["events"]["ev1"]["receivers"]
    from fwimpi.mesh.files import read_receivers_h5

    traces = read_receivers_h5(tmp_path / "out/events/ev1/receivers.h5")["ev1"].traces["phi"]
    assert np.abs(traces).max() > 0
    neumann = tmp_path / "neumann"
    neumann.mkdir()
    job = write_job(neumann, **{"y: 0.0, fields": "y: -40.0, fields"})
    assert main(["-q", "run", str(job), "--forward-only"]) == 0
    other = read_receivers_h5(neumann / "out/events/ev1/receivers.h5")["ev1"].traces["phi"]
    assert np.linalg.norm(traces - other) > 0.2 * np.linalg.norm(other)  # the top differs
