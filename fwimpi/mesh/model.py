"""Models (VP in m/s, RHO in kg/m^3) evaluated at points of a mesh.

Sources of values: safely parsed expressions in ``x``, ``y`` (``x``, ``y``, ``z`` on a 3D
domain, z up), a gridded file (over x, y or x, y, z), or a model file
written by fwimpi (``model.h5`` of any run or inversion iterate), which brings its own mesh
(and the time step it was simulated with): its values are used at its GLL points as they are.
For expressions and gridded files, inside absorbing margins the model takes its value at the
nearest point of the domain (constant extension outward), so margins add no contrasts.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

import h5py

from ..errors import ConfigError
from ..sem.physics import ACOUSTIC, AcousticPhysics
from .expression import Expression, compile_expression, coordinate_names
from .files import MESH_FORMAT, read_mesh_h5
from .gridded import GriddedModel, read_gridded_model
from .structured import Box, StructuredMesh, mesh_from_description
from .structured3d import Box3, StructuredMesh3D


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: expressions ``vp``, ``rho`` or a gridded ``file``."""

    vp: str | None = None
    rho: str | None = None
    file: Path | None = None


class ModelEvaluator:
    """Evaluates the physics' parameters (``VP``, ``RHO``) at points; built once, validated
    at construction (the file is read then). Picklable, so one rank can read a file and hand
    the evaluator to the others. ``domain`` is a ``Box`` (2D, points ``(P, 2)``) or a
    ``Box3`` (3D, points ``(P, 3)``); ``dim`` is 2 or 3."""

    def __init__(self, source: ModelSource, domain: Box | Box3,
                 physics: AcousticPhysics = ACOUSTIC):
        self.domain, self.physics, self.source = domain, physics, source
        self.dim = len(domain.bounds)
        self._names = coordinate_names(self.dim)
        names = [p.lower() for p in physics.parameters]
        self._grid: GriddedModel | None = None
        self._expressions: dict[str, Expression] = {}
        #: the mesh a model file written by fwimpi brings (None otherwise), its values in
        #: natural order, and the time step (s) it was simulated with (None if unknown)
        self.mesh: StructuredMesh | StructuredMesh3D | None = None
        self.dt: float | None = None
        self._values_on_mesh: dict[str, np.ndarray] = {}
        if source.file is not None and _is_fwimpi_mesh_file(source.file):
            self._read_mesh_model(source.file, domain)
        elif source.file is not None:
            grid = read_gridded_model(source.file, field="model.file", dimension=self.dim)
            b = grid.bounds
            tol = 1e-9 * max(b[2 * a + 1] - b[2 * a] for a in range(self.dim))
            if any(lo < b[2 * a] - tol or hi > b[2 * a + 1] + tol
                   for a, (lo, hi) in enumerate(domain.bounds)):
                raise ConfigError(
                    f"model.file: the grid covers {_extent(self._names, b)} "
                    f"but the domain is {_extent(self._names, _flat(domain))}"
                )
            for name in names:
                if name not in grid.fields:
                    raise ConfigError(
                        f"model.file: no variable '{name}' in {source.file} "
                        f"(has {', '.join(sorted(grid.fields)) or 'none'})"
                    )
            self._grid = grid
        else:
            self._expressions = {n: compile_expression(str(getattr(source, n)), f"model.{n}",
                                                       self._names)
                                 for n in names}

    def _read_mesh_model(self, path: Path, domain: Box | Box3) -> None:
        field = "model.file"
        try:
            f = read_mesh_h5(path)
            mesh = mesh_from_description(f.attrs.get("mesh") or {})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{field}: {path} is an fwimpi mesh file without a usable mesh "
                              f"description: {' '.join(str(err).split())}") from None
        if mesh.dim != self.dim:
            raise ConfigError(f"{field}: {path} holds a {mesh.dim}D mesh, but the domain is "
                              f"{self.dim}D")
        if (np.shape(f.points) != mesh.points.shape
                or not np.allclose(mesh.points, f.points, rtol=0, atol=1e-6)):
            raise ConfigError(f"{field}: the points of {path} are not those of its mesh "
                              f"description")
        if not np.allclose(_flat(mesh.domain), _flat(domain), rtol=1e-12, atol=1e-9):
            raise ConfigError(f"{field}: {path} was made for the domain "
                              f"{_extent(self._names, _flat(mesh.domain))}, not this job's")
        for name in self.physics.parameters:
            if name not in f.fields:
                raise ConfigError(f"{field}: no field {name} in {path} (has "
                                  f"{', '.join(f.fields) or 'none'})")
            self._values_on_mesh[name] = np.asarray(f.fields[name], dtype=float)
        dt = f.attrs.get("dt")
        self.mesh = mesh
        self.dt = float(dt) if isinstance(dt, (int, float)) and dt > 0 else None

    def _values(self, name: str, p: np.ndarray) -> np.ndarray:
        if self._grid is not None:
            return self._grid.interpolate(name, *(p[:, a] for a in range(self.dim)))
        return self._expressions[name](**{k: p[:, a] for a, k in enumerate(self._names)})

    def __call__(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """``{"VP": (P,), "RHO": (P,)}`` at ``points (P, dim)`` (m); raises ConfigError on
        non-positive or non-finite values, naming the parameter and the point. A model file
        with its own mesh is evaluated at that mesh's points only."""
        if self.mesh is not None:
            try:
                index = self.mesh.point_indices(points)
            except ValueError as err:
                raise ConfigError(f"model.file: {err}") from None
            p = np.asarray(points, dtype=float)
        else:
            p = self.domain.clamp(np.asarray(points, dtype=float))
        out = {}
        for name in self.physics.parameters:
            if self.mesh is not None:
                v = self._values_on_mesh[name][index]
            else:
                v = np.broadcast_to(self._values(name.lower(), p), (len(p),)).astype(float)
            bad = ~(v > 0) | ~np.isfinite(v)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                at = ", ".join(f"{c}={p[k, a]:g}" for a, c in enumerate(self._names))
                raise ConfigError(
                    f"model.{name.lower()}: must be positive and finite, got {v[k]:g} at {at}"
                )
            out[name] = v
        return out

    def velocity(self, points: np.ndarray) -> np.ndarray:
        """``VP (P,)`` at ``points (P, dim)``, m/s (what the mesh is sized with)."""
        return self(points)["VP"]


def _flat(box: Box | Box3) -> tuple[float, ...]:
    """``(x0, x1, y0, y1[, z0, z1])`` of a box."""
    return tuple(v for b in box.bounds for v in b)


def _extent(names: tuple[str, ...], flat: tuple[float, ...]) -> str:
    """``x in [a, b], y in [c, d]`` (and ``, z in [e, f]``) for messages."""
    return ", ".join(f"{n} in [{flat[2 * a]:g}, {flat[2 * a + 1]:g}]"
                     for a, n in enumerate(names))


def _is_fwimpi_mesh_file(path: Path) -> bool:
    """True for an HDF5 file whose ``format`` attribute is fwimpi's mesh format."""
    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
    except (OSError, ValueError):
        return False
    return (fmt.decode() if isinstance(fmt, bytes) else fmt) == MESH_FORMAT
