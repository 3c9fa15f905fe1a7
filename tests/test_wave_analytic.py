"""Homogeneous medium against the analytic 2D solution; h- and dt-convergence."""

import numpy as np
import pytest

from analytic import green_ricker_2d
from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.sem.timestepper import TimeAxis
from problems import event, solver

VP, RHO, FC = 2000.0, 1000.0, 5.0
T0 = 1.2 / FC
SOURCE = (0.0, -1500.0)
# receivers 500-900 m from the source in several directions, far from the top
RECEIVERS = np.array([[500.0, -1500.0], [-600.0, -1200.0], [0.0, -2300.0], [700.0, -2000.0]])
END_TIME = 0.9  # the first reflection from the walls of the closed box arrives later


def homogeneous(points):
    return {"VP": np.full(len(points), VP), "RHO": np.full(len(points), RHO)}


def simulate(element_size, order=4, dt=None, end_time=END_TIME):
    # A closed box whose walls are >= 1700 m from source and receivers: no reflection
    # reaches a receiver before END_TIME, so the free-space solution applies.
    mesh = build_mesh(Box(-2700.0, 2700.0, -4500.0, 0.0), 0.0, element_size, order)
    wave = solver(mesh, homogeneous, end_time, dt, fc=FC)
    return wave.axis, wave.forward(event([SOURCE], RECEIVERS)).traces


def analytic(axis: TimeAxis):
    r = np.hypot(RECEIVERS[:, 0] - SOURCE[0], RECEIVERS[:, 1] - SOURCE[1])
    # image source for the Neumann top at y = 0
    r_image = np.hypot(RECEIVERS[:, 0] - SOURCE[0], RECEIVERS[:, 1] + SOURCE[1])
    t = axis.times
    return green_ricker_2d(r, t, VP, RHO, FC, T0) + green_ricker_2d(r_image, t, VP, RHO, FC, T0)


def rel_l2(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_tutorial_resolution_matches_analytic_within_one_percent():
    # 2 elements per wavelength at 10 Hz (the tutorial's max frequency), order 4,
    # CFL-derived time step.
    h = VP / 10.0 / 2.0
    axis, traces = simulate(h)
    err = rel_l2(traces, analytic(axis))
    print(f"relative L2 error at 2 elements/wavelength, order 4: {err:.2e}")
    assert err < 0.01


def test_spatial_convergence_rate():
    # A time step small enough that the leapfrog error (~1e-5) is far below the spatial one.
    dt = 1e-4
    hs = np.array([250.0, 200.0, 150.0, 125.0])
    errs = []
    for h in hs:
        axis, traces = simulate(h, dt=dt)
        errs.append(rel_l2(traces, analytic(axis)))
    rate = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    print("h:", hs, "errors:", errs, "rate:", rate)
    # order 4: the trace error at fixed receivers converges like h^(N+1) = h^5 or faster
    # (the phase error of SEM is O(h^2N)); 1 element per wavelength at 10 Hz is h = 200.
    assert rate > 4.5


def test_time_convergence_rate_is_two():
    # Same mesh, reference with a 16x smaller step: the difference is the time error.
    h, fine = 100.0, 1.25e-4
    _, ref = simulate(h, dt=fine)
    dts = np.array([2e-3, 1e-3, 5e-4])
    errs = []
    for dt in dts:
        axis, traces = simulate(h, dt=dt)
        k = int(round(dt / fine))
        errs.append(rel_l2(traces, ref[:, ::k][:, : traces.shape[1]]))
    rate = np.polyfit(np.log(dts), np.log(errs), 1)[0]
    print("dt:", dts, "errors:", errs, "rate:", rate)
    assert 1.9 < rate < 2.1


# a source and receivers near the top, where the image source matters
NEAR_SOURCE = (0.0, -400.0)
NEAR_RECEIVERS = np.array([[500.0, -150.0], [-650.0, -300.0], [800.0, -100.0], [300.0, -600.0]])


@pytest.mark.parametrize("top, sign", [("neumann", 1.0), ("dirichlet", -1.0)])
def test_top_boundary_matches_its_image_source_solution(top, sign):
    """Natural top: the image source adds; pressure-free (phi = 0) top: it subtracts."""
    from problems import solver

    mesh = build_mesh(Box(-2700.0, 2700.0, -4500.0, 0.0), 0.0, VP / 10.0 / 2.0, 4)
    wave = solver(mesh, homogeneous, END_TIME, fc=FC, top_boundary=top)
    traces = wave.forward(event([NEAR_SOURCE], NEAR_RECEIVERS)).traces
    t = wave.axis.times
    r = np.hypot(NEAR_RECEIVERS[:, 0] - NEAR_SOURCE[0], NEAR_RECEIVERS[:, 1] - NEAR_SOURCE[1])
    r_image = np.hypot(NEAR_RECEIVERS[:, 0] - NEAR_SOURCE[0],
                       NEAR_RECEIVERS[:, 1] + NEAR_SOURCE[1])
    direct = green_ricker_2d(r, t, VP, RHO, FC, T0)
    image = green_ricker_2d(r_image, t, VP, RHO, FC, T0)
    err = rel_l2(traces, direct + sign * image)
    other = rel_l2(traces, direct - sign * image)
    print(f"{top} top: relative L2 error {err:.2e} (against the other image sign: {other:.2f})")
    assert err < 0.01
    assert other > 0.2  # the image source's sign is really seen
