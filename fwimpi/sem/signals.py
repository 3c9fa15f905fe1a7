"""Operations on traces along time: a zero-phase low-pass filter with its exact adjoint, and
band-limited resampling onto another time axis.

Traces are ``(R, S)`` arrays (receivers, samples). The filter is the linear operator
``F = R H R H`` with ``H`` a causal Butterworth filter started from rest (``sosfilt``, zero
initial state) and ``R`` time reversal: zero phase, and symmetric (``F^T = F``, because the
transpose of a causal filter from rest is ``R H R``), so a misfit of filtered traces has the
exact adjoint source ``F dJ/d(Fu)``. Resampling is windowed-sinc interpolation of data whose
band ends well below its own Nyquist frequency (refused otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Butterworth order of the causal half of the zero-phase filter (the pair has twice it).
FILTER_ORDER = 4
#: Data whose spectrum above this fraction of its Nyquist frequency holds more than
#: ``ALIAS_TOLERANCE`` of its energy cannot be resampled faithfully.
BAND_FRACTION = 0.8
ALIAS_TOLERANCE = 1e-6
#: Half-width (samples) of the windowed-sinc interpolation kernel.
SINC_HALF_WIDTH = 32


@dataclass(frozen=True)
class ZeroPhaseLowpass:
    """Zero-phase low-pass filter of corner ``max_frequency`` (Hz) for samples every ``dt``
    (s); apply it with ``filter(traces)`` along the last axis. Symmetric: it is its own
    adjoint.

    >>> import numpy as np
    >>> f = ZeroPhaseLowpass(5.0, 0.002)
    >>> a, b = np.random.default_rng(0).standard_normal((2, 1, 500))
    >>> bool(abs(np.sum(f(a) * b) - np.sum(a * f(b))) < 1e-12 * np.abs(a).sum())
    True
    """

    max_frequency: float
    dt: float
    order: int = FILTER_ORDER

    def __post_init__(self):
        nyquist = 0.5 / self.dt
        if not 0 < self.max_frequency < nyquist:
            raise ValueError(f"max_frequency {self.max_frequency:g} Hz must lie in (0, "
                             f"{nyquist:g}) Hz, the Nyquist frequency of dt = {self.dt:g} s")

    @property
    def sos(self) -> np.ndarray:
        from scipy import signal  # scipy.signal takes 0.1 s to import: only when filtering

        return signal.butter(self.order, self.max_frequency, fs=1.0 / self.dt, output="sos")

    def __call__(self, traces: np.ndarray) -> np.ndarray:
        from scipy import signal

        sos = self.sos
        once = signal.sosfilt(sos, np.asarray(traces, dtype=float), axis=-1)
        return signal.sosfilt(sos, once[..., ::-1], axis=-1)[..., ::-1].copy()


def band_limit_check(traces: np.ndarray, dt: float) -> float:
    """The fraction of the traces' energy above ``BAND_FRACTION`` of their Nyquist frequency
    (after a Tukey taper, so that the ends of a record do not leak into the band)."""
    from scipy import signal

    traces = np.asarray(traces, float)
    taper = signal.windows.tukey(traces.shape[-1], 0.1)
    spectrum = np.abs(np.fft.rfft(traces * taper, axis=-1)) ** 2
    total = spectrum.sum()
    if total == 0:
        return 0.0
    cut = int(np.ceil(BAND_FRACTION * (spectrum.shape[-1] - 1)))
    return float(spectrum[..., cut:].sum() / total)


def resample(traces: np.ndarray, dt: float, start_time: float, new_dt: float,
             new_start_time: float, n_samples: int) -> np.ndarray:
    """Traces ``(R, S)`` sampled at ``start_time + k dt`` evaluated at ``new_start_time + n
    new_dt`` for ``n < n_samples``: low-passed below both Nyquist frequencies, then
    windowed-sinc (Kaiser) interpolated; zero outside the recorded span. Raises ValueError
    when the traces' band reaches their Nyquist frequency (they are not band-limited)."""
    traces = np.atleast_2d(np.asarray(traces, dtype=float))
    alias = band_limit_check(traces, dt)
    if alias > ALIAS_TOLERANCE:
        raise ValueError(f"{alias:.2g} of the data's energy lies above {BAND_FRACTION:g} of its "
                         f"Nyquist frequency {0.5 / dt:g} Hz: it is not band-limited, so it "
                         f"cannot be resampled to dt = {new_dt:g} s")
    if new_dt > dt:  # coarser target: keep the band below the new Nyquist frequency
        traces = ZeroPhaseLowpass(BAND_FRACTION * 0.5 / new_dt, dt)(traces)
    times = new_start_time + new_dt * np.arange(n_samples)
    position = (times - start_time) / dt  # fractional sample index of each target time
    last = traces.shape[-1] - 1
    edge = (position >= -1.0) & (position <= last + 1.0)  # within a sample of the record:
    position = np.where(edge, np.clip(position, 0.0, last), position)  # its end value
    base = np.floor(position).astype(np.int64)
    half = SINC_HALF_WIDTH
    offsets = np.arange(-half + 1, half + 1)
    idx = base[:, None] + offsets[None, :]  # (n_samples, 2 half)
    x = position[:, None] - idx
    beta = 8.0  # Kaiser window, evaluated at the fractional offsets
    arg = np.clip(1.0 - (x / half) ** 2, 0.0, None)
    window = np.i0(beta * np.sqrt(arg)) / np.i0(beta)
    weights = np.sinc(x) * window
    inside = (idx >= 0) & (idx < traces.shape[-1])
    weights = np.where(inside, weights, 0.0)
    gathered = traces[:, np.clip(idx, 0, traces.shape[-1] - 1)]  # (R, n_samples, 2 half)
    out = np.einsum("rnk,nk->rn", gathered, weights)
    span = (position >= 0) & (position <= traces.shape[-1] - 1)
    out[:, ~span] = 0.0
    return out


def pressure_operator(n_samples: int, dt: float):
    """The sparse ``D (S, S)`` with ``p = D phi`` along time: ``p = -d2phi/dt2`` by the
    leapfrog's own central difference, ``p[n] = -(phi[n+1] - 2 phi[n] + phi[n-1]) / dt^2``
    (``phi[-1] = 0``: the field starts at rest), and ``p[S-1] = p[S-2]`` (no ``phi[S]``).
    Traces ``(R, S)``: ``p = phi @ D.T``; the adjoint is ``q @ D``, its exact transpose.

    In fwimpi's formulation ``m0 phi_tt - div(m1 grad phi) = f`` with ``m0 = 1/(rho vp^2)``,
    ``m1 = 1/rho``, the displacement is ``u = grad(phi) / rho`` and the pressure
    ``p = -rho vp^2 div u = -phi_tt`` away from the sources: ``phi`` in Pa s^2, ``p`` in Pa.
    """
    import scipy.sparse

    s = int(n_samples)
    main = np.full(s, -2.0)  # the second difference; times -1/dt^2 below
    upper = np.full(s - 1, 1.0)
    lower = np.full(s - 1, 1.0)
    d = scipy.sparse.diags([lower, main, upper], [-1, 0, 1], shape=(s, s), format="lil")
    if s >= 2:
        d[s - 1, :] = d[s - 2, :]
    return (d.tocsr() * (-1.0 / dt**2)).tocsr()
