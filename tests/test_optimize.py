"""The bound-constrained, preconditioned L-BFGS and its line search on analytic problems:
convergence to the known minimiser, bounds never violated, a clear stop when no decrease
is possible."""

import numpy as np
import pytest

from fwimpi.inversion.optimize import LBFGS, LineSearchFailed, iterate, minimize


def rosenbrock(x):
    f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    g = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
    return f, g


def bounded(function, lower, upper, seen):
    """``function`` that records every point it is asked about and checks the bounds."""
    def wrapped(x):
        seen.append(x.copy())
        assert np.all(x >= lower) and np.all(x <= upper), x
        return function(x)
    return wrapped


def test_rosenbrock_converges_to_its_minimiser():
    x, f, history = minimize(rosenbrock, np.array([-1.2, 1.0]), iterations=200)
    assert np.allclose(x, [1.0, 1.0], atol=1e-6) and f < 1e-12
    assert all(b <= a for a, b in zip(history, history[1:]))  # monotone decrease


def test_rosenbrock_with_an_active_bound():
    # the minimiser of Rosenbrock on x1 <= 0.5 lies on the bound, x0 = sqrt(0.5) or so: check
    # the first-order (KKT) conditions instead of a closed form
    lower, upper = np.array([-2.0, -2.0]), np.array([2.0, 0.5])
    seen = []
    x, f, _ = minimize(bounded(rosenbrock, lower, upper, seen), np.array([-1.2, 0.4]), 300,
                       lower, upper)
    _, g = rosenbrock(x)
    assert x[1] == pytest.approx(0.5, abs=1e-12) and g[1] < 0  # held by the bound
    assert abs(g[0]) < 1e-5  # stationary in the free direction
    assert len(seen) > 10


@pytest.mark.parametrize("seed", [0, 1])
def test_bounded_quadratic_meets_the_kkt_conditions(seed):
    rng = np.random.default_rng(seed)
    n = 30
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = q @ np.diag(np.logspace(0, 3, n)) @ q.T  # condition number 1000
    b = rng.standard_normal(n) * 10
    lower, upper = -np.full(n, 0.05), np.full(n, 0.05)
    seen = []
    x, f, history = minimize(bounded(lambda x: (0.5 * x @ a @ x - b @ x, a @ x - b),
                                     lower, upper, seen), np.zeros(n), 300, lower, upper)
    g = a @ x - b
    at_lower, at_upper = x <= lower + 1e-12, x >= upper - 1e-12
    free = ~(at_lower | at_upper)
    assert at_lower.any() and at_upper.any() and free.any()  # a real bound-constrained case
    assert np.all(g[at_lower] >= -1e-6) and np.all(g[at_upper] <= 1e-6)
    assert np.abs(g[free]).max() < 1e-6 * np.abs(b).max()
    # the projected-gradient solution of scipy's L-BFGS-B agrees
    from scipy.optimize import minimize as scipy_minimize

    ref = scipy_minimize(lambda x: (0.5 * x @ a @ x - b @ x, a @ x - b), np.zeros(n), jac=True,
                         method="L-BFGS-B", bounds=list(zip(lower, upper)),
                         options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000})
    assert np.allclose(x, ref.x, atol=1e-7)


def test_weights_and_preconditioner_define_the_metric():
    """A quadratic whose Hessian is ``W C`` (W the weights): with the preconditioner C^-1
    in the weighted inner product, the first direction is exactly Newton's."""
    rng = np.random.default_rng(3)
    n = 12
    w = rng.uniform(0.5, 2.0, n)
    c = np.diag(rng.uniform(1.0, 50.0, n))
    h = np.diag(w) @ c
    x_star = rng.standard_normal(n)
    opt = LBFGS(np.full(n, -np.inf), np.full(n, np.inf), w,
                precondition=lambda v: np.linalg.solve(c, v))
    x = np.zeros(n)
    g = h @ (x - x_star)
    d = opt.direction(x, g)
    assert np.allclose(x + d, x_star, atol=1e-12)
    _, f, history = minimize(lambda x: (0.5 * (x - x_star) @ h @ (x - x_star),
                                        h @ (x - x_star)), x, 5, weights=w,
                             precondition=lambda v: np.linalg.solve(c, v))
    assert f < 1e-20


def test_no_decrease_is_a_clear_stop():
    def rising(x):  # the gradient says "go down", the function always goes up
        return float(np.sum(x**2)) + 1e-3 * float(np.linalg.norm(x) > 0), np.ones_like(x)

    opt = LBFGS(np.full(3, -np.inf), np.full(3, np.inf), np.ones(3))
    steps = iterate(opt, np.zeros(3), 0.0, np.ones(3), first=True)
    trial = next(steps)
    with pytest.raises(LineSearchFailed, match="no decrease of the misfit in 16 trials"):
        while True:
            trial = steps.send(rising(trial))


def test_unusable_trial_models_are_shrunk():
    """A trial the simulation refuses (``inf``) is treated as no decrease: the step shrinks."""
    seen = []

    def guarded(x):
        seen.append(x.copy())
        if np.abs(x).max() > 0.011:
            return np.inf, None
        return float(np.sum((x - 1.0) ** 2)), 2 * (x - 1.0)

    x, f, _ = minimize(guarded, np.zeros(2), 3)
    assert np.abs(x).max() <= 0.011 and f < 2.0 and any(np.abs(s).max() > 0.011 for s in seen)
