"""PNG plots of fwimpi files (matplotlib, Agg): fields on the mesh and receiver traces.

Gradients are shown as kernels ``gradient / mass`` (DESIGN.md), so the GLL quadrature
weights do not print a pattern, with a symmetric colour scale, optionally clipped at a
fraction of the maximum amplitude and cropped to the physical domain (as the tutorial's
``visualize_gradient``: the maximum is taken inside the domain).
"""

from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..mesh.files import atomic_path, read_mesh_h5, read_receivers_h5

GRADIENT_KINDS = ("raw_gradient", "mapped_gradient", "smoothed_gradient")


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
    inside = np.ones(len(points), dtype=bool)
    if box is not None:
        x0, x1, y0, y1 = box
        tol = 1e-9 * max(x1 - x0, y1 - y0)
        inside = ((points[:, 0] >= x0 - tol) & (points[:, 0] <= x1 + tol)
                  & (points[:, 1] >= y0 - tol) & (points[:, 1] <= y1 + tol))
    quads = _quads(mesh)
    keep = inside[quads].any(axis=1)  # the axes' limits crop what lies outside
    triangles = np.concatenate((quads[keep][:, [0, 1, 2]], quads[keep][:, [0, 2, 3]]))
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
    ax.set_title(title, fontsize=10)
    if box is not None:
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
    return _save(fig, plt, out)


def _quads(mesh) -> np.ndarray:
    from ..mesh.files import quads_from_cells

    return quads_from_cells(mesh.cells, mesh.order)


def plot_traces(path: Path, out: Path, event: str | None = None, field: str = "phi") -> Path:
    """Receiver traces of one event as offset wiggles, normalised by the largest."""
    data = read_receivers_h5(path)
    name = event or sorted(data)[0]
    if name not in data:
        raise ConfigError(f"--event: no event '{name}' in {path} (has {', '.join(sorted(data))})")
    rec = data[name]
    if field not in rec.traces:
        raise ConfigError(f"--field: no field '{field}' for event '{name}' in {path}")
    traces = rec.traces[field]
    t = rec.start_time + rec.dt * np.arange(traces.shape[1])
    scale = np.abs(traces).max() or 1.0
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=110)
    for r, trace in enumerate(traces):
        ax.plot(t, r + 0.45 * trace / scale, color="k", lw=0.8)
    ax.set_yticks(range(len(traces)), rec.stations, fontsize=7)
    ax.set_xlabel("time (s)")
    ax.set_title(f"{path.name}: event {name}, {field}", fontsize=10)
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
    from ..mesh.files import quads_from_cells

    quads = quads_from_cells(cells, order)
    x0, x1, y0, y1 = box
    tol = 1e-9 * max(x1 - x0, y1 - y0)
    inside = ((points[:, 0] >= x0 - tol) & (points[:, 0] <= x1 + tol)
              & (points[:, 1] >= y0 - tol) & (points[:, 1] <= y1 + tol))
    keep = inside[quads].any(axis=1)  # the axes' limits crop what lies outside
    triangles = np.concatenate((quads[keep][:, [0, 1, 2]], quads[keep][:, [0, 2, 3]]))
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
                       stations: tuple[str, ...], out: Path, title: str = "") -> Path:
    """Observed (black) and synthetic (red) traces ``(R, S)`` of one event as wiggles, one
    normalisation for both."""
    scale = max(np.abs(observed).max(), np.abs(synthetic).max()) or 1.0
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(stations) + 2), dpi=110)
    for r in range(len(stations)):
        ax.plot(times, r + 0.45 * observed[r] / scale, color="k", lw=0.9,
                label="observed" if r == 0 else None)
        ax.plot(times, r + 0.45 * synthetic[r] / scale, color="tab:red", lw=0.8, ls="--",
                label="synthetic" if r == 0 else None)
    ax.set_yticks(range(len(stations)), stations, fontsize=7)
    ax.set_xlabel("time (s)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, plt, out)
