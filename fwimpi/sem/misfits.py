"""Misfit functionals on discrete traces, their adjoint sources, and the registry of them.

Traces are ``(R, S)`` arrays sampled every ``dt`` seconds; J is defined on exactly these
samples (DESIGN.md), so the adjoint source ``dJ/du (R, S)`` is its exact derivative. Every
misfit is a sum over receivers, so a decomposed run evaluates it on each rank's receivers
and adds the parts.

A new misfit is one entry of ``MISFITS``: a function ``(traces, observed, dt) -> (J,
dJ/dtraces)`` (``observed`` is None for misfits without data) and whether it needs data.

>>> import numpy as np
>>> j, adj = MISFITS["L2"].evaluate(np.ones((2, 3)), np.zeros((2, 3)), 0.5)
>>> j, adj.shape
(1.5, (2, 3))
"""

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable

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


def cross_correlation_time_shift(traces: np.ndarray, observed: np.ndarray,
                                 dt: float) -> tuple[float, np.ndarray]:
    """Cross-correlation traveltime misfit ``J = 1/2 sum_r T_r^2`` and ``dJ/du``.

    ``T_r`` (s) is the lag maximising the discrete cross-correlation
    ``C_k = dt sum_n u_r[n] d_r[n - k]``, refined by the parabola through the best lag k
    and its neighbours: ``T = dt (k + (C_{k-1} - C_{k+1}) / (2 (C_{k-1} - 2 C_k + C_{k+1})))``.
    ``T > 0`` when the synthetics arrive later than the data. For a fixed best lag, T is a
    smooth function of the samples, so ``dJ/du = T dT/du`` is its exact derivative. A
    receiver whose correlation has no interior peak contributes nothing.
    """
    if observed.shape != traces.shape:
        raise ValueError(f"observed data shape {observed.shape} != synthetics {traces.shape}")
    n = traces.shape[1]
    j, adjoint = 0.0, np.zeros_like(traces)
    for r in range(traces.shape[0]):
        u, d = traces[r], observed[r]
        c = dt * np.correlate(u, d, mode="full")  # c[i] = C_k with k = i - (n - 1)
        i = int(np.argmax(c))
        if i == 0 or i == len(c) - 1:
            continue
        cm, c0, cp = c[i - 1], c[i], c[i + 1]
        den = cm - 2.0 * c0 + cp
        if den >= 0.0:  # not a strict maximum
            continue
        k = i - (n - 1)
        delta = (cm - cp) / (2.0 * den)
        t = dt * (k + delta)
        # d delta / d (cm, c0, cp)
        dd_cm = (den - (cm - cp)) / (2.0 * den**2)
        dd_c0 = (cm - cp) / den**2
        dd_cp = (-den - (cm - cp)) / (2.0 * den**2)
        # d C_k / d u[m] = dt d[m - k]
        grad = np.zeros(n)
        for lag, weight in ((k - 1, dd_cm), (k, dd_c0), (k + 1, dd_cp)):
            shifted = np.zeros(n)
            if lag >= 0:
                shifted[lag:] = d[: n - lag]
            else:
                shifted[:lag] = d[-lag:]
            grad += weight * dt * shifted
        j += 0.5 * t**2
        adjoint[r] = t * dt * grad
    return j, adjoint


def _l2_energy_without_data(traces, observed, dt):
    return l2_energy(traces, dt)


@dataclass(frozen=True)
class Misfit:
    """A registered misfit: its job-spec ``name``, ``function(traces, observed, dt) -> (J,
    dJ/dtraces)`` and whether it compares with observed data (``needs_observed``)."""

    name: str
    function: Callable[[np.ndarray, np.ndarray | None, float], tuple[float, np.ndarray]]
    needs_observed: bool

    def evaluate(self, traces: np.ndarray, observed: np.ndarray | None,
                 dt: float) -> tuple[float, np.ndarray]:
        """``(J, dJ/dtraces (R, S))`` of ``traces (R, S)`` against ``observed (R, S)``."""
        if self.needs_observed and observed is None:
            raise ValueError(f"misfit {self.name} needs observed data")
        return self.function(traces, observed, dt)


#: The misfits a job spec can name (``misfit_configuration.misfit_function``).
MISFITS = MappingProxyType({m.name: m for m in (
    Misfit("L2_energy_no_observed_data", _l2_energy_without_data, False),
    Misfit("L2", l2, True),
    Misfit("cross_correlation_time_shift", cross_correlation_time_shift, True),
)})


class WrappedMisfit:
    """The name and data needs of the misfit ``self.misfit`` that a wrapper transforms."""

    @property
    def name(self) -> str:
        return self.misfit.name

    @property
    def needs_observed(self) -> bool:
        return self.misfit.needs_observed


@dataclass(frozen=True)
class FilteredMisfit(WrappedMisfit):
    """A misfit of filtered traces: ``J(F u, F d)`` with ``F`` a symmetric linear filter
    (``signals.ZeroPhaseLowpass``), whose adjoint source is ``F dJ/d(F u)`` exactly. Used for
    frequency continuation: the gradient stays the derivative of what is printed."""

    misfit: Misfit
    filter: Callable[[np.ndarray], np.ndarray]

    def evaluate(self, traces: np.ndarray, observed: np.ndarray | None,
                 dt: float) -> tuple[float, np.ndarray]:
        """``(J(F u, F d), F dJ/d(F u))`` of ``traces (R, S)`` and ``observed (R, S)``."""
        filtered = None if observed is None else self.filter(observed)
        j, adjoint = self.misfit.evaluate(self.filter(traces), filtered, dt)
        return j, self.filter(adjoint)


@dataclass(frozen=True)
class PressureMisfit(WrappedMisfit):
    """A misfit of pressure traces ``p = D phi`` (``signals.pressure_operator``: ``p =
    -d2phi/dt2``) against observed pressure; the adjoint source is ``D^T dJ/dp``, exactly.
    What a hydrophone records."""

    misfit: Misfit

    def evaluate(self, traces: np.ndarray, observed: np.ndarray | None,
                 dt: float) -> tuple[float, np.ndarray]:
        """``(J(D phi, d), D^T dJ/dp)`` for potential traces ``(R, S)``."""
        from .signals import pressure_operator

        d = pressure_operator(traces.shape[-1], dt)
        j, adjoint = self.misfit.evaluate(np.asarray(traces @ d.T), observed, dt)
        return j, np.asarray(adjoint @ d)
