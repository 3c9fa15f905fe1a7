"""The inversion-space post-processing in 3D: spherical cutouts, regions of interest in x, y,
z, the mapping's adjoint (dot-product test), diffusion smoothing with three lengths on a
hexahedral mesh (moments, self-adjointness, constants) and the inversion space on a coarse
trilinear mesh. Root-only steps on whole arrays, so no ranks are involved."""

import numpy as np
import pytest

from fwimpi.errors import ConfigError
from fwimpi.inversion.mapping import EventGeometry, Mapping, MappingError
from fwimpi.inversion.smoothing import (ConstantSmoothing, DiffusionSmoother, SmoothingError,
                                        box_cells, smooth, stiffness_diagonal)
from fwimpi.inversion.space import InversionSpace, SpaceError, coarse_mesh, interpolation_matrix
from fwimpi.mesh.structured3d import Box3, build_mesh3d
from fwimpi.sem.acquisition import Event, PointSource, Receiver
from fwimpi.sem.operators import assembled_sum

# 6 x 5 x 4 boxes of 100 m (margin 100 m on four sides and the bottom), order 2: 13x11x9 points
MESH = build_mesh3d(Box3(0.0, 400.0, 0.0, 300.0, -300.0, 0.0), 100.0, 100.0, 2)
SOURCE = (200.0, 150.0, -150.0)
RECEIVERS = np.array([[0.0, 0.0, 0.0], [250.0, 100.0, -50.0], [400.0, 300.0, 0.0]])
EVENT = Event("shot", (PointSource(SOURCE, 1.0),),
              tuple(Receiver(tuple(r), f"R{k}") for k, r in enumerate(RECEIVERS)))


def mass_of(mesh):
    return assembled_sum(mesh.ibool(), mesh.geometry().jw, mesh.n_points)


def fields(seed, n, names=("VP", "RHO"), scale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    return {p: offset + scale * rng.standard_normal(n) for p in names}


def brute_within(points, centres, radius):
    d = np.sqrt(((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
    return d < radius


# --------------------------------------------------------------------------- mapping


def test_event_geometry_in_3d():
    geo = EventGeometry.from_events([EVENT])
    assert geo.dim == 3 and geo.sources.shape == (1, 3) and geo.receivers.shape == (3, 3)
    assert np.array_equal(geo.receivers, RECEIVERS)
    assert EventGeometry(sources=SOURCE, receivers=[]).receivers.shape == (0, 3)
    with pytest.raises(MappingError, match=r"event sources: expected coordinates \(n, 3\) like"):
        EventGeometry(sources=np.zeros((2, 2)), receivers=RECEIVERS)
    flat = Event("flat", (PointSource((1.0, 2.0), 1.0),), ())
    with pytest.raises(MappingError, match="positions of 2 and 3 coordinates mixed"):
        EventGeometry.from_events([EVENT, flat])


@pytest.mark.parametrize("kind", ["source", "receiver"])
def test_spherical_cutouts_mask_exactly_the_points_within_the_radius(kind):
    radius = 100.0  # GLL spacing 50 m: points at exactly 100 m along an axis stay
    mapping = Mapping(("VP",), **{f"{kind}_cutout_radius_in_meters": radius})
    geo = EventGeometry.from_events([EVENT])
    centres = geo.sources if kind == "source" else geo.receivers
    weight = mapping.masks(MESH.points, geo)
    inside = brute_within(MESH.points, centres, radius)
    assert set(np.unique(weight)) == {0.0, 1.0}
    assert np.array_equal(weight == 0.0, inside)
    # the sphere, not a cylinder or a cube
    centre = centres[0]
    horizontal = np.hypot(*(MESH.points[:, :2] - centre[:2]).T) < radius
    assert (horizontal & ~inside).any()  # within the disc of (x, y) but not the sphere
    if kind == "source":
        # GLL spacing 50 m around the source: the 27 points at offsets {-50, 0, 50}^3 (at
        # most 86.6 m) are cut; those at 100 m along an axis (the radius) and at 50, 50,
        # 100 m (122 m) stay
        assert inside.sum() == 27 and weight[inside].max() == 0.0
        for offset in ((100, 0, 0), (0, -100, 0), (0, 0, 100), (50, 50, 100)):
            assert weight[MESH.point_indices(centre + offset)] == 1.0


def test_region_of_interest_in_x_y_z():
    text = "(x > 100) * (y <= 200) * (z > -150) * (1 + 0.5 * sin(x / 80) * z / 300)"
    mapping = Mapping(("VP", "RHO"), region_of_interest=text, dimension=3)
    x, y, z = MESH.points.T
    expected = ((x > 100) & (y <= 200) & (z > -150)) * (1 + 0.5 * np.sin(x / 80) * z / 300)
    assert np.array_equal(mapping.masks(MESH.points), expected)
    raw = fields(1, MESH.n_points)
    prior = fields(2, MESH.n_points, scale=10.0, offset=2000.0)
    out = mapping.adjoint(raw, prior, MESH.points)
    assert np.array_equal(out["RHO"], raw["RHO"] * expected)
    with pytest.raises(ConfigError, match="name 'z' is not allowed"):
        Mapping(("VP",), region_of_interest="z < 0")  # a 2D mapping knows x, y only
    with pytest.raises(MappingError, match=r"build the mapping with dimension=3"):
        Mapping(("VP",), region_of_interest="x < 0").masks(MESH.points)
    with pytest.raises(MappingError, match=r"build the mapping with dimension=2"):
        mapping.masks(MESH.points[:, :2])
    with pytest.raises(MappingError, match="dimension must be 2 or 3"):
        Mapping(("VP",), dimension=4)


def test_cutouts_need_positions_of_the_mesh_dimension():
    mapping = Mapping(("VP",), source_cutout_radius_in_meters=10.0)
    flat = EventGeometry(sources=[[1.0, 2.0]], receivers=[])
    with pytest.raises(MappingError, match="sources have 2 coordinates, the mesh points 3"):
        mapping.masks(MESH.points, flat)


@pytest.mark.parametrize("scaling", ["absolute", "relative_deviation_from_prior",
                                     "logarithmic"])
def test_adjoint_is_the_exact_transpose_in_3d(scaling):
    n = MESH.n_points
    mapping = Mapping(("VP", "RHO"), scaling, source_cutout_radius_in_meters=120.0,
                      receiver_cutout_radius_in_meters=60.0,
                      region_of_interest="(z > -350) * (1 + 0.3 * cos(x / 70 + y / 90))",
                      dimension=3)
    geo = EventGeometry.from_events([EVENT])
    prior = {"VP": 2000.0 + 300.0 * np.random.default_rng(3).random(n),
             "RHO": 1800.0 + 200.0 * np.random.default_rng(4).random(n)}
    x = fields(5, n, scale=0.1)
    if scaling == "absolute":
        x = {p: prior[p] * (1 + x[p]) for p in x}
    dx, g = fields(6, n), fields(7, n)
    jdx = mapping.linearized_forward(dx, prior, x=x, points=MESH.points, event=geo)
    jtg = mapping.adjoint(g, prior, MESH.points, geo, x=x)
    lhs = sum(float(jdx[p] @ g[p]) for p in g)
    rhs = sum(float(dx[p] @ jtg[p]) for p in dx)
    scale = sum(float(np.abs(jdx[p]) @ np.abs(g[p])) for p in g)
    assert abs(lhs - rhs) <= 1e-14 * scale
    assert mapping.masks(MESH.points, geo).min() == 0.0  # the masks took part


# --------------------------------------------------------------------------- space


def test_trilinear_interpolation_and_its_transpose():
    coarse = coarse_mesh(MESH.domain, 160.0)
    assert coarse.dim == 3 and coarse.order == 1 and coarse.shape == (3, 2, 2)
    p = interpolation_matrix(coarse, MESH.points)
    assert p.shape == (MESH.n_points, coarse.n_points)
    assert np.allclose(np.asarray(p.sum(axis=1)).ravel(), 1.0, atol=1e-14)
    assert p.min() >= 0.0  # a convex combination
    # exact for trilinear fields inside the domain; clamped (nearest domain point) outside
    def f(q):
        x, y, z = q.T
        return 1.0 + 2.0 * x - 3.0 * y + 0.5 * z + 1e-3 * x * y * z
    clamped = MESH.domain.clamp(MESH.points)
    assert np.allclose(p @ f(coarse.points), f(clamped), rtol=0, atol=1e-9)
    with pytest.raises(SpaceError, match="a 3D inversion mesh for points of shape"):
        interpolation_matrix(coarse, MESH.points[:, :2])


@pytest.mark.parametrize("coarse_size", [None, 160.0])
def test_inversion_space_in_3d(coarse_size):
    n = MESH.n_points
    mapping = Mapping(("VP",), "logarithmic", source_cutout_radius_in_meters=80.0,
                      region_of_interest="z > -350", dimension=3)
    prior = {"VP": 2000.0 + 2.0 * MESH.points[:, 0], "RHO": np.full(n, 1000.0)}
    coarse = None if coarse_size is None else coarse_mesh(MESH.domain, coarse_size)
    space = InversionSpace(mapping, prior, MESH.points, MESH.cells, mass_of(MESH), MESH.order,
                           [EVENT], {"VP": (1000.0, 5000.0)}, None, coarse)
    x0 = space.start()
    assert len(x0) == (n if coarse is None else coarse.n_points)
    model = space.model(x0 + 0.01)
    assert np.allclose(model["VP"], prior["VP"] * np.exp(0.01), rtol=1e-13)
    # dJ/dx for J = <r, m(x)>: the gradient is the transpose of the linearisation
    raw = fields(8, n, names=("VP", "RHO"))
    x = x0 + 0.05 * np.random.default_rng(9).standard_normal(len(x0))
    grad = space.gradient({"shot": raw}, x)
    dx = np.random.default_rng(10).standard_normal(len(x0))
    fine = space._fine(x)
    fine_dx = space._fine(dx)
    jdx = mapping.linearized_forward(fine_dx, prior, x=fine, points=MESH.points,
                                     event=EventGeometry.from_events([EVENT]))
    lhs, rhs = float(jdx["VP"] @ raw["VP"]), float(dx @ grad)
    assert abs(lhs - rhs) <= 1e-13 * float(np.abs(jdx["VP"]) @ np.abs(raw["VP"]))
    assert (space.lower <= x0).all() and (x0 <= space.upper).all()


# --------------------------------------------------------------------------- smoothing


def test_box_cells_check_the_geometry():
    corners, sizes, ibool = box_cells(MESH.points, MESH.cells, MESH.order)
    assert np.allclose(sizes, MESH.sizes, rtol=1e-14)
    assert np.array_equal(ibool, MESH.ibool())
    assert np.allclose(corners, MESH.geometry().coords[:, :, 0, 0, 0].T, rtol=0, atol=1e-9)
    bent = MESH.points.copy()
    bent[MESH.cells[7, 13], 2] += 1.0  # the centre point of element 7 off its box
    with pytest.raises(SmoothingError, match="axis-aligned boxes"):
        box_cells(bent, MESH.cells, MESH.order)
    stretched = MESH.points.copy()
    stretched[:, 0] = np.where(stretched[:, 0] > 0, 1.5 * stretched[:, 0], stretched[:, 0])
    with pytest.raises(SmoothingError, match="differ in size"):
        box_cells(stretched, MESH.cells, MESH.order)
    with pytest.raises(SmoothingError, match=r"cells: expected shape \(n_elements, 64\)"):
        box_cells(MESH.points, MESH.cells, 3)


# A cube of 400 m in boxes of 25 m at order 2 (33^3 points), no margins: far enough from the
# faces (8 sigma and more, 6 elements) that the natural boundaries take nothing measurable
# from the moments (on boxes of 50 m the discrete kernel's tails reach the faces at 1e-9).
CUBE = build_mesh3d(Box3(-200.0, 200.0, -200.0, 200.0, -200.0, 200.0), 0.0, 25.0, 2)
CUBE_MASS = mass_of(CUBE)
SIGMA3 = (20.0, 16.0, 12.0)
RTOL = 1e-14  # CG tolerance: the moments then hold to round-off


@pytest.fixture(scope="module")
def cube_smoother():
    with DiffusionSmoother(CUBE.points, CUBE.cells, CUBE_MASS, CUBE.order, SIGMA3,
                           rtol=RTOL) as s:
        yield s


def moments(u, points, w):
    """Mass ``sum w u``, means ``(3,)`` and second central moments ``(3, 3)`` of ``u``."""
    wu = w * u
    mass = wu.sum()
    mean = wu @ points / mass
    d = points - mean
    return mass, mean, (d.T * wu) @ d / mass


def test_stiffness_diagonal_in_3d():
    corners, sizes, ibool = box_cells(MESH.points, MESH.cells, MESH.order)
    from fwimpi.inversion.smoothing import box_mesh_geometry
    from fwimpi.sem.operators import AcousticStiffness

    g = box_mesh_geometry(corners, sizes, MESH.order, np.diag([3.0, 2.0, 0.5]))
    k = AcousticStiffness(g, ibool, np.ones(MESH.n_points))
    diag = stiffness_diagonal(g, ibool, MESH.n_points)
    rng = np.random.default_rng(11)
    for p in rng.choice(MESH.n_points, 40, replace=False):
        e = np.zeros(MESH.n_points)
        e[p] = 1.0
        assert np.isclose(k.apply(e)[p], diag[p], rtol=1e-12, atol=0)


def test_smoothing_moments_per_axis_in_3d(cube_smoother):
    """Away from the faces each application adds exactly sigma_a^2 to the second moment
    along axis a and changes neither the mass, the means nor the cross moments."""
    rng = np.random.default_rng(12)
    centre = np.array([7.0, -11.0, 3.0])
    near = np.linalg.norm(CUBE.points - centre, axis=1) < 40.0
    u = np.where(near, 1.0 + rng.random(CUBE.n_points), 0.0)  # a positive blob
    v = cube_smoother(u)
    m0, mean0, c0 = moments(u, CUBE.points, CUBE_MASS)
    m1, mean1, c1 = moments(v, CUBE.points, CUBE_MASS)
    assert abs(m1 - m0) <= 1e-12 * m0
    assert np.abs(mean1 - mean0).max() <= 1e-10
    growth = np.diag(c1 - c0)
    assert np.allclose(growth, np.square(SIGMA3), rtol=1e-10, atol=0), growth
    off = (c1 - c0)[~np.eye(3, dtype=bool)]
    assert np.abs(off).max() <= 1e-10 * max(SIGMA3) ** 2


def test_anisotropic_impulse_has_variances_sigma_squared():
    sigma = (22.0, 15.0, 9.0)  # three different lengths
    p0 = CUBE.point_indices([0.0, 0.0, 0.0])[0]
    u = np.zeros(CUBE.n_points)
    u[p0] = 1.0
    v = smooth(u, sigma, CUBE.points, CUBE.cells, CUBE_MASS, CUBE.order, rtol=RTOL)
    mass, mean, c = moments(v, CUBE.points, CUBE_MASS)
    assert abs(mass - CUBE_MASS[p0]) <= 1e-12 * mass
    assert np.abs(mean).max() <= 1e-10
    assert np.allclose(np.diag(c), np.square(sigma), rtol=1e-10, atol=0), np.diag(c)
    # the spread is anisotropic: along x it reaches further than along z
    along = [v[CUBE.point_indices(np.eye(3)[a] * 25.0)[0]] for a in range(3)]
    assert along[0] > along[1] > along[2]


def test_smoothing_is_self_adjoint_in_the_mass_inner_product(cube_smoother):
    rng = np.random.default_rng(13)
    a, b = rng.standard_normal((2, CUBE.n_points))
    sa, sb = cube_smoother(a), cube_smoother(b)
    lhs, rhs = (CUBE_MASS * sa) @ b, (CUBE_MASS * a) @ sb
    assert abs(lhs - rhs) <= 1e-13 * np.abs(CUBE_MASS * a) @ np.abs(b)
    ones = cube_smoother(np.full(CUBE.n_points, 3.5))
    assert np.abs(ones - 3.5).max() <= 1e-12 * 3.5  # a constant is kept


def test_constant_smoothing_on_the_simulation_mesh_with_margins():
    """On a simulation mesh (margins on four sides and the bottom): a gradient smoothed as a
    kernel (w S(g / w)) keeps its sum; a parameter without lengths is copied; two lengths
    on a 3D mesh name the field."""
    mass = mass_of(MESH)
    cs = ConstantSmoothing({"VP": (80.0, 60.0, 40.0)})
    assert cs.dimension == 3
    g = fields(14, MESH.n_points)
    out = cs.apply(g, MESH.points, MESH.cells, mass, MESH.order, mass_weighted=True)
    assert abs(out["VP"].sum() - g["VP"].sum()) <= 1e-11 * np.abs(g["VP"]).sum()
    assert np.array_equal(out["RHO"], g["RHO"])
    kernel = out["VP"] / mass
    assert np.abs(np.diff(kernel)).mean() < 0.2 * np.abs(np.diff(g["VP"] / mass)).mean()
    with pytest.raises(SmoothingError, match=r"smoothing.smoothing_lengths_in_meters.VP: 2 "
                                             r"smoothing lengths for a 3D mesh"):
        ConstantSmoothing({"VP": (80.0, 60.0)}).apply(g, MESH.points, MESH.cells, mass,
                                                      MESH.order)
    with pytest.raises(SmoothingError, match="as many lengths"):
        ConstantSmoothing({"VP": (80.0, 60.0), "RHO": (1.0, 2.0, 3.0)})
    with pytest.raises(SmoothingError, match=r"sigma: 3 smoothing lengths for a 2D mesh"):
        smooth(np.ones(4), (1.0, 1.0, 1.0), np.zeros((4, 2)), np.zeros((1, 4), int),
               np.ones(4), 1)


def test_preconditioner_on_a_coarse_trilinear_mesh():
    """The inversion space's smoothing on an order-1 hexahedral inversion mesh: constants
    kept, self-adjoint in the coarse mesh's weights."""
    coarse = coarse_mesh(MESH.domain, 60.0)
    mapping = Mapping(("VP",), "relative_deviation_from_prior", dimension=3)
    prior = {"VP": np.full(MESH.n_points, 2000.0), "RHO": np.full(MESH.n_points, 1000.0)}
    space = InversionSpace(mapping, prior, MESH.points, MESH.cells, mass_of(MESH), MESH.order,
                           [EVENT], None, ConstantSmoothing({"VP": (50.0, 50.0, 30.0)}), coarse)
    try:
        w = space.weights
        assert abs(w.sum() - 400.0 * 300.0 * 300.0) <= 1e-9 * w.sum()
        assert np.allclose(space.precondition(np.ones(space.n)), 1.0, rtol=0, atol=1e-11)
        rng = np.random.default_rng(15)
        a, b = rng.standard_normal((2, space.n))
        lhs, rhs = (w * space.precondition(a)) @ b, (w * a) @ space.precondition(b)
        assert abs(lhs - rhs) <= 1e-11 * np.abs(w * a) @ np.abs(b)
    finally:
        space.close()
