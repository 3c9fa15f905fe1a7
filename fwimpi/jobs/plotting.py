"""PNG plots of fwimpi files (matplotlib, Agg): fields on the mesh (with the sources and
receivers marked and a mapping's settings named) and receiver traces as gathers.

Gradients are shown as kernels ``gradient / mass`` (DESIGN.md), so the GLL quadrature
weights do not print a pattern, with a symmetric colour scale, optionally clipped at a
fraction of the maximum amplitude and cropped to the physical domain (as the tutorial's
``visualize_gradient``: the maximum is taken inside the domain).
"""

import textwrap
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
    box = _domain(mesh.attrs) if crop else None
    points = mesh.points
    inside, triangles = _cropped(points, mesh.cells, mesh.order, box)
    if gradient:
        vmax = float(np.abs(values[inside]).max()) or 1.0
        if clip is not None:
            vmax *= clip
            values = np.clip(values, -vmax, vmax)
        limits, cmap = (-vmax, vmax), "RdBu_r"
    else:
        limits, cmap = (float(values[inside].min()), float(values[inside].max())), "viridis"
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
    title = f"{path.name}: {kind or 'field'} {name}" + (f", clipped at {clip:g}" if clip else "")
    settings = _settings(mesh.attrs)
    if settings:
        title += "\n" + textwrap.fill(settings, 90, break_long_words=False)
    ax.set_title(title, fontsize=9)
    if _markers(ax, mesh.attrs):
        ax.legend(loc="lower right", fontsize=7, framealpha=0.8)
    if box is not None:
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
    return _save(fig, plt, out)


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
    (the coordinate that varies most), time increasing downwards, one normalisation for all.
    Up to ``MAX_WIGGLES`` traces as wiggles (filled positive lobes) scaled to the trace
    spacing, with ``observed (R, S)`` in black under the synthetic in red; more as images,
    observed, synthetic and their difference side by side."""
    coordinates = np.asarray(coordinates, float).reshape(len(traces), -1)
    axis = int(np.argmax(np.ptp(coordinates, axis=0))) if len(traces) > 1 else 0
    position = coordinates[:, axis]
    order = np.argsort(position, kind="stable")
    position, traces = position[order], np.asarray(traces, float)[order]
    observed = None if observed is None else np.asarray(observed, float)[order]
    steps = np.diff(np.unique(position))
    spacing = float(np.median(steps)) if len(steps) else 1.0
    scale = max(np.abs(traces).max(), 0.0 if observed is None else np.abs(observed).max()) or 1.0
    label = f"receiver {'xyz'[axis]} (m)"
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
    cropped to ``box = (x0, x1, y0, y1)``."""
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
