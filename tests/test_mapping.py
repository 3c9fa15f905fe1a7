"""Mapping between simulation and inversion space: dot-product tests of forward's
linearisation against adjoint, scalings point by point, cutouts and region of interest."""

from types import SimpleNamespace

import numpy as np
import pytest

from fwimpi.errors import ConfigError
from fwimpi.inversion.mapping import EventGeometry, Mapping, MappingError

SCALINGS = ("absolute", "relative_deviation_from_prior", "logarithmic")
SUBSETS = (("VP",), ("RHO",), ("VP", "RHO"))
SOURCE = (500.0, -500.0)


@pytest.fixture(scope="module")
def setup():
    """Points of the tutorial's domain, its prior (VP = 1500 - y, RHO = 1000 - y), a raw
    gradient, and its event (one source, ten receivers at the surface)."""
    x, y = np.meshgrid(np.linspace(0.0, 3000.0, 121), np.linspace(-1000.0, 0.0, 41))
    points = np.column_stack((x.ravel(), y.ravel()))
    rng = np.random.default_rng(5)
    prior = {"VP": 1500.0 - points[:, 1], "RHO": 1000.0 - points[:, 1]}
    raw = {"VP": rng.standard_normal(len(points)), "RHO": rng.standard_normal(len(points))}
    receivers = np.column_stack((np.linspace(100.0, 2900.0, 10), np.zeros(10)))
    event = EventGeometry(sources=np.array([SOURCE]), receivers=receivers)
    return SimpleNamespace(points=points, prior=prior, raw=raw, event=event, rng=rng)


def pair(a: dict, b: dict) -> float:
    """Euclidean pairing summed over the parameters the two dicts share."""
    return sum(float(a[k] @ b[k]) for k in a if k in b)


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("params", SUBSETS)
def test_dot_product_linearized_forward_against_adjoint(setup, scaling, params):
    mapping = Mapping(params, scaling=scaling)
    rng = np.random.default_rng(1)
    n = len(setup.points)
    # At the prior, and at a general inversion point (where the logarithmic chain rule differs).
    for x in (None, {p: 0.1 * rng.standard_normal(n) for p in params}):
        if x is not None and scaling == "absolute":
            x = {p: setup.prior[p] * (1 + x[p]) for p in params}
        dx = {p: rng.standard_normal(n) for p in params}
        jdx = mapping.linearized_forward(dx, setup.prior, x=x)
        assert set(jdx) == {"VP", "RHO"}
        for p in {"VP", "RHO"} - set(params):
            assert not jdx[p].any()  # not inverted for: no perturbation
        grad = mapping.adjoint(setup.raw, setup.prior, setup.points, x=x)
        assert set(grad) == set(params)
        lhs, rhs = pair(jdx, setup.raw), pair(dx, grad)
        assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), abs(rhs))


@pytest.mark.parametrize("scaling", SCALINGS)
def test_dot_product_with_masks(setup, scaling):
    mapping = Mapping(("VP", "RHO"), scaling=scaling, source_cutout_radius_in_meters=200.0,
                      receiver_cutout_radius_in_meters=100.0, region_of_interest="y < -100.0")
    dx = {p: setup.rng.standard_normal(len(setup.points)) for p in ("VP", "RHO")}
    jdx = mapping.linearized_forward(dx, setup.prior, points=setup.points, event=setup.event)
    grad = mapping.adjoint(setup.raw, setup.prior, setup.points, setup.event)
    lhs, rhs = pair(jdx, setup.raw), pair(dx, grad)
    assert abs(lhs - rhs) <= 1e-12 * max(abs(lhs), abs(rhs))
    # The masks do change it: masked points contribute nothing.
    assert not np.isclose(lhs, pair(mapping.linearized_forward(dx, setup.prior), setup.raw))


@pytest.mark.parametrize("scaling", SCALINGS)
def test_linearized_forward_is_the_derivative_of_forward(setup, scaling):
    mapping = Mapping(("VP", "RHO"), scaling=scaling)
    n = len(setup.points)
    x = mapping.inverse(setup.prior, setup.prior)
    x = {p: v + 0.05 * setup.rng.standard_normal(n) * (setup.prior[p] if scaling == "absolute"
                                                          else 1.0) for p, v in x.items()}
    dx = {p: setup.rng.standard_normal(n) * (setup.prior[p] if scaling == "absolute" else 1.0)
          for p in x}
    h = 1e-5
    plus = mapping.forward({p: x[p] + h * dx[p] for p in x}, setup.prior)
    minus = mapping.forward({p: x[p] - h * dx[p] for p in x}, setup.prior)
    jdx = mapping.linearized_forward(dx, setup.prior, x=x)
    for p in x:
        fd = (plus[p] - minus[p]) / (2 * h)
        assert np.allclose(fd, jdx[p], rtol=1e-8, atol=1e-8 * np.abs(jdx[p]).max())


@pytest.mark.parametrize("scaling", SCALINGS)
def test_forward_and_inverse(setup, scaling):
    mapping = Mapping(("VP",), scaling=scaling)
    x0 = mapping.inverse(setup.prior, setup.prior)
    assert set(x0) == {"VP"}
    if scaling == "absolute":
        assert np.array_equal(x0["VP"], setup.prior["VP"])
    else:
        assert not x0["VP"].any()  # the prior is x = 0
    model = mapping.forward(x0, setup.prior)
    assert np.allclose(model["VP"], setup.prior["VP"], rtol=1e-15)
    assert np.array_equal(model["RHO"], setup.prior["RHO"])  # not inverted: the prior's
    x = {"VP": mapping.inverse({"VP": 1.2 * setup.prior["VP"]}, setup.prior)["VP"]}
    expected = {"absolute": 1.2 * setup.prior["VP"], "relative_deviation_from_prior": 0.2,
                "logarithmic": np.log(1.2)}[scaling]
    assert np.allclose(x["VP"], expected, rtol=1e-14)
    assert np.allclose(mapping.forward(x, setup.prior)["VP"], 1.2 * setup.prior["VP"],
                       rtol=1e-14)


def test_relative_equals_absolute_times_prior(setup):
    kw = dict(source_cutout_radius_in_meters=200.0, region_of_interest="y < -100.0")
    absolute = Mapping(("VP", "RHO"), "absolute", **kw).adjoint(
        setup.raw, setup.prior, setup.points, setup.event)
    relative = Mapping(("VP", "RHO"), "relative_deviation_from_prior", **kw).adjoint(
        setup.raw, setup.prior, setup.points, setup.event)
    weights = Mapping(("VP",), **kw).masks(setup.points, setup.event)
    assert 0 < weights.sum() < len(weights)
    for p in ("VP", "RHO"):
        assert np.array_equal(absolute[p], setup.raw[p] * weights)
        assert np.allclose(relative[p], absolute[p] * setup.prior[p], rtol=1e-15, atol=0)


def test_logarithmic_is_relative_at_the_prior_and_g_times_m_elsewhere(setup):
    log = Mapping(("VP",), "logarithmic")
    rel = Mapping(("VP",), "relative_deviation_from_prior")
    at_prior = log.adjoint(setup.raw, setup.prior, setup.points)["VP"]
    assert np.allclose(at_prior, rel.adjoint(setup.raw, setup.prior, setup.points)["VP"],
                       rtol=1e-15, atol=0)
    assert np.allclose(at_prior, setup.raw["VP"] * setup.prior["VP"], rtol=1e-15, atol=0)
    model = {"VP": setup.prior["VP"] * np.linspace(0.8, 1.3, len(setup.points))}
    x = log.inverse(model, setup.prior)
    there = log.adjoint(setup.raw, setup.prior, setup.points, x=x)["VP"]
    assert np.allclose(there, setup.raw["VP"] * model["VP"], rtol=1e-13, atol=0)


def test_absolute_without_masks_is_the_raw_gradient(setup):
    out = Mapping(("VP",)).adjoint(setup.raw, setup.prior, setup.points)
    assert set(out) == {"VP"}
    assert np.array_equal(out["VP"], setup.raw["VP"])
    out = Mapping(("RHO",)).adjoint(setup.raw, setup.prior, setup.points)
    assert set(out) == {"RHO"} and np.array_equal(out["RHO"], setup.raw["RHO"])


@pytest.mark.parametrize("params", SUBSETS)
def test_cutouts_zero_within_radius_unchanged_outside(setup, params):
    pts = setup.points
    source = Mapping(params, source_cutout_radius_in_meters=200.0)
    both = Mapping(params, source_cutout_radius_in_meters=200.0,
                   receiver_cutout_radius_in_meters=100.0)
    d_src = np.hypot(pts[:, 0] - SOURCE[0], pts[:, 1] - SOURCE[1])
    d_rec = np.min(np.hypot(pts[:, None, 0] - setup.event.receivers[None, :, 0],
                            pts[:, None, 1] - setup.event.receivers[None, :, 1]), axis=1)
    g1 = source.adjoint(setup.raw, setup.prior, pts, setup.event)
    g2 = both.adjoint(setup.raw, setup.prior, pts, setup.event)
    assert (d_src < 200.0).sum() > 20 and (d_rec < 100.0).sum() > 20  # the test means something
    for p in params:
        assert not g1[p][d_src < 200.0].any()
        assert np.array_equal(g1[p][d_src >= 200.0], setup.raw[p][d_src >= 200.0])
        cut = (d_src < 200.0) | (d_rec < 100.0)
        assert not g2[p][cut].any()
        assert np.array_equal(g2[p][~cut], setup.raw[p][~cut])
    # Receivers only; radius 0 cuts out nothing.
    rec = Mapping(params, receiver_cutout_radius_in_meters=100.0).adjoint(
        setup.raw, setup.prior, pts, setup.event)
    assert not rec[params[0]][d_rec < 100.0].any()
    assert np.array_equal(rec[params[0]][d_rec >= 100.0], setup.raw[params[0]][d_rec >= 100.0])
    zero = Mapping(params, source_cutout_radius_in_meters=0.0).adjoint(
        setup.raw, setup.prior, pts, setup.event)
    assert np.array_equal(zero[params[0]], setup.raw[params[0]])


def test_cutouts_are_relative_to_every_source():
    pts = np.array([[0.0, 0.0], [50.0, 0.0], [99.0, 0.0], [100.0, 0.0], [1000.0, 0.0],
                    [1060.0, 0.0]])
    event = EventGeometry(sources=[[0.0, 0.0], [1000.0, 0.0]], receivers=np.zeros((0, 2)))
    m = Mapping(("VP",), source_cutout_radius_in_meters=100.0)
    g = m.adjoint({"VP": np.ones(6)}, {"VP": np.ones(6)}, pts, event)["VP"]
    assert g.tolist() == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0]  # strictly within: 100 m is kept


def test_region_of_interest_expression_and_array(setup):
    pts = setup.points
    inside = pts[:, 1] < -100.0
    by_expr = Mapping(("VP", "RHO"), region_of_interest="y < -100.0").adjoint(
        setup.raw, setup.prior, pts)
    weights = np.where(inside, 1.0, 0.0)
    by_array = Mapping(("VP", "RHO"), region_of_interest=weights).adjoint(
        setup.raw, setup.prior, pts)
    for p in ("VP", "RHO"):
        assert not by_expr[p][~inside].any()
        assert np.array_equal(by_expr[p][inside], setup.raw[p][inside])
        assert np.array_equal(by_array[p], by_expr[p])
    # Real-valued weights multiply the gradient (a taper).
    taper = np.clip(-pts[:, 1] / 500.0, 0.0, 1.0)
    tapered = Mapping(("VP",), region_of_interest=taper).adjoint(setup.raw, setup.prior, pts)
    assert np.array_equal(tapered["VP"], setup.raw["VP"] * taper)
    expr = Mapping(("VP",), region_of_interest="clip(-y / 500.0, 0.0, 1.0)").adjoint(
        setup.raw, setup.prior, pts)
    assert np.allclose(expr["VP"], tapered["VP"], rtol=1e-15, atol=0)


def test_masks_combine_with_region_of_interest(setup):
    pts = setup.points
    m = Mapping(("VP",), source_cutout_radius_in_meters=200.0, region_of_interest="y < -100.0")
    w = m.masks(pts, setup.event)
    d_src = np.hypot(pts[:, 0] - SOURCE[0], pts[:, 1] - SOURCE[1])
    assert np.array_equal(w, ((d_src >= 200.0) & (pts[:, 1] < -100.0)).astype(float))
    assert Mapping(("VP",)).masks(pts) is None


def test_spec_mappings_and_events(tmp_path):
    from fwimpi.jobs.spec import parse_job_spec
    from fwimpi.sem.acquisition import Event, PointSource, Receiver
    from test_spec import minimal

    data = minimal()
    data["misfit_configuration"] = {"misfit_function": "L2_energy_no_observed_data"}
    data["mappings"] = [{"name": "map5", "inversion_parameters": ["VP"],
                         "scaling": "relative_deviation_from_prior",
                         "source_cutout_radius_in_meters": 200.0,
                         "region_of_interest": "y < -100.0"}]
    (m,) = parse_job_spec(data, tmp_path).mappings
    assert isinstance(m, Mapping) and m.name == "map5" and m.inversion_parameters == ("VP",)
    assert m.scaling == "relative_deviation_from_prior"
    assert m.source_cutout_radius_in_meters == 200.0 and m.field == "mappings[0]"
    data["mappings"][0]["region_of_interest"] = "z < 1"
    with pytest.raises(ConfigError, match=r"^mappings\[0\]\.region_of_interest: name 'z'"):
        parse_job_spec(data, tmp_path)
    events = [Event("a", (PointSource((500.0, -500.0), 1.0),),
                    tuple(Receiver((float(x), 0.0), f"R{x}") for x in (1, 2))),
              Event("b", (PointSource((10.0, -5.0), 1.0),), ())]
    geo = EventGeometry.from_events(events)
    assert geo.sources.tolist() == [[500.0, -500.0], [10.0, -5.0]]
    assert geo.receivers.tolist() == [[1.0, 0.0], [2.0, 0.0]]


def test_errors(setup):
    with pytest.raises(MappingError, match="unknown parameter 'VS'; use VP, RHO"):
        Mapping(("VP", "VS"))
    with pytest.raises(ValueError, match="inversion_parameters: must name at least one"):
        Mapping(())
    with pytest.raises(MappingError, match="scaling: must be one of"):
        Mapping(("VP",), scaling="relative")
    with pytest.raises(MappingError, match="source_cutout_radius_in_meters: must be finite"):
        Mapping(("VP",), source_cutout_radius_in_meters=-1.0)
    # A cutout without its event: ValueError naming the option.
    for kw in ({"source_cutout_radius_in_meters": 200.0},
               {"receiver_cutout_radius_in_meters": 100.0}):
        with pytest.raises(ValueError, match=f"{next(iter(kw))}: a cutout of .* needs the event"):
            Mapping(("VP",), **kw).adjoint(setup.raw, setup.prior, setup.points)
    with pytest.raises(ConfigError, match="region_of_interest"):
        Mapping(("VP",), region_of_interest="__import__('os')")
    with pytest.raises(MappingError, match="region_of_interest: 3 weights for a mesh of"):
        Mapping(("VP",), region_of_interest=np.ones(3)).adjoint(setup.raw, setup.prior,
                                                                setup.points)
    with pytest.raises(MappingError, match="raw gradient has no field 'RHO'"):
        Mapping(("RHO",)).adjoint({"VP": setup.raw["VP"]}, setup.prior, setup.points)
    with pytest.raises(MappingError, match="prior has no field 'RHO'"):
        Mapping(("RHO",)).forward({"RHO": setup.prior["RHO"]}, {"VP": setup.prior["VP"]})
    with pytest.raises(MappingError, match="does not invert"):
        Mapping(("VP",)).forward({"VP": setup.prior["VP"], "RHO": setup.prior["RHO"]},
                                 setup.prior)
    with pytest.raises(MappingError, match="needs a positive prior VP"):
        Mapping(("VP",), "logarithmic").forward({"VP": np.zeros(2)},
                                                {"VP": np.array([1.0, 0.0])})
    with pytest.raises(MappingError, match=r"points must have shape \(\d+, 2\)"):
        Mapping(("VP",)).adjoint(setup.raw, setup.prior, setup.points[:-1])
    with pytest.raises(MappingError, match=r"event sources: expected coordinates \(n, 2\)"):
        EventGeometry(sources=np.zeros((2, 3)), receivers=np.zeros((0, 2)))
