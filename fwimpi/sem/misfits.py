"""Misfit functionals on discrete traces, and their adjoint sources.

Traces are ``(R, S)`` arrays sampled every ``dt`` seconds; J is defined on exactly these
samples (DESIGN.md), so the adjoint source ``dJ/du (R, S)`` is its exact derivative.
"""

import numpy as np


def l2_energy(traces: np.ndarray, dt: float) -> tuple[float, np.ndarray]:
    """``J = 1/2 sum_r sum_n dt u_r(t_n)^2`` and ``dJ/du = dt u``."""
    return 0.5 * dt * float(np.sum(traces**2)), dt * traces


def l2(traces: np.ndarray, observed: np.ndarray, dt: float) -> tuple[float, np.ndarray]:
    """``J = 1/2 sum_r sum_n dt (u_r(t_n) - d_r(t_n))^2`` and ``dJ/du = dt (u - d)``."""
    if observed.shape != traces.shape:
        raise ValueError(f"observed data shape {observed.shape} != synthetics {traces.shape}")
    r = traces - observed
    return 0.5 * dt * float(np.sum(r**2)), dt * r
