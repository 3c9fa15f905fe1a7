"""Misfits and adjoint sources as pure functions: values and exact derivatives."""

import numpy as np
import pytest

from fwimpi.sem.misfits import cross_correlation_time_shift, l2, l2_energy
from fwimpi.sem.wavelets import ricker

DT = 2e-3
T = np.arange(500) * DT


def traces(shift=0.0, fc=5.0):
    return np.vstack([ricker(T, fc, 0.4 + shift + 0.05 * r) for r in range(3)])


def check_derivative(misfit, u):
    j, adjoint = misfit(u)
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(u.shape) * np.abs(u).max()
    h = 1e-6
    central = (misfit(u + h * direction)[0] - misfit(u - h * direction)[0]) / (2 * h)
    assert np.isclose(central, np.sum(adjoint * direction), rtol=1e-6)
    return j


def test_l2_energy_is_the_discrete_sum():
    u = traces()
    j = check_derivative(lambda x: l2_energy(x, DT), u)
    assert np.isclose(j, 0.5 * DT * np.sum(u**2), rtol=1e-14)


def test_l2_against_observed():
    u, d = traces(), traces(0.01)
    j = check_derivative(lambda x: l2(x, d, DT), u)
    assert np.isclose(j, 0.5 * DT * np.sum((u - d) ** 2), rtol=1e-14)
    assert l2(d, d, DT)[0] == 0.0
    with pytest.raises(ValueError):
        l2(u, d[:2], DT)


@pytest.mark.parametrize("shift", [0.0, 0.0123, -0.031, 0.1])
def test_cross_correlation_recovers_the_shift(shift):
    u, d = traces(shift), traces()
    j, adjoint = cross_correlation_time_shift(u, d, DT)
    assert np.isclose(j, 0.5 * 3 * shift**2, rtol=2e-2, atol=1e-10)
    if shift == 0.0:
        assert j < 1e-12 and np.abs(adjoint).max() < 1e-9


@pytest.mark.parametrize("shift", [0.0123, -0.031])
def test_cross_correlation_derivative_is_exact(shift):
    u, d = traces(shift), traces()
    check_derivative(lambda x: cross_correlation_time_shift(x, d, DT), u)


def test_cross_correlation_of_silent_trace_contributes_nothing():
    u = np.zeros((1, 100))
    j, adjoint = cross_correlation_time_shift(u, traces()[:1, :100], DT)
    assert j == 0.0 and not adjoint.any()
