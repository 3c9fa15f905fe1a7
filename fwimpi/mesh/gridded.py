"""Gridded model files: fields on a rectilinear (x, y) grid in 2D, or (x, y, z) grid in 3D,
from HDF5, NetCDF4 or NetCDF3.

The format is detected from the file signature: HDF5 (which includes NetCDF4) is read with h5py
in serial, NetCDF3 classic / 64-bit offset with ``scipy.io.netcdf_file``. Coordinates are the
1D variables ``x`` and ``y`` (and ``z`` in 3D: vertical, up), in metres; every 2D (3D)
variable over those dimensions, in any order, is a field. Interpolation is bilinear
(trilinear in 3D).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

import h5py
import numpy as np

from fwimpi.errors import ConfigError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
NETCDF3_SIGNATURES = (b"CDF\x01", b"CDF\x02")
# netCDF-4 marks a dimension that has no coordinate variable with this NAME attribute.
_NC_DIM_ONLY = "This is a netCDF dimension but not a netCDF variable"
OUTSIDE_TOLERANCE = 1e-9  # relative to the larger extent of the grid
#: The most values one variable of a model file may hold (800 MB as float64): checked from
#: its declared shape before anything is read.
MAX_VALUES = 100_000_000
#: The coordinate variables of a model file of each dimension.
AXES = MappingProxyType({2: ("x", "y"), 3: ("x", "y", "z")})


@dataclass(frozen=True)
class _Var:
    """A variable as stored: name, shape, dimension names (None when unknown), attributes,
    and a reader of its raw values."""

    name: str
    shape: tuple
    numeric: bool
    dims: tuple | None
    attrs: dict
    read: Callable[[], np.ndarray]


@dataclass(frozen=True)
class GriddedModel:
    """Fields on a rectilinear grid.

    ``x (nx,)``, ``y (ny,)`` (and in 3D ``z (nz,)``; None in 2D) are float64, strictly
    increasing, in metres; ``fields`` maps lower-cased variable names to float64 arrays of
    shape ``(nx, ny)``, or ``(nx, ny, nz)`` in 3D (units as in the file). ``field`` is the
    job-spec path used in error messages.
    """

    x: np.ndarray
    y: np.ndarray
    fields: dict[str, np.ndarray]
    field: str = "model.file"
    z: np.ndarray | None = None

    @property
    def dim(self) -> int:
        """2, or 3 for a grid in x, y, z."""
        return 2 if self.z is None else 3

    @property
    def axes(self) -> tuple[np.ndarray, ...]:
        """``(x, y)`` or ``(x, y, z)``."""
        return (self.x, self.y) if self.z is None else (self.x, self.y, self.z)

    @property
    def bounds(self) -> tuple[float, ...]:
        """``(xmin, xmax, ymin, ymax)`` of the grid, metres; ``zmin, zmax`` follow in 3D."""
        return tuple(float(v) for a in self.axes for v in (a[0], a[-1]))

    def _field_values(self, name: str) -> np.ndarray:
        key = str(name).lower()
        if key not in self.fields:
            raise ConfigError(f"{self.field}: no variable '{name}' in the model file; "
                              f"available: {', '.join(sorted(self.fields)) or 'none'}")
        return self.fields[key]

    def interpolate(self, name: str, x, y, z=None) -> np.ndarray:
        """Bilinear (3D: trilinear) interpolation of field ``name`` (any case) at points
        ``x``, ``y`` (and ``z``, required in 3D and refused in 2D) in metres, broadcast
        together; float64 array of the broadcast shape. Exact for ``a + b x + c y + d x y``
        (3D: any ``sum c_abc x^a y^b z^c`` with a, b, c in {0, 1}). Points outside the grid
        by more than 1e-9 of its largest extent raise ConfigError; those within are clamped
        onto it."""
        if self.z is not None or z is not None:
            return self._interpolate3(name, x, y, z)
        f = self._field_values(name)
        xq, yq = np.broadcast_arrays(np.asarray(x, dtype=np.float64),
                                     np.asarray(y, dtype=np.float64))
        xmin, xmax, ymin, ymax = self.bounds
        t = OUTSIDE_TOLERANCE * max(xmax - xmin, ymax - ymin)
        inside = (xq >= xmin - t) & (xq <= xmax + t) & (yq >= ymin - t) & (yq <= ymax + t)
        if not inside.all():
            k = np.unravel_index(np.argmin(inside), inside.shape)
            raise ConfigError(f"{self.field}: point ({xq[k]:g}, {yq[k]:g}) lies outside the "
                              f"grid x in [{xmin:g}, {xmax:g}], y in [{ymin:g}, {ymax:g}]")
        i, u = _locate(self.x, xq)
        j, v = _locate(self.y, yq)
        return ((1 - u) * (1 - v) * f[i, j] + u * (1 - v) * f[i + 1, j]
                + (1 - u) * v * f[i, j + 1] + u * v * f[i + 1, j + 1])

    def _interpolate3(self, name: str, x, y, z) -> np.ndarray:
        if self.z is None or z is None:
            raise TypeError(f"{self.field}: a {self.dim}D grid is interpolated at "
                            f"{'x, y, z' if self.z is not None else 'x, y'} coordinates")
        f = self._field_values(name)
        q = np.broadcast_arrays(*(np.asarray(c, dtype=np.float64) for c in (x, y, z)))
        b = self.bounds
        t = OUTSIDE_TOLERANCE * max(b[1] - b[0], b[3] - b[2], b[5] - b[4])
        inside = np.ones(q[0].shape, dtype=bool)
        for a, c in enumerate(q):
            inside &= (c >= b[2 * a] - t) & (c <= b[2 * a + 1] + t)
        if not inside.all():
            k = np.unravel_index(np.argmin(inside), inside.shape)
            raise ConfigError(f"{self.field}: point ({q[0][k]:g}, {q[1][k]:g}, {q[2][k]:g}) "
                              f"lies outside the grid x in [{b[0]:g}, {b[1]:g}], y in "
                              f"[{b[2]:g}, {b[3]:g}], z in [{b[4]:g}, {b[5]:g}]")
        (i, u), (j, v), (k, w) = (_locate(g, c) for g, c in zip(self.axes, q))
        out = np.zeros(q[0].shape)
        for di, wu in ((0, 1 - u), (1, u)):
            for dj, wv in ((0, 1 - v), (1, v)):
                for dk, ww in ((0, 1 - w), (1, w)):
                    out += wu * wv * ww * f[i + di, j + dj, k + dk]
        return out


def _locate(grid: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell index ``i`` in ``[0, n-2]`` and local coordinate ``t`` in [0, 1] of each ``q``
    (clamped into the grid), so that ``q = grid[i] + t (grid[i+1] - grid[i])``."""
    qc = np.clip(q, grid[0], grid[-1])
    i = np.clip(np.searchsorted(grid, qc, side="right") - 1, 0, grid.size - 2)
    return i, (qc - grid[i]) / (grid[i + 1] - grid[i])


def read_gridded_model(path: str | os.PathLike, field: str = "model.file",
                       dimension: int = 2) -> GriddedModel:
    """Read a gridded model file (HDF5, NetCDF4 or NetCDF3) into a GriddedModel.

    Each 2D variable over the dimensions of ``x`` and ``y`` becomes a field, transposed to
    ``(nx, ny)``. Dimension order comes from HDF5 dimension scales (NetCDF4) or NetCDF3
    dimension names; a dataset without dimension information (plain HDF5) is taken as
    ``(nx, ny)`` or ``(ny, nx)`` by its shape, and as ``(nx, ny)`` when ``nx == ny``.
    With ``dimension=3`` the same holds for 3D variables over ``x``, ``y`` and ``z``: any
    order of named dimensions, transposed to ``(nx, ny, nz)``; without dimension information
    ``(nx, ny, nz)`` or ``(nz, ny, nx)`` by shape (the first when ``nx == nz``).
    A decreasing coordinate is flipped together with the data. CF ``scale_factor`` /
    ``add_offset`` are applied; ``_FillValue`` / ``missing_value`` entries count as missing.
    Errors (unknown format, missing or non-monotonic coordinate, NaN or missing values, no
    field, a variable of more than ``MAX_VALUES`` values) raise ConfigError starting with
    ``field``.
    """
    if dimension not in AXES:
        raise ValueError(f"dimension must be 2 or 3, got {dimension!r}")
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ConfigError(f"{field}: cannot read '{path}': {exc.strerror or exc}") from None
    try:
        if head == HDF5_SIGNATURE or (head[:4] not in NETCDF3_SIGNATURES
                                      and h5py.is_hdf5(path)):  # also after a user block
            with h5py.File(path, "r") as f:
                return _assemble(_hdf5_variables(f), path, field, dimension)
        if head[:4] in NETCDF3_SIGNATURES:
            import scipy.io  # only for NetCDF3 files

            with scipy.io.netcdf_file(path, "r", mmap=False) as f:
                return _assemble(_netcdf3_variables(f), path, field, dimension)
    except ConfigError:
        raise
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:  # corrupt file
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{field}: cannot read model file '{path}': {msg}") from None
    kind = "NetCDF 64-bit data (CDF-5); convert it to NetCDF4" if head[:4] == b"CDF\x05" \
        else "not an HDF5, NetCDF4 or NetCDF3 file"
    raise ConfigError(f"{field}: cannot read model file '{path}': {kind}")


def _hdf5_variables(f: h5py.File) -> list[_Var]:
    out = []
    for name, d in f.items():
        if not isinstance(d, h5py.Dataset) or d.shape is None:
            continue
        label = d.attrs.get("NAME", "")
        label = label.decode(errors="replace") if isinstance(label, bytes) else label
        if isinstance(label, str) and label.startswith(_NC_DIM_ONLY):
            continue  # a bare netCDF-4 dimension, not a variable
        dims = None
        try:
            if d.ndim and all(len(d.dims[k]) for k in range(d.ndim)):
                dims = tuple(d.dims[k][0].name.rsplit("/", 1)[-1] for k in range(d.ndim))
        except (KeyError, ValueError, OSError, RuntimeError):  # broken references: use shapes
            dims = None
        attrs = {k: d.attrs[k] for k in ("_FillValue", "missing_value", "scale_factor",
                                          "add_offset") if k in d.attrs}
        out.append(_Var(name, d.shape, d.dtype.kind in "fiu", dims, attrs,
                        lambda d=d: d[()]))
    return out


def _netcdf3_variables(f) -> list[_Var]:
    return [_Var(name, v.data.shape, v.data.dtype.kind in "fiu", tuple(v.dimensions),
                 dict(v._attributes), lambda v=v: v.data)
            for name, v in f.variables.items()]


def _values(var: _Var, path: str, field: str) -> np.ndarray:
    """Raw values as float64 with CF packing applied; missing or NaN values raise."""
    size = int(np.prod(var.shape, dtype=np.float64))
    if size > MAX_VALUES:
        raise ConfigError(f"{field}: variable '{var.name}' in '{path}' declares {size:,} values "
                          f"(shape {tuple(var.shape)}), more than {MAX_VALUES:,}")
    raw = np.asarray(var.read())
    data = raw.astype(np.float64)
    missing = ~np.isfinite(data)
    for key in ("_FillValue", "missing_value"):
        if key in var.attrs:
            for fill in np.asarray(var.attrs[key], dtype=np.float64).ravel():
                missing |= data == fill
    if missing.any():
        raise ConfigError(f"{field}: variable '{var.name}' in '{path}' has "
                          f"{int(missing.sum())} NaN or missing value(s)")
    scale = var.attrs.get("scale_factor")
    offset = var.attrs.get("add_offset")
    if scale is not None:
        data = data * float(np.asarray(scale).ravel()[0])
    if offset is not None:
        data = data + float(np.asarray(offset).ravel()[0])
    return data


def _coordinate(by_name: dict, axis: str, path: str, field: str) -> tuple[_Var, np.ndarray]:
    var = by_name.get(axis)
    if var is None or len(var.shape) != 1 or not var.numeric:
        raise ConfigError(f"{field}: no 1D numeric coordinate variable '{axis}' in '{path}'")
    c = _values(var, path, field)
    if c.size < 2:
        raise ConfigError(f"{field}: coordinate '{var.name}' in '{path}' has {c.size} "
                          f"point(s); at least 2 are needed")
    step = np.diff(c)
    if not ((step > 0).all() or (step < 0).all()):
        raise ConfigError(f"{field}: coordinate '{var.name}' in '{path}' is not strictly "
                          f"monotonic")
    return var, c


def _assemble(variables: list[_Var], path: str, field: str, dimension: int = 2) -> GriddedModel:
    by_name: dict[str, _Var] = {}
    for v in variables:
        key = v.name.lower()
        if key in by_name:
            raise ConfigError(f"{field}: variables '{by_name[key].name}' and '{v.name}' in "
                              f"'{path}' differ only in case")
        by_name[key] = v
    names = AXES[dimension]
    coords = [_coordinate(by_name, a, path, field) for a in names]
    axis_dims = tuple(v.dims[0] if v.dims else v.name for v, _ in coords)
    axes = [c for _, c in coords]
    sizes = tuple(c.size for c in axes)
    over = f"({', '.join(names)})"
    fields = {}
    for key, v in by_name.items():
        if len(v.shape) != dimension or not v.numeric:
            continue
        if v.dims is not None:
            if set(v.dims) != set(axis_dims) or len(set(axis_dims)) != dimension:
                continue  # over other dimensions: not a model field
            order = tuple(v.dims.index(d) for d in axis_dims)
        elif tuple(v.shape) == sizes:
            order = tuple(range(dimension))
        elif tuple(v.shape) == sizes[::-1]:
            order = tuple(range(dimension))[::-1]
        else:
            continue
        data = _values(v, path, field)
        data = np.transpose(data, order)
        if data.shape != sizes:
            raise ConfigError(f"{field}: variable '{v.name}' in '{path}' has shape "
                              f"{data.shape} over {over}, expected {sizes}")
        fields[key] = data
    if not fields:
        raise ConfigError(f"{field}: no {dimension}D variable over {over} in '{path}'")
    for a, c in enumerate(axes):
        if c[0] > c[-1]:
            axes[a] = c[::-1]
            fields = {k: np.flip(f, axis=a) for k, f in fields.items()}
    arrays = [np.ascontiguousarray(a) for a in axes]
    fields = {k: np.ascontiguousarray(f) for k, f in fields.items()}
    for a in (*arrays, *fields.values()):
        a.flags.writeable = False
    return GriddedModel(arrays[0], arrays[1], fields, field,
                        arrays[2] if dimension == 3 else None)
