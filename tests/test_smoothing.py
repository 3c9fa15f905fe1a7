"""Diffusion smoothing on the SEM mesh: a smoothing length is the standard deviation of the
equivalent Gaussian (second moments of a smoothed impulse), the integral is preserved and the
operator is symmetric in the mass inner product."""

from types import SimpleNamespace

import numpy as np
import pytest

from fwimpi.inversion.smoothing import (ConstantSmoothing, DiffusionSmoother, SmoothingError,
                                        cell_corners, smooth, stiffness_diagonal)
from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.sem.geometry import element_geometry
from fwimpi.sem.gll import derivative_matrix, gll_points_weights
from fwimpi.sem.operators import AcousticStiffness, assembled_sum

SIGMA = (100.0, 50.0)
# The README's figure: a smoothed impulse's second moments equal sigma^2 to 1e-9 (measured
# 4.4e-10 at most on the rectangles, 6.9e-11 on the sheared mesh). The residue is the CG
# tolerance (rtol 1e-12; with 1e-14 it drops to 6e-11), not the discretisation.
MOMENTS = 1e-9
# The integral of a smoothed impulse (1/w at one point) is preserved to the CG tolerance too
# (measured 1.4e-11 at most; 1.6e-13 with rtol 1e-14).
INTEGRAL = 5e-11


def contract_arrays(mesh, shear: float = 0.0):
    """points, cells, mass of a structured mesh; ``shear`` maps x to x + shear * y (affine
    parallelograms with the same quadrature weights)."""
    points = mesh.points.copy()
    points[:, 0] += shear * points[:, 1]
    mass = assembled_sum(mesh.ibool(), mesh.geometry().jw, mesh.n_points)
    return SimpleNamespace(points=points, cells=mesh.cells, mass=mass, order=mesh.order)


@pytest.fixture(scope="module")
def tutorial():
    """The tutorial's domain, 40 m elements of order 4, margin 0; one smoother of SIGMA."""
    m = contract_arrays(build_mesh(Box(0.0, 3000.0, -1000.0, 0.0), 0.0, 40.0, 4))
    m.smoother = DiffusionSmoother(m.points, m.cells, m.mass, m.order, SIGMA)
    yield m
    m.smoother.destroy()


def impulse(m, centre):
    """A unit "delta": 1/w_i at the point nearest ``centre`` (unit integral)."""
    i = int(np.argmin(np.hypot(m.points[:, 0] - centre[0], m.points[:, 1] - centre[1])))
    u = np.zeros(len(m.points))
    u[i] = 1.0 / m.mass[i]
    return u, m.points[i]


def moments(m, u, at):
    """Integral, first and second mass-weighted moments of ``u`` about ``at``."""
    wu = m.mass * u
    dx, dy = m.points[:, 0] - at[0], m.points[:, 1] - at[1]
    return SimpleNamespace(total=wu.sum(), mx=wu @ dx, my=wu @ dy, xx=wu @ dx**2, yy=wu @ dy**2,
                           xy=wu @ (dx * dy))


@pytest.mark.parametrize("centre", [(1500.0, -500.0), (1480.0, -520.0)])  # inside, corner
def test_impulse_second_moments_are_the_smoothing_lengths_squared(tutorial, centre):
    u0, at = impulse(tutorial, centre)
    u = tutorial.smoother(u0)
    mo = moments(tutorial, u, at)
    sx, sy = SIGMA
    print(f"\nimpulse at {tuple(at)}: xx/sx^2 - 1 = {mo.xx / sx**2 - 1:.1e}, yy/sy^2 - 1 = "
          f"{mo.yy / sy**2 - 1:.1e}, xy/(sx sy) = {mo.xy / (sx * sy):.1e}, drift "
          f"({mo.mx / sx:.1e}, {mo.my / sy:.1e}), integral - 1 = {mo.total - 1:.1e}")
    # Backward Euler keeps the moments exact on the discrete mesh (module docstring):
    # far stricter than the 3% of the contract.
    assert abs(mo.xx / sx**2 - 1) < MOMENTS and abs(mo.yy / sy**2 - 1) < MOMENTS
    assert abs(mo.xy) < 1e-14 * sx * sy  # measured 1.1e-16
    assert abs(mo.mx) < 1e-11 * sx and abs(mo.my) < 1e-11 * sy  # no drift: 2.7e-12 at most
    assert abs(mo.total - 1.0) < INTEGRAL  # integral preserved
    # A bump: maximum at the impulse, non-negative to round-off (measured -6.3e-16 of the
    # maximum), nearly all of it within 4 sigma (a Gaussian leaves 3.4e-4 outside; 8 backward
    # Euler steps have heavier tails: the module docstring's 1.6e-3, measured 1.60e-3).
    assert np.argmax(u) == np.argmax(u0) and u.min() > -1e-14 * u.max()
    far = np.hypot((tutorial.points[:, 0] - at[0]) / sx, (tutorial.points[:, 1] - at[1]) / sy) > 4
    assert 3.4e-4 < np.abs(tutorial.mass * u)[far].sum() < 2e-3


def test_moments_are_exact_for_any_step_count(tutorial):
    """Up to the boundary: with few steps the exponential tails reach it and are reflected.

    Measured |moment / sigma^2 - 1|: 3 steps 8.9e-10 (x), 3.8e-8 (y: the top and bottom are
    10 sigma_y away, the tail of a 3-step kernel reaches them: still 3.7e-8 with CG at rtol
    1e-14, while x drops to 1.4e-11); 16 steps 2.5e-10 (both). So 3 steps cannot reach the
    README's 1e-9 along y; its bounds are set at its measured level.
    """
    u0, at = impulse(tutorial, (1500.0, -500.0))
    for steps, (bound_x, bound_y) in ((3, (2e-9, 1e-7)), (16, (MOMENTS, MOMENTS))):
        u = smooth(u0, SIGMA, tutorial.points, tutorial.cells, tutorial.mass, tutorial.order,
                   n_steps=steps)
        mo = moments(tutorial, u, at)
        ex, ey = mo.xx / SIGMA[0] ** 2 - 1, mo.yy / SIGMA[1] ** 2 - 1
        print(f"\n{steps} steps: xx/sx^2 - 1 = {ex:.1e}, yy/sy^2 - 1 = {ey:.1e}, "
              f"integral - 1 = {mo.total - 1:.1e}")
        assert abs(ex) < bound_x and abs(ey) < bound_y
        assert abs(mo.total - 1.0) < INTEGRAL


def test_symmetric_in_the_mass_inner_product(tutorial):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, len(tutorial.points)))
    S = tutorial.smoother
    sa, sb = S(a), S(b)
    lhs, rhs = (tutorial.mass * sa) @ b, (tutorial.mass * a) @ sb
    norms = np.sqrt(((tutorial.mass * a) @ a) * ((tutorial.mass * b) @ b))  # ||a||_M ||b||_M
    asymmetry = abs(lhs - rhs) / norms
    drift = abs(tutorial.mass @ sa - tutorial.mass @ a) / np.abs(tutorial.mass * a).sum()
    print(f"\n|<Sa, b>_M - <a, Sb>_M| / (|a|_M |b|_M) = {asymmetry:.1e}; integral change "
          f"{drift:.1e} of sum |w a|")
    # round-off level: measured 1.2e-15 and 8.2e-14 (a sum of 40k terms)
    assert asymmetry <= 1e-14
    assert drift <= 1e-12
    # Diffusion damps: ||S a||_M < ||a||_M (measured 2.3e-3 of it), constants are kept
    # (exactly, measured).
    assert (tutorial.mass * sa) @ sa < 0.01 * (tutorial.mass * a) @ a
    assert np.allclose(S(np.ones(len(a))), 1.0, rtol=0, atol=1e-14)


def test_zero_lengths_are_the_identity_and_one_length_smooths_one_axis(tutorial):
    rng = np.random.default_rng(4)
    f = rng.standard_normal(len(tutorial.points))
    args = (tutorial.points, tutorial.cells, tutorial.mass, tutorial.order)
    assert np.array_equal(smooth(f, (0.0, 0.0), *args), f)
    # Only along x: the impulse stays on its row of points.
    u0, at = impulse(tutorial, (1500.0, -500.0))
    u = smooth(u0, (100.0, 0.0), *args)
    row = tutorial.points[:, 1] == at[1]
    assert np.abs(u[~row]).max() < 1e-12 * np.abs(u).max()
    mo = moments(tutorial, u, at)
    assert abs(mo.xx / 100.0**2 - 1) < MOMENTS and mo.yy == 0.0  # measured 1.4e-10 and 0


def test_sheared_mesh_uses_the_physical_axes():
    """Parallelogram elements (the general kernel): the lengths are still along x and y."""
    m = contract_arrays(build_mesh(Box(0.0, 2400.0, -1000.0, 0.0), 0.0, 60.0, 4), shear=0.5)
    with DiffusionSmoother(m.points, m.cells, m.mass, m.order, SIGMA) as S:
        assert not S._shell.stiffness.rectangles
        u0, at = impulse(m, (950.0, -500.0))  # the centre, x' = 1200 - 0.5 * 500
        mo = moments(m, S(u0), at)
    ex, ey = mo.xx / SIGMA[0] ** 2 - 1, mo.yy / SIGMA[1] ** 2 - 1
    print(f"\nsheared: xx/sx^2 - 1 = {ex:.1e}, yy/sy^2 - 1 = {ey:.1e}, xy/(sx sy) = "
          f"{mo.xy / (SIGMA[0] * SIGMA[1]):.1e}, integral - 1 = {mo.total - 1:.1e}")
    # as on rectangles (measured 6.9e-11, 4.3e-11; xy 2.3e-13; integral 6.4e-12)
    assert abs(ex) < MOMENTS and abs(ey) < MOMENTS
    assert abs(mo.xy) < 1e-11 * SIGMA[0] * SIGMA[1]
    assert abs(mo.mx) < 1e-11 * SIGMA[0] and abs(mo.my) < 1e-11 * SIGMA[1]
    assert abs(mo.total - 1) < INTEGRAL


def test_metric_and_diagonal():
    # The metric jw J^-1 D J^-T on general (non-parallelogram) quads against a Jacobian
    # differentiated numerically (GLL derivative matrix on the element's points: exact for
    # the bilinear map).
    corners = np.array([[[0.0, 0.0], [40.0, 3.0], [45.0, 38.0], [-2.0, 30.0]],
                        [[10.0, -5.0], [60.0, -5.0], [60.0, 20.0], [10.0, 20.0]]])
    dm = np.array([[3.0, 0.5], [0.5, 1.0]])
    got = element_geometry(corners, 3, dm)
    d, (_, w) = derivative_matrix(3), gll_points_weights(3)
    x, y = got.coords
    x_xi, y_xi = (np.einsum("ik,ejk->eji", d, a) for a in (x, y))
    x_eta, y_eta = (np.einsum("jk,eki->eji", d, a) for a in (x, y))
    det = x_xi * y_eta - x_eta * y_xi
    grad = [np.stack((y_eta, -x_eta)) / det, np.stack((-y_xi, x_xi)) / det]  # grad xi, eta
    jw = np.outer(w, w)[None] * det
    assert np.allclose(got.jw, jw, rtol=1e-12)
    for a in range(2):
        for b in range(2):
            expected = jw * np.einsum("cejk,cd,dejk->ejk", grad[a], dm, grad[b])
            assert np.allclose(got.metric[a, b], expected, rtol=1e-12,
                               atol=1e-12 * np.abs(expected).max()), (a, b)
    # D scales the metric: D = diag(4, 0) on the rectangle leaves only 4 * (d xi/dx)^2.
    ref = element_geometry(corners, 3)
    scaled = element_geometry(corners, 3, np.diag([4.0, 0.0]))
    assert np.allclose(scaled.metric[0, 0, 1], 4.0 * ref.metric[0, 0, 1], rtol=1e-13)
    assert not scaled.metric[0, 1, 1].any() and not scaled.metric[1, 1, 1].any()
    # The assembled diagonal (the Jacobi preconditioner) is the dense matrix's.
    m = contract_arrays(build_mesh(Box(0.0, 300.0, -200.0, 0.0), 0.0, 100.0, 3), shear=0.3)
    c, ibool = cell_corners(m.points, m.cells, m.order)
    g = element_geometry(c, m.order, np.array([[3.0, 0.5], [0.5, 1.0]]))
    k = AcousticStiffness(g, ibool, np.ones(len(m.points)), general=True)
    dense = np.column_stack([k.apply(e) for e in np.eye(len(m.points))])
    assert np.allclose(np.diag(dense), stiffness_diagonal(g, ibool, len(m.points)), rtol=1e-12)


def test_constant_smoothing_applies_per_parameter(tutorial):
    rng = np.random.default_rng(6)
    fields = {"VP": rng.standard_normal(len(tutorial.points)),
              "RHO": rng.standard_normal(len(tutorial.points))}
    args = (tutorial.points, tutorial.cells, tutorial.mass, tutorial.order)
    cs = ConstantSmoothing({"VP": [100, 50]})
    assert cs.smoothing_lengths_in_meters == {"VP": (100.0, 50.0)}
    out = cs.apply(fields, *args)
    assert np.allclose(out["VP"], tutorial.smoother(fields["VP"]), rtol=0, atol=1e-12)
    assert np.array_equal(out["RHO"], fields["RHO"])  # no length: unchanged
    # A gradient (w * kernel): its kernel is smoothed.
    weighted = cs.apply(fields, *args, mass_weighted=True)
    expected = tutorial.mass * tutorial.smoother(fields["VP"] / tutorial.mass)
    assert np.allclose(weighted["VP"], expected, rtol=0, atol=1e-12 * np.abs(expected).max())


def test_errors(tutorial):
    args = (tutorial.points, tutorial.cells, tutorial.mass, tutorial.order)
    f = np.zeros(len(tutorial.points))
    with pytest.raises(SmoothingError, match="smoothing lengths must be finite and >= 0"):
        smooth(f, (-1.0, 5.0), *args)
    with pytest.raises(ValueError, match=r"expected \(sigma_x, sigma_y\)"):
        smooth(f, (1.0,), *args)
    with pytest.raises(SmoothingError, match=r"field: expected shape"):
        tutorial.smoother(f[:-1])
    with pytest.raises(SmoothingError, match=r"cells: expected shape \(n_elements, 16\)"):
        smooth(f, SIGMA, tutorial.points, tutorial.cells, tutorial.mass, 3)
    bent = tutorial.points.copy()
    bent[tutorial.cells[100, 12], 1] += 3.0  # an interior GLL point off the bilinear quad
    with pytest.raises(SmoothingError, match="curved elements are not supported"):
        smooth(f + 1, SIGMA, bent, tutorial.cells, tutorial.mass, tutorial.order)
    with pytest.raises(SmoothingError, match=r"smoothing_lengths_in_meters: no field RHO"):
        ConstantSmoothing({"RHO": (10.0, 10.0)}).apply({"VP": f}, *args)
    with pytest.raises(SmoothingError, match="smoothing.smoothing_lengths_in_meters: must be"):
        ConstantSmoothing({})
