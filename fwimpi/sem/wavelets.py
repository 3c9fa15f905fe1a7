"""Source time functions."""

from dataclasses import dataclass

import numpy as np


def ricker(t, center_frequency: float, time_shift: float | None = None) -> np.ndarray:
    """Ricker wavelet ``s(t) = (1 - 2 pi^2 fc^2 (t-t0)^2) exp(-pi^2 fc^2 (t-t0)^2)``.

    ``t`` in s, ``center_frequency`` fc in Hz, ``time_shift`` t0 in s (default ``1.2/fc``).
    """
    t0 = 1.2 / center_frequency if time_shift is None else time_shift
    a = (np.pi * center_frequency * (np.asarray(t, dtype=float) - t0)) ** 2
    return (1.0 - 2.0 * a) * np.exp(-a)


@dataclass(frozen=True)
class Ricker:
    """Ricker wavelet of ``center_frequency`` (Hz); ``time_shift_in_seconds`` None means the
    default ``1.2 / center_frequency``. Call it on times (s).

    >>> float(Ricker(5.0, 0.2)(0.2))
    1.0
    """

    center_frequency: float
    time_shift_in_seconds: float | None = None

    @property
    def t0(self) -> float:
        """The time shift actually used, s."""
        if self.time_shift_in_seconds is None:
            return 1.2 / self.center_frequency
        return self.time_shift_in_seconds

    def __call__(self, t) -> np.ndarray:
        return ricker(t, self.center_frequency, self.t0)
