"""Bound-constrained L-BFGS with a preconditioner and a backtracking line search.

Pure numpy, root-only. Vectors are flat ``(n,)`` arrays of the inversion space; the inner
product is weighted, ``<a, b> = sum_i w_i a_i b_i`` (``w`` the quadrature weights of the
inversion mesh), so the gradient's representer is the kernel ``k = g / w`` (``g = dJ/dx``,
Euclidean) and the smoothing preconditioner ``S`` is self-adjoint and positive definite in
it: L-BFGS in this inner product with ``H0 = gamma S`` is a proper quasi-Newton method.

Bounds ``lower <= x <= upper`` are kept by projection (a projected quasi-Newton method):
components at a bound whose gradient pushes outward form the active set; the direction is
computed on the free components, the step is projected, and the line search accepts the
first step length meeting the projected Armijo condition

    f(P(x + a d)) <= f(x) + c1 <g, P(x + a d) - x>

halving ``a`` otherwise. A line search that fails with a quasi-Newton direction is retried
once along the preconditioned steepest descent; if that fails too, LineSearchFailed says so.
Every iterate is feasible: bounds are never violated.

>>> import numpy as np
>>> rosen = lambda x: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
>>> grad = lambda x: np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2),
...                            200 * (x[1] - x[0] ** 2)])
>>> x, f, _ = minimize(lambda x: (rosen(x), grad(x)), np.array([-1.2, 1.0]), iterations=200)
>>> bool(np.allclose(x, [1.0, 1.0], atol=1e-5))
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generator

import numpy as np

from ..errors import FwimpiError

#: Sufficient-decrease constant of the Armijo condition.
ARMIJO_C1 = 1e-4
#: Step lengths tried per line search (halving), before giving up on a direction.
MAX_TRIALS = 8
#: The first step changes the largest component by this fraction of max(|x|_inf, 1).
FIRST_STEP_FRACTION = 0.02


class LineSearchFailed(FwimpiError):
    """No step length gave sufficient decrease along the quasi-Newton direction nor along
    the preconditioned steepest descent."""


@dataclass
class LBFGS:
    """State of projected, preconditioned L-BFGS: bounds ``lower``, ``upper`` and weights
    ``weights`` ``(n,)``; ``memory`` pairs ``(s, y)`` kept (``y`` as kernels ``dg / w``)."""

    lower: np.ndarray
    upper: np.ndarray
    weights: np.ndarray
    memory: int = 5
    precondition: Callable[[np.ndarray], np.ndarray] = field(default=lambda v: v, repr=False)
    s: list = field(default_factory=list)
    y: list = field(default_factory=list)

    def inner(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sum(self.weights * a * b))

    def project(self, x: np.ndarray) -> np.ndarray:
        return np.clip(x, self.lower, self.upper)

    def free(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Components not held at a bound by a gradient that pushes outward."""
        with np.errstate(invalid="ignore"):
            at_lower = (np.isfinite(self.lower) & (g > 0)
                        & (x - self.lower <= 1e-12 * np.maximum(np.abs(self.lower), 1.0)))
            at_upper = (np.isfinite(self.upper) & (g < 0)
                        & (self.upper - x <= 1e-12 * np.maximum(np.abs(self.upper), 1.0)))
        return ~(at_lower | at_upper)

    def direction(self, x: np.ndarray, g: np.ndarray, steepest: bool = False) -> np.ndarray:
        """A descent direction at ``x`` with gradient ``g`` (Euclidean ``dJ/dx``): the
        two-loop recursion on the free components, ``H0 = gamma S``."""
        free = self.free(x, g).astype(float)
        q = free * g / self.weights  # the kernel: the gradient in the weighted inner product
        pairs = [] if steepest else list(zip(self.s, self.y))
        alphas = []
        for s, y in reversed(pairs):
            sf, yf = free * s, free * y
            rho = self.inner(yf, sf)
            if rho <= 0:
                continue
            a = self.inner(sf, q) / rho
            alphas.append((a, sf, yf, rho))
            q = q - a * yf
        gamma = 1.0
        if pairs:
            s, y = free * pairs[-1][0], free * pairs[-1][1]
            yy = self.inner(y, y)
            if yy > 0 and self.inner(s, y) > 0:
                gamma = self.inner(s, y) / yy
        r = gamma * free * self.precondition(q)
        for a, sf, yf, rho in reversed(alphas):
            b = self.inner(yf, r) / rho
            r = r + (a - b) * sf
        d = -free * r
        if float(np.dot(g, d)) >= 0 and not steepest:  # not a descent direction: restart
            self.s.clear()
            self.y.clear()
            return self.direction(x, g, steepest=True)
        return d

    def update(self, x_old: np.ndarray, g_old: np.ndarray, x_new: np.ndarray,
               g_new: np.ndarray) -> None:
        """Remember the pair of an accepted step (skipped without positive curvature)."""
        s, y = x_new - x_old, (g_new - g_old) / self.weights
        if self.inner(s, y) > 1e-12 * np.sqrt(self.inner(s, s) * self.inner(y, y)):
            self.s.append(s)
            self.y.append(y)
            del self.s[:-self.memory], self.y[:-self.memory]

    def state(self) -> dict[str, np.ndarray]:
        """Arrays that restore the memory (``restore``)."""
        n = len(self.lower)
        return {"s": np.array(self.s).reshape(-1, n), "y": np.array(self.y).reshape(-1, n)}

    def restore(self, state: dict[str, np.ndarray]) -> None:
        self.s, self.y = list(state["s"]), list(state["y"])


@dataclass(frozen=True)
class Step:
    """An accepted step: the new point, its misfit and gradient, the step length, and the
    trials (evaluations) it took."""

    x: np.ndarray
    f: float
    g: np.ndarray
    alpha: float
    trials: int


Evaluation = tuple[float, np.ndarray]


def line_search(opt: LBFGS, x: np.ndarray, f: float, g: np.ndarray, d: np.ndarray,
                alpha: float) -> Generator[np.ndarray, Evaluation, Step | None]:
    """Backtracking projected Armijo search from ``x`` along ``d``: yields each trial point
    and receives ``(f, g)`` there (``f`` may be ``inf`` for an unusable model). Returns the
    accepted Step, or None when ``MAX_TRIALS`` trials gave no sufficient decrease."""
    for trial in range(1, MAX_TRIALS + 1):
        xt = opt.project(x + alpha * d)
        if np.array_equal(xt, x):
            return None
        ft, gt = yield xt
        if np.isfinite(ft) and ft <= f + ARMIJO_C1 * float(np.dot(g, xt - x)):
            return Step(xt, ft, gt, alpha, trial)
        alpha *= 0.5
    return None


def iterate(opt: LBFGS, x: np.ndarray, f: float, g: np.ndarray, first: bool
            ) -> Generator[np.ndarray, Evaluation, Step]:
    """One update of ``x``: a direction, a line search (retried once along the steepest
    descent), the memory updated. Yields trial points, receives ``(f, g)``. Raises
    LineSearchFailed."""
    trials = 0
    for steepest in (False, True):
        d = opt.direction(x, g, steepest=steepest)
        if not np.any(d):
            raise LineSearchFailed("no descent direction: every component is at a bound or "
                                   "the gradient vanishes")
        fresh = first or steepest or not opt.s
        alpha = (FIRST_STEP_FRACTION * max(np.abs(x).max(initial=0.0), 1.0) / np.abs(d).max()
                 if fresh else 1.0)
        step = yield from line_search(opt, x, f, g, d, alpha)
        if step is not None:
            opt.update(x, g, step.x, step.g)
            return Step(step.x, step.f, step.g, step.alpha, trials + step.trials)
        trials += MAX_TRIALS
        opt.s.clear()
        opt.y.clear()
    raise LineSearchFailed(f"the line search found no decrease of the misfit in {trials} "
                           f"trials along the quasi-Newton direction nor along the "
                           f"preconditioned steepest descent (misfit {f:.6e})")


def minimize(function: Callable[[np.ndarray], Evaluation], x0: np.ndarray, iterations: int,
             lower=None, upper=None, weights=None, memory: int = 5,
             precondition=None) -> tuple[np.ndarray, float, list[float]]:
    """Serial driver (for tests and small problems): ``iterations`` updates of ``x0``
    minimising ``function(x) -> (f, dJ/dx)`` within bounds. Returns ``(x, f, history)``;
    stops early when the line search fails."""
    n = len(x0)
    opt = LBFGS(np.full(n, -np.inf) if lower is None else np.asarray(lower, float),
                np.full(n, np.inf) if upper is None else np.asarray(upper, float),
                np.ones(n) if weights is None else np.asarray(weights, float), memory,
                precondition or (lambda v: v))
    x = opt.project(np.asarray(x0, float))
    f, g = function(x)
    history = [f]
    for k in range(iterations):
        steps = iterate(opt, x, f, g, first=k == 0)
        try:
            trial = next(steps)
            while True:
                trial = steps.send(function(trial))
        except StopIteration as done:
            x, f, g = done.value.x, done.value.f, done.value.g
        except LineSearchFailed:
            break
        history.append(f)
    return x, f, history
