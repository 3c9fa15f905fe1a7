"""Absorbing margins: a damping profile for the term ``C = M d`` of the time stepper."""

import math
from dataclasses import dataclass

import numpy as np

#: Amplitude left after the round trip through the margin (normal incidence). Measured on
#: the tutorial (tests/test_absorbing.py): reflected/incident energy 1.6e-4 at 1e-2, 2.7e-4
#: at 1e-3, 4.5e-4 at 1e-4, 2.8e-3 at 1e-12: below ~1e-2 the reflection off the steeper
#: damping ramp dominates what gets through, so 1e-2 is the best choice.
TARGET_REFLECTION = 1e-2


@dataclass(frozen=True)
class AbsorbingBoundaries:
    """Absorbing margins outside the left, right and bottom of the domain, sized as
    ``number_of_wavelengths`` wavelengths of ``reference_velocity`` (m/s) at
    ``reference_frequency`` (Hz).

    >>> AbsorbingBoundaries(2000.0, 3.5, 5.0).width_in_meters
    1400.0
    """

    reference_velocity: float
    number_of_wavelengths: float
    reference_frequency: float

    @property
    def width_in_meters(self) -> float:
        """``number_of_wavelengths * reference_velocity / reference_frequency``, m."""
        return self.number_of_wavelengths * self.reference_velocity / self.reference_frequency

    def damping(self, points: np.ndarray, domain: tuple[float, float, float, float]) -> np.ndarray:
        """Damping rate ``d (P,)`` (1/s) at ``points (P, 2)`` outside ``domain``."""
        return damping_profile(points, domain, self.width_in_meters, self.reference_velocity)


def damping_profile(
    points: np.ndarray,
    domain: tuple[float, float, float, float],
    width: float,
    reference_velocity: float,
    sides: tuple[str, ...] = ("left", "right", "bottom"),
) -> np.ndarray:
    """Damping rate ``d (P,)`` in 1/s at ``points (P, 2)`` (m).

    ``d = d0 (r / width)^2`` with ``r`` the distance (m) into the margin outside
    ``domain = (x0, x1, y0, y1)``; the contributions of the sides add up in the corners.
    ``d0 = 3 v ln(1/R) / width`` makes a wave at ``reference_velocity`` v that crosses the
    margin and back decay to ``R = TARGET_REFLECTION`` (the quadratic ramp keeps the
    reflection off the damping gradient small).
    """
    d = np.zeros(len(points))
    if width <= 0:
        return d
    x0, x1, y0, _ = domain
    d0 = 3.0 * reference_velocity * math.log(1.0 / TARGET_REFLECTION) / width
    depth = {
        "left": np.maximum(x0 - points[:, 0], 0.0),
        "right": np.maximum(points[:, 0] - x1, 0.0),
        "bottom": np.maximum(y0 - points[:, 1], 0.0),
    }
    for side in sides:
        d += d0 * np.minimum(depth[side] / width, 1.0) ** 2
    return d
