"""PNG plots of fwimpi files (matplotlib, Agg): fields on the mesh (with the sources and
receivers marked and a mapping's settings named) and receiver traces as gathers.

Gradients are shown as kernels ``gradient / mass`` (DESIGN.md), so the GLL quadrature
weights do not print a pattern, with a symmetric colour scale, optionally clipped at a
fraction of the maximum amplitude and cropped to the physical domain (as the tutorial's
``visualize_gradient``: the maximum is taken inside the domain).

A 3D field (points ``(P, 3)``, z up) is drawn as three slices through the first source (the
domain's middle without one): a vertical x-z slice at its y, a vertical y-z slice at its x
and a horizontal x-y slice at its z, each interpolated linearly between the two nearest
planes of the structured mesh's GLL grid (``TensorGrid``), with the same colour scaling,
cropping and settings as in 2D. Receivers with three coordinates are placed along their line.
"""

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..mesh.files import atomic_path, read_mesh_h5, read_receivers_h5

GRADIENT_KINDS = ("raw_gradient", "mapped_gradient", "smoothed_gradient", "inversion_gradient")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _domain(attrs: dict) -> tuple[float, float, float, float] | None:
    spec = attrs.get("job_spec")
    if not isinstance(spec, dict) or "domain" not in spec:
        return None
    (x0, x1), (y0, y1) = spec["domain"]["x"], spec["domain"]["y"]
    return x0, x1, y0, y1


def _cropped(points: np.ndarray, cells: np.ndarray, order: int, box) -> tuple:
    """``(inside (P,), triangles (T, 3))``: the points within ``box = (x0, x1, y0, y1)``
    (all when None) and the triangles of the linear sub-quads that touch them (the axes'
    limits crop what lies outside)."""
    from ..mesh.files import quads_from_cells

    inside = np.ones(len(points), dtype=bool)
    if box is not None:
        x0, x1, y0, y1 = box
        tol = 1e-9 * max(x1 - x0, y1 - y0)
        inside = ((points[:, 0] >= x0 - tol) & (points[:, 0] <= x1 + tol)
                  & (points[:, 1] >= y0 - tol) & (points[:, 1] <= y1 + tol))
    quads = quads_from_cells(cells, order)
    keep = inside[quads].any(axis=1)
    return inside, np.concatenate((quads[keep][:, [0, 1, 2]], quads[keep][:, [0, 2, 3]]))


def plot_field(path: Path, out: Path, field: str | None = None, clip: float | None = None,
               crop: bool = True) -> Path:
    """Plot ``field`` (default: the first) of an fwimpi mesh file into the PNG ``out``."""
    mesh = read_mesh_h5(path)
    if not mesh.fields:
        raise ConfigError(f"file: {path} has no fields to plot")
    name = field or sorted(mesh.fields)[0]
    if name not in mesh.fields:
        raise ConfigError(f"--field: no field '{name}' in {path} (has {', '.join(sorted(mesh.fields))})")
    if clip is not None and not 0 < clip <= 1:
        raise ConfigError(f"--clip: must be in (0, 1], got {clip}")
    kind = str(mesh.attrs.get("kind", ""))
    gradient = kind in GRADIENT_KINDS
    if name.endswith("_kernel") or name.endswith("_preconditioned"):
        gradient = True  # already a kernel: a smooth field with a symmetric scale
        values = mesh.fields[name].copy()
    else:
        values = mesh.fields[name] / mesh.mass if gradient else mesh.fields[name].copy()
    if mesh.points.shape[1] == 3:
        return _plot_field3d(path, out, mesh, name, values, gradient, clip, crop)
    box = _domain(mesh.attrs) if crop else None
    points = mesh.points
    inside, triangles = _cropped(points, mesh.cells, mesh.order, box)
    values, limits, cmap = _colour_scale(values, inside, gradient, clip)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4), dpi=110)
    art = ax.tripcolor(points[:, 0], points[:, 1], triangles, values, shading="gouraud",
                       cmap=cmap, vmin=limits[0], vmax=limits[1])
    label = (name if name.endswith(("_kernel", "_preconditioned")) else
             f"{name} kernel (gradient / mass)") if gradient else name
    fig.colorbar(art, ax=ax, label=label)
    ax.set_aspect("equal")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(_field_title(path, mesh.attrs, name, clip), fontsize=9)
    if _markers(ax, mesh.attrs):
        ax.legend(loc="lower right", fontsize=7, framealpha=0.8)
    if box is not None:
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
    return _save(fig, plt, out)


def _colour_scale(values: np.ndarray, inside: np.ndarray, gradient: bool,
                  clip: float | None) -> tuple[np.ndarray, tuple[float, float], str]:
    """The values to draw, their colour limits and map: a gradient on a symmetric scale of
    its largest magnitude inside the domain (``inside``, a mask), clipped at ``clip`` times
    it; other fields from their min to max inside."""
    if not gradient:
        return values, (float(values[inside].min()), float(values[inside].max())), "viridis"
    vmax = float(np.abs(values[inside]).max()) or 1.0
    if clip is not None:
        vmax *= clip
        values = np.clip(values, -vmax, vmax)
    return values, (-vmax, vmax), "RdBu_r"


def _field_title(path: Path, attrs: dict, name: str, clip: float | None) -> str:
    """The file, kind, field and clip level, with the mapping's settings below."""
    kind = str(attrs.get("kind", ""))
    title = f"{path.name}: {kind or 'field'} {name}" + (f", clipped at {clip:g}" if clip else "")
    settings = _settings(attrs)
    if settings:
        title += "\n" + textwrap.fill(settings, 90, break_long_words=False)
    return title


def _events(attrs: dict) -> list[dict]:
    """The events of the job spec a file carries (one when the file is one event's)."""
    spec = attrs.get("job_spec")
    events = spec.get("events", []) if isinstance(spec, dict) else []
    event = attrs.get("event")
    if isinstance(event, str) and event != "sum":
        events = [e for e in events if e.get("event_name") == event]
    return [e for e in events if isinstance(e, dict)]


def _markers(ax, attrs: dict) -> bool:
    """Sources (red stars) and receivers (triangles) of the file's events; True if any."""
    sources, receivers = [], []
    for e in _events(attrs):
        sources += [(s["x"], s["y"]) for s in e.get("sources", []) if "x" in s and "y" in s]
        receivers += [(r["x"], r["y"]) for r in e.get("receivers", []) if "x" in r and "y" in r]
    if receivers:
        xy = np.asarray(receivers, float)
        ax.scatter(xy[:, 0], xy[:, 1], marker="v", s=14, c="k", edgecolors="w",
                   linewidths=0.4, label="receivers", zorder=3, clip_on=False)
    if sources:
        xy = np.asarray(sources, float)
        ax.scatter(xy[:, 0], xy[:, 1], marker="*", s=90, c="tab:red", edgecolors="w",
                   linewidths=0.5, label="sources", zorder=4, clip_on=False)
    return bool(sources or receivers)


def _settings(attrs: dict) -> str:
    """One line naming the mapping (parameters, scaling, cutouts, region of interest) and
    the smoothing of a mapped or smoothed gradient; '' for other files."""
    name, spec = attrs.get("mapping"), attrs.get("job_spec")
    if not isinstance(name, str) or not isinstance(spec, dict):
        return ""
    block = next((m for m in spec.get("mappings", []) if m.get("name") == name), None)
    if not isinstance(block, dict):
        return f"mapping {name}"
    parts = [f"mapping {name}"]
    for key, value in block.items():
        if key == "name" or value in (None, [], {}):
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        parts.append(f"{key}: {value}")
    lengths = attrs.get("smoothing_lengths_in_meters")
    if isinstance(lengths, dict):
        parts.append("smoothed " + ", ".join(f"{k} {v} m" for k, v in lengths.items()))
    line = "; ".join(parts)
    return line if len(line) <= 300 else line[:297] + "..."


# --------------------------------------------------------------------------- 3D slices

#: The slices of a 3D field: (name, horizontal axis, vertical axis, normal axis), axes
#: 0, 1, 2 being x, y, z (z up). Drawn as an orthographic layout: x-z above x-y (sharing x),
#: y-z beside x-z (sharing z).
SLICES = (("x-z", 0, 2, 1), ("y-z", 1, 2, 0), ("x-y", 0, 1, 2))


@dataclass(frozen=True, eq=False)
class TensorGrid:
    """The GLL points ``(P, 3)`` of a structured 3D mesh as the tensor grid they form:
    ``axes`` the increasing coordinates (m) along x, y and z, ``index (P,)`` each point's
    place in the grid's volume ``(nz, ny, nx)`` (C order, x fastest)."""

    axes: tuple[np.ndarray, np.ndarray, np.ndarray]
    index: np.ndarray

    @classmethod
    def of(cls, points: np.ndarray) -> "TensorGrid":
        """The grid of ``points (P, 3)``; ConfigError when they do not form one (coordinates
        equal to 1e-9 of the extent count as one plane)."""
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or points.shape[1] != 3 or not len(points):
            raise ConfigError(f"points: expected shape (n_points, 3), got {points.shape}")
        tol = 1e-9 * (float(np.ptp(points, axis=0).max()) or 1.0)
        axes, indices = [], []
        for c in points.T:
            u = np.unique(c)
            a = u[np.concatenate(([True], np.diff(u) > tol))]
            axes.append(a)
            indices.append(np.clip(np.searchsorted(a, c + tol, side="right") - 1, 0, len(a) - 1))
        nx, ny, nz = (len(a) for a in axes)
        index = indices[0] + nx * (indices[1] + ny * indices[2])
        if nx * ny * nz != len(points) or len(np.unique(index)) != len(points):
            raise ConfigError(f"the {len(points)} mesh points do not form a tensor grid "
                              f"({nx} x {ny} x {nz} planes): not a structured 3D mesh")
        return cls(tuple(axes), index)

    def volume(self, values: np.ndarray) -> np.ndarray:
        """Point values ``(P,)`` as the grid's volume ``(nz, ny, nx)``."""
        out = np.empty(len(self.index), dtype=float)
        out[self.index] = values
        return out.reshape([len(a) for a in self.axes[::-1]])

    def slice(self, volume: np.ndarray, normal: int, position: float) -> tuple[np.ndarray, float]:
        """The plane of ``volume (nz, ny, nx)`` normal to axis ``normal`` (0 x, 1 y, 2 z) at
        ``position`` (m, held to the grid), linear between the two nearest grid planes (the
        plane itself when on one): ``(values (nv, nh), position)`` with ``h`` the lower of
        the plane's two axes, ``v`` the higher (``SLICES``)."""
        a = self.axes[normal]
        s = float(np.clip(position, a[0], a[-1]))
        if len(a) == 1:
            return np.take(volume, 0, axis=2 - normal), s
        k = int(np.clip(np.searchsorted(a, s, side="right") - 1, 0, len(a) - 2))
        w = (s - a[k]) / (a[k + 1] - a[k])
        lower, upper = (np.take(volume, j, axis=2 - normal) for j in (k, k + 1))
        if w <= 0.0:
            return lower.copy(), s
        if w >= 1.0:
            return upper.copy(), s
        return (1.0 - w) * lower + w * upper, s


def slice_field(points: np.ndarray, values: np.ndarray, normal: int,
                position: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The slice of the field ``values (P,)`` on the tensor-grid points ``(P, 3)`` normal to
    axis ``normal`` (0 x, 1 y, 2 z) at ``position`` (m): ``(h (nh,), v (nv,), plane (nv, nh),
    position)``, ``h`` and ``v`` the grid coordinates of the plane's axes (x, z for a y
    slice; y, z for an x slice; x, y for a z slice)."""
    grid = TensorGrid.of(points)
    plane, s = grid.slice(grid.volume(values), normal, position)
    h, v = (axis for axis in range(3) if axis != normal)
    return grid.axes[h], grid.axes[v], plane, s


def _domain3d(attrs: dict) -> tuple[float, ...] | None:
    """``(x0, x1, y0, y1, z0, z1)`` of a 3D file: its job spec's domain, else its mesh's."""
    spec = attrs.get("job_spec")
    domain = spec.get("domain") if isinstance(spec, dict) else None
    if isinstance(domain, dict) and all(a in domain for a in "xyz"):
        return tuple(float(v) for a in "xyz" for v in domain[a])
    mesh = attrs.get("mesh")
    if isinstance(mesh, dict) and mesh.get("dimension") == 3 and len(mesh.get("domain", ())) == 6:
        return tuple(float(v) for v in mesh["domain"])
    return None


def _sites3d(attrs: dict) -> tuple[np.ndarray, np.ndarray]:
    """Sources ``(S, 3)`` and receivers ``(R, 3)`` of the file's events (m)."""
    sources, receivers = [], []
    for e in _events(attrs):
        sources += [(s["x"], s["y"], s["z"]) for s in e.get("sources", [])
                    if all(a in s for a in "xyz")]
        receivers += [(r["x"], r["y"], r["z"]) for r in e.get("receivers", [])
                      if all(a in r for a in "xyz")]
    return (np.asarray(sources, float).reshape(-1, 3), np.asarray(receivers, float).reshape(-1, 3))


def slice_positions(attrs: dict, box: tuple[float, ...] | None,
                    points: np.ndarray) -> tuple[float, float, float]:
    """Where the slices of a 3D field go, ``(x, y, z)`` (m): at the first source of the
    file's events, else in the middle of ``box`` (of the points when None)."""
    sources, _ = _sites3d(attrs)
    if len(sources):
        return tuple(float(c) for c in sources[0])
    if box is None:
        box = tuple(v for lo, hi in zip(points.min(axis=0), points.max(axis=0)) for v in (lo, hi))
    return tuple(0.5 * (box[2 * a] + box[2 * a + 1]) for a in range(3))


def _inside3d(points: np.ndarray, box) -> np.ndarray:
    """``(P,)``: the points within ``box = (x0, x1, y0, y1, z0, z1)`` (all when None)."""
    inside = np.ones(len(points), dtype=bool)
    if box is not None:
        tol = 1e-9 * max(box[2 * a + 1] - box[2 * a] for a in range(3))
        for a in range(3):
            inside &= (points[:, a] >= box[2 * a] - tol) & (points[:, a] <= box[2 * a + 1] + tol)
    return inside


def _span(axis: np.ndarray, lo: float, hi: float) -> slice:
    """The grid planes of ``axis`` within ``[lo, hi]`` and one more on either side (so the
    shading reaches the box's edges; the axes' limits crop the rest)."""
    tol = 1e-9 * (hi - lo)
    first = max(int(np.searchsorted(axis, lo - tol, side="left")) - 1, 0)
    last = min(int(np.searchsorted(axis, hi + tol, side="right")) + 1, len(axis))
    return slice(first, last)


def _slice_figure(plt, grid: TensorGrid, blocks: list[dict], positions, box, sites, near,
                  bars: list[tuple[str, list[int]]], title_lines: int = 0):
    """One figure of ``blocks`` side by side, each the three ``SLICES`` of a volume through
    ``positions (x, y, z)`` (m) in an orthographic layout, cropped to ``box`` (6-tuple, or
    None for the whole grid). A block is ``{"volume": (nz, ny, nx), "title": str, "cmap":
    str, "limits": (lo, hi)}``; ``bars`` are ``(label, [block index, ...])``: one colour bar
    for those blocks. ``sites = (sources (S, 3), receivers (R, 3))`` are marked, projected, in
    the slices they lie within ``near[axis]`` metres of; ``title_lines`` of a suptitle get
    room above the panels. Returns the figure and its slice axes ``[block][slice]``."""
    extent = [(box[2 * a], box[2 * a + 1]) if box is not None else (axis[0], axis[-1])
              for a, axis in enumerate(grid.axes)]
    size = [max(hi - lo, 1e-30) for lo, hi in extent]
    wx, wy, wz = (max(s, 0.25 * max(size)) for s in size)  # thin panels kept readable
    n = len(blocks)
    fig = plt.figure(figsize=(min(7.5 * n, 21.0), min(5.6 * (wz + wy) / (wx + wy) + 1.2, 12.0)),
                     dpi=110)
    top = {} if not title_lines else {
        "top": 1.0 - (0.25 + 0.17 * title_lines) / fig.get_figheight()}  # inches -> fraction
    layout = fig.add_gridspec(2, 2 * n, width_ratios=[wx, wy] * n, height_ratios=[wz, wy],
                              wspace=0.3, hspace=0.35, **top)
    cells = {"x-z": (0, 0), "y-z": (0, 1), "x-y": (1, 0)}
    styles = {"receivers": dict(marker="v", s=14, c="k", edgecolors="w", linewidths=0.4,
                                zorder=3),
              "sources": dict(marker="*", s=90, c="tab:red", edgecolors="w", linewidths=0.5,
                              zorder=4)}
    all_axes, arts, spares = [], [], []
    for b, block in enumerate(blocks):
        axes = []
        for name, h, v, normal in SLICES:
            i, j = cells[name]
            ax = fig.add_subplot(layout[i, 2 * b + j])
            plane, s = grid.slice(block["volume"], normal, positions[normal])
            hs = _span(grid.axes[h], *extent[h]) if box is not None else slice(None)
            vs = _span(grid.axes[v], *extent[v]) if box is not None else slice(None)
            art = ax.pcolormesh(grid.axes[h][hs], grid.axes[v][vs], plane[vs, hs],
                                shading="gouraud", cmap=block["cmap"],
                                vmin=block["limits"][0], vmax=block["limits"][1])
            for kind, xyz in zip(("sources", "receivers"), sites):
                close = xyz[np.abs(xyz[:, normal] - s) <= near[normal]]
                if len(close):
                    ax.scatter(close[:, h], close[:, v], label=kind, clip_on=False,
                               **styles[kind])
            ax.set_aspect("equal")
            ax.set_xlim(*extent[h])
            ax.set_ylim(*extent[v])
            ax.set_xlabel(f"{'xyz'[h]} (m)", fontsize=8)
            ax.set_ylabel(f"{'xyz'[v]} (m)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_title(f"{block['title']}{name} slice at {'xyz'[normal]} = {s:g} m",
                         fontsize=8)
            axes.append(ax)
        all_axes.append(axes)
        arts.append(art)
        handles = {}
        for ax in axes:
            for handle, text in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(text, handle)
        spare = fig.add_subplot(layout[1, 2 * b + 1])
        spare.axis("off")
        spares.append(spare)
        if handles:
            spare.legend(list(handles.values()), list(handles), loc="center", fontsize=7,
                         title="near the slice", title_fontsize=7)
    for label, members in bars:
        fig.colorbar(arts[members[-1]], ax=[ax for m in members for ax in all_axes[m]]
                     + [spares[m] for m in members], shrink=0.8, label=label)
    return fig, all_axes


def _element_sizes(points: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """``(3,)``: the extent (m) of the first element along x, y and z (structured meshes:
    every element's)."""
    return np.ptp(points[np.asarray(cells)[0]], axis=0)


def _plot_field3d(path: Path, out: Path, mesh, name: str, values: np.ndarray, gradient: bool,
                  clip: float | None, crop: bool) -> Path:
    """``plot_field`` of a 3D mesh file: the three ``SLICES`` through the first source (the
    domain's middle without one), each interpolated from the GLL grid's nearest planes."""
    box = _domain3d(mesh.attrs) if crop else None
    points = mesh.points
    inside = _inside3d(points, box)
    values, limits, cmap = _colour_scale(values, inside, gradient, clip)
    grid = TensorGrid.of(points)
    positions = slice_positions(mesh.attrs, _domain3d(mesh.attrs), points)
    label = (name if name.endswith(("_kernel", "_preconditioned")) else
             f"{name} kernel (gradient / mass)") if gradient else name
    plt = _pyplot()
    block = {"volume": grid.volume(values), "title": "", "cmap": cmap, "limits": limits}
    title = _field_title(path, mesh.attrs, name, clip)
    fig, _ = _slice_figure(plt, grid, [block], positions, box, _sites3d(mesh.attrs),
                           _element_sizes(points, mesh.cells), [(label, [0])],
                           title_lines=title.count("\n") + 1)
    fig.suptitle(title, fontsize=9)
    return _save(fig, plt, out)


def _model_pair3d(points, cells, start, current, name, box, out, title) -> Path:
    """``plot_model_pair`` of a 3D mesh: the starting model, the current model (one colour
    scale) and the update, each as the three ``SLICES`` through the middle of ``box``
    (``(x0, x1, y0, y1, z0, z1)``; a 4-tuple takes z from the points)."""
    if len(box) == 4:
        box = tuple(box) + (float(points[:, 2].min()), float(points[:, 2].max()))
    inside = _inside3d(points, box)
    lo = float(min(start[inside].min(), current[inside].min()))
    hi = float(max(start[inside].max(), current[inside].max()))
    change = current - start
    top = float(np.abs(change[inside]).max()) or 1.0
    grid = TensorGrid.of(points)
    blocks = [{"volume": grid.volume(start), "title": "starting: ", "cmap": "viridis",
               "limits": (lo, hi)},
              {"volume": grid.volume(current), "title": "current: ", "cmap": "viridis",
               "limits": (lo, hi)},
              {"volume": grid.volume(change), "title": "update: ", "cmap": "RdBu_r",
               "limits": (-top, top)}]
    positions = tuple(0.5 * (box[2 * a] + box[2 * a + 1]) for a in range(3))
    plt = _pyplot()
    fig, _ = _slice_figure(plt, grid, blocks, positions, box, (np.zeros((0, 3)),) * 2,
                           _element_sizes(points, cells),
                           [(name, [0, 1]), (f"update of {name} (current - starting)", [2])])
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, plt, out)


def _compression_study3d(panels, meshes, field: str, out: Path, title: str) -> Path:
    """``plot_compression_study`` of 3D gradients: each run's kernel as the three
    ``SLICES`` through the first source, on the reference's colour scale."""
    first = meshes[0]
    box = _domain3d(first.attrs)
    points = first.points
    inside = _inside3d(points, box)
    kernels = [m.fields[field] / m.mass for m in meshes]
    vmax = float(np.abs(kernels[0][inside]).max()) or 1.0
    grid = TensorGrid.of(points)
    blocks = [{"volume": grid.volume(np.clip(k, -vmax, vmax)), "title": f"{label}\n",
               "cmap": "RdBu_r", "limits": (-vmax, vmax)} for (label, _), k in zip(panels, kernels)]
    plt = _pyplot()
    fig, _ = _slice_figure(plt, grid, blocks, slice_positions(first.attrs, box, points), box,
                           _sites3d(first.attrs), _element_sizes(points, first.cells),
                           [(f"{field} kernel", list(range(len(blocks))))])
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, plt, out)


def plot_traces(path: Path, out: Path, event: str | None = None, field: str = "phi",
                observed: Path | None = None) -> Path:
    """Receiver traces of one event as a gather (``plot_gather``), with the observed data of
    the receivers file ``observed`` (matched by station name, else position) overlaid."""
    data = read_receivers_h5(path)
    name = event or sorted(data)[0]
    if name not in data:
        raise ConfigError(f"--event: no event '{name}' in {path} (has {', '.join(sorted(data))})")
    rec = data[name]
    if field not in rec.traces:
        raise ConfigError(f"--field: no field '{field}' for event '{name}' in {path}")
    traces = rec.traces[field]
    t = rec.start_time + rec.dt * np.arange(traces.shape[1])
    reference = None
    if observed is not None:
        reference = _observed_like(observed, name, field, rec, t)
    return plot_gather(t, rec.coordinates, traces, out, observed=reference,
                       title=f"{path.name}: event {name}, {field}")


def _observed_like(path: Path, event: str, field: str, rec, times: np.ndarray) -> np.ndarray:
    """The traces of the receivers (or SEG-Y) file ``path`` at ``rec``'s receivers on
    ``times`` (resampled when sampled otherwise)."""
    from ..sem.acquisition import Event, PointSource, Receiver
    from ..sem.signals import resample
    from .plan import POSITION_TOLERANCE, match_receivers, segy_tolerance

    from ..mesh.segy import is_segy, read_segy

    tolerance = POSITION_TOLERANCE  # as observed data (``plan.read_observed``)
    try:
        if is_segy(path):
            segy = read_segy(path, field)
            data, tolerance = {event: segy.data}, segy_tolerance(segy.resolution)
        else:
            data = read_receivers_h5(path)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ConfigError(f"--observed: cannot read {path}: {' '.join(str(err).split())}"
                          ) from None
    other = data.get(event) or (next(iter(data.values())) if len(data) == 1 else None)
    if other is None or field not in other.traces:
        raise ConfigError(f"--observed: no '{field}' traces of event '{event}' in {path}")
    receivers = tuple(Receiver(tuple(c), s) for c, s in zip(rec.coordinates, rec.stations))
    probe = Event(event, (PointSource(tuple(rec.coordinates[0]), 1.0),), receivers)
    rows = match_receivers(probe, other, f"--observed: event '{event}'", tolerance)
    traces = other.traces[field][rows]
    if traces.shape[1] == len(times) and np.isclose(other.dt, rec.dt, rtol=1e-9):
        return traces
    return resample(traces, other.dt, other.start_time, rec.dt, float(times[0]), len(times))


#: Gathers of more traces than this are drawn as images (variable density), fewer as wiggles.
MAX_WIGGLES = 48


def plot_gather(times: np.ndarray, coordinates: np.ndarray, traces: np.ndarray, out: Path,
                observed: np.ndarray | None = None, title: str = "",
                stations: tuple[str, ...] | None = None) -> Path:
    """A shot gather: traces ``(R, S)`` placed at their receivers' positions along the line
    (the coordinate that varies most; for 3D receivers ``line_positions``), time increasing
    downwards, one normalisation for all.
    Up to ``MAX_WIGGLES`` traces as wiggles (filled positive lobes) scaled to the trace
    spacing, with ``observed (R, S)`` in black under the synthetic in red; more as images,
    observed, synthetic and their difference side by side."""
    coordinates = np.asarray(coordinates, float).reshape(len(traces), -1)
    if coordinates.shape[1] == 3:
        position, label = line_positions(coordinates)
    else:
        axis = int(np.argmax(np.ptp(coordinates, axis=0))) if len(traces) > 1 else 0
        position = coordinates[:, axis]
        label = f"receiver {'xyz'[axis]} (m)"
    order = np.argsort(position, kind="stable")
    position, traces = position[order], np.asarray(traces, float)[order]
    observed = None if observed is None else np.asarray(observed, float)[order]
    steps = np.diff(np.unique(position))
    spacing = float(np.median(steps)) if len(steps) else 1.0
    scale = max(np.abs(traces).max(), 0.0 if observed is None else np.abs(observed).max()) or 1.0
    plt = _pyplot()
    if len(traces) <= MAX_WIGGLES:
        fig, ax = plt.subplots(figsize=(min(4 + 0.22 * len(traces), 14), 6), dpi=110)
        gain = 0.9 * spacing / scale
        for r in range(len(traces)):
            x0 = position[r]
            if observed is not None:
                ax.plot(x0 + gain * observed[r], times, color="k", lw=0.9,
                        label="observed" if r == 0 else None)
                ax.plot(x0 + gain * traces[r], times, color="tab:red", lw=0.8, ls="--",
                        label="synthetic" if r == 0 else None)
            else:
                wiggle = x0 + gain * traces[r]
                ax.plot(wiggle, times, color="k", lw=0.6)
                ax.fill_betweenx(times, x0, wiggle, where=wiggle > x0, color="k", lw=0)
        if observed is not None:
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlim(position[0] - spacing, position[-1] + spacing)
        axes = [ax]
        ax.set_title(title, fontsize=10)
    else:
        panels = [(traces, "synthetic")] if observed is None else [
            (observed, "observed"), (traces, "synthetic"), (traces - observed, "synthetic - observed")]
        fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 6), dpi=110,
                                 sharey=True, squeeze=False)
        axes = list(axes[0])
        edges = np.concatenate([[position[0] - 0.5 * spacing],
                                0.5 * (position[1:] + position[:-1]),
                                [position[-1] + 0.5 * spacing]])
        t_edges = np.concatenate([[times[0]], 0.5 * (times[1:] + times[:-1]), [times[-1]]])
        for ax, (values, name) in zip(axes, panels):
            art = ax.pcolormesh(edges, t_edges, values.T, cmap="seismic", vmin=-scale,
                                vmax=scale, shading="flat", rasterized=True)
            ax.set_title(f"{name}" if observed is not None else title, fontsize=10)
        fig.colorbar(art, ax=axes, shrink=0.8)
        if observed is not None:
            fig.suptitle(title, fontsize=10)
    for ax in axes:
        ax.set_xlabel(label)
        ax.set_ylim(times[-1], times[0])
    axes[0].set_ylabel("time (s)")
    return _save(fig, plt, out)


def line_positions(coordinates: np.ndarray) -> tuple[np.ndarray, str]:
    """Where the traces of 3D receivers ``coordinates (R, 3)`` (m) go in a gather, and the
    axis label: the one coordinate that varies when only one does (x when all share y and
    z); the distance along the receiver line from the first receiver when they lie on one
    line (oriented so that the farthest receiver is ahead); otherwise (a grid) the offset
    from the first receiver."""
    coordinates = np.asarray(coordinates, float)
    spread = np.ptp(coordinates, axis=0) if len(coordinates) > 1 else np.zeros(3)
    extent = float(spread.max())
    varying = np.flatnonzero(spread > 1e-9 * extent) if extent > 0 else np.array([0])
    if len(varying) == 1:
        axis = int(varying[0])
        return coordinates[:, axis].copy(), f"receiver {'xyz'[axis]} (m)"
    relative = coordinates - coordinates[0]
    centred = coordinates - coordinates.mean(axis=0)
    direction = np.linalg.svd(centred, full_matrices=False)[2][0]
    along = relative @ direction
    across = np.linalg.norm(relative - np.outer(along, direction), axis=1)
    quantum = 1e-9 * extent  # equal distances stay equal (one spacing for the wiggles)
    if across.max() <= 1e-6 * extent:
        far = int(np.argmax(np.abs(along)))
        along = along if along[far] >= 0 else -along
        return (np.round(along / quantum) * quantum,
                "distance along the receiver line from the first receiver (m)")
    offset = np.linalg.norm(relative, axis=1)
    return np.round(offset / quantum) * quantum, "offset from the first receiver (m)"


def _save(fig, plt, out: Path) -> Path:
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return out


# --------------------------------------------------------------------------- inversion


def plot_misfit_history(misfits: list[float], stages: list[int], out: Path) -> Path:
    """Misfit of every iterate (log scale), relative to the first, coloured by stage."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    misfits = np.asarray(misfits, float)
    k = np.arange(len(misfits))
    for stage in sorted(set(stages)):
        sel = np.asarray(stages) == stage
        ax.semilogy(k[sel], misfits[sel] / misfits[0], "o-", label=f"stage {stage}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("misfit / initial misfit")
    ax.grid(True, which="both", alpha=0.3)
    if len(set(stages)) > 1:
        ax.legend()
    ax.set_title("misfit history", fontsize=10)
    return _save(fig, plt, out)


def plot_model_pair(points: np.ndarray, cells: np.ndarray, order: int, start: np.ndarray,
                    current: np.ndarray, name: str, box, out: Path, title: str = "") -> Path:
    """The starting and the current model (``(P,)`` each) side by side, one colour scale,
    cropped to ``box = (x0, x1, y0, y1)``. On a 3D mesh (points ``(P, 3)``, ``box`` with z0,
    z1 as well) each as slices through the middle of the box (``_model_pair3d``)."""
    if np.shape(points)[1] == 3:
        return _model_pair3d(points, cells, start, current, name, box, out, title)
    x0, x1, y0, y1 = box
    inside, triangles = _cropped(points, cells, order, box)
    lo = float(min(start[inside].min(), current[inside].min()))
    hi = float(max(start[inside].max(), current[inside].max()))
    change = current - start
    top = float(np.abs(change[inside]).max()) or 1.0
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.4), dpi=110, sharey=True)
    panels = ((start, "starting model", "viridis", lo, hi),
              (current, "current model", "viridis", lo, hi),
              (change, "update (current - starting)", "RdBu_r", -top, top))
    for ax, (values, label, cmap, vmin, vmax) in zip(axes, panels):
        art = ax.tripcolor(points[:, 0], points[:, 1], triangles, values, shading="gouraud",
                           cmap=cmap, vmin=vmin, vmax=vmax)
        ax.set_aspect("equal")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        ax.set_xlabel("x (m)")
        ax.set_title(f"{label}: {name}", fontsize=10)
        fig.colorbar(art, ax=ax, shrink=0.8)
    axes[0].set_ylabel("y (m)")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, plt, out)


def plot_trace_overlay(times: np.ndarray, observed: np.ndarray, synthetic: np.ndarray,
                       coordinates: np.ndarray, out: Path, title: str = "") -> Path:
    """Observed and synthetic traces ``(R, S)`` of one event as one gather
    (``plot_gather``) at the receivers' ``coordinates (R, dim)``."""
    return plot_gather(times, coordinates, synthetic, out, observed=observed, title=title)


def plot_wavelets(times: np.ndarray, original: np.ndarray, estimated: np.ndarray, out: Path,
                  title: str = "") -> Path:
    """The wavelet of the simulation and the one estimated from the data, over time."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    ax.plot(times, original, color="0.5", lw=1.0, label="simulated with")
    ax.plot(times, estimated, color="tab:red", lw=1.2, label="estimated from the data")
    ax.set_xlabel("time (s)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, plt, out)


def plot_compression_study(panels: list[tuple[str, Path]], field: str, out: Path,
                           title: str = "") -> Path:
    """One figure of the gradients of a compression study side by side: each ``(label,
    mesh file)`` as its kernel ``field / mass``, cropped to the domain, on the colour scale
    of the first (the reference), with the sources and receivers marked."""
    meshes = [read_mesh_h5(path) for _, path in panels]
    if meshes[0].points.shape[1] == 3:
        return _compression_study3d(panels, meshes, field, out, title)
    first = meshes[0]
    box = _domain(first.attrs)
    points = first.points
    inside, triangles = _cropped(points, first.cells, first.order, box)
    kernels = [m.fields[field] / m.mass for m in meshes]
    vmax = float(np.abs(kernels[0][inside]).max()) or 1.0
    plt = _pyplot()
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 2.9 * rows + 0.6), dpi=110,
                             squeeze=False, sharex=True, sharey=True)
    for ax, (label, _), kernel, mesh in zip(axes.ravel(), panels, kernels, meshes):
        art = ax.tripcolor(points[:, 0], points[:, 1], triangles, np.clip(kernel, -vmax, vmax),
                           shading="gouraud", cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        _markers(ax, mesh.attrs)
        ax.set_aspect("equal")
        if box is not None:
            ax.set_xlim(box[0], box[1])
            ax.set_ylim(box[2], box[3])
        ax.set_title(label, fontsize=9)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("x (m)")
    for ax in axes[:, 0]:
        ax.set_ylabel("y (m)")
    fig.colorbar(art, ax=axes.ravel().tolist(), shrink=0.8, label=f"{field} kernel")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, plt, out)
