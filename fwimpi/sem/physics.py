"""Physics descriptions: the named material parameters of a wave equation and the chain rule
from the equation's coefficients to them.

The solver works with the coefficients of ``m0 * d2phi/dt2 - div(m1 * grad phi) = f`` at the
GLL points; users, files and inversions name material parameters. A physics description is
the one place that knows both, so a new parameter set (elastic: VP, VS, RHO) is added here.

>>> import numpy as np
>>> m0, m1 = ACOUSTIC.coefficients({"VP": np.array([2000.0]), "RHO": np.array([1000.0])})
>>> float(m0[0]), float(m1[0])
(2.5e-10, 0.001)
"""

from dataclasses import dataclass
from typing import Mapping

import numpy as np


class ModelValueError(ValueError):
    """A model value a physics cannot use (non-positive or non-finite); says where."""


@dataclass(frozen=True)
class AcousticPhysics:
    """Acoustic potential formulation: ``m0 = 1 / (RHO VP^2)`` (1/Pa), ``m1 = 1 / RHO``
    (m^3/kg); parameters VP (m/s) and RHO (kg/m^3), both positive."""

    name: str = "acoustic"
    parameters: tuple[str, ...] = ("VP", "RHO")
    units: tuple[str, ...] = ("m/s", "kg/m^3")

    def check(self, model: Mapping[str, np.ndarray]) -> None:
        """Raise ModelValueError naming the first parameter and index that is missing,
        non-positive or non-finite."""
        for name in self.parameters:
            if name not in model:
                raise ModelValueError(f"{name}: missing from the model")
            v = np.asarray(model[name])
            bad = ~(v > 0) | ~np.isfinite(v)
            if bad.any():
                k = int(np.flatnonzero(bad.ravel())[0])
                raise ModelValueError(f"{name}: must be positive and finite, got "
                                      f"{v.ravel()[k]:g} at point {k}")

    def coefficients(self, model: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(m0, m1)`` point by point from ``{"VP", "RHO"}`` arrays."""
        vp, rho = np.asarray(model["VP"], float), np.asarray(model["RHO"], float)
        return 1.0 / (rho * vp**2), 1.0 / rho

    def chain_rule(self, model: Mapping[str, np.ndarray], dj_dm0: np.ndarray,
                   dj_dm1: np.ndarray) -> dict[str, np.ndarray]:
        """``dJ/dVP``, ``dJ/dRHO`` from ``dJ/dm0``, ``dJ/dm1`` (point by point)."""
        vp, rho = np.asarray(model["VP"], float), np.asarray(model["RHO"], float)
        return {"VP": dj_dm0 * (-2.0 / (rho * vp**3)),
                "RHO": dj_dm0 * (-1.0 / (rho**2 * vp**2)) + dj_dm1 * (-1.0 / rho**2)}

    def max_velocity(self, model: Mapping[str, np.ndarray]) -> float:
        """The largest wave speed of the model, m/s."""
        return float(np.max(model["VP"]))


#: The acoustic physics of fwimpi's solver (DESIGN.md, "Physics").
ACOUSTIC = AcousticPhysics()
