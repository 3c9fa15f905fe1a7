"""Discrete adjoint: dK/dm1 against finite differences, dot-product test of the propagators."""

import numpy as np
import pytest

from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.sem.absorbing import AbsorbingBoundaries, AbsorbingStepper
from fwimpi.sem.operators import AcousticStiffness
from problems import margins, solver
from test_operators import parallelogram_mesh


def model(points):
    return {"VP": 1500.0 - 0.5 * points[:, 1], "RHO": 1000.0 - 0.3 * points[:, 1]}


@pytest.mark.parametrize("general", [False, True])
def test_stiffness_derivative_in_m1_is_exact(general):
    mesh = build_mesh(Box(0.0, 600.0, -400.0, 0.0), 150.0, 100.0, 3)
    rng = np.random.default_rng(3)
    m1 = rng.uniform(0.5, 2.0, mesh.n_points)
    v, u = rng.standard_normal((2, mesh.n_points))
    k = AcousticStiffness(mesh.geometry(), mesh.ibool(), m1, general=general)
    out, acc = np.zeros(mesh.n_points), k.gradient_accumulator()
    k.add_with_gradient(v, u, out, acc)
    acc = k.point_values(acc, mesh.n_points)
    assert np.allclose(out, k.apply(v), rtol=0, atol=1e-13 * np.abs(out).max())
    for i in rng.choice(mesh.n_points, 5, replace=False):
        e = np.zeros(mesh.n_points)
        e[i] = 1.0
        dk = AcousticStiffness(mesh.geometry(), mesh.ibool(), e, general=general)
        assert np.isclose(acc[i], v @ dk.apply(u), rtol=1e-12, atol=1e-14 * np.abs(acc).max())


def test_general_stiffness_derivative_on_sheared_elements():
    geometry, ibool, n_points = parallelogram_mesh(3, 2, 3)
    rng = np.random.default_rng(4)
    m1 = rng.uniform(0.5, 2.0, n_points)
    v, u = rng.standard_normal((2, n_points))
    k = AcousticStiffness(geometry, ibool, m1)
    out, acc = np.zeros(n_points), k.gradient_accumulator()
    k.add_with_gradient(v, u, out, acc)
    acc = k.point_values(acc, n_points)
    for i in range(0, n_points, 7):
        e = np.zeros(n_points)
        e[i] = 1.0
        assert np.isclose(acc[i], v @ AcousticStiffness(geometry, ibool, e).apply(u), rtol=1e-12,
                          atol=1e-14 * np.abs(acc).max())


def small_problem(margin=200.0):
    mesh = build_mesh(Box(0.0, 800.0, -500.0, 0.0), margin, 100.0, 4)
    return solver(mesh, model, 0.3, absorbing=margins(margin, 1800.0))


def test_dot_product_of_forward_and_adjoint_propagators():
    problem = small_problem()
    n = problem.axis.n_steps
    rng = np.random.default_rng(5)
    _, src = problem.mesh.point_sampling(np.array([[300.0, -250.0], [610.0, -120.0]]))
    _, rec = problem.mesh.point_sampling(np.array([[100.0, 0.0], [450.0, -10.0], [700.0, -400.0]]))
    f = rng.standard_normal((len(src), n))
    a = rng.standard_normal((len(rec), n + 1))
    stepper = problem.stepper
    traces = stepper.run(n, src, f, rec)
    _, _, lam = stepper.adjoint(n, rec, a, lambda m: np.zeros(problem.mesh.n_local), record=src)
    lhs = np.sum(traces * a)
    rhs = np.sum(f * lam)
    print(f"<F f, a> = {lhs:.16e}, <f, F^T a> = {rhs:.16e}")
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)


# Boundary cases: the Stacey term alone (the default), with the damping layer, the layer alone
# (the former margins), the Stacey term on the domain's own edges (no margins) and a closed box.
BOUNDARIES = {
    "stacey": (200.0, AbsorbingBoundaries(1800.0, 200.0 / 1800.0, 1.0)),
    "stacey_and_layer": (200.0, AbsorbingBoundaries(1800.0, 200.0 / 1800.0, 1.0,
                                                    layer_reflection=1e-2)),
    "layer": (200.0, AbsorbingBoundaries(1800.0, 200.0 / 1800.0, 1.0, layer_reflection=1e-2,
                                         stacey=False)),
    "stacey_no_margins": (0.0, AbsorbingBoundaries(1800.0, 0.0, 1.0)),
    "closed": (200.0, None),
}


@pytest.mark.parametrize("boundary", list(BOUNDARIES))
@pytest.mark.parametrize("recorded", [True, False])
def test_dot_product_with_each_boundary(boundary, recorded):
    margin, absorbing = BOUNDARIES[boundary]
    mesh = build_mesh(Box(0.0, 800.0, -500.0, 0.0), margin, 100.0, 4)
    problem = solver(mesh, model, 0.5, absorbing=absorbing)  # the wave reaches every edge
    stepper = problem.stepper
    has_stacey = absorbing is not None and absorbing.stacey
    assert isinstance(stepper, AbsorbingStepper) == has_stacey
    assert (problem.damping_rate.max() > 0) == (absorbing is not None)
    n = problem.axis.n_steps
    rng = np.random.default_rng(6)
    _, src = problem.mesh.point_sampling(np.array([[300.0, -250.0], [610.0, -120.0]]))
    _, rec = problem.mesh.point_sampling(np.array([[100.0, 0.0], [450.0, -10.0], [700.0, -400.0]]))
    f = rng.standard_normal((len(src), n))
    a = rng.standard_normal((len(rec), n + 1))
    traces = stepper.run(n, src, f, rec)
    forward = rng.standard_normal(problem.mesh.n_local)  # any field: the kernels are not tested
    g0, g1, lam = stepper.adjoint(n, rec, a, lambda m: forward, record=src if recorded else None)
    assert np.isfinite(g0).all() and np.isfinite(g1).all()
    if not recorded:
        assert lam is None
        return
    lhs, rhs = np.sum(traces * a), np.sum(f * lam)
    print(f"{boundary}: <F f, a> = {lhs:.16e}, <f, F^T a> = {rhs:.16e}, "
          f"relative difference {abs(lhs - rhs) / abs(lhs):.1e}")
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
