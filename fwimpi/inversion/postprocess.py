"""Root-only, pure steps after the gradients: each event's raw gradient mapped into the
inversion space (with that event's cutouts) and summed, and the smoothing of a mapped
gradient. Arrays in, arrays out (the contract mesh layout: ``points (P, 2)``, ``cells (E,
(N+1)^2)`` in 2D, ``points (P, 3)``, ``cells (E, (N+1)^3)`` in 3D, ``mass (P,)``); the job
layer reads and writes the files around them."""

from __future__ import annotations

from collections.abc import Mapping as MappingABC, Sequence

import numpy as np

from ..sem.acquisition import Event
from .mapping import EventGeometry, Mapping
from .smoothing import ConstantSmoothing


def map_event_gradients(mapping: Mapping, raw: MappingABC[str, MappingABC[str, np.ndarray]],
                        prior: MappingABC[str, np.ndarray], points: np.ndarray,
                        events: Sequence[Event]) -> dict[str, np.ndarray]:
    """``sum_e mapping.adjoint(raw[e], prior, points, geometry of e)``: every event's raw
    gradient ``{parameter: (P,)}`` mapped with its own cutouts, then summed."""
    total = None
    for event in events:
        g = mapping.adjoint(raw[event.name], prior, points, EventGeometry.from_events([event]))
        total = g if total is None else {k: total[k] + g[k] for k in g}
    return total


def smooth_gradient(smoothing: ConstantSmoothing, gradient: MappingABC[str, np.ndarray],
                    points: np.ndarray, cells: np.ndarray, mass: np.ndarray,
                    order: int) -> dict[str, np.ndarray]:
    """The gradient ``{parameter: (P,)}`` smoothed as kernels: ``w * S(g / w)``, the exact
    gradient of ``J(S x)`` (``ConstantSmoothing.apply`` with ``mass_weighted``)."""
    return smoothing.apply(gradient, points, cells, mass, order, mass_weighted=True)
