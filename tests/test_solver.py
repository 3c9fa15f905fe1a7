"""The wave solver's settable model: a replaced model gives the traces and gradient of a
solver built on it from scratch, the time step and the operators' structure stay, and a model
that is invalid or unstable at the time step is refused with the solver left as it was."""

import numpy as np
import pytest

from fwimpi.inversion.solver import ModelError
from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.sem.misfits import l2_energy
from fwimpi.sem.operators import AcousticStiffness
from problems import event, margins, solver, stable_dt

MESH = build_mesh(Box(0.0, 1000.0, -600.0, 0.0), 300.0, 60.0, 4)
EVENT = event([(300.0, -250.0)], np.column_stack((np.linspace(50.0, 950.0, 7), np.zeros(7))))


def model(scale=1.0, bump=0.0):
    def evaluate(points):
        x, y = points[:, 0], np.clip(points[:, 1], -600.0, 0.0)
        b = bump * np.exp(-((x - 500.0) ** 2 + (y + 300.0) ** 2) / 150.0**2)
        return {"VP": scale * (1500.0 - y) - b, "RHO": 1000.0 - 0.5 * y + b}
    return evaluate


DT = 0.5 * stable_dt(MESH, model(1.1))  # stable for every model below


def make(m):
    return solver(MESH, m, 0.5, DT, absorbing=margins(300.0, 2000.0))


@pytest.fixture(scope="module")
def replaced():
    s = make(model())
    s.forward(EVENT)  # used once with the first model
    s.set_model(model(1.05, 80.0)(s.mesh.coordinates))
    return s


def test_replaced_model_gives_the_traces_of_a_fresh_solver(replaced):
    fresh = make(model(1.05, 80.0))
    a, b = replaced.forward(EVENT).traces, fresh.forward(EVENT).traces
    assert replaced.axis == fresh.axis and replaced.axis.dt == DT
    assert np.abs(a - b).max() <= 1e-13 * np.abs(b).max()
    before = make(model()).forward(EVENT).traces
    assert np.abs(a - before).max() > 1e-3 * np.abs(b).max()  # the model did change


def test_replaced_model_gives_the_gradient_of_a_fresh_solver(replaced):
    fresh = make(model(1.05, 80.0))

    def misfit(keep, traces):
        return l2_energy(traces, DT)

    a, b = replaced.gradient(EVENT, misfit), fresh.gradient(EVENT, misfit)
    assert a.misfit == pytest.approx(b.misfit, rel=1e-13)
    for p in ("VP", "RHO"):
        assert np.abs(a.gradient[p] - b.gradient[p]).max() <= 1e-12 * np.abs(b.gradient[p]).max()


def test_unstable_or_invalid_models_are_refused_and_leave_the_solver_unchanged():
    s = make(model())
    before = s.forward(EVENT).traces
    fast = model(3.0)(s.mesh.coordinates)  # 3x faster: unstable at DT
    with pytest.raises(ModelError, match="exceeds the stability limit"):
        s.set_model(fast)
    bad = model()(s.mesh.coordinates)
    bad["RHO"][7] = -1.0
    with pytest.raises(ModelError, match="RHO: must be positive"):
        s.set_model(bad)
    with pytest.raises(ModelError, match="VP"):
        s.set_model({"RHO": bad["RHO"]})
    assert np.array_equal(s.forward(EVENT).traces, before)


@pytest.mark.parametrize("general", [True, False])
def test_kernel_coefficient_replaced_in_place(general):
    """Both 2D kernels keep their (blocked) coefficient buffers and give a fresh operator's
    products, the fused adjoint kernel's too."""
    rng = np.random.default_rng(3)
    m1, m1_new = rng.uniform(0.5, 2.0, (2, MESH.n_points))
    u, v = rng.standard_normal((2, MESH.n_points))
    k = AcousticStiffness(MESH.geometry(), MESH.ibool(), m1, general=general)
    assert k.rectangles is not general
    buffers = [id(a) for a in k._args]
    k.set_coefficient(m1_new)
    fresh = AcousticStiffness(MESH.geometry(), MESH.ibool(), m1_new, general=general)
    assert [id(a) for a in k._args] == buffers
    assert np.array_equal(k.apply(u), fresh.apply(u))
    out = [np.zeros(MESH.n_points) for _ in range(2)]
    acc = [op.gradient_accumulator() for op in (k, fresh)]
    for op, o, a in zip((k, fresh), out, acc):
        op.add_with_gradient(v, u, o, a)
    assert np.array_equal(out[0], out[1]) and np.array_equal(acc[0], acc[1])
    assert np.allclose(out[0], fresh.apply(v), rtol=0, atol=1e-12 * np.abs(out[0]).max())
