"""Absorbing boundaries: what returns into the region of interest, at the README's level
(relative L2 error of the tutorial's 10 surface traces 0.087%, 1.04% with the former damping
layer; reflected energy 9.3e-5 of the incident in total, 4.6e-3 at the worst receiver; 6.8e-2
with closed, undamped margins).

The tutorial's setup (domain 3000 m x 1000 m, vp = 1500 - y, rho = 1000 - y, source at
(500, -500), Ricker 5 Hz, order 4, 75 m elements, 1400 m margins for a reference velocity of
2000 m/s with the Stacey term on their outer edges, 2 s) is compared with a reference run on a
much larger closed box,
undamped, whose walls are too far for anything they reflect to come back into the domain
before the end time. The reference mesh extends the absorbing run's mesh by whole elements
of the same size, so inside the domain the two meshes, models and time steps are identical
and the difference of the traces is the wave the margins send back (plus nothing else).
Reflected energy = sum of squares of that difference over a grid of receivers filling the
domain, relative to the sum of squares of the reference traces; the trace error (the issue's
measure) = L2 norm of that difference over the tutorial's 10 surface receivers and all
samples, relative to the L2 norm of their reference traces.
"""

import numpy as np
import pytest

from fwimpi.mesh.model import ModelEvaluator, ModelSource
from fwimpi.mesh.structured import Box, StructuredMesh, build_mesh
from fwimpi.sem.absorbing import AbsorbingBoundaries
from problems import event, margins, solver, stable_dt

DOMAIN = Box(0.0, 3000.0, -1000.0, 0.0)
MODEL = ModelEvaluator(ModelSource("1500.0 - y", "1000.0 - y"), DOMAIN)  # constant extension
VMAX = 2500.0  # largest vp anywhere (domain bottom, and the margins below it)
SOURCE = (500.0, -500.0)
FC, ORDER, H = 5.0, 4, 75.0  # 2 elements per wavelength at 10 Hz for vmin = 1500 m/s
MARGIN, REFERENCE_VELOCITY = 1400.0, 2000.0  # 3.5 wavelengths of 2000 m/s at 5 Hz
END_TIME = 2.0
REFERENCE_MARGIN = 2800.0  # at least this much on every side of the reference box

# 30 x 10 receivers filling the domain, edges included (sides, bottom and the top y = 0),
# plus the tutorial's line at the surface
_gx, _gy = np.meshgrid(np.linspace(DOMAIN.x0, DOMAIN.x1, 30), np.linspace(DOMAIN.y0, DOMAIN.y1, 10))
RECEIVERS = np.vstack((
    np.column_stack((_gx.ravel(), _gy.ravel())),
    np.column_stack((np.linspace(100.0, 2900.0, 10), np.zeros(10))),
))
SURFACE = slice(len(RECEIVERS) - 10, None)  # the tutorial's receivers
# The former margins: the quadratic damping layer (R = 1e-2), no Stacey term; and both together
LAYER = AbsorbingBoundaries(REFERENCE_VELOCITY, MARGIN / REFERENCE_VELOCITY, 1.0,
                            layer_reflection=1e-2, stacey=False)
LAYER_AND_STACEY = AbsorbingBoundaries(REFERENCE_VELOCITY, MARGIN / REFERENCE_VELOCITY, 1.0,
                                       layer_reflection=1e-2)


def absorbing_mesh() -> StructuredMesh:
    return build_mesh(DOMAIN, MARGIN, H, ORDER)


def reference_mesh(margin: float = REFERENCE_MARGIN) -> StructuredMesh:
    """The absorbing mesh extended outward by whole elements until each margin >= ``margin``."""
    a = absorbing_mesh()
    kx = int(np.ceil((margin - MARGIN) / a.hx))
    ky = int(np.ceil((margin - MARGIN) / a.hy))
    extended = Box(a.extended.x0 - kx * a.hx, a.extended.x1 + kx * a.hx,
                   a.extended.y0 - ky * a.hy, a.extended.y1)
    return StructuredMesh(DOMAIN, extended, margin, ORDER, a.nex + 2 * kx, a.ney + ky)


def run(mesh: StructuredMesh, absorbing_width: float, dt: float | None = None,
        absorbing: AbsorbingBoundaries | None = None):
    if absorbing is None:
        absorbing = margins(absorbing_width, REFERENCE_VELOCITY)
    problem = solver(mesh, MODEL, END_TIME, dt, absorbing=absorbing, fc=FC)
    rec = problem.forward(event([SOURCE], RECEIVERS))
    assert np.array_equal(rec.receivers_kept, np.arange(len(RECEIVERS)))
    return problem.axis.dt, rec.traces


@pytest.fixture(scope="module")
def runs():
    """Traces of the absorbing, the reference and the undamped-margin runs, same dt; and of
    the former damping layer, alone and with the Stacey term."""
    dt, absorbing = run(absorbing_mesh(), MARGIN)  # CFL-derived step
    _, reference = run(reference_mesh(), 0.0, dt)
    _, undamped = run(absorbing_mesh(), 0.0, dt)
    _, layer = run(absorbing_mesh(), MARGIN, dt, LAYER)
    _, both = run(absorbing_mesh(), MARGIN, dt, LAYER_AND_STACEY)
    return {"dt": dt, "absorbing": absorbing, "reference": reference, "undamped": undamped,
            "layer": layer, "layer_and_stacey": both}


def reflection_ratios(traces, reference):
    """(total, per receiver) ratio of the squared difference to the squared reference."""
    diff2, ref2 = (traces - reference) ** 2, reference**2
    return diff2.sum() / ref2.sum(), diff2.sum(axis=1) / ref2.sum(axis=1)


def trace_error(traces, reference):
    """Relative L2 error of the surface receivers' traces (all samples)."""
    return (np.linalg.norm(traces[SURFACE] - reference[SURFACE])
            / np.linalg.norm(reference[SURFACE]))


def test_stacey_weights_are_the_outer_edges_lumped_quadrature():
    problem = solver(absorbing_mesh(), MODEL, 0.01, absorbing=margins(MARGIN, REFERENCE_VELOCITY))
    mesh, b = absorbing_mesh(), problem.boundary
    e = mesh.extended
    xy = problem.mesh.coordinates[b.indices]
    on_edge = (np.isclose(xy[:, 0], e.x0) | np.isclose(xy[:, 0], e.x1)
               | np.isclose(xy[:, 1], e.y0))
    assert on_edge.all()
    # every GLL point of the left, right and bottom edges, the top corners included
    assert len(b.indices) == 2 * (mesh.ney * ORDER + 1) + mesh.nex * ORDER + 1 - 2
    # the weights integrate 1 along the three edges exactly
    length = 2 * (e.y1 - e.y0) + (e.x1 - e.x0)
    assert b.weights.sum() == pytest.approx(length, rel=1e-13)
    # a bottom corner belongs to two faces of one element: w_0 (hx + hy) / 2
    w0 = 2.0 / (ORDER * (ORDER + 1))
    corner = np.flatnonzero(np.isclose(xy[:, 0], e.x0) & np.isclose(xy[:, 1], e.y0))
    assert b.weights[corner] == pytest.approx([w0 * (mesh.hx + mesh.hy) / 2], rel=1e-13)
    # C = M d + C_Gamma with C_Gamma = s / (rho vp) and no layer by default
    m = problem.model
    assert np.array_equal(problem.layer_rate, np.zeros(problem.mesh.n_local))
    mass = problem.mesh.weights / (m["RHO"] * m["VP"] ** 2)
    c = np.zeros(problem.mesh.n_local)
    c[b.indices] = b.weights / (m["RHO"][b.indices] * m["VP"][b.indices])
    assert np.allclose(mass * problem.damping_rate, c, rtol=1e-14, atol=0)


def test_reference_mesh_coincides_with_absorbing_mesh_in_domain():
    a, r = absorbing_mesh(), reference_mesh()
    assert (a.hx, a.hy) == pytest.approx((r.hx, r.hy), rel=1e-12)
    # the element edges (hence all GLL points) coincide inside the domain
    for lo_a, lo_r, h in ((a.extended.x0, r.extended.x0, a.hx), (a.extended.y0, r.extended.y0, a.hy)):
        shift = (lo_a - lo_r) / h
        assert shift == pytest.approx(round(shift), abs=1e-9) and round(shift) > 0
    # same CFL limit: the margins add no new velocities (constant extension)
    assert stable_dt(a, MODEL) == pytest.approx(stable_dt(r, MODEL), rel=1e-12)
    # Travel time from the source to each wall of the reference box and back to the nearest
    # point of the domain, at the largest velocity: later than the end time, with room for
    # the wavelet (significant from t = 0).
    e = r.extended
    paths = [
        (SOURCE[0] - e.x0) + (DOMAIN.x0 - e.x0),   # left wall
        (e.x1 - SOURCE[0]) + (e.x1 - DOMAIN.x1),   # right wall
        (SOURCE[1] - e.y0) + (DOMAIN.y0 - e.y0),   # bottom wall
    ]
    earliest = min(paths) / VMAX
    print(f"\nearliest return from the reference walls: {earliest:.2f} s (end {END_TIME} s)")
    assert earliest > END_TIME + 0.2


def test_reference_is_free_of_wall_reflections(runs):
    # A still larger reference box gives the same traces: nothing from the walls arrives.
    _, bigger = run(reference_mesh(REFERENCE_MARGIN + 1000.0), 0.0, runs["dt"])
    total, _ = reflection_ratios(runs["reference"], bigger)
    print(f"\nreference vs a 1000 m larger reference: ratio {total:.1e}")
    # measured 2.0e-28 (an energy ratio: amplitudes agree to 1e-14, round-off)
    assert total < 1e-24


def test_absorbing_margins_reflect_at_the_measured_level(runs):
    ref = runs["reference"]
    assert np.abs(ref).max() > 0.0
    total, per = reflection_ratios(runs["absorbing"], ref)
    worst = int(np.argmax(per))
    print(f"\nabsorbing margins: reflected/incident energy {total:.2e}; worst receiver "
          f"{per[worst]:.2e} at {tuple(RECEIVERS[worst])}; dt={runs['dt']:.4g} s")
    # README: 9.3e-5 in total (measured 9.26e-5; 9.57e-5 with the centred damping velocity,
    # 1.56e-4 with the former layer); the runs are deterministic, so the 1.13x margin only
    # absorbs round-off and small changes of the time step
    assert total < 1.05e-4
    # no single receiver sees a strong reflection either: the worst is the bottom-right
    # corner of the domain, next to two margins (README 4.6e-3, measured 4.64e-3)
    assert per.max() < 5.3e-3
    assert tuple(RECEIVERS[worst]) == (DOMAIN.x1, DOMAIN.y0)


def test_surface_trace_error_at_the_measured_level(runs):
    """The issue's measure on the tutorial's receivers: 1.04% with the former damping layer,
    0.10% for SPECFEM2D's Stacey boundary; the Stacey term alone 0.087% (0.105% with the
    centred damping velocity, ``timestepper.DAMPING_WEIGHTS``)."""
    ref = runs["reference"]
    new = trace_error(runs["absorbing"], ref)
    old = trace_error(runs["layer"], ref)
    both = trace_error(runs["layer_and_stacey"], ref)
    print(f"\nsurface trace error: former layer {old:.4%}, Stacey term {new:.4%}, layer and "
          f"Stacey {both:.4%}")
    # measured 1.0432e-2 (the 1.04%), 8.68e-4 and 1.0164e-2; deterministic runs
    assert 1.03e-2 < old < 1.05e-2
    # the goal: at most 0.10%, SPECFEM2D's figure for the same first-order condition
    # (8.68e-4; 1.0453e-3 with the centred velocity; see fwimpi/sem/absorbing.py)
    assert new < 0.95e-3
    assert old > 9.5 * new
    # the layer in front of the Stacey edge sends back more than it removes
    assert both > 9.5 * new


def test_undamped_margins_reflect_far_more(runs):
    # Same mesh, no damping: the margin walls reflect everything; the measure must see it.
    total, per = reflection_ratios(runs["undamped"], runs["reference"])
    print(f"\nundamped margins: reflected/incident energy {total:.2e}; worst receiver {per.max():.2e}")
    assert total > 5e-2  # README 6.8e-2, measured 6.84e-2
    # the absorbing boundary is what removes it: 715 times less with it
    absorbed, _ = reflection_ratios(runs["absorbing"], runs["reference"])
    assert total > 650 * absorbed


@pytest.mark.parametrize("order", range(1, 11))
def test_stacey_edges_stay_stable_over_long_runs(order):
    """The damping velocity lags the centred one (``DAMPING_WEIGHTS``), which makes the
    damped points' update partly explicit: 8,000 steps at the CFL-derived time step, the
    Stacey term on, a few elements of every order; the field decays instead of growing."""
    mesh = build_mesh(Box(0.0, 600.0, -300.0, 0.0), 150.0, 15.0 * order, order)
    problem = solver(mesh, MODEL, n_steps=8000, absorbing=margins(150.0, REFERENCE_VELOCITY),
                     fc=8.0)
    traces = problem.forward(event([(300.0, -150.0)], np.array([[300.0, 0.0],
                                                                [50.0, -250.0]]))).traces
    late = np.abs(traces[:, -500:]).max() / np.abs(traces).max()
    print(f"order {order}: late / peak {late:.1e}")  # measured 7e-7 to 7e-6
    assert late < 1e-4
