"""The gradient of what an inversion prints: Taylor tests of a misfit of low-pass filtered
traces and of a misfit against resampled observed data (the gradient stays the exact
derivative); the filter's symmetry; the inversion space's maps (a coarser inversion mesh:
interpolation and its exact transpose, bounds kept at every simulation point)."""

import numpy as np
import pytest

from fwimpi.inversion.mapping import Mapping
from fwimpi.inversion.space import InversionSpace, coarse_mesh, interpolation_matrix
from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.sem.misfits import MISFITS, FilteredMisfit
from fwimpi.sem.operators import assembled_sum
from fwimpi.sem.signals import ZeroPhaseLowpass, resample
from problems import event, margins, solver, stable_dt

MESH = build_mesh(Box(0.0, 1000.0, -500.0, 0.0), 300.0, 75.0, 4)
EVENT = event([(300.0, -250.0)], np.column_stack((np.linspace(50.0, 950.0, 7), np.zeros(7))))
END = 0.6


def perturbation(points):
    x, y = points[:, 0], points[:, 1]
    return np.sin(x / 170.0) * np.cos(y / 130.0)


def model(dvp=0.0, scale=1.0):
    def evaluate(points):
        y = np.clip(points[:, 1], -500.0, 0.0)
        return {"VP": scale * (1500.0 - y) + dvp * perturbation(points), "RHO": 1000.0 - y}
    return evaluate


DT = 0.5 * stable_dt(MESH, model(scale=1.1))


def simulate(m, n_steps=None):
    return solver(MESH, m, END, DT, n_steps=n_steps, absorbing=margins(300.0, 2000.0))


@pytest.fixture(scope="module")
def observed():
    return simulate(model(scale=1.03)).forward(EVENT).traces


def taylor(misfit, observed):
    """Relative difference of the adjoint directional derivative against central
    differences at h = 0.25 (m/s of a unit perturbation), and the remainder slope."""
    n = observed.shape[1]
    s = simulate(model(), n - 1)
    result = s.gradient(EVENT, lambda keep, tr: misfit.evaluate(tr, observed[keep], DT))
    predicted = result.gradient["VP"] @ perturbation(s.mesh.coordinates)

    def j(h):
        return misfit.evaluate(simulate(model(h), n - 1).forward(EVENT).traces, observed,
                               DT)[0]

    j0, hs = result.misfit, np.array([1.0, 0.5, 0.25])
    remainders = [abs(j(h) - j0 - h * predicted) for h in hs]
    central = (j(hs[-1]) - j(-hs[-1])) / (2 * hs[-1])
    return abs(central - predicted) / abs(predicted), np.polyfit(np.log(hs), np.log(remainders), 1)[0]


def test_filter_is_symmetric_and_low_pass():
    f = ZeroPhaseLowpass(4.0, DT)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 400))
    assert abs(np.sum(f(a) * b) - np.sum(a * f(b))) <= 1e-13 * np.sum(np.abs(a))
    t = DT * np.arange(2000)
    low, high = np.sin(2 * np.pi * 1.0 * t), np.sin(2 * np.pi * 30.0 * t)
    middle = slice(500, 1500)  # away from the ends
    assert np.allclose(f(low[None])[0, middle], low[middle], atol=1e-3)
    assert np.abs(f(high[None])[0, middle]).max() < 1e-4


def test_taylor_filtered_misfit(observed):
    filtered = FilteredMisfit(MISFITS["L2"], ZeroPhaseLowpass(4.0, DT))
    rel, slope = taylor(filtered, observed)
    print(f"filtered L2: relative difference {rel:.2e}, remainder slope {slope:.3f}")
    assert rel < 1e-6 and 1.9 < slope < 2.1


def test_taylor_misfit_against_resampled_observed_data(observed):
    """Observed data recorded every 2 dt and resampled to the simulation's axis."""
    n = observed.shape[1] - (observed.shape[1] + 1) % 2  # odd: the coarse axis ends with it
    coarse = observed[:, :n:2]
    on_axis = resample(coarse, 2 * DT, 0.0, DT, 0.0, n)
    inner = slice(0, n - 64)  # the record is cut mid-wave: the kernel is one-sided at its end
    assert np.abs(on_axis[:, inner] - observed[:, inner]).max() < 1e-3 * np.abs(observed).max()
    observed = observed[:, :n]
    rel, slope = taylor(MISFITS["L2"], on_axis)
    print(f"L2 on resampled data: relative difference {rel:.2e}, remainder slope {slope:.3f}")
    assert rel < 1e-6 and 1.9 < slope < 2.1


# --------------------------------------------------------------------------- the space


def space_for(scaling="relative_deviation_from_prior", coarse=None, bounds=None, **mapping):
    points = MESH.points
    prior = model()(points)
    mass = assembled_sum(MESH.ibool(), MESH.geometry().jw, MESH.n_points)
    m = Mapping(("VP", "RHO"), scaling=scaling, **mapping)
    return InversionSpace(m, prior, points, MESH.cells, mass, MESH.order, [EVENT], bounds,
                          coarse=coarse)


def test_interpolation_matrix_is_exact_for_bilinear_fields():
    coarse = coarse_mesh(MESH.domain, 160.0)
    p = interpolation_matrix(coarse, MESH.points)
    f = lambda xy: 2.0 + 0.5 * xy[:, 0] - 3.0 * xy[:, 1] + 1e-3 * xy[:, 0] * xy[:, 1]
    clamped = MESH.domain.clamp(MESH.points)
    assert np.allclose(p @ f(coarse.points), f(clamped), rtol=1e-12)
    assert np.allclose(np.asarray(p.sum(axis=1)).ravel(), 1.0) and p.min() >= 0  # convex


@pytest.mark.parametrize("coarse", [None, 160.0])
@pytest.mark.parametrize("scaling", ["absolute", "relative_deviation_from_prior"])
def test_space_gradient_is_the_exact_transpose_of_its_model_map(scaling, coarse):
    space = space_for(scaling, None if coarse is None else coarse_mesh(MESH.domain, coarse))
    rng = np.random.default_rng(7)
    x0 = space.start()
    v = rng.standard_normal(x0.shape)
    raw = {p: rng.standard_normal(MESH.n_points) for p in ("VP", "RHO")}
    # both scalings are affine: model(x0 + v) - model(x0) is the linear map applied to v
    dm = {p: space.model(x0 + v)[p] - space.model(x0)[p] for p in raw}
    lhs = sum(raw[p] @ dm[p] for p in raw)
    rhs = space.gradient({EVENT.name: raw}, x0) @ v
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + 1e-300)


def test_bounds_hold_at_every_simulation_point_with_a_coarse_mesh():
    bounds = {"VP": (1450.0, 2100.0)}
    space = space_for(coarse=coarse_mesh(MESH.domain, 160.0), bounds=bounds)
    rng = np.random.default_rng(8)
    for _ in range(5):  # arbitrary points of the box [lower, upper]
        lo = np.where(np.isfinite(space.lower), space.lower, -0.5)
        hi = np.where(np.isfinite(space.upper), space.upper, 0.5)
        x = lo + rng.uniform(size=lo.shape) * (hi - lo)
        vp = space.model(x)["VP"]
        assert vp.min() >= 1450.0 - 1e-9 and vp.max() <= 2100.0 + 1e-9


def test_bounds_that_exclude_the_start_are_refused():
    from fwimpi.inversion.space import SpaceError

    with pytest.raises(SpaceError, match=r"inversion.bounds.VP: \[1600, 3000\] excludes"):
        space_for(bounds={"VP": (1600.0, 3000.0)})
