"""Serial writers and readers of fwimpi's file contract (DESIGN.md, "Files").

Mesh results: HDF5 with ``/mesh/points (P, d)``, ``/mesh/cells (E, (N+1)**d)``, the linear
sub-cells for viewers (2D: ``/mesh/quads (E*N*N, 4)``; 3D: ``/mesh/hexes (E*N**3, 8)``),
``/mesh/mass (P,)`` and ``/fields/<NAME> (P,)``, plus an XDMF 3 sidecar that ParaView opens;
the dimension d (2 or 3) is that of the points, and the order N follows from the cells and
d (``(N+1)**2`` and ``(N+1)**3`` coincide for some N: 64 = 8**2 = 4**3). Receivers: one HDF5
file per event file, ``/<event>/<field> (R, S)``, ``/<event>/coordinates (R, d)``,
``/<event>/stations (R,)``. Every writer is atomic:
it writes ``.<name>.fwimpi-tmp<pid>`` beside the target and renames it only on success.

Layout pieces (``mesh_layout``, ``encode_attrs``, ``xdmf_text``, ``temp_path``) are separate so
the rank-parallel writers can create the same datasets collectively and write their slices.
Spectral elements: local node ``a = i + (N+1)*j`` (2D) or ``a = i + (N+1)*j + (N+1)**2*k``
(3D) with ``i`` along x, ``j`` along y, ``k`` along z; 2D elements counterclockwise, sub-cells
in VTK/XDMF node order. Units are SI (metres, seconds) throughout.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from xml.sax.saxutils import escape, quoteattr

import h5py
import numpy as np

from fwimpi.errors import FwimpiError

MESH_FORMAT = "fwimpi-mesh-1"
RECEIVERS_FORMAT = "fwimpi-receivers-1"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_JSON_KEYS = "json_attrs"  # root attribute listing the attributes stored as JSON strings
_MESH_RESERVED = ("format", "order", _JSON_KEYS)
_RECEIVERS_RESERVED = ("format", _JSON_KEYS)
_EVENT_RESERVED = ("coordinates", "stations")


class FileFormatError(FwimpiError, ValueError):
    """Data that does not fit the file contract (shape, name, attribute type, format tag)."""


# --------------------------------------------------------------------------- atomic writes


#: Marker of fwimpi's temporary names: ``.<name>.fwimpi-tmp<pid>``. Only files carrying it
#: are ever removed by fwimpi's clean-ups.
TEMP_MARKER = ".fwimpi-tmp"


def temp_path(path: str | os.PathLike, pid: int | None = None) -> Path:
    """The temporary name ``.<name>.fwimpi-tmp<pid>`` beside ``path`` (under MPI, pass the
    pid of the rank that owns the job, so that every temp name of a job carries it)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid() if pid is None else pid}")


def remove_temp_files(folder: str | os.PathLike, pid: int | None = None) -> list[Path]:
    """Remove fwimpi's temporary files below ``folder``: those of process ``pid`` (before an
    ``MPI_Abort``, which leaves no chance to unwind), or every one (``pid`` None: the
    leftovers of killed runs, removed under the output folder's lock). Files without
    fwimpi's marker are never touched; symbolic links are not followed. Returns the removed."""
    pattern = f".*{TEMP_MARKER}{'*' if pid is None else pid}"
    removed = []
    for tmp in Path(folder).rglob(pattern):
        if tmp.is_file() and not tmp.is_symlink():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike, pid: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to ``path``, else remove it.

    Parent folders are created. The caller must have closed the file before the block ends.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, pid)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON (indent 2, sorted keys; numpy scalars/arrays and paths allowed)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------- gradient kernels

#: A gradient file's ``/fields/<NAME>_kernel`` is ``/fields/<NAME>`` divided by the mass: the
#: smooth field that plots and ParaView show (the mass-weighted gradient looks like a
#: checkerboard of elements).
KERNEL_SUFFIX = "_kernel"


def with_kernels(fields: Mapping[str, np.ndarray], mass: np.ndarray) -> dict[str, np.ndarray]:
    """``fields`` and, for each, ``<name>_kernel = field / mass`` (same shapes)."""
    return {**fields, **{f"{k}{KERNEL_SUFFIX}": np.asarray(v) / mass for k, v in fields.items()}}


def without_kernels(fields: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``fields`` less the ``<name>_kernel`` fields derived from them."""
    return {k: v for k, v in fields.items()
            if not (k.endswith(KERNEL_SUFFIX) and k[: -len(KERNEL_SUFFIX)] in fields)}


# --------------------------------------------------------------------------- checks, attributes


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it is a valid event or field name, else raise FileFormatError."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise FileFormatError(
            f"{kind} name {name!r}: must match {NAME_PATTERN.pattern} (letters, digits, _ . -)"
        )
    return name


def _array(what: str, value, shape: tuple[int, ...], dtype) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype`` with exactly ``shape``."""
    arr = np.ascontiguousarray(value, dtype=dtype)
    if arr.shape != tuple(shape):
        raise FileFormatError(f"{what}: expected shape {tuple(shape)}, got {arr.shape}")
    return arr


def order_from_cells(cells: np.ndarray, dim: int = 2) -> int:
    """GLL order N of ``cells (E, (N+1)**dim)`` (``dim`` 2 or 3: the points' dimension)."""
    if dim not in (2, 3):
        raise FileFormatError(f"points: expected 2 or 3 coordinates per point, got {dim}")
    k = np.shape(cells)[1] if np.ndim(cells) == 2 else 0
    n = round(k ** (1.0 / dim)) - 1
    if n < 1 or (n + 1) ** dim != k:
        raise FileFormatError(
            f"cells: expected shape (n_elements, (order+1)**{dim}) with order >= 1, "
            f"got {np.shape(cells)}"
        )
    return n


def points_dim(points: np.ndarray) -> int:
    """Dimension of ``points (P, d)``, d 2 or 3; FileFormatError otherwise."""
    shape = np.shape(points)
    if len(shape) != 2 or shape[1] not in (2, 3):
        raise FileFormatError(f"points: expected shape (n_points, 2) or (n_points, 3), "
                              f"got {shape}")
    return shape[1]


def encode_attrs(attrs: Mapping, reserved: tuple[str, ...] = ()) -> dict:
    """HDF5-ready root attributes: scalars as they are, dicts/lists/tuples as JSON strings."""
    out, json_keys = {}, []
    for key, value in attrs.items():
        if not isinstance(key, str) or key in reserved:
            raise FileFormatError(f"attribute {key!r}: reserved ({reserved}) or not a string")
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, sort_keys=True, default=_json_default)
            json_keys.append(key)
        elif not isinstance(value, (str, int, float, bool)):
            raise FileFormatError(
                f"attribute {key!r}: must be str, int, float, bool, dict or list, "
                f"got {type(value).__name__}"
            )
        out[key] = value
    if json_keys:
        out[_JSON_KEYS] = json.dumps(sorted(json_keys))
    return out


def decode_attrs(h5attrs: Mapping) -> dict:
    """Inverse of ``encode_attrs``: Python scalars, JSON attributes decoded."""
    out = {}
    for key, value in h5attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        out[key] = value.decode() if isinstance(value, bytes) else value
    for key in json.loads(out.pop(_JSON_KEYS, "[]")):
        out[key] = json.loads(out[key])
    return out


def read_attrs(path: str | os.PathLike) -> dict:
    """Decoded root attributes of any fwimpi HDF5 file (``format`` included)."""
    with h5py.File(path, "r") as f:
        return decode_attrs(f.attrs)


def _check_format(path, attrs: Mapping, expected: str) -> None:
    if attrs.get("format") != expected:
        raise FileFormatError(f"{path}: format {attrs.get('format')!r}, expected {expected!r}")


# --------------------------------------------------------------------------- mesh files


def quads_from_cells(cells: np.ndarray, order: int) -> np.ndarray:
    """Linear sub-quads ``(E*N*N, 4)`` int64 of spectral elements ``cells (E, (N+1)**2)``.

    Counterclockwise corners (i,j), (i+1,j), (i+1,j+1), (i,j+1); element-major, then j, then i.
    """
    n1 = order + 1
    i, j = np.meshgrid(np.arange(order), np.arange(order))  # j outer, i inner after ravel
    base = (i + n1 * j).ravel()
    local = base[:, None] + np.array([0, 1, n1 + 1, n1])
    return np.asarray(cells, dtype=np.int64)[:, local].reshape(-1, 4)


def hexes_from_cells(cells: np.ndarray, order: int) -> np.ndarray:
    """Linear sub-hexahedra ``(E*N**3, 8)`` int64 of spectral elements ``cells (E, (N+1)**3)``.

    VTK/XDMF hexahedron node order: the bottom face (i,j,k), (i+1,j,k), (i+1,j+1,k),
    (i,j+1,k), then the same four at k+1; element-major, then k, then j, then i.
    """
    n1 = order + 1
    k, j, i = np.meshgrid(np.arange(order), np.arange(order), np.arange(order), indexing="ij")
    base = (i + n1 * j + n1 * n1 * k).ravel()
    face = np.array([0, 1, n1 + 1, n1])
    local = base[:, None] + np.concatenate([face, face + n1 * n1])
    return np.asarray(cells, dtype=np.int64)[:, local].reshape(-1, 8)


#: The linear sub-cells of each dimension: dataset, nodes per cell, XDMF topology, meshio type.
_SUBCELLS = MappingProxyType({2: ("mesh/quads", 4, "Quadrilateral", "quad"),
                              3: ("mesh/hexes", 8, "Hexahedron", "hexahedron")})


def linear_cells(cells: np.ndarray, order: int, dim: int) -> np.ndarray:
    """The linear sub-cells of ``cells``: ``quads_from_cells`` (2D) or ``hexes_from_cells``
    (3D)."""
    return (quads_from_cells if dim == 2 else hexes_from_cells)(cells, order)


def mesh_layout(
    n_points: int, n_elements: int, order: int, field_names, dim: int = 2
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Dataset path -> (shape, dtype) of a mesh file of dimension ``dim``; every rank creates
    these alike."""
    name, nodes, _, _ = _SUBCELLS[dim]
    layout = {
        "mesh/points": ((n_points, dim), "f8"),
        "mesh/cells": ((n_elements, (order + 1) ** dim), "i8"),
        name: ((n_elements * order ** dim, nodes), "i8"),
        "mesh/mass": ((n_points,), "f8"),
    }
    layout.update({f"fields/{check_name('field', n)}": ((n_points,), "f8") for n in field_names})
    return layout


def _check_mesh(points, cells, mass, fields: Mapping) -> tuple[dict[str, np.ndarray], int]:
    """Validated arrays keyed by dataset path (see ``mesh_layout``) and the order."""
    points = np.asarray(points)
    dim = points_dim(points)
    order = order_from_cells(cells, dim)
    if "mass" in fields:
        raise FileFormatError("field name 'mass': reserved for /mesh/mass, rename the field")
    layout = mesh_layout(len(points), len(cells), order, fields, dim)
    given = {"mesh/points": points, "mesh/cells": cells, "mesh/mass": mass}
    given.update({f"fields/{k}": v for k, v in fields.items()})
    data = {k: _array(f"/{k}", given[k], *layout[k]) for k in given}
    c = data["mesh/cells"]
    if c.size and (c.min() < 0 or c.max() >= len(points)):
        raise FileFormatError(
            f"/mesh/cells: indices must lie in [0, {len(points)}), got {c.min()}..{c.max()}"
        )
    data[_SUBCELLS[dim][0]] = linear_cells(c, order, dim)
    return data, order


def xdmf_text(h5_name: str, n_points: int, n_quads: int, field_names, dim: int = 2) -> str:
    """XDMF 3 sidecar for a mesh file named ``h5_name`` (relative, so the pair can move) of
    dimension ``dim``: ``n_quads`` linear sub-cells (quadrilaterals in 2D, hexahedra in 3D)
    on ``n_points`` points (geometry XY or XYZ)."""
    dataset, nodes, topology, _ = _SUBCELLS[dim]

    def item(dataset: str, dims: str, number_type: str) -> str:
        return (
            f'<DataItem Dimensions="{dims}" NumberType="{number_type}" Precision="8" '
            f'Format="HDF">{escape(h5_name)}:{dataset}</DataItem>'
        )

    attributes = [("mass", "/mesh/mass")] + [(n, f"/fields/{n}") for n in field_names]
    lines = [
        '<?xml version="1.0" ?>',
        '<!DOCTYPE Xdmf SYSTEM "Xdmf.dtd" []>',
        '<Xdmf Version="3.0" xmlns:xi="http://www.w3.org/2001/XInclude">',
        "  <Domain>",
        '    <Grid Name="mesh" GridType="Uniform">',
        f'      <Topology TopologyType="{topology}" NumberOfElements="{n_quads}">',
        f"        {item('/' + dataset, f'{n_quads} {nodes}', 'Int')}",
        "      </Topology>",
        f'      <Geometry GeometryType="{"XYZ"[:dim]}">',
        f"        {item('/mesh/points', f'{n_points} {dim}', 'Float')}",
        "      </Geometry>",
    ]
    for name, dataset in attributes:
        lines += [
            f'      <Attribute Name={quoteattr(name)} AttributeType="Scalar" Center="Node">',
            f"        {item(dataset, str(n_points), 'Float')}",
            "      </Attribute>",
        ]
    lines += ["    </Grid>", "  </Domain>", "</Xdmf>", ""]
    return "\n".join(lines)


def write_mesh_h5(
    path: str | os.PathLike,
    points: np.ndarray,
    cells: np.ndarray,
    mass: np.ndarray,
    fields: Mapping[str, np.ndarray],
    attrs: Mapping,
) -> None:
    """Write a mesh file and its ``.xdmf`` sidecar, both atomically.

    points (P, d) m (d = 2 or 3), cells (E, (N+1)**d) int, mass (P,) quadrature weights
    (m^d), fields name -> (P,). ``attrs`` become root attributes (dicts/lists as JSON strings),
    plus ``order`` and ``format = "fwimpi-mesh-1"``.
    """
    path = Path(path)
    data, order = _check_mesh(points, cells, mass, fields)
    root = encode_attrs(attrs, _MESH_RESERVED) | {"order": order, "format": MESH_FORMAT}
    dim = data["mesh/points"].shape[1]
    text = xdmf_text(path.name, len(data["mesh/points"]), len(data[_SUBCELLS[dim][0]]),
                     fields, dim)
    with atomic_path(path) as tmp_h5, atomic_path(path.with_suffix(".xdmf")) as tmp_xdmf:
        with h5py.File(tmp_h5, "w") as f:
            f.attrs.update(root)
            f.create_group("fields")
            for name, arr in data.items():
                f.create_dataset(name, data=arr)
        tmp_xdmf.write_text(text, encoding="utf-8")


@dataclass(frozen=True, eq=False)
class MeshFile:
    """Contents of a mesh file: points (P, d), cells (E, (N+1)**d), mass (P,), fields name ->
    (P,), attrs (the writer's ``attrs``, JSON decoded; ``format``/``order`` left out), order N;
    ``dim`` is d (2 or 3)."""

    points: np.ndarray
    cells: np.ndarray
    mass: np.ndarray
    fields: dict[str, np.ndarray]
    attrs: dict
    order: int

    @property
    def dim(self) -> int:
        """2 or 3: the points' dimension."""
        return int(self.points.shape[1])


def read_mesh_h5(path: str | os.PathLike) -> MeshFile:
    """Read a file written by ``write_mesh_h5`` (format tag checked)."""
    with h5py.File(path, "r") as f:
        attrs = decode_attrs(f.attrs)
        _check_format(path, attrs, MESH_FORMAT)
        order = attrs.pop("order")
        attrs.pop("format")
        mesh = MeshFile(
            points=f["mesh/points"][()],
            cells=f["mesh/cells"][()],
            mass=f["mesh/mass"][()],
            fields={name: ds[()] for name, ds in f["fields"].items()},
            attrs=attrs,
            order=order,
        )
    if order_from_cells(mesh.cells, points_dim(mesh.points)) != order:
        raise FileFormatError(
            f"{path}: order attribute {order} does not match /mesh/cells {mesh.cells.shape}"
        )
    return mesh


def write_vtu(
    path: str | os.PathLike,
    points: np.ndarray,
    cells: np.ndarray,
    order: int,
    fields: Mapping[str, np.ndarray],
    mass: np.ndarray | None = None,
) -> None:
    """Write a VTU (via meshio) of linear sub-cells: quads of ``points (P, 2)`` (at z = 0) or
    hexahedra of ``points (P, 3)``; point data = fields (and ``mass``)."""
    dim = points_dim(points)
    if order_from_cells(cells, dim) != order:
        raise FileFormatError(f"cells: shape {np.shape(cells)} does not match order {order}")
    data, _ = _check_mesh(points, cells, np.zeros(len(points)) if mass is None else mass, fields)
    point_data = {k.removeprefix("fields/"): v for k, v in data.items() if k.startswith("fields/")}
    if mass is not None:
        point_data["mass"] = data["mesh/mass"]
    xyz = data["mesh/points"]
    if dim == 2:
        xyz = np.column_stack([xyz, np.zeros(len(xyz))])
    import meshio  # only for VTU: not in every rank's start-up

    dataset, _, _, kind = _SUBCELLS[dim]
    mesh = meshio.Mesh(xyz, [(kind, data[dataset])], point_data=point_data)
    with atomic_path(path) as tmp:
        meshio.write(tmp, mesh, file_format="vtu")


# --------------------------------------------------------------------------- receiver files


@dataclass(frozen=True, eq=False)
class ReceiverData:
    """One event's recordings: traces field -> (R, S), coordinates (R, d) m (d = 2 or 3), dt s,
    start_time s (time of sample 0), stations (R,) names. Validated and converted on creation."""

    traces: dict[str, np.ndarray]
    coordinates: np.ndarray
    dt: float
    start_time: float
    stations: tuple[str, ...]

    def __post_init__(self):
        coords = np.asarray(self.coordinates, dtype=np.float64)
        if coords.ndim != 2 or coords.shape[1] not in (2, 3):
            raise FileFormatError(
                f"coordinates: expected shape (n_receivers, 2) or (n_receivers, 3), got "
                f"{coords.shape}"
            )
        stations = tuple(str(s) for s in self.stations)
        if len(stations) != len(coords):
            raise FileFormatError(f"stations: expected {len(coords)} names, got {len(stations)}")
        if not (math.isfinite(self.dt) and self.dt > 0 and math.isfinite(self.start_time)):
            raise FileFormatError(
                f"dt, start_time: expected finite values, dt > 0, got {self.dt}, {self.start_time}"
            )
        traces, n_samples = {}, None
        for name, trace in self.traces.items():
            if check_name("field", name) in _EVENT_RESERVED:
                raise FileFormatError(f"field name {name!r}: reserved ({_EVENT_RESERVED})")
            arr = np.ascontiguousarray(trace, dtype=np.float64)
            n_samples = arr.shape[-1] if n_samples is None and arr.ndim else n_samples
            if arr.shape != (len(coords), n_samples):  # the first field sets n_samples
                raise FileFormatError(
                    f"traces[{name!r}]: expected shape (n_receivers={len(coords)}, "
                    f"n_samples={n_samples}), got {arr.shape}"
                )
            traces[name] = arr
        for key, value in [("coordinates", coords), ("stations", stations), ("traces", traces),
                           ("dt", float(self.dt)), ("start_time", float(self.start_time))]:
            object.__setattr__(self, key, value)


def _write_event(group: h5py.Group, data: ReceiverData) -> None:
    times = {"dt": data.dt, "start_time": data.start_time}
    group.attrs.update(times)
    group.create_dataset("coordinates", data=data.coordinates)
    group.create_dataset("stations", data=np.array(data.stations, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
    for name, trace in data.traces.items():
        group.create_dataset(name, data=trace).attrs.update(times)


def write_receivers_h5(
    path: str | os.PathLike, events: Mapping[str, ReceiverData], attrs: Mapping
) -> None:
    """Write receivers atomically: ``/<event>/<field> (R, S)``, ``coordinates``, ``stations``;
    ``dt``/``start_time`` on each event group and field; root ``format = "fwimpi-receivers-1"``."""
    for name in events:
        check_name("event", name)
    root = encode_attrs(attrs, _RECEIVERS_RESERVED) | {"format": RECEIVERS_FORMAT}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(root)
            for name, data in events.items():
                _write_event(f.create_group(name), data)


#: The most samples (traces times samples) one event of a receivers file may declare: checked
#: from the datasets' shapes before anything is read (2 GB as float64).
MAX_TRACE_VALUES = 250_000_000


def read_receivers_h5(path: str | os.PathLike,
                      events: tuple[str, ...] | None = None) -> dict[str, ReceiverData]:
    """Read a file written by ``write_receivers_h5``: event name -> ReceiverData (only the
    ``events`` named, when given). Datasets are checked (kind, shape, size at most
    ``MAX_TRACE_VALUES``) before they are read; anything missing, dangling or malformed
    raises FileFormatError naming it."""
    with h5py.File(path, "r") as f:
        _check_format(path, decode_attrs(f.attrs), RECEIVERS_FORMAT)
        out = {}
        for name in f:
            if events is not None and name not in events:
                continue
            try:
                out[name] = _read_event(f, name)
            except FileFormatError:
                raise
            except (KeyError, OSError, ValueError, TypeError, RuntimeError) as err:
                raise FileFormatError(f"{path}: event '{name}': {' '.join(str(err).split())}"
                                      ) from None
        return out


def _dataset(group: h5py.Group, key: str, where: str) -> h5py.Dataset:
    """``group[key]`` if it is a readable dataset (not a dangling link) of bounded size."""
    link = group.get(key, getlink=True)
    if link is None:
        raise FileFormatError(f"{where}: no dataset '{key}'")
    obj = group.get(key)
    if not isinstance(obj, h5py.Dataset):
        raise FileFormatError(f"{where}: '{key}' is not a dataset (a dangling link or a group)")
    if obj.shape is None or int(np.prod(obj.shape, dtype=np.float64)) > MAX_TRACE_VALUES:
        raise FileFormatError(f"{where}: dataset '{key}' declares shape {obj.shape}, more "
                              f"than {MAX_TRACE_VALUES:,} values")
    return obj


def _read_event(f: h5py.File, name: str) -> ReceiverData:
    where = f"{f.filename}: event '{name}'"
    g = f.get(name)
    if not isinstance(g, h5py.Group):
        raise FileFormatError(f"{where}: not a group")
    for key in ("dt", "start_time"):
        if key not in g.attrs:
            raise FileFormatError(f"{where}: no attribute '{key}'")
    coords = _dataset(g, "coordinates", where)
    stations = _dataset(g, "stations", where)
    traces = {k: _dataset(g, k, where) for k in g if k not in _EVENT_RESERVED}
    return ReceiverData(
        traces={k: ds[()] for k, ds in traces.items()},
        coordinates=coords[()],
        dt=float(g.attrs["dt"]),
        start_time=float(g.attrs["start_time"]),
        stations=tuple(stations.asstr()[()]),
    )


# --------------------------------------------------------------------------- wavelet files

WAVELET_FORMAT = "fwimpi-wavelet-1"
#: The most samples a wavelet file may hold.
MAX_WAVELET_SAMPLES = 10_000_000


def write_wavelet_h5(path: str | os.PathLike, samples: np.ndarray, dt: float,
                     start_time: float = 0.0, attrs: Mapping | None = None) -> None:
    """A source time function: ``/stf (n,)`` with attributes ``dt`` (s) and ``start_time``
    (s), atomically."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 1 or not len(samples) or not np.isfinite(samples).all():
        raise FileFormatError(f"stf: expected finite samples (n,), got shape {samples.shape}")
    if not (math.isfinite(dt) and dt > 0 and math.isfinite(start_time)):
        raise FileFormatError(f"dt, start_time: expected dt > 0, finite, got {dt}, {start_time}")
    root = encode_attrs(attrs or {}, ("format",)) | {"format": WAVELET_FORMAT}
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(root)
            d = f.create_dataset("stf", data=samples)
            d.attrs["dt"], d.attrs["start_time"] = float(dt), float(start_time)


def read_wavelet_h5(path: str | os.PathLike) -> tuple[np.ndarray, float, float]:
    """``(samples (n,), dt, start_time)`` of a wavelet file: an HDF5 file with ``/stf`` and
    its attribute ``dt`` (and optionally ``start_time``, default 0). Raises FileFormatError
    naming what is wrong; the dataset's size is checked before it is read."""
    with h5py.File(path, "r") as f:
        d = f.get("stf")
        if not isinstance(d, h5py.Dataset):
            raise FileFormatError(f"{path}: no dataset /stf")
        if d.ndim != 1 or not 1 <= d.shape[0] <= MAX_WAVELET_SAMPLES or d.dtype.kind not in "fiu":
            raise FileFormatError(f"{path}: /stf must be 1 to {MAX_WAVELET_SAMPLES:,} numbers "
                                  f"(n,), got {d.shape} of {d.dtype}")
        if "dt" not in d.attrs:
            raise FileFormatError(f"{path}: /stf has no attribute dt (seconds)")
        try:
            dt = float(d.attrs["dt"])
            start = float(d.attrs.get("start_time", 0.0))
        except (TypeError, ValueError):
            raise FileFormatError(f"{path}: /stf attributes dt and start_time must be numbers"
                                  ) from None
        samples = d[...].astype(np.float64)
    if not (math.isfinite(dt) and dt > 0 and math.isfinite(start)):
        raise FileFormatError(f"{path}: /stf needs dt > 0 and a finite start_time, got "
                              f"{dt}, {start}")
    if not np.isfinite(samples).all():
        raise FileFormatError(f"{path}: /stf has non-finite samples")
    return samples, dt, start
