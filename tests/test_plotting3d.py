"""fwimpi plot in 3D: slices of fields on the structured GLL grid and gathers of receivers
with three coordinates.

The slices are checked numerically (a linear field is reproduced exactly, the slice lies at
the requested position and is the linear blend of the two nearest grid planes); the figures
as the plotting code drew them (caught when it closes them) and as PNGs decoded.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.figure  # noqa: E402
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fwimpi.errors import ConfigError  # noqa: E402
from fwimpi.jobs.plotting import (TensorGrid, line_positions, plot_compression_study,  # noqa: E402
                                  plot_field, plot_gather, plot_model_pair, plot_traces,
                                  slice_field)
from fwimpi.mesh.files import ReceiverData, write_mesh_h5, write_receivers_h5  # noqa: E402
from fwimpi.mesh.structured3d import Box3, build_mesh3d  # noqa: E402

DOMAIN = (0.0, 300.0, 0.0, 200.0, -150.0, 0.0)
EXTENDED = (-50.0, 350.0, -50.0, 250.0, -200.0, 0.0)  # 50 m margins, none at the top
SOURCE = (120.0, 80.0, -60.0)  # between grid planes along every axis
ELEMENT = 50.0


@pytest.fixture(scope="module")
def mesh():
    # order 3: GLL planes unevenly spaced (8 x 6 x 4 elements, 25 x 19 x 13 points)
    return build_mesh3d(Box3(*DOMAIN), 50.0, ELEMENT, 3)


@pytest.fixture
def figures(monkeypatch):
    """The figures the plotting code closes (it closes each one after saving it)."""
    caught, close = [], plt.close

    def spy(fig=None):
        if isinstance(fig, matplotlib.figure.Figure):
            caught.append(fig)
        return close(fig)

    monkeypatch.setattr(plt, "close", spy)
    return caught


def panel(fig, name: str):
    """The axes of the slice ``name`` ("x-z", "y-z", "x-y") and its title."""
    (ax,) = [a for a in fig.axes if f"{name} slice at" in a.get_title()]
    return ax


def marks(ax) -> dict:
    return {c.get_label(): np.asarray(c.get_offsets()) for c in ax.collections
            if c.get_label() in ("sources", "receivers")}


def shown_and_expected(art, points, values, normal: int, at: float):
    """The values a slice panel's mesh ``art`` shows and those of ``slice_field`` of
    ``values (P,)`` at the grid points it shows."""
    h, v, plane, _ = slice_field(points, values, normal, at)
    coords = art.get_coordinates()
    i = np.searchsorted(h, coords[0, :, 0])
    j = np.searchsorted(v, coords[:, 0, 1])
    assert np.array_equal(h[i], coords[0, :, 0]) and np.array_equal(v[j], coords[:, 0, 1])
    return np.asarray(art.get_array()).reshape(len(j), len(i)), plane[np.ix_(j, i)]


# --------------------------------------------------------------------------- slices


def test_a_linear_field_is_reproduced_exactly_on_every_slice(mesh):
    rng = np.random.default_rng(3)
    order = rng.permutation(mesh.n_points)  # any order of the points: the grid is found
    points = mesh.points[order]
    a, b, c = 0.7, -1.3, 2.1
    field = a * points[:, 0] + b * points[:, 1] + c * points[:, 2]
    axes = mesh.axes()
    for normal in range(3):
        grid_axis = axes[normal]
        on_plane = float(grid_axis[7])
        between = float(grid_axis[4] + 0.37 * (grid_axis[5] - grid_axis[4]))
        for wanted, expected in ((on_plane, on_plane), (between, between),
                                 (1e4, grid_axis[-1]), (-1e4, grid_axis[0])):
            h, v, plane, position = slice_field(points, field, normal, wanted)
            assert position == expected  # at the requested place, held to the grid
            ha, va = (k for k in range(3) if k != normal)
            assert np.array_equal(h, axes[ha]) and np.array_equal(v, axes[va])
            coords = {ha: h[None, :], va: v[:, None], normal: position}
            exact = a * coords[0] + b * coords[1] + c * coords[2]
            assert plane.shape == (len(v), len(h))
            assert np.abs(plane - exact).max() <= 1e-12 * np.abs(exact).max()


def test_a_slice_blends_the_two_nearest_grid_planes(mesh):
    rng = np.random.default_rng(5)
    values = rng.standard_normal(mesh.n_points)  # no smoothness to hide a wrong plane
    points = mesh.points
    z = mesh.axes()[2]
    grid = TensorGrid.of(points)

    def plane_at(k):  # the points of grid plane z[k], y outer, x inner (the mesh's order)
        sel = points[:, 2] == z[k]
        return values[sel].reshape(len(mesh.axes()[1]), len(mesh.axes()[0]))

    volume = grid.volume(values)
    plane, _ = grid.slice(volume, 2, z[6])
    assert np.array_equal(plane, plane_at(6))
    w = 0.25
    plane, position = grid.slice(volume, 2, (1 - w) * z[6] + w * z[7])
    assert np.allclose(plane, (1 - w) * plane_at(6) + w * plane_at(7), rtol=0, atol=1e-14)
    assert z[6] < position < z[7]


def test_points_that_are_not_a_tensor_grid_are_refused(mesh):
    with pytest.raises(ConfigError, match="tensor grid"):
        TensorGrid.of(mesh.points[1:])  # one point missing
    moved = mesh.points.copy()
    moved[10, 0] += 1.0
    with pytest.raises(ConfigError, match="tensor grid"):
        TensorGrid.of(moved)


# --------------------------------------------------------------------------- field figures


def job_spec(events=True) -> dict:
    receivers = ([{"type": "Point3D", "x": float(x), "y": 80.0, "z": 0.0, "fields": ["phi"]}
                  for x in np.linspace(30.0, 270.0, 5)]
                 + [{"type": "Point3D", "x": 150.0, "y": 180.0, "z": 0.0, "fields": ["phi"]}])
    return {"domain": {"dimension": 3, "x": list(DOMAIN[:2]), "y": list(DOMAIN[2:4]),
                       "z": list(DOMAIN[4:])},
            "events": [{"event_name": "ev1", "receivers": receivers,
                        "sources": [dict(zip("xyz", SOURCE), type="ScalarPoint3D", f=1.0)]}]
            if events else [],
            "mappings": [{"name": "m1", "parameters": ["VP"], "scaling": "relative"}]}


def gradient_file(mesh, folder: Path) -> tuple[Path, np.ndarray]:
    """A mapped 3D gradient: a kernel bump at the source times an uneven mass."""
    p = mesh.points
    kernel = np.exp(-np.sum((p - SOURCE) ** 2, axis=1) / 60.0 ** 2) - 0.3
    mass = 2.0 + np.sin(p[:, 0] / 37.0)
    write_mesh_h5(folder / "m1.h5", p, mesh.cells, mass, {"VP": kernel * mass},
                  {"job_spec": job_spec(), "kind": "mapped_gradient", "mapping": "m1",
                   "smoothing_lengths_in_meters": {"x": 10.0, "y": 10.0, "z": 5.0}})
    return folder / "m1.h5", kernel


def test_a_3d_gradient_is_drawn_as_three_slices_through_the_source(mesh, tmp_path, figures):
    path, kernel = gradient_file(mesh, tmp_path)
    out = tmp_path / "m1.png"
    out.write_bytes(b"an older picture")
    assert plot_field(path, out, "VP") == out
    # written atomically: the old file replaced whole, nothing else left in the folder
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m1.h5", "m1.png", "m1.xdmf"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgba = matplotlib.image.imread(out)
    assert rgba.ndim == 3 and rgba.shape[2] == 4 and min(rgba.shape[:2]) > 300
    assert len(np.unique(rgba.reshape(-1, 4), axis=0)) > 1000  # shaded, not blank
    fig = figures[-1]
    assert fig._suptitle.get_text().splitlines() == [
        "m1.h5: mapped_gradient VP",
        "mapping m1; parameters: VP; scaling: relative; smoothed x 10.0 m, y 10.0 m, z 5.0 m"]
    p = mesh.points
    inside = np.all([(p[:, a] >= DOMAIN[2 * a]) & (p[:, a] <= DOMAIN[2 * a + 1])
                     for a in range(3)], axis=0)
    vmax = float(np.abs(kernel[inside]).max())
    x, y, z = SOURCE
    for name, normal, at in (("x-z", 1, y), ("y-z", 0, x), ("x-y", 2, z)):
        ax = panel(fig, name)
        assert ax.get_title() == f"{name} slice at {'xyz'[normal]} = {at:g} m"
        art = ax.collections[0]
        assert art.get_clim() == pytest.approx((-vmax, vmax), rel=1e-12)  # one scale
        ha, va = (k for k in range(3) if k != normal)
        # cropped to the domain
        assert ax.get_xlim() == pytest.approx(DOMAIN[2 * ha:2 * ha + 2])
        assert ax.get_ylim() == pytest.approx(DOMAIN[2 * va:2 * va + 2])
        # the kernel (gradient / mass) of the slice, on the grid planes that reach the box
        shown, expected = shown_and_expected(art, p, kernel, normal, at)
        assert np.allclose(shown, expected, rtol=0, atol=1e-12 * vmax)
        coords = art.get_coordinates()
        shown_h, shown_v = coords[0, :, 0], coords[:, 0, 1]
        assert shown_h[0] < DOMAIN[2 * ha] and shown_h[-1] > DOMAIN[2 * ha + 1]
        assert shown_h[0] > EXTENDED[2 * ha] or shown_v[0] > EXTENDED[2 * va]
        assert marks(ax)["sources"] == pytest.approx(np.array([[SOURCE[ha], SOURCE[va]]]))
    # receivers where they are near the slice (within an element), projected onto it: not
    # the one at y 180 in the x-z slice at y 80
    assert np.allclose(marks(panel(fig, "x-z"))["receivers"],
                       np.column_stack([np.linspace(30.0, 270.0, 5), np.zeros(5)]))
    # (x 90 and 150 of the line, 30 m off x = 120, and the receiver at y 180)
    assert np.allclose(marks(panel(fig, "y-z"))["receivers"],
                       [[80.0, 0.0], [80.0, 0.0], [180.0, 0.0]])
    assert "receivers" not in marks(panel(fig, "x-y"))  # 60 m below them


def test_clipping_and_the_whole_mesh(mesh, tmp_path, figures):
    path, kernel = gradient_file(mesh, tmp_path)
    plot_field(path, tmp_path / "a.png", "VP", clip=0.1, crop=False)
    fig = figures[-1]
    vmax = float(np.abs(kernel).max())  # not cropped: the largest value of the whole mesh
    for name, h, v in (("x-z", 0, 2), ("y-z", 1, 2), ("x-y", 0, 1)):
        ax = panel(fig, name)
        art = ax.collections[0]
        assert art.get_clim() == pytest.approx((-0.1 * vmax, 0.1 * vmax), rel=1e-12)
        assert np.abs(art.get_array()).max() == pytest.approx(0.1 * vmax, rel=1e-12)
        assert ax.get_xlim() == pytest.approx(EXTENDED[2 * h:2 * h + 2])
        assert ax.get_ylim() == pytest.approx(EXTENDED[2 * v:2 * v + 2])
    assert "clipped at 0.1" in fig._suptitle.get_text()


def test_a_model_without_sources_is_sliced_through_the_middle(mesh, tmp_path, figures):
    p = mesh.points
    vp = 1500.0 - 2.0 * p[:, 2] + 0.5 * p[:, 0]
    write_mesh_h5(tmp_path / "model.h5", p, mesh.cells, np.ones(len(p)), {"VP": vp},
                  {"job_spec": job_spec(events=False), "kind": "model"})
    plot_field(tmp_path / "model.h5", tmp_path / "model.png", "VP")
    fig = figures[-1]
    titles = {name: panel(fig, name).get_title() for name in ("x-z", "y-z", "x-y")}
    assert titles == {"x-z": "x-z slice at y = 100 m", "y-z": "y-z slice at x = 150 m",
                      "x-y": "x-y slice at z = -75 m"}
    # a model as it is, over its range in the domain: 1500 m/s at (0, ., 0) to 1950 at the
    # domain's deep far corner, a GLL point (the domain's faces are element faces)
    lo, hi = panel(fig, "x-z").collections[0].get_clim()
    assert (lo, hi) == pytest.approx((1500.0, 1500.0 + 300.0 + 150.0), rel=1e-12)
    for name in ("x-z", "x-y"):  # the linear model on the slices, at the slice's depth
        ax = panel(fig, name)
        coords = ax.collections[0].get_coordinates()
        shown = np.asarray(ax.collections[0].get_array()).reshape(coords.shape[:2])
        z = coords[..., 1] if name == "x-z" else -75.0
        assert np.allclose(shown, 1500.0 - 2.0 * z + 0.5 * coords[..., 0], rtol=1e-13)


def test_a_3d_model_pair(mesh, tmp_path, figures):
    p = mesh.points
    start = 1500.0 - p[:, 2]
    current = start + 40.0 * np.exp(-np.sum((p - SOURCE) ** 2, axis=1) / 40.0 ** 2)
    out = plot_model_pair(p, mesh.cells, mesh.order, start, current, "VP", DOMAIN,
                          tmp_path / "pair.png", "iteration 1")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = figures[-1]
    titled = {a.get_title(): a for a in fig.axes if "slice at" in a.get_title()}
    assert len(titled) == 9  # starting, current, update: three slices each
    middle = "x-z slice at y = 100 m"
    s, c, u = (titled[f"{k}: {middle}"].collections[0] for k in ("starting", "current", "update"))
    assert s.get_clim() == c.get_clim() and s.get_clim()[0] == pytest.approx(1500.0)
    lo, hi = u.get_clim()
    assert lo == -hi and 0 < hi <= 40.0


def test_a_3d_compression_study_on_the_reference_scale(mesh, tmp_path, figures):
    path, kernel = gradient_file(mesh, tmp_path)
    p = mesh.points
    write_mesh_h5(tmp_path / "twice.h5", p, mesh.cells, 2.0 + np.sin(p[:, 0] / 37.0),
                  {"VP": 2.0 * kernel * (2.0 + np.sin(p[:, 0] / 37.0))},
                  {"job_spec": job_spec(), "kind": "mapped_gradient", "mapping": "m1"})
    plot_compression_study([("reference", path), ("twice", tmp_path / "twice.h5")], "VP",
                           tmp_path / "study.png", "study")
    fig = figures[-1]
    titled = {a.get_title(): a for a in fig.axes if "slice at" in a.get_title()}
    assert len(titled) == 6
    ref = titled["reference\nx-z slice at y = 80 m"].collections[0]
    twice = titled["twice\nx-z slice at y = 80 m"].collections[0]
    assert ref.get_clim() == twice.get_clim()  # the reference's scale, the other saturates
    vmax = ref.get_clim()[1]
    for art, factor in ((ref, 1.0), (twice, 2.0)):  # kernels clipped at the points
        shown, expected = shown_and_expected(art, p, np.clip(factor * kernel, -vmax, vmax),
                                             1, SOURCE[1])
        assert np.allclose(shown, expected, rtol=0, atol=1e-12 * vmax)
    assert np.abs(twice.get_array()).max() == vmax > np.abs(ref.get_array()).max()


# --------------------------------------------------------------------------- gathers


def gather_traces(times, distance):
    """One pulse per receiver, arriving at 0.05 s + distance / 2000 m/s."""
    return np.array([np.exp(-((times - 0.05 - d / 2000.0) / 0.004) ** 2) for d in distance])


def wiggles(ax):
    """(centre, time of the largest deflection) of each drawn trace."""
    out = []
    for line in ax.lines:
        x, t = line.get_xdata(), line.get_ydata()
        centre = float(np.median(x))
        out.append((centre, float(t[np.argmax(np.abs(x - centre))])))
    return np.array(out)


def test_3d_receivers_on_a_line_are_placed_by_distance_along_it(tmp_path, figures):
    times = 0.001 * np.arange(400)
    distance = np.array([0.0, 150.0, 60.0, 240.0, 30.0, 90.0, 210.0, 120.0, 180.0])
    direction = np.array([0.6, 0.8, 0.0])  # a diagonal line, the first receiver at one end
    coordinates = np.array([200.0, 50.0, -10.0]) + distance[:, None] * direction
    traces = gather_traces(times, distance)
    plot_gather(times, coordinates, traces, tmp_path / "g.png", title="diagonal")
    ax = figures[-1].axes[0]
    assert ax.get_xlabel() == "distance along the receiver line from the first receiver (m)"
    placed = wiggles(ax)
    assert np.allclose(placed[:, 0], np.sort(distance), atol=1e-6)  # ordered along the line
    # each trace at its own receiver: its pulse time says where it was recorded
    assert np.allclose(placed[:, 1], 0.05 + placed[:, 0] / 2000.0, atol=0.0011)
    # the same line with its first receiver in the middle: distances signed along the line
    positions, _ = line_positions(coordinates[[2, 0, 1, 3]])
    assert np.allclose(positions, [0.0, -60.0, 90.0, 180.0], atol=1e-9)
    # receivers off one line (a grid): by offset from the first
    grid = np.array([[0.0, 0.0, 0.0], [30.0, 0.0, 0.0], [0.0, 40.0, 0.0], [30.0, 40.0, 0.0]])
    positions, label = line_positions(grid)
    assert label == "offset from the first receiver (m)"
    assert np.allclose(positions, [0.0, 30.0, 40.0, 50.0])


def test_3d_receivers_sharing_y_are_placed_at_x_with_observed_overlay(tmp_path, figures):
    times = 0.001 * np.arange(400)
    x = np.array([150.0, 30.0, 270.0, 90.0, 210.0])
    coordinates = np.column_stack([x, np.full(5, 80.0), np.zeros(5)])
    stations = tuple(f"R{k:04d}" for k in range(5))
    traces = gather_traces(times, x)
    write_receivers_h5(tmp_path / "syn.h5", {"ev1": ReceiverData(
        {"phi": traces}, coordinates, 0.001, 0.0, stations)}, {})
    order = [3, 0, 4, 2, 1]  # observed in another order: matched by station name
    write_receivers_h5(tmp_path / "obs.h5", {"ev1": ReceiverData(
        {"phi": 0.5 * traces[order]}, coordinates[order], 0.001, 0.0,
        tuple(stations[k] for k in order))}, {})
    out = plot_traces(tmp_path / "syn.h5", tmp_path / "t.png", observed=tmp_path / "obs.h5")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = figures[-1].axes[0]
    assert ax.get_xlabel() == "receiver x (m)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["observed", "synthetic"]
    black, red = ax.lines[0::2], ax.lines[1::2]
    for x0, b, r in zip(np.sort(x), black, red):  # observed: half its synthetic, same place
        assert np.median(r.get_xdata()) == pytest.approx(x0)
        assert np.allclose(b.get_xdata() - x0, 0.5 * (r.get_xdata() - x0), atol=1e-9)
    placed = wiggles(ax)[1::2]
    assert np.allclose(placed[:, 1], 0.05 + placed[:, 0] / 2000.0, atol=0.0011)
