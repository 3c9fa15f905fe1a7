"""3D acoustic spectral elements (numerics only, one process): the box kernels against dense
element matrices, symmetry and null space, the stable time step, point weights, the Stacey
faces, energy conservation, the discrete adjoint (dot products, Taylor tests) and the
homogeneous medium against the analytic 3D Green's function."""

import numpy as np
import pytest

from analytic import green_ricker_3d, neumann_box_images
from fwimpi.mesh.structured3d import Box3, build_mesh3d
from fwimpi.sem.absorbing import AbsorbingStepper, StaceyBoundary, damping_profile
from fwimpi.sem.geometry import ElementGeometry, box_geometry, point_weights
from fwimpi.sem.gll import derivative_matrix, gll_points_weights
from fwimpi.sem.operators import AcousticStiffness, assembled_sum
from fwimpi.sem.timestepper import (COURANT_FACTOR, LeapfrogStepper, PointSampling,
                                    element_max_eigenvalues, stable_time_step)
from fwimpi.sem.wavelets import ricker


class Problem:
    """A serial 3D problem on ``build_mesh3d(domain, margin, h, order)``: local arrays are
    the mesh's, in natural order. ``model(points) -> (vp, rho)``."""

    def __init__(self, domain, margin, h, order, model, stacey=False, dt=None):
        self.mesh = mesh = build_mesh3d(domain, margin, h, order)
        self.ibool, self.geometry, self.n = mesh.ibool(), mesh.geometry(), mesh.n_points
        self.weights = assembled_sum(self.ibool, self.geometry.jw, self.n)
        self.model = model
        self.boundary = None
        if stacey:
            ext = tuple(v for b in mesh.extended.bounds for v in b)
            self.boundary = StaceyBoundary.on_box(self.geometry, self.ibool, self.n, ext)
        vp, rho = model(mesh.points)
        m0, m1 = 1.0 / (rho * vp**2), 1.0 / rho
        self.dt = (COURANT_FACTOR * stable_time_step(self.geometry, m0[self.ibool],
                                                     m1[self.ibool]) if dt is None else dt)
        self.stepper = self.stepper_for(m0, m1)

    def coefficients(self):
        vp, rho = self.model(self.mesh.points)
        return 1.0 / (rho * vp**2), 1.0 / rho

    def stepper_for(self, m0, m1) -> LeapfrogStepper:
        """A stepper for the coefficients ``m0, m1 (P,)`` at this problem's ``dt``."""
        stiffness = AcousticStiffness(self.geometry, self.ibool, m1)
        mass = m0 * self.weights
        if self.boundary is None:
            return LeapfrogStepper(stiffness, mass, np.zeros(self.n), self.dt)
        return AbsorbingStepper(self.boundary, m0, m1, stiffness, mass,
                                self.boundary.damping(m0, m1), self.dt)

    def sampling(self, xyz) -> PointSampling:
        """Interpolation rows at the points ``xyz (Q, 3)``."""
        elements, ref = self.mesh.locate(np.asarray(xyz, dtype=float))
        idx = self.ibool[elements].reshape(len(elements), -1)
        return PointSampling(idx, point_weights(self.mesh.order, ref))


def dense_stiffness(geometry, ibool, m1, n_points):
    """Assembled ``K (P, P)`` from dense element matrices ``sum_a D_a^T diag(m1 g_aa) D_a``,
    the ``D_a`` kron products of the 1D derivative matrix (local node i + n j + n^2 k)."""
    d = derivative_matrix(geometry.order)
    eye = np.eye(geometry.order + 1)
    derivatives = (np.kron(eye, np.kron(eye, d)), np.kron(eye, np.kron(d, eye)),
                   np.kron(d, np.kron(eye, eye)))
    k = np.zeros((n_points, n_points))
    for e in range(len(ibool)):
        idx = ibool[e].ravel()
        ke = sum(da.T @ ((m1[idx] * geometry.metric[a, a, e].ravel())[:, None] * da)
                 for a, da in enumerate(derivatives))
        k[np.ix_(idx, idx)] += ke
    return k, derivatives


TINY = Box3(0.0, 300.0, 0.0, 200.0, -200.0, 0.0)  # 3 x 2 x 2 elements of 100 m


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_box_kernel_equals_dense_assembled_matrix(order):
    mesh = build_mesh3d(TINY, 0.0, 100.0, order)
    ibool, geometry, n = mesh.ibool(), mesh.geometry(), mesh.n_points
    rng = np.random.default_rng(order)
    m1 = rng.uniform(0.5, 2.0, n)
    k = AcousticStiffness(geometry, ibool, m1)
    assert k.dim == 3 and k.rectangles
    dense, derivatives = dense_stiffness(geometry, ibool, m1, n)
    kernel = np.column_stack([k.apply(e) for e in np.eye(n)])
    err = np.abs(kernel - dense).max() / np.abs(dense).max()
    print(f"order {order}: {n} points, max |K - K_dense| / max |K_dense| = {err:.1e}")
    assert err < 1e-14  # measured 1.6e-16 to 3.1e-16
    # the fused adjoint kernel: K v, and the m1 kernel sum_a g_aa (D_a v)(D_a u) per point
    v, u = rng.standard_normal((2, n))
    out, acc = np.zeros(n), k.gradient_accumulator()
    k.add_with_gradient(v, u, out, acc)
    assert np.allclose(out, dense @ v, rtol=0, atol=1e-14 * np.abs(dense @ v).max())
    expected = np.zeros(n)
    for e in range(len(ibool)):
        idx = ibool[e].ravel()
        np.add.at(expected, idx, sum(geometry.metric[a, a, e].ravel() * (da @ v[idx])
                                     * (da @ u[idx]) for a, da in enumerate(derivatives)))
    g1 = k.point_values(acc, n)
    assert np.allclose(g1, expected, rtol=0, atol=1e-14 * np.abs(expected).max())
    # ... which is v^T (dK/dm1_i) u: K is linear in m1
    i = int(rng.integers(n))
    unit = np.zeros(n)
    unit[i] = 1.0
    assert np.isclose(g1[i], v @ AcousticStiffness(geometry, ibool, unit).apply(u),
                      rtol=1e-12, atol=1e-14 * np.abs(g1).max())
    # set_coefficient replaces m1 in place
    k.set_coefficient(2.0 * m1)
    assert np.allclose(k.apply(u), 2.0 * (dense @ u), rtol=0, atol=1e-13 * np.abs(dense @ u).max())


@pytest.mark.parametrize("order", [2, 5])
def test_box_kernel_symmetric_with_constants_in_null_space(order):
    mesh = build_mesh3d(Box3(0.0, 500.0, 0.0, 400.0, -300.0, 0.0), 100.0, 90.0, order)
    n = mesh.n_points
    rng = np.random.default_rng(10 + order)
    z = mesh.points[:, 2]
    k = AcousticStiffness(mesh.geometry(), mesh.ibool(), 1.0 / (1000.0 - 0.5 * z))
    u, v = rng.standard_normal((2, n))
    vku, ukv = v @ k.apply(u), u @ k.apply(v)
    scale = np.sqrt((u @ k.apply(u)) * (v @ k.apply(v)))
    k1 = k.apply(np.ones(n))
    ku = k.apply(u)
    print(f"order {order} ({mesh.n_elements} elements, {n} points): |v'Ku - u'Kv| / "
          f"sqrt(u'Ku v'Kv) = {abs(vku - ukv) / scale:.1e}, |K 1|_inf / |K u|_inf = "
          f"{np.abs(k1).max() / np.abs(ku).max():.1e}")
    assert abs(vku - ukv) <= 1e-15 * scale  # measured 6.3e-17, 3.3e-17
    assert u @ ku > 0.0
    assert np.abs(k1).max() <= 1e-15 * np.abs(ku).max()  # measured 0, 4.8e-18
    # natural boundaries: a linear function is not in the null space
    assert np.abs(k.apply(mesh.points[:, 0])).max() > 1e-6 * np.abs(ku).max()
    # exact energy of a linear field: int m1 |grad u|^2 = |a|^2 int m1 (m1 linear in z
    # on each element is not polynomial; take m1 = 1)
    k.set_coefficient(np.ones(n))
    a = np.array([2.0, -3.0, 0.5])
    lin = mesh.points @ a
    volume = np.prod([hi - lo for lo, hi in mesh.extended.bounds])
    assert np.isclose(lin @ k.apply(lin), (a @ a) * volume, rtol=1e-12)


def test_3d_geometry_other_than_identical_boxes_is_refused():
    a, b = box_geometry((100.0, 100.0, 100.0), 2), box_geometry((100.0, 50.0, 100.0), 2)
    two = ElementGeometry(2, np.concatenate((a.coords, b.coords), axis=1),
                          np.concatenate((a.jw, b.jw)), np.concatenate((a.metric, b.metric),
                                                                      axis=2))
    ibool = np.arange(2 * 27).reshape(2, 3, 3, 3)
    with pytest.raises(ValueError, match="identical axis-aligned boxes"):
        AcousticStiffness(two, ibool, np.ones(54))
    with pytest.raises(ValueError, match="general"):
        AcousticStiffness(a, ibool[:1], np.ones(27), general=True)
    sheared = a.metric.copy()
    sheared[0, 1] = sheared[1, 0] = 0.1 * sheared[0, 0]
    with pytest.raises(ValueError, match="identical axis-aligned boxes"):
        AcousticStiffness(ElementGeometry(2, a.coords, a.jw, sheared), ibool[:1], np.ones(27))


def test_point_weights_interpolate_the_element_polynomial_in_3d():
    order = 3
    rng = np.random.default_rng(7)
    ref = rng.uniform(-1.0, 1.0, (20, 3))
    xi, _ = gll_points_weights(order)
    k, j, i = np.meshgrid(xi, xi, xi, indexing="ij")  # node a = i + n j + n^2 k

    def f(x, y, z):  # degree <= order in each variable
        return 1.0 + x**3 - 2.0 * x * y**2 * z**3 + 0.5 * y**3 * z + x**2 * z**2

    w = point_weights(order, ref)
    assert w.shape == (20, 64)
    assert np.allclose(w.sum(axis=1), 1.0, atol=1e-13)
    assert np.allclose(w @ f(i, j, k).ravel(), f(*ref.T), atol=1e-12)
    # at a GLL node the weights pick that node
    node = np.array([[xi[1], xi[2], xi[0]]])
    assert np.allclose(point_weights(order, node)[0], np.eye(64)[1 + 4 * 2 + 16 * 0], atol=1e-14)


def heterogeneous(points):
    x, y, z = points.T
    vp = 1500.0 - 0.8 * z + 100.0 * np.sin(x / 150.0) * np.cos(y / 170.0)
    return vp, 1000.0 - 0.3 * z + 20.0 * np.cos(x / 110.0)


def test_stable_time_step_is_the_dense_element_bound_and_bounds_the_global_one():
    mesh = build_mesh3d(Box3(0.0, 300.0, 0.0, 200.0, -200.0, 0.0), 0.0, 100.0, 2)
    ib, geometry, n = mesh.ibool(), mesh.geometry(), mesh.n_points
    vp, rho = heterogeneous(mesh.points)
    m0, m1 = 1.0 / (rho * vp**2), 1.0 / rho
    dense, _ = dense_stiffness(geometry, ib, m1, n)
    s = 1.0 / np.sqrt(m0 * assembled_sum(ib, geometry.jw, n))
    global_max = np.linalg.eigvalsh(s[:, None] * dense * s[None, :]).max()
    per_element = element_max_eigenvalues(geometry, m0[ib], m1[ib])
    bound = per_element.max()
    print(f"element bound / global eigenvalue = {bound / global_max:.4f}")
    assert global_max <= bound <= 1.3 * global_max
    # chunks do not change the eigenvalues
    assert np.array_equal(element_max_eigenvalues(geometry, m0[ib], m1[ib], chunk=5),
                          per_element)
    # stable_time_step skips the elements that cannot hold the maximum: same value
    assert stable_time_step(geometry, m0[ib], m1[ib]) == 2.0 / np.sqrt(bound)


@pytest.mark.parametrize("model", ["smooth", "random", "homogeneous"])
def test_stable_time_step_candidates_give_the_full_maximum(model):
    mesh = build_mesh3d(Box3(0.0, 400.0, 0.0, 300.0, -300.0, 0.0), 100.0, 100.0, 3)
    ib, geometry = mesh.ibool(), mesh.geometry()
    rng = np.random.default_rng(8)
    if model == "smooth":
        vp, rho = heterogeneous(mesh.points)
    elif model == "random":
        vp, rho = rng.uniform(1500.0, 2500.0, (2, mesh.n_points))
    else:
        vp, rho = np.full(mesh.n_points, 2000.0), np.full(mesh.n_points, 1000.0)
    m0, m1 = 1.0 / (rho * vp**2), 1.0 / rho
    full = element_max_eigenvalues(geometry, m0[ib], m1[ib]).max()
    assert stable_time_step(geometry, m0[ib], m1[ib]) == 2.0 / np.sqrt(full)


def test_stacey_faces_of_a_3d_box():
    domain = Box3(0.0, 300.0, 0.0, 200.0, -150.0, 0.0)
    mesh = build_mesh3d(domain, 50.0, 100.0, 3)
    e = mesh.extended
    box = tuple(v for b in e.bounds for v in b)
    b = StaceyBoundary.on_box(mesh.geometry(), mesh.ibool(), mesh.n_points, box)
    lx, ly, lz = (hi - lo for lo, hi in e.bounds)
    # the weights integrate 1 over the five faces (not the top)
    assert np.isclose(b.weights.sum(), 2 * ly * lz + 2 * lx * lz + lx * ly, rtol=1e-13)
    p = mesh.points[b.indices]
    on = np.zeros(len(p), dtype=bool)
    for a, (lo, hi) in enumerate(e.bounds):
        on |= np.isclose(p[:, a], lo) | (np.isclose(p[:, a], hi) if a < 2 else False)
    assert on.all()
    top_only = np.isclose(mesh.points[:, 2], e.z1)
    for a, (lo, hi) in enumerate(e.bounds):
        top_only &= ~np.isclose(mesh.points[:, a], lo) & (~np.isclose(mesh.points[:, a], hi)
                                                          if a < 2 else True)
    assert not np.isin(np.flatnonzero(top_only), b.indices).any()
    # a point inside one element's face: w_k w_l h_a h_b / 4
    xi, w = gll_points_weights(3)
    hx, hy, hz = mesh.sizes
    point = [e.x0, e.y0 + hy * (1.0 + (xi[1] + 1.0) / 2.0), e.z0 + hz * (xi[2] + 1.0) / 2.0]
    at = b.indices == mesh.point_indices([point])[0]
    assert at.sum() == 1
    assert np.isclose(b.weights[at][0], w[1] * w[2] * hy * hz / 4.0, rtol=1e-13)
    # a 2D box is refused for 3D elements; the damping layer takes 6-number boxes
    with pytest.raises(ValueError, match="3D box"):
        StaceyBoundary.on_box(mesh.geometry(), mesh.ibool(), mesh.n_points, box[:4])
    d = damping_profile(mesh.points, tuple(v for b in domain.bounds for v in b), 50.0, 2000.0)
    inside = np.all([(mesh.points[:, a] >= lo) & (mesh.points[:, a] <= hi)
                     for a, (lo, hi) in enumerate(domain.bounds)], axis=0)
    assert np.all(d[inside] == 0.0) and np.all(d[~inside] > 0.0)
    corner = np.argmin(np.linalg.norm(mesh.points - [e.x0, e.y0, e.z0], axis=1))
    # three sides add up in the corner, each d0 = 3 v ln(1/R) / width (R = 1e-2)
    assert np.isclose(d[corner], 3 * 3.0 * 2000.0 * np.log(100.0) / 50.0, rtol=1e-12)


# -- energy -------------------------------------------------------------------------------

ENERGY_DOMAIN = Box3(0.0, 400.0, 0.0, 400.0, -300.0, 0.0)  # 4 x 4 x 3 elements of 100 m
FC = 5.0
T0 = 1.2 / FC


def test_energy_is_conserved_in_a_closed_box():
    """The discrete energy ``E^{n+1/2} = 1/2 v^T M v + 1/2 u[n+1]^T K u[n]`` of the leapfrog
    scheme is exactly constant once the source is off (see tests/test_energy.py)."""
    problem = Problem(ENERGY_DOMAIN, 0.0, 100.0, 4, heterogeneous)
    dt, n_after = problem.dt, 2000
    n_off = int(np.ceil(3.0 * T0 / dt))
    n_steps = n_off + n_after
    signal = ricker(dt * np.arange(n_steps), FC, T0)
    signal[n_off:] = 0.0
    src = problem.sampling([[130.0, 210.0, -170.0]])
    rec = problem.sampling([[300.0, 100.0, 0.0]])
    m0, _ = problem.coefficients()
    mass, stiffness = m0 * problem.weights, problem.stepper.stiffness
    energy = np.full(n_steps + 1, np.nan)

    def on_step(n, u, u_old):
        v = (u - u_old) / dt
        energy[n] = 0.5 * v @ (mass * v) + 0.5 * u @ stiffness.apply(u_old)

    traces = problem.stepper.run(n_steps, src, signal, rec, on_step=on_step)
    assert np.abs(traces).max() > 0.0
    after = energy[n_off:]
    e0 = after[0]
    drift = np.abs(after - e0).max() / e0
    print(f"\nclosed 3D box: dt={dt:.4g} s, {problem.n} points, {n_after} steps after the "
          f"source stops, max relative drift {drift:.2e}")
    assert np.isfinite(after).all() and e0 > 0.0 and after.min() > 0.0
    assert energy[1] < 1e-3 * e0
    assert drift < 1e-12  # measured 4.7e-15: round-off


# -- discrete adjoint ---------------------------------------------------------------------

ADJOINT_DOMAIN = Box3(0.0, 400.0, 0.0, 300.0, -300.0, 0.0)
SOURCES = [[130.0, 120.0, -170.0], [310.0, 200.0, -60.0]]
RECEIVERS = [[50.0, 50.0, 0.0], [250.0, 150.0, -10.0], [350.0, 280.0, -250.0]]


def adjoint_problem(stacey):
    """6 x 5 x 4 elements of order 3 (100 m margins), 0.5 s: the wave reaches every face."""
    problem = Problem(ADJOINT_DOMAIN, 100.0, 100.0, 3, heterogeneous, stacey=stacey)
    return problem, int(np.ceil(0.5 / problem.dt))


@pytest.mark.parametrize("stacey", [False, True])
def test_dot_product_of_forward_and_adjoint_propagators(stacey):
    problem, n = adjoint_problem(stacey)
    stepper = problem.stepper
    assert isinstance(stepper, AbsorbingStepper) == stacey
    src, rec = problem.sampling(SOURCES), problem.sampling(RECEIVERS)
    rng = np.random.default_rng(11)
    f = rng.standard_normal((len(src), n))
    a = rng.standard_normal((len(rec), n + 1))
    traces = stepper.run(n, src, f, rec)
    forward = rng.standard_normal(problem.n)  # any field: the kernels are not tested here
    g0, g1, lam = stepper.adjoint(n, rec, a, lambda m: forward, record=src)
    assert np.isfinite(g0).all() and np.isfinite(g1).all()
    lhs, rhs = np.sum(traces * a), np.sum(f * lam)
    print(f"stacey={stacey}: {n} steps, <F f, a> = {lhs:.16e}, <f, F^T a> = {rhs:.16e}, "
          f"relative difference {abs(lhs - rhs) / abs(lhs):.1e}")
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)  # measured 9.8e-16 and 1.3e-15


def direction(points):
    x, y, z = points.T
    return np.sin(x / 90.0) * np.cos(y / 70.0) + 0.5 * np.cos((x - z) / 60.0)


def misfit_and_traces(problem, m0, m1, n, src, signal, rec, states=None):
    """``J = 1/2 sum traces^2`` of the run with coefficients ``m0, m1``; the forward states
    ``u[m]`` in ``states`` (if given)."""
    stepper = problem.stepper_for(m0, m1)
    on_step = None if states is None else (lambda k, u, u_old: states.__setitem__(k, u.copy()))
    traces = stepper.run(n, src, signal, rec, on_step=on_step)
    return 0.5 * np.sum(traces**2), traces, stepper


@pytest.mark.parametrize("stacey", [False, True])
@pytest.mark.parametrize("parameter", ["m0", "m1"])
def test_taylor_of_the_3d_gradient(stacey, parameter):
    problem, n = adjoint_problem(stacey)
    src, rec = problem.sampling(SOURCES[:1]), problem.sampling(RECEIVERS)
    signal = ricker(problem.dt * np.arange(n), 12.0, 0.1)
    m0, m1 = problem.coefficients()
    states = {0: np.zeros(problem.n)}
    j0, traces, stepper = misfit_and_traces(problem, m0, m1, n, src, signal, rec, states)
    g0, g1, _ = stepper.adjoint(n, rec, traces, lambda m: states[m])
    grad = {"m0": -problem.weights * g0 / problem.dt**2, "m1": -g1}[parameter]
    delta = direction(problem.mesh.points) * {"m0": m0, "m1": m1}[parameter]
    predicted = grad @ delta

    def j(h):
        c = {"m0": m0, "m1": m1}
        c[parameter] = c[parameter] + h * delta
        return misfit_and_traces(problem, c["m0"], c["m1"], n, src, signal, rec)[0]

    hs = np.array([4e-4, 2e-4, 1e-4, 5e-5])
    remainders, central = [], []
    for h in hs:
        jp, jm = j(h), j(-h)
        remainders.append(abs(jp - j0 - h * predicted))
        central.append((jp - jm) / (2 * h))
    slope = np.polyfit(np.log(hs), np.log(remainders), 1)[0]
    rel = abs(central[-1] - predicted) / abs(predicted)
    print(f"{parameter} stacey={stacey}: directional derivative {predicted:.10e}, central FD "
          f"{central[-1]:.10e}, relative difference {rel:.1e}, remainder slope {slope:.3f}")
    # measured 1.1e-7 (m0) and 1.7e-7 (m1) closed, 8.7e-9 and 1.8e-9 with the Stacey faces,
    # falling 4x per halving of h: the central differences' own error (the closed box's
    # reverberations make J strongly nonlinear: 0.4% at h = 1e-2); slopes 1.995 to 2.004
    assert rel < 1e-6
    assert 1.95 < slope < 2.05


# -- homogeneous medium against the analytic solution -----------------------------------

VP, RHO = 2000.0, 1000.0
# Ricker of fc = 5 Hz: maximum frequency 10 Hz (2 fc), the shortest wavelength 200 m
SOURCE = np.array([0.0, 0.0, -300.0])
# receivers 300-430 m from the source in several directions, one on the top
ANALYTIC_RECEIVERS = np.array([[300.0, 0.0, -300.0], [0.0, -300.0, -600.0],
                               [-300.0, 300.0, -300.0], [0.0, 300.0, 0.0]])
END_TIME = 0.7


def homogeneous(points):
    return np.full(len(points), VP), np.full(len(points), RHO)


def rel_l2(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("top, sign", [("neumann", 1.0), ("dirichlet", -1.0)])
def test_two_elements_per_wavelength_match_the_analytic_solution(top, sign):
    """Order 4, 2 elements per shortest wavelength (h = 100 m), the CFL time step, source
    samples ``f[n] = s(t_n)`` as the solver injects them. A closed box whose side and bottom
    walls are 900 m from the source: their first reflection reaches a receiver after 0.75 s
    (path >= 1500 m), after END_TIME. The top z = 0 is the free surface: natural (image
    source added) or pressure-free (``fix``: subtracted)."""
    problem = Problem(Box3(-900.0, 900.0, -900.0, 900.0, -1200.0, 0.0), 0.0, 100.0, 4,
                      homogeneous)
    if top == "dirichlet":
        m0, _ = problem.coefficients()
        problem.stepper.fix(np.isclose(problem.mesh.points[:, 2], 0.0), m0 * problem.weights,
                            np.zeros(problem.n))
    n = int(np.ceil(END_TIME / problem.dt))
    t = problem.dt * np.arange(n + 1)
    traces = problem.stepper.run(n, problem.sampling([SOURCE]), ricker(t[:-1], FC, T0),
                                 problem.sampling(ANALYTIC_RECEIVERS))
    r = np.linalg.norm(ANALYTIC_RECEIVERS - SOURCE, axis=1)
    r_image = np.linalg.norm(ANALYTIC_RECEIVERS - SOURCE * [1.0, 1.0, -1.0], axis=1)
    direct = green_ricker_3d(r, t, VP, RHO, FC, T0)
    image = green_ricker_3d(r_image, t, VP, RHO, FC, T0)
    err = rel_l2(traces, direct + sign * image)
    other = rel_l2(traces, direct - sign * image)
    print(f"{top} top: {problem.n} points, {n} steps of {problem.dt:.3g} s, relative L2 error "
          f"{err:.2e} (against the other image sign: {other:.2f})")
    assert err < 0.01  # measured 3.0e-3 (natural) and 3.1e-3 (pressure-free)
    assert other > 0.2  # the image source's sign is really seen


@pytest.mark.parametrize("order, sizes", [(1, (30.0, 20.0, 15.0)), (2, (60.0, 50.0, 40.0))])
def test_spatial_convergence_rate(order, sizes):
    """A closed 600 m box with natural walls and its image sources (all reflections are in
    the reference), 0.6 s at a fixed small step (the time error far below the spatial one).
    Source and receivers sit on element corners at every size (rounded to the grid), so the
    constant of the error does not jump with their place in the element."""
    length, end, dt = 600.0, 0.6, 5e-4
    bounds = ((0.0, length), (0.0, length), (-length, 0.0))
    nominal_source = np.array([230.0, 260.0, -340.0])
    nominal_receivers = np.array([[450.0, 120.0, -150.0], [100.0, 500.0, -480.0],
                                  [520.0, 420.0, 0.0], [300.0, 300.0, -580.0]])
    errors = []
    for h in sizes:
        source, receivers = np.round(nominal_source / h) * h, np.round(nominal_receivers / h) * h
        problem = Problem(Box3(0.0, length, 0.0, length, -length, 0.0), 0.0, h, order,
                          homogeneous, dt=dt)
        n = int(np.ceil(end / dt - 1e-9))
        t = dt * np.arange(n + 1)
        traces = problem.stepper.run(n, problem.sampling([source]), ricker(t[:-1], FC, T0),
                                     problem.sampling(receivers))
        images = neumann_box_images(source, bounds, VP * end + 1000.0)
        reference = np.array([green_ricker_3d(np.linalg.norm(images - x, axis=1), t, VP, RHO,
                                              FC, T0).sum(axis=0) for x in receivers])
        errors.append(rel_l2(traces, reference))
    rate = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    print(f"order {order}: h {sizes}, relative L2 errors {np.round(errors, 6)}, rate {rate:.2f}")
    # N + 1 for trilinear elements (measured 2.39); the trace error at element corners
    # converges faster at order 2, like the phase error, h^2N (measured 4.25)
    assert order + 0.5 < rate < 2 * order + 1.0
