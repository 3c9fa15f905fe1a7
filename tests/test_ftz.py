"""Flush-to-zero (``fwimpi.sem.ftz``): the flags make subnormal results and operands zero in
numba kernels and numpy alike, the solver sets them, and a forward run with them records the
traces of a run without them to round-off."""

import numba
import numpy as np
import pytest

from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.sem import ftz
from problems import event, margins, solver

pytestmark = pytest.mark.skipif(ftz.ARCH is None or ftz.control_register() is None,
                                reason="flush-to-zero is set on x86-64 and aarch64 only")

TINY = np.finfo(float).tiny  # the smallest normal double, ~2.2e-308


@numba.njit
def _multiply(a, b):
    return a * b


@pytest.fixture(autouse=True)
def restore_flags():
    """Leave the thread's flags as the test found them."""
    before = ftz.denormals_flushed()
    yield
    ftz.flush_denormals(before)


def test_flags_flush_subnormals_in_numba_and_numpy():
    assert ftz.flush_denormals(False)
    assert not ftz.denormals_flushed()
    assert _multiply(1e-308, 1e-10) == pytest.approx(1e-318)  # a subnormal result
    assert np.multiply(np.array([1e-308]), 1e-10)[0] == pytest.approx(1e-318)

    assert ftz.flush_denormals()
    assert ftz.denormals_flushed()
    assert ftz.control_register() & ftz._BITS == ftz._BITS
    assert _multiply(1e-308, 1e-10) == 0.0  # FTZ: subnormal results are 0
    assert np.multiply(np.array([1e-308]), 1e-10)[0] == 0.0
    assert _multiply(5e-324, 1e300) == 0.0  # DAZ: subnormal operands are 0
    assert np.multiply(np.array([5e-324]), 1e300)[0] == 0.0
    assert _multiply(3 * TINY, 0.5) == 1.5 * TINY  # normal values are untouched

    # a kernel compiled after the flags were set runs with them too
    fresh = numba.njit(lambda a, b: a * b)
    assert fresh(1e-308, 1e-10) == 0.0
    assert ftz.denormals_flushed()


DOMAIN = Box(0.0, 2000.0, -1000.0, 0.0)


def _model(points):
    y = DOMAIN.clamp(points)[:, 1]
    return {"VP": 1500.0 - y, "RHO": 1000.0 - y}


def test_solver_sets_flags_and_traces_equal_those_without_them():
    ftz.flush_denormals(False)
    # a Ricker delayed by 1.6 s starts at ~1e-276: its numerical front, which spreads an
    # element per step, drops through the subnormal range within the first steps
    problem = solver(build_mesh(DOMAIN, 300.0, 100.0, 4), _model, end_time=2.5,
                     absorbing=margins(300.0, 2000.0), time_shift=1.6)
    assert ftz.denormals_flushed()  # set by the WaveSolver constructor
    shot = event([(500.0, -500.0)], [(x, 0.0) for x in np.linspace(100.0, 1900.0, 7)])
    flushed = problem.forward(shot).traces

    def subnormal_points() -> int:
        """The most subnormal points the field held at any step of the forward run."""
        src, signals = problem._signals(shot)
        stepper, most = problem.stepper, [0]

        def count(n, u, u_old):
            most[0] = max(most[0], int(np.count_nonzero((u != 0.0) & (np.abs(u) < TINY))))

        stepper.advance(stepper.initial_state(), problem.axis.n_steps, src, signals,
                        on_step=count)
        return most[0]

    assert subnormal_points() == 0
    ftz.flush_denormals(False)
    assert subnormal_points() > 100  # the run without the flags does meet subnormals
    kept = problem.forward(shot).traces

    scale = np.abs(kept).max()
    assert scale > 10.0
    assert np.abs(flushed - kept).max() <= 1e-12 * scale
