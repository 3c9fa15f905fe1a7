"""Acoustic model (VP in m/s, RHO in kg/m^3) evaluated at points of a mesh.

Sources of values: safely parsed expressions in ``x``, ``y`` or a gridded file. Inside
absorbing margins the model takes its value at the nearest point of the domain (constant
extension outward), so margins add no contrasts.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .expression import compile_expression
from .gridded import read_gridded_model
from .structured import Box


@dataclass(frozen=True)
class ModelSource:
    """Where the model comes from: expressions ``vp``, ``rho`` or a gridded ``file``."""

    vp: str | None = None
    rho: str | None = None
    file: Path | None = None


class ModelEvaluator:
    """Evaluates VP and RHO at points; built once, validated at construction."""

    def __init__(self, source: ModelSource, domain: Box):
        self.domain = domain
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
            for name in ("vp", "rho"):
                if name not in grid.fields:
                    raise ConfigError(
                        f"model.file: no variable '{name}' in {source.file} "
                        f"(has {', '.join(sorted(grid.fields)) or 'none'})"
                    )
            self._eval = {n: (lambda x, y, n=n: grid.interpolate(n, x, y)) for n in ("vp", "rho")}
        else:
            exprs = {n: compile_expression(str(getattr(source, n)), f"model.{n}")
                     for n in ("vp", "rho")}
            self._eval = {n: (lambda x, y, e=e: e(x=x, y=y)) for n, e in exprs.items()}

    def __call__(self, points: np.ndarray) -> dict[str, np.ndarray]:
        """``{"VP": (P,), "RHO": (P,)}`` at ``points (P, 2)``; raises on non-positive values."""
        p = self.domain.clamp(np.asarray(points, dtype=float))
        out = {}
        for name in ("vp", "rho"):
            v = np.broadcast_to(self._eval[name](p[:, 0], p[:, 1]), (len(p),)).astype(float)
            bad = ~(v > 0) | ~np.isfinite(v)
            if bad.any():
                k = int(np.flatnonzero(bad)[0])
                raise ConfigError(
                    f"model.{name}: must be positive and finite, got {v[k]:g} "
                    f"at x={p[k, 0]:g}, y={p[k, 1]:g}"
                )
            out[name.upper()] = v
        return out

    def min_velocity(self, samples: int = 257) -> float:
        """Minimum VP (m/s) over a ``samples x samples`` grid of the domain (for meshing)."""
        x = np.linspace(self.domain.x0, self.domain.x1, samples)
        y = np.linspace(self.domain.y0, self.domain.y1, samples)
        xx, yy = np.meshgrid(x, y)
        return float(self(np.column_stack((xx.ravel(), yy.ravel())))["VP"].min())
