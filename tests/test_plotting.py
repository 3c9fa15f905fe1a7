"""fwimpi plot: PNGs of models, gradient kernels (clipped, cropped) and traces.

Each plot is checked twice: the PNG itself (decoded: its size, that it is not blank, that
clipping saturates it) and the matplotlib figure the plotting code drew (its axes limits,
colour limits and lines), caught when the code closes it.
"""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.figure  # noqa: E402
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fwimpi.cli import main  # noqa: E402
from fwimpi.jobs.plotting import plot_field, plot_traces  # noqa: E402
from fwimpi.mesh.files import (ReceiverData, read_mesh_h5, read_receivers_h5,  # noqa: E402
                               write_mesh_h5, write_receivers_h5)
from test_cli import write_job  # noqa: E402

# SMALL_JOB's domain and mesh: 1000 m x 500 m, 400 m absorbing margins left, right, bottom
DOMAIN = (0.0, 1000.0, -500.0, 0.0)
EXTENDED = (-400.0, 1400.0, -900.0, 0.0)
N_RECEIVERS = 5
# the figure is 9 x 4 inches at 110 dpi, trimmed to its content (bbox_inches="tight")
MAX_SIZE = (4 * 110, 9 * 110)


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plot")
    assert main(["-q", "run", str(write_job(folder))]) == 0
    return folder / "out", json.loads((folder / "out/summary.json").read_text())


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


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def image(path: Path) -> np.ndarray:
    """The decoded PNG (H, W, 4), checked to be a full-size plot with content."""
    assert is_png(path)
    rgba = matplotlib.image.imread(path)
    h, w, channels = rgba.shape
    assert channels == 4
    # most of the 440 x 990 figure survives the trimming (measured 396 x 863..872)
    assert 0.8 * MAX_SIZE[0] < h <= MAX_SIZE[0] and 0.8 * MAX_SIZE[1] < w <= MAX_SIZE[1]
    assert len(np.unique(rgba.reshape(-1, 4), axis=0)) > 1000  # a shaded field, not blank
    return rgba


def saturated(rgba: np.ndarray) -> float:
    """Share of pixels at either end of the kernels' colour map (RdBu_r)."""
    cmap = plt.get_cmap("RdBu_r")
    ends = [np.array(cmap(v)[:3]) for v in (0.0, 1.0)]
    return float(sum((np.abs(rgba[..., :3] - e).sum(-1) < 0.02).mean() for e in ends))


def in_domain(path: Path, field: str = "VP", kernel: bool = True) -> np.ndarray:
    """The values of ``field`` (as a kernel, gradient / mass) at the points inside DOMAIN."""
    g = read_mesh_h5(path)
    x0, x1, y0, y1 = DOMAIN
    p = g.points
    inside = (p[:, 0] >= x0) & (p[:, 0] <= x1) & (p[:, 1] >= y0) & (p[:, 1] <= y1)
    assert 0 < inside.sum() < len(p)
    return (g.fields[field] / g.mass if kernel else g.fields[field])[inside]


def test_kernel_plots_clip_and_crop(products, tmp_path, figures):
    out, _ = products
    gradient = out / "gradient.h5"
    shown = {}
    for name, kwargs in (("a.png", {}), ("b.png", {"clip": 0.1}), ("c.png", {"crop": False})):
        assert plot_field(gradient, tmp_path / name, "VP", **kwargs) == tmp_path / name
        shown[name] = (image(tmp_path / name), figures[-1].axes[0])
    assert len(figures) == 3
    vmax = float(np.abs(in_domain(gradient)).max())
    # the colour scale: symmetric about 0, at the largest kernel value in the domain, and at
    # 0.1 of it when clipped
    (a, ax_a), (b, ax_b), (c, ax_c) = shown.values()
    for ax, level in ((ax_a, vmax), (ax_b, 0.1 * vmax), (ax_c, vmax)):
        lo, hi = ax.collections[0].get_clim()
        assert hi == pytest.approx(level, rel=1e-12) and lo == -hi
    clipped = np.asarray(ax_b.collections[0].get_array())
    assert np.abs(clipped).max() == pytest.approx(0.1 * vmax, rel=1e-12)
    # clipping changes the picture: far more pixels at the ends of the colour map (measured
    # 5e-5 of them unclipped, 2.8e-2 clipped at 0.1)
    assert saturated(a) < 1e-3 < 1e-2 < saturated(b)
    # cropped to the domain; without cropping the margins show too
    assert ax_a.get_xlim() == pytest.approx(DOMAIN[:2]) and ax_a.get_ylim() == pytest.approx(DOMAIN[2:])
    x0, x1 = ax_c.get_xlim()
    y0, y1 = ax_c.get_ylim()
    assert x0 <= EXTENDED[0] and x1 >= EXTENDED[1] and y0 <= EXTENDED[2] and y1 >= EXTENDED[3]
    # the same colours at the same clip, different pictures
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()


def test_model_plot_shows_the_model_range(products, tmp_path, figures):
    out, _ = products
    image(plot_field(out / "model.h5", tmp_path / "vp.png", "VP"))
    # a model is plotted as is, over its range at the points in the domain (vp = 1500 - y:
    # 1500 m/s at the top to 1987.5 m/s at the lowest GLL point above y = -500 m)
    vp = in_domain(out / "model.h5", kernel=False)
    assert 1500.0 == vp.min() < vp.max() < 2000.0
    lo, hi = figures[-1].axes[0].collections[0].get_clim()
    assert (lo, hi) == pytest.approx((vp.min(), vp.max()), rel=1e-12)
    assert figures[-1].axes[0].get_xlim() == pytest.approx(DOMAIN[:2])


def test_traces_plot_a_wiggle_gather_at_the_receiver_positions(products, tmp_path, figures):
    out, _ = products
    path = plot_traces(out / "events/ev1/receivers.h5", tmp_path / "traces.png")
    assert is_png(path) and matplotlib.image.imread(path).shape[-1] == 4
    ax = figures[-1].axes[0]
    assert len(ax.lines) == N_RECEIVERS
    positions = np.linspace(100.0, 900.0, N_RECEIVERS)  # SMALL_JOB's receivers, 200 m apart
    centres = [np.median(line.get_xdata()) for line in ax.lines]
    assert np.allclose(centres, positions, atol=1.0)  # each trace at its receiver's x
    deflection = max(np.abs(line.get_xdata() - x).max() for x, line in zip(positions, ax.lines))
    assert deflection == pytest.approx(0.9 * 200.0)  # the largest trace: 0.9 of the spacing
    lo, hi = ax.get_ylim()
    assert lo > hi == 0.0  # time increases downwards
    assert ax.get_xlabel() == "receiver x (m)"


def test_traces_plot_overlays_observed_data(products, tmp_path, figures):
    out, _ = products
    rec = read_receivers_h5(out / "events/ev1/receivers.h5")["ev1"]
    order = np.array([4, 2, 0, 1, 3])  # another order: matched by station name
    observed = ReceiverData({"phi": 0.5 * rec.traces["phi"][order]}, rec.coordinates[order],
                            rec.dt, rec.start_time, tuple(np.array(rec.stations)[order]))
    write_receivers_h5(tmp_path / "obs.h5", {"ev1": observed}, {})
    assert main(["plot", str(out / "events/ev1/receivers.h5"), "--observed",
                 str(tmp_path / "obs.h5"), "-o", str(tmp_path / "overlay.png")]) == 0
    ax = figures[-1].axes[0]
    assert len(ax.lines) == 2 * N_RECEIVERS
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["observed", "synthetic"]
    black, red = ax.lines[0::2], ax.lines[1::2]
    positions = np.linspace(100.0, 900.0, N_RECEIVERS)
    for x0, b, r in zip(positions, black, red):  # observed: half its synthetic, same place
        assert np.allclose(b.get_xdata() - x0, 0.5 * (r.get_xdata() - x0), atol=1e-6 * 180)


def test_a_large_gather_is_drawn_as_images(tmp_path, figures):
    t = 0.002 * np.arange(300)
    x = np.linspace(0.0, 5900.0, 59)
    synthetic = np.array([np.exp(-((t - 0.2 - xi / 3000.0) / 0.02) ** 2) for xi in x])
    rec = ReceiverData({"phi": synthetic}, np.column_stack([x, np.zeros_like(x)]), 0.002, 0.0,
                       tuple(f"R{k:03d}" for k in range(59)))
    write_receivers_h5(tmp_path / "syn.h5", {"e": rec}, {})
    write_receivers_h5(tmp_path / "obs.h5", {"e": ReceiverData(
        {"phi": np.roll(synthetic, 5, axis=1)}, rec.coordinates, 0.002, 0.0, rec.stations)}, {})
    plot_traces(tmp_path / "syn.h5", tmp_path / "g.png", observed=tmp_path / "obs.h5")
    fig = figures[-1]
    panels = [a for a in fig.axes if a.get_title()]
    assert [a.get_title() for a in panels] == ["observed", "synthetic", "synthetic - observed"]
    mesh = panels[2].collections[0]
    assert mesh.get_array().size == 59 * 300 and mesh.get_clim() == (-1.0, 1.0)


def test_field_plots_mark_sources_receivers_and_name_the_mapping(products, tmp_path, figures):
    out, _ = products
    g = read_mesh_h5(out / "gradient.h5")
    attrs = dict(g.attrs)
    spec = dict(attrs["job_spec"])
    spec["mappings"] = [{"name": "m1", "parameters": ["VP"], "scaling": "relative",
                         "source_cutout_radius_in_meters": 100.0}]
    mapped = tmp_path / "m1.h5"
    write_mesh_h5(mapped, g.points, g.cells, g.mass, g.fields,
                  {**{k: v for k, v in attrs.items() if k not in ("format", "order")},
                   "job_spec": spec, "kind": "mapped_gradient", "mapping": "m1"})
    plot_field(mapped, tmp_path / "m1.png", "VP")
    ax = figures[-1].axes[0]
    title = ax.get_title()
    assert title.splitlines()[1] == ("mapping m1; parameters: VP; scaling: relative; "
                                     "source_cutout_radius_in_meters: 100.0")
    marks = {c.get_label(): c.get_offsets() for c in ax.collections if c.get_label() in
             ("sources", "receivers")}
    assert np.allclose(marks["sources"], [[300.0, -250.0]])
    assert np.allclose(marks["receivers"][:, 0], np.linspace(100.0, 900.0, N_RECEIVERS))


@pytest.mark.parametrize("args", [["--clip", "1.5"], ["--field", "NOPE"]])
def test_bad_plot_arguments_exit_2(products, args, capsys):
    out, _ = products
    assert main(["plot", str(out / "gradient.h5"), *args]) == 2
    assert "fwimpi: error:" in capsys.readouterr().err


def test_kernel_is_gradient_over_mass(products):
    out, _ = products
    g = read_mesh_h5(out / "gradient.h5")
    kernel = g.fields["VP"] / g.mass
    assert np.all(np.isfinite(kernel)) and np.abs(kernel).max() > 0


@pytest.mark.parametrize("args", [["model.h5", "--field", "VP"], ["gradient.h5", "--clip", "0.1"],
                                  ["gradient.h5", "--no-crop"], ["events/ev1/receivers.h5"]])
def test_plot_command(products, args, capsys):
    out, _ = products
    assert main(["plot", str(out / args[0]), *args[1:]]) == 0
    assert is_png(Path(capsys.readouterr().out.strip()))
