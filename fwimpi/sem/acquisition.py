"""Acquisition: events with their point sources and receivers (positions in metres).

An ``Event`` carries everything a simulation of one shot needs besides the model: its
sources (position, amplitude) and receivers (position, station name, recorded fields).
The wavelet is the simulation's (one per job).

>>> e = Event("shot", (PointSource((500.0, -500.0), 1.0),), (Receiver((100.0, 0.0), "R0000"),))
>>> e.source_coordinates.shape, e.receiver_coordinates.shape
((1, 2), (1, 2))
"""

from dataclasses import dataclass

import numpy as np


def _coordinates(positions: list) -> np.ndarray:
    return np.array(positions, dtype=float) if positions else np.zeros((0, 2))


@dataclass(frozen=True)
class PointSource:
    """``ScalarPoint2D``: position ``(x, y)`` in metres and amplitude ``f``."""

    position: tuple[float, ...]
    f: float

    @property
    def x(self) -> float:
        return self.position[0]

    @property
    def y(self) -> float:
        return self.position[1]


@dataclass(frozen=True)
class Receiver:
    """A receiver at ``position (x, y)`` metres, named ``station``, recording ``fields``."""

    position: tuple[float, ...]
    station: str
    fields: tuple[str, ...] = ("phi",)

    @property
    def x(self) -> float:
        return self.position[0]

    @property
    def y(self) -> float:
        return self.position[1]


@dataclass(frozen=True)
class Event:
    """One shot: a name (safe in file names), its sources and receivers."""

    name: str
    sources: tuple[PointSource, ...]
    receivers: tuple[Receiver, ...]

    @property
    def source_coordinates(self) -> np.ndarray:
        """``(S, dim)`` source positions, m."""
        return _coordinates([s.position for s in self.sources])

    @property
    def receiver_coordinates(self) -> np.ndarray:
        """``(R, dim)`` receiver positions, m."""
        return _coordinates([r.position for r in self.receivers])

    @property
    def stations(self) -> tuple[str, ...]:
        return tuple(r.station for r in self.receivers)
