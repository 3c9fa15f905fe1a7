"""Source time functions."""

import numpy as np


def ricker(t, center_frequency: float, time_shift: float | None = None) -> np.ndarray:
    """Ricker wavelet ``s(t) = (1 - 2 pi^2 fc^2 (t-t0)^2) exp(-pi^2 fc^2 (t-t0)^2)``.

    ``t`` in s, ``center_frequency`` fc in Hz, ``time_shift`` t0 in s (default ``1.2/fc``).
    """
    t0 = 1.2 / center_frequency if time_shift is None else time_shift
    a = (np.pi * center_frequency * (np.asarray(t, dtype=float) - t0)) ** 2
    return (1.0 - 2.0 * a) * np.exp(-a)
