"""Models (VP in m/s, RHO in kg/m^3) evaluated at points of a mesh.

Sources of values: safely parsed expressions in ``x``, ``y`` or a gridded file. Inside
absorbing margins the model takes its value at the nearest point of the domain (constant
extension outward), so margins add no contrasts.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..sem.physics import ACOUSTIC, AcousticPhysics
from .expression import Expression, compile_expression
from .gridded import GriddedModel, read_gridded_model
from .structured import Box


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
        if source.file is not None:
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

    def _values(self, name: str, p: np.ndarray) -> np.ndarray:
        if self._grid is not None:
            return self._grid.interpolate(name, p[:, 0], p[:, 1])
        return self._expressions[name](x=p[:, 0], y=p[:, 1])

    def __call__(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """``{"VP": (P,), "RHO": (P,)}`` at ``points (P, 2)``; raises ConfigError on
        non-positive or non-finite values, naming the parameter and the point."""
        p = self.domain.clamp(np.asarray(points, dtype=float))
        out = {}
        for name in self.physics.parameters:
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
