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


@dataclass(frozen=True, eq=False)
class SampledWavelet:
    """A source time function given by samples ``(n,)`` every ``dt`` s from ``start_time``
    (a measured or estimated wavelet); call it on uniformly spaced times (s): the samples
    are resampled band-limited (``signals.resample``), zero outside their span.

    >>> import numpy as np
    >>> w = SampledWavelet(np.sin(np.linspace(0, np.pi, 11)), 0.01)
    >>> round(float(w(np.array([0.05, 0.06]))[0]), 6)
    1.0
    """

    samples: np.ndarray
    dt: float
    start_time: float = 0.0

    def __call__(self, t) -> np.ndarray:
        from .signals import resample

        t = np.atleast_1d(np.asarray(t, dtype=float))
        new_dt = float(t[1] - t[0]) if len(t) > 1 else self.dt
        if len(t) > 2 and not np.allclose(np.diff(t), new_dt, rtol=1e-9, atol=0):
            raise ValueError("SampledWavelet: times must be uniformly spaced")
        if np.isclose(new_dt, self.dt, rtol=1e-12) and np.isclose(
                (t[0] - self.start_time) / self.dt, round((t[0] - self.start_time) / self.dt),
                atol=1e-9):
            k = np.rint((t - self.start_time) / self.dt).astype(int)
            inside = (k >= 0) & (k < len(self.samples))
            return np.where(inside, self.samples[np.clip(k, 0, len(self.samples) - 1)], 0.0)
        return resample(self.samples[None], self.dt, self.start_time, new_dt, float(t[0]),
                        len(t))[0]
