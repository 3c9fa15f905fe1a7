"""Models (VP in m/s, RHO in kg/m^3) evaluated at points of a mesh.

Sources of values: safely parsed expressions in ``x``, ``y``, a gridded file, or a model file
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
from .expression import Expression, compile_expression
from .files import MESH_FORMAT, read_mesh_h5
from .gridded import GriddedModel, read_gridded_model
from .structured import Box, StructuredMesh


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: expressions ``vp``, ``rho`` or a gridded ``file``."""

    vp: str | None = None
    rho: str | None = None
    file: Path | None = None


class ModelEvaluator:
    """Evaluates the physics' parameters (``VP``, ``RHO``) at points; built once, validated
    at construction (the file is read then). Picklable, so one rank can read a file and hand
    the evaluator to the others."""

    def __init__(self, source: ModelSource, domain: Box, physics: AcousticPhysics = ACOUSTIC):
        self.domain, self.physics, self.source = domain, physics, source
        names = [p.lower() for p in physics.parameters]
        self._grid: GriddedModel | None = None
        self._expressions: dict[str, Expression] = {}
        #: the mesh a model file written by fwimpi brings (None otherwise), its values in
        #: natural order, and the time step (s) it was simulated with (None if unknown)
        self.mesh: StructuredMesh | None = None
        self.dt: float | None = None
        self._values_on_mesh: dict[str, np.ndarray] = {}
        if source.file is not None and _is_fwimpi_mesh_file(source.file):
            self._read_mesh_model(source.file, domain)
        elif source.file is not None:
            grid = read_gridded_model(source.file, field="model.file")
            x0, x1, y0, y1 = grid.bounds
            tol = 1e-9 * max(x1 - x0, y1 - y0)
            if (domain.x0 < x0 - tol or domain.x1 > x1 + tol
                    or domain.y0 < y0 - tol or domain.y1 > y1 + tol):
                raise ConfigError(
                    f"model.file: the grid covers x in [{x0:g}, {x1:g}], y in [{y0:g}, {y1:g}] "
                    f"but the domain is x in [{domain.x0:g}, {domain.x1:g}], "
                    f"y in [{domain.y0:g}, {domain.y1:g}]"
                )
            for name in names:
                if name not in grid.fields:
                    raise ConfigError(
                        f"model.file: no variable '{name}' in {source.file} "
                        f"(has {', '.join(sorted(grid.fields)) or 'none'})"
                    )
            self._grid = grid
        else:
            self._expressions = {n: compile_expression(str(getattr(source, n)), f"model.{n}")
                                 for n in names}

    def _read_mesh_model(self, path: Path, domain: Box) -> None:
        field = "model.file"
        try:
            f = read_mesh_h5(path)
            mesh = StructuredMesh.from_description(f.attrs.get("mesh") or {})
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{field}: {path} is an fwimpi mesh file without a usable mesh "
                              f"description: {' '.join(str(err).split())}") from None
        if mesh.n_points != len(f.points) or not np.allclose(mesh.points, f.points, rtol=0,
                                                             atol=1e-6):
            raise ConfigError(f"{field}: the points of {path} are not those of its mesh "
                              f"description")
        box = mesh.domain
        if not np.allclose([box.x0, box.x1, box.y0, box.y1],
                           [domain.x0, domain.x1, domain.y0, domain.y1], rtol=1e-12, atol=1e-9):
            raise ConfigError(f"{field}: {path} was made for the domain x in [{box.x0:g}, "
                              f"{box.x1:g}], y in [{box.y0:g}, {box.y1:g}], not this job's")
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
            return self._grid.interpolate(name, p[:, 0], p[:, 1])
        return self._expressions[name](x=p[:, 0], y=p[:, 1])

    def __call__(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """``{"VP": (P,), "RHO": (P,)}`` at ``points (P, 2)``; raises ConfigError on
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
                raise ConfigError(
                    f"model.{name.lower()}: must be positive and finite, got {v[k]:g} "
                    f"at x={p[k, 0]:g}, y={p[k, 1]:g}"
                )
            out[name] = v
        return out

    def velocity(self, points: np.ndarray) -> np.ndarray:
        """``VP (P,)`` at ``points (P, 2)``, m/s (what the mesh is sized with)."""
        return self(points)["VP"]


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
