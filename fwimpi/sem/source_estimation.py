"""Source wavelet estimation (Pratt, 1999): the filter that best turns the synthetics of one
event into its observed data, in the least-squares sense, frequency by frequency.

For receivers ``r`` with synthetic spectra ``U_r`` (simulated with the wavelet ``w``) and
observed ``D_r``, the filter

    F(f) = sum_r conj(U_r) D_r / (sum_r |U_r|^2 + eps max_f sum_r |U_r|^2)

minimises ``sum_r |F U_r - D_r|^2`` (``eps`` a small damping for frequencies without
energy); the estimated source time function is ``F w``. Spectra use a zero-padded FFT of
length ``2 S`` (no wrap-around of a causal filter). ``ConvolutionFilter`` applies ``F`` to
traces and its exact transpose: a misfit ``J(F u, d)`` has the adjoint source
``F^T dJ/d(F u)``; with ``F`` held fixed at its optimum this is the gradient of the misfit
after the estimation (variable projection: ``dJ/dF = 0`` there, up to ``eps``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Damping of the estimation, relative to the largest synthetic power.
DAMPING = 1e-6


def spectra_sums(synthetic: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sum_r conj(U_r) D_r, sum_r |U_r|^2)`` of traces ``(R, S)`` (zero-padded FFT of
    length 2S): the parts that several ranks add up before ``filter_from_sums``."""
    n = 2 * synthetic.shape[-1]
    u = np.fft.rfft(np.asarray(synthetic, float), n, axis=-1)
    d = np.fft.rfft(np.asarray(observed, float), n, axis=-1)
    return (np.conj(u) * d).sum(axis=0), (np.abs(u) ** 2).sum(axis=0)


def filter_from_sums(numerator: np.ndarray, denominator: np.ndarray,
                     n_samples: int) -> "ConvolutionFilter":
    """The least-squares filter from the summed spectra (``spectra_sums`` over receivers)."""
    eps = DAMPING * max(float(np.max(denominator)), 1e-300)
    return ConvolutionFilter(numerator / (denominator + eps), n_samples)


@dataclass(frozen=True, eq=False)
class ConvolutionFilter:
    """Convolution with a filter of spectrum ``spectrum`` (rfft of length ``2 n_samples``)
    on traces of ``n_samples``: ``apply`` and its exact transpose ``adjoint``."""

    spectrum: np.ndarray
    n_samples: int

    def apply(self, traces: np.ndarray) -> np.ndarray:
        n = 2 * self.n_samples
        x = np.fft.rfft(np.asarray(traces, float), n, axis=-1)
        return np.fft.irfft(x * self.spectrum, n, axis=-1)[..., :self.n_samples]

    def adjoint(self, traces: np.ndarray) -> np.ndarray:
        n = 2 * self.n_samples
        y = np.fft.rfft(np.asarray(traces, float), n, axis=-1)
        return np.fft.irfft(y * np.conj(self.spectrum), n, axis=-1)[..., :self.n_samples]

    def wavelet(self, samples: np.ndarray) -> np.ndarray:
        """The estimated source time function: ``F`` applied to the wavelet's samples."""
        return self.apply(np.asarray(samples, float)[None])[0]


@dataclass(frozen=True)
class EstimatedWaveletMisfit:
    """``J(F u, d)`` with ``F`` the wavelet filter estimated from these very traces (summed
    over receivers by ``reduce``, e.g. over the ranks): adjoint source ``F^T dJ/d(F u)``.
    ``last`` keeps the filter of the latest evaluation (to write the estimated wavelet)."""

    misfit: object
    reduce: object  # (numerator, denominator) -> the sums over all receivers
    last: list

    @property
    def name(self) -> str:
        return self.misfit.name

    @property
    def needs_observed(self) -> bool:
        return True

    def evaluate(self, traces: np.ndarray, observed: np.ndarray, dt: float):
        num, den = spectra_sums(traces, observed)
        num, den = self.reduce(num, den)
        f = filter_from_sums(num, den, traces.shape[-1])
        self.last[:] = [f]
        j, adjoint = self.misfit.evaluate(f.apply(traces), observed, dt)
        return j, f.adjoint(adjoint)
