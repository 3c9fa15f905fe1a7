"""Explicit (leapfrog) time stepping of ``M u'' + C u' + K u = f``.

The recurrence, with diagonal ``M`` and ``C`` and symmetric ``K``::

    M (u[n+1] - 2 u[n] + u[n-1]) + dt C v[n] = -dt^2 (K u[n] - f[n]),
    v[n] = w+ u[n+1] + w0 u[n] + w- u[n-1]  (a velocity times dt)

with ``(w+, w0, w-) = DAMPING_WEIGHTS``, starts from rest (``u[0] = u[-1] = 0``). Point sources inject ``f[n] = sum_k w_k s(t_n)``
and receivers sample ``u_r[n] = sum_k w_k u[n][idx_k]``. For a decomposed domain the
caller passes ``assemble``, which sums the values of shared points across subdomains in
place; the numerics do not know how.
"""

from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np

from ..errors import NumericalError
from .geometry import ElementGeometry
from .gll import derivative_matrix
from .operators import AcousticStiffness

#: The damping term's velocity (times dt) ``w+ u[n+1] + w0 u[n] + w- u[n-1]``: a quarter step
#: behind the centred ``(u[n+1] - u[n-1]) / 2``, ``(u[n+1] + 2 u[n] - 3 u[n-1]) / 4``. The
#: Stacey boundary sends back less with it: 0.087% of the tutorial's surface traces against
#: 0.105% centred (tests/test_absorbing.py; 0.086-0.095% for lags of 0.1 to 0.4 steps, the
#: backward difference ``u[n] - u[n-1]``, SPECFEM's Newmark predictor, blows up there at this
#: time step). It is first order in time at the damped points only (the margins' edges; C is 0
#: elsewhere), and the damped recurrence alone is stable for ``dt C / M <= 4``.
DAMPING_WEIGHTS = (0.25, 0.5, -0.75)

#: Steps between two checks that the wavefield is finite (a pass over it: ~0.5% of a step's
#: cost each time); a field that blows up is caught within this many steps.
FINITE_CHECK_EVERY = 128

#: Fraction of the leapfrog stability limit used for a CFL-derived time step: at 0.8 the
#: time (dispersion) error of the leapfrog scheme dominated the spatial one by 20x at the
#: tutorial resolution (1.4% trace error against the analytic solution); 0.5 gives 0.5%.
COURANT_FACTOR = 0.5


@dataclass(frozen=True)
class TimeAxis:
    """Samples ``t_n = start_time + n dt`` (s) for ``n = 0..n_steps``."""

    dt: float
    n_steps: int
    start_time: float = 0.0

    @classmethod
    def covering(cls, end_time: float, dt: float) -> "TimeAxis":
        """The steps of ``dt`` (s) that reach ``end_time`` (s)."""
        return cls(float(dt), int(np.ceil(end_time / dt - 1e-9)))

    @property
    def times(self) -> np.ndarray:
        """``(n_steps + 1,)`` sample times, s."""
        return self.start_time + self.dt * np.arange(self.n_steps + 1)


@dataclass(frozen=True)
class PointSampling:
    """Sparse rows ``(R, k)``: point indices and interpolation weights (sources or receivers)."""

    indices: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)


@numba.njit(cache=True, fastmath=True)
def _update(u, u_old, ku, cf, special, s_cu, s_co, s_cf, s_new, row):
    """One leapfrog step in place: ``u_old <- u[n+1]``; zeroes ``ku`` for the next step.

    ``u[n+1] = 2 u - u_old - cf ku`` at every point but the ``special`` ones (``(S,)``
    indices: damped or fixed), which take ``s_cu u + s_co u_old - s_cf ku`` (``(S,)`` each;
    ``s_new (S,)`` is scratch). Four streams read, two written: the step is bandwidth-bound.
    A non-empty ``row (P,)`` gets a copy of ``u[n+1]`` (the stored forward wavefield) in the
    same pass.
    """
    for s in range(special.shape[0]):
        p = special[s]
        s_new[s] = s_cu[s] * u[p] + s_co[s] * u_old[p] - s_cf[s] * ku[p]
    if row.shape[0] == 0:
        for i in range(u.shape[0]):
            u_old[i] = 2.0 * u[i] - u_old[i] - cf[i] * ku[i]
            ku[i] = 0.0
    else:
        for i in range(u.shape[0]):
            new = 2.0 * u[i] - u_old[i] - cf[i] * ku[i]
            u_old[i] = new
            row[i] = new
            ku[i] = 0.0
    for s in range(special.shape[0]):
        u_old[special[s]] = s_new[s]
        if row.shape[0] != 0:
            row[special[s]] = s_new[s]


@numba.njit(cache=True)
def _all_finite(u):
    for i in range(u.shape[0]):
        if not np.isfinite(u[i]):
            return False
    return True


@numba.njit(cache=True)
def _sample(u, idx, w, out, n):
    for r in range(idx.shape[0]):
        s = 0.0
        for k in range(idx.shape[1]):
            s += w[r, k] * u[idx[r, k]]
        out[r, n] = s


@numba.njit(cache=True)
def _inject(out, idx, w, signals, n):
    """``out -= sum_s w_s signals[s, n]`` at the rows' points (``f`` enters as ``K u - f``)."""
    for r in range(idx.shape[0]):
        a = signals[r, n]
        for k in range(idx.shape[1]):
            out[idx[r, k]] -= w[r, k] * a


@numba.njit(cache=True, fastmath=True)
def _adjoint_update(v, v_old, kv, cf, special, s_cu, s_co, s_cf, s_new, sum_ukv, u):
    """``_update`` of the adjoint field fused with the m0 kernel's sum ``sum_ukv += u kv``
    (``kv`` the assembled ``K v - dJ/du``; ``LeapfrogStepper.adjoint``)."""
    for s in range(special.shape[0]):
        p = special[s]
        s_new[s] = s_cu[s] * v[p] + s_co[s] * v_old[p] - s_cf[s] * kv[p]
    for i in range(v.shape[0]):
        k = kv[i]
        v_old[i] = 2.0 * v[i] - v_old[i] - cf[i] * k
        sum_ukv[i] += u[i] * k
        kv[i] = 0.0
    for s in range(special.shape[0]):
        v_old[special[s]] = s_new[s]


@dataclass
class State:
    """Leapfrog state: ``u = u[n]``, ``u_old = u[n-1]`` (``(P,)`` each) at step ``n``."""

    n: int
    u: np.ndarray
    u_old: np.ndarray

    def copy(self) -> "State":
        return State(self.n, self.u.copy(), self.u_old.copy())


class LeapfrogStepper:
    """Time stepper for one subdomain. Arrays are ``(P,)`` over its (local) points.

    ``mass`` and ``damping`` are the assembled diagonals ``M`` and ``C``; ``dt`` in s.
    ``assemble(a)`` sums shared-point values across subdomains in place (None: serial);
    ``work (P,)`` is the array it acts on most cheaply, used for ``K u - f``.
    ``all_ranks(flag) -> bool`` is True when ``flag`` holds on every subdomain (None: serial):
    every ``FINITE_CHECK_EVERY`` steps the field is checked to be finite, and a non-finite
    field raises NumericalError on every subdomain alike, naming the step.
    Sources are rows of a ``PointSampling`` with one signal each, ``signals (S, >= n)``
    sampled at the steps (``f[n]`` at ``t_n``).
    """

    def __init__(
        self,
        stiffness: AcousticStiffness,
        mass: np.ndarray,
        damping: np.ndarray,
        dt: float,
        assemble: Callable[[np.ndarray], None] | None = None,
        work: np.ndarray | None = None,
        all_ranks: Callable[[bool], bool] | None = None,
    ):
        self.stiffness = stiffness
        self.dt = float(dt)
        self.n_points = len(mass)
        self.set_coefficients(mass, damping)
        self.assemble = assemble
        self.all_ranks = all_ranks
        # the array K u - f accumulates into: the halo exchange's own buffer if it has one
        self.work = np.zeros(self.n_points) if work is None else work
        self._no_row = np.zeros(0)  # ``_update``'s row when nothing is stored
        #: ``progress(steps_done)`` after every step of ``advance`` and ``adjoint`` (or None)
        self.progress: Callable[[int], None] | None = None
        self._compile()

    def set_coefficients(self, mass: np.ndarray, damping: np.ndarray) -> None:
        """Replace the diagonals ``M`` and ``C`` (``(P,)``) in place (a new model, same dt).

        The step is ``u[n+1] = cu u[n] + co u[n-1] - cf (K u[n] - f[n])`` with
        ``cu = (2 M - w0 dt C) / a``, ``co = -(M + w- dt C) / a``, ``cf = dt^2 / a``,
        ``a = M + w+ dt C`` (``DAMPING_WEIGHTS``); the adjoint runs with the same.
        Where ``C = 0`` that is ``2 u[n] - u[n-1] - cf (...)``: only ``cf (P,)`` is read at
        every point; the other points (damped, or fixed) are listed in ``special (S,)`` with
        their ``cu, co, cf``. ``m0_scale (P,)`` turns the adjoint's ``sum u kv`` into the m0
        kernel (``adjoint``): ``-dt^2 / M``, 0 at fixed points.
        """
        dt = self.dt
        mass = np.asarray(mass, dtype=float)
        damping = np.asarray(damping, dtype=float)
        w_plus, w_0, w_minus = DAMPING_WEIGHTS
        a = mass + w_plus * dt * damping
        cu = (2.0 * mass - w_0 * dt * damping) / a
        co = -(mass + w_minus * dt * damping) / a
        cf = dt**2 / a
        m0_scale = -np.divide(dt**2, mass, out=np.zeros_like(mass), where=mass > 0)
        fixed = getattr(self, "fixed", None)
        if fixed is not None:  # Dirichlet points: u stays 0 there (rows of the recurrence)
            for c in (cu, co, cf, m0_scale):
                c[fixed] = 0.0
        self.cf, self.m0_scale = cf, m0_scale
        special = np.flatnonzero((cu != 2.0) | (co != -1.0))
        self._special = (special, cu[special], co[special], cf[special], np.empty(len(special)))

    def fix(self, fixed: np.ndarray, mass: np.ndarray, damping: np.ndarray) -> None:
        """Hold ``u = 0`` at the points of the boolean mask ``fixed (P,)`` (a Dirichlet
        boundary): their rows of the recurrence are removed, so the forward field, the adjoint
        field and the kernels vanish there, and the adjoint stays the exact transpose."""
        self.fixed = np.asarray(fixed, dtype=bool).copy()
        self.set_coefficients(mass, damping)

    def _compile(self) -> None:
        """Compile (or load from numba's cache) every kernel of the loop, outside of it."""
        one, idx, w = np.zeros(1), np.zeros((1, 1), dtype=np.int64), np.zeros((1, 1))
        none = np.zeros(0, dtype=np.int64)
        _update(one, one.copy(), one.copy(), one, none, one, one, one, one.copy(), self._no_row)
        _update(one, one.copy(), one.copy(), one, none, one, one, one, one.copy(), one.copy())
        _sample(one, idx, w, np.zeros((1, 1)), 0)
        _sample(one, idx, w, np.zeros((2, 2)).T, 0)  # adjoint: lam.T, step-major
        _all_finite(one)
        _inject(one, idx, w, w, 0)
        _adjoint_update(one, one.copy(), one.copy(), one, none, one, one, one, one.copy(),
                        one.copy(), one)
        self.stiffness.add(np.zeros(self.n_points), np.zeros(self.n_points))

    def _check_finite(self, u: np.ndarray, step: int, what: str) -> None:
        """Raise NumericalError (on every subdomain) if ``u`` is not finite everywhere."""
        ok = _all_finite(u)
        if self.all_ranks is not None:
            ok = self.all_ranks(ok)
        if not ok:
            raise NumericalError(f"the {what} became non-finite by step {step} "
                                 f"(t = {step * self.dt:.6g} s): the model, the source amplitudes "
                                 f"or the time step make the simulation blow up")

    def initial_state(self) -> State:
        """Rest: ``u[0] = u[-1] = 0``."""
        return State(0, np.zeros(self.n_points), np.zeros(self.n_points))

    def advance(
        self,
        state: State,
        n_end: int,
        sources: PointSampling,
        signals: np.ndarray,
        receivers: PointSampling | None = None,
        traces: np.ndarray | None = None,
        on_step: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
        keep: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> State:
        """Step ``state`` from its step n to ``n_end`` (updates and returns it).

        Records ``traces[:, k]`` (``(R, >= n_end + 1)``) for k = n+1..n_end if given, and
        calls ``on_step(k, u[k], u[k-1])`` after each step. ``keep = (rows (S, P), row_of)``
        stores ``u[k]`` in ``rows[row_of[k]]`` where that is not negative (``row_of`` indexed
        by step, at least ``n_end + 1`` long), in the step's own pass over the points.
        """
        if signals.ndim != 2 or signals.shape[0] != len(sources) or signals.shape[1] < n_end:
            raise ValueError(f"signals must be (n_sources={len(sources)}, >= {n_end}), "
                             f"got {signals.shape}")
        u_old, u = state.u_old, state.u
        ku = self.work
        ku[:] = 0.0
        src_idx, src_w = sources.indices, sources.weights
        record = receivers is not None and traces is not None
        for n in range(state.n, n_end):
            self.stiffness.add(u, ku)
            _inject(ku, src_idx, src_w, signals, n)
            if self.assemble is not None:
                self.assemble(ku)
            row = (self._no_row if keep is None or keep[1][n + 1] < 0 else
                   keep[0][keep[1][n + 1]])
            _update(u, u_old, ku, self.cf, *self._special, row)  # u_old <- u[n+1]
            u_old, u = u, u_old
            if record:
                _sample(u, receivers.indices, receivers.weights, traces, n + 1)
            if on_step is not None:
                on_step(n + 1, u, u_old)
            if self.progress is not None:
                self.progress(n + 1)
            if (n + 1) % FINITE_CHECK_EVERY == 0 or n + 1 == n_end:
                self._check_finite(u, n + 1, "wavefield")
        state.u, state.u_old, state.n = u, u_old, n_end
        return state

    def run(
        self,
        n_steps: int,
        sources: PointSampling,
        signal: np.ndarray,
        receivers: PointSampling,
        on_step: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """Step ``n_steps`` times from rest; return receiver traces ``(R, n_steps + 1)``.

        ``signal`` is ``(n_steps,)`` (one source time function for every source row) or
        ``(S, n_steps)``; ``on_step(n, u[n], u[n-1])`` is called after each step.
        """
        signals = np.atleast_2d(np.asarray(signal, dtype=float))
        if signals.shape[0] == 1 and len(sources) != 1:
            signals = np.repeat(signals, len(sources), axis=0)
        traces = np.zeros((len(receivers), n_steps + 1))
        self.advance(self.initial_state(), n_steps, sources, signals, receivers, traces, on_step)
        return traces

    def adjoint(
        self,
        n_steps: int,
        receivers: PointSampling,
        adjoint_sources: np.ndarray,
        forward: Callable[[int], np.ndarray],
        record: PointSampling | None = None,
        on_record: Callable[[int, np.ndarray], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Discrete adjoint of ``run`` and the model kernels: ``(g0, g1, lam)``.

        ``adjoint_sources (R, n_steps + 1)`` is ``dJ/du_r[n]``; ``forward(m)`` returns the
        forward field ``u[m]`` (``(P,)``, exact or interpolated). The adjoint of the
        recurrence is the same stepper run backward: with ``l[n]`` the multiplier of
        step n scaled by ``dt^2`` (so that the injection is the forward one),
        ``l[k-1]`` follows from ``l[k]``, ``l[k+1]`` and the receivers injecting
        ``dJ/du[k]``. Summation by parts moves the time differences onto ``l``, so each
        step needs ``u[m]`` alone:

            g0 = sum_m u[m] ((l[m-1] - 2 l[m] + l[m+1]) + dt d (w+ l[m-1] + w0 l[m] + w- l[m+1]))
            g1 = sum_m (grad l[m] . grad u[m])   (quadrature-weighted, per point)

        and ``dJ/dm0 = -w g0 / dt^2``, ``dJ/dm1 = -g1`` (``g1`` is assembled).
        The adjoint recurrence itself gives g0's bracket: it is ``-dt^2/M kv[m]``, ``kv[m]``
        the assembled ``K l[m] - dJ/du[m]`` the step computes anyway (its damped form is
        ``(M + w+ dt C) l[m-1] = (2 M - w0 dt C) l[m] - (M + w- dt C) l[m+1] - dt^2 kv[m]``:
        the transpose of a three-term recurrence has the same coefficients). So the loop
        accumulates ``sum_m u[m] kv[m]`` (no second differences of ``l``, no cancellation)
        and scales it by ``-dt^2/M`` at the end (``m0_scale``; 0 at fixed points).
        ``lam (S, n_steps)`` holds ``l[n]`` sampled at ``record``: for sources
        ``dJ/df_s[n] = lam[s, n]``, i.e. the transpose of the forward map (None without).
        With ``on_record(k, row)`` the samples are not stored: each ``l[k]`` at the rows,
        ``(S,)``, is passed as it is computed (k = n-1 down to 0; ``row`` is reused) and
        ``lam`` is None.
        """
        n = n_steps
        signals = np.ascontiguousarray(adjoint_sources[:, ::-1])  # reversed step j <-> m = n - j
        v_old, v = np.zeros(self.n_points), np.zeros(self.n_points)
        sum_ukv = np.zeros(self.n_points)
        acc = self.stiffness.gradient_accumulator()
        kv = self.work
        kv[:] = 0.0
        # l[n] at the recorded rows, step-major so that each step writes one contiguous row
        lam = None if record is None or on_record is not None else np.zeros((n + 1, len(record)))
        row = None if on_record is None else np.zeros((len(record), 1))
        self.stiffness.add_with_gradient(v, v_old, kv, acc)  # compile outside the loop
        # u[m] is copied into one array first: the kernels then gather from cache, not from
        # wherever the forward field is held (measured: the fused kernel 8% faster on the
        # tutorial mesh when u[m] comes from a buffer of stored steps)
        u_m = np.empty(self.n_points)
        for j in range(n):
            m = n - j
            np.copyto(u_m, forward(m))
            self.stiffness.add_with_gradient(v, u_m, kv, acc)
            _inject(kv, receivers.indices, receivers.weights, signals, j)
            if self.assemble is not None:
                self.assemble(kv)
            _adjoint_update(v, v_old, kv, self.cf, *self._special, sum_ukv, u_m)  # v_old <- l[m-1]
            if lam is not None:
                _sample(v_old, record.indices, record.weights, lam.T, m - 1)
            elif row is not None:
                _sample(v_old, record.indices, record.weights, row, 0)
                on_record(m - 1, row[:, 0])
            v_old, v = v, v_old
            if self.progress is not None:
                self.progress(j + 1)
            if (j + 1) % FINITE_CHECK_EVERY == 0 or j + 1 == n:
                self._check_finite(v, j + 1, "adjoint wavefield")
        g0 = sum_ukv
        g0 *= self.m0_scale
        g1 = self.stiffness.point_values(acc, self.n_points)
        if self.assemble is not None:
            self.assemble(g1)
        return g0, g1, None if lam is None else np.ascontiguousarray(lam[:n].T)


def _reference_derivatives(order: int, dim: int) -> list[np.ndarray]:
    """Derivative matrices ``(n^dim, n^dim)`` along each reference axis for local nodes
    ``a = i + n j [+ n^2 k]`` (kron products of the 1D ``D`` and identities)."""
    d = derivative_matrix(order)
    eye = np.eye(order + 1)
    out = []
    for axis in range(dim):  # axis 0 (xi) acts on i, the fastest index: the last kron factor
        m = np.ones((1, 1))
        for a in reversed(range(dim)):
            m = np.kron(m, d if a == axis else eye)
        out.append(m)
    return out


def element_max_eigenvalues(geometry: ElementGeometry, m0_elem: np.ndarray,
                            m1_elem: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Largest eigenvalue ``(E,)`` (1/s^2) of each element's ``M_e^-1 K_e``.

    By the Rayleigh quotient, the largest eigenvalue of the assembled ``M^-1 K`` is at
    most their maximum, so ``dt <= 2 / sqrt(max)`` is a rigorous leapfrog stability limit
    that needs no communication but a max, and is tight on regular meshes (0.2% above
    the global eigenvalue on the tutorial mesh). ``m0_elem, m1_elem`` are ``(E, n, n)`` or
    ``(E, n, n, n)`` like ``geometry.jw``. The element matrices are dense, ``(n^d, n^d)``
    (125 x 125 at order 4 in 3D, about 1 ms each), built ``chunk`` elements at a time
    (default: 4096 in 2D, 2^21 matrix entries in 3D: 16 MB per batched array).
    """
    if geometry.dim == 2:
        return _element_max_eigenvalues_2d(geometry, m0_elem, m1_elem,
                                           4096 if chunk is None else chunk)
    n = geometry.order + 1
    dim = geometry.dim
    size = n**dim
    if chunk is None:
        chunk = max(1, 2**21 // size**2)
    derivatives = _reference_derivatives(geometry.order, dim)
    e = len(m0_elem)
    out = np.empty(e)
    g = geometry.metric
    pairs = [(a, b) for a in range(dim) for b in range(dim)
             if np.any(g[a, b] != 0.0)]  # a box's metric is diagonal: 3 terms, not 9
    for s in range(0, e, chunk):
        sl = slice(s, min(s + chunk, e))
        m1 = m1_elem[sl].reshape(-1, size)
        # K_e = sum_ab D_a^T diag(m1 g_ab) D_b, batched over the chunk's elements; a
        # diagonal term couples only the points of one line along axis a: built on it
        k = np.zeros((len(m1), size, size))
        lines = k.reshape((len(m1),) + (n,) * (2 * dim))  # [e, (k,) j, i, (k',) j', i']
        d = derivative_matrix(geometry.order)
        for a, b in pairs:
            c = m1 * np.asarray(g[a, b, sl]).reshape(-1, size)
            if a != b or dim != 3:
                k += derivatives[a].T @ (c[:, :, None] * derivatives[b])
                continue
            c = c.reshape(-1, n, n, n)
            if a == 0:  # along i: [e, k, j, i, k, j, i']
                np.einsum("ekjikjm->ekjim", lines)[...] += np.einsum(
                    "li,ekjl,lm->ekjim", d, c, d)
            elif a == 1:  # along j: [e, k, j, i, k, j', i]
                np.einsum("ekjikmi->ekjim", lines)[...] += np.einsum(
                    "lj,ekli,lm->ekjim", d, c, d)
            else:  # along k: [e, k, j, i, k', j, i]
                np.einsum("ekjimji->ekjim", lines)[...] += np.einsum(
                    "lk,elji,lm->ekjim", d, c, d)
        r = 1.0 / np.sqrt((m0_elem[sl] * geometry.jw[sl]).reshape(-1, size))
        k *= r[:, :, None]
        k *= r[:, None, :]
        out[sl] = np.linalg.eigvalsh(k)[:, -1]
    return out


def _element_max_eigenvalues_2d(geometry: ElementGeometry, m0_elem: np.ndarray,
                                m1_elem: np.ndarray, chunk: int) -> np.ndarray:
    """``element_max_eigenvalues`` of quadrilaterals (any bilinear geometry)."""
    n = geometry.order + 1
    d = derivative_matrix(geometry.order)
    eye = np.eye(n)
    dxi, deta = np.kron(eye, d), np.kron(d, eye)  # local node a = i + n j
    e = len(m0_elem)
    out = np.empty(e)
    for s in range(0, e, chunk):
        sl = slice(s, min(s + chunk, e))
        g = geometry.metric
        c = [(m1_elem[sl] * g[a, b, sl]).reshape(-1, n * n) for a, b in ((0, 0), (0, 1), (1, 1))]
        # K_e = Dxi^T (c11 Dxi + c12 Deta) + Deta^T (c12 Dxi + c22 Deta), batched matmuls
        k = dxi.T @ (c[0][:, :, None] * dxi + c[1][:, :, None] * deta)
        k += deta.T @ (c[1][:, :, None] * dxi + c[2][:, :, None] * deta)
        r = 1.0 / np.sqrt((m0_elem[sl] * geometry.jw[sl]).reshape(-1, n * n))
        out[sl] = np.linalg.eigvalsh(r[:, :, None] * k * r[:, None, :])[:, -1]
    return out


def _candidate_elements(geometry: ElementGeometry, m0_elem: np.ndarray,
                        m1_elem: np.ndarray) -> np.ndarray | None:
    """Indices of the elements whose eigenvalue may be the largest, or None (all may be).

    For identical elements (one ``jw`` and metric for all), with ``lam_ref`` and ``x`` the
    largest eigenvalue and its eigenvector of the reference element (``m0 = m1 = 1``):
    ``K_e(m1) <= max(m1_e) K_e(1)`` and ``M_e >= min(m0_e) M_e(1)`` bound ``lam_e`` above by
    ``max(m1_e) / min(m0_e) lam_ref``, and the Rayleigh quotient ``x^T K_e x / x^T M_e x``
    bounds it below. An element whose upper bound is below the largest lower bound cannot
    hold the maximum; elements with the same ``m0_e, m1_e`` have the same eigenvalue, so
    one of each stays. Rigorous: the maximum over the candidates is the maximum over all.
    """
    e = len(m0_elem)
    if e == 0:
        return None
    jw, g = geometry.jw, geometry.metric
    if not (np.all(jw == jw[:1]) and np.all(g == g[:, :, :1])):
        return None
    size = jw[0].size
    one = np.ones((1,) + jw.shape[1:])
    ref = _ReferenceElement(geometry, one)
    lam_ref, x = ref.top_pair
    upper = (m1_elem.reshape(e, size).max(axis=1) / m0_elem.reshape(e, size).min(axis=1)
             * lam_ref)
    lower = (m1_elem.reshape(e, size) @ ref.stiffness_weights(x)) / (
        m0_elem.reshape(e, size) @ (jw[0].ravel() * x**2))
    keep = np.flatnonzero(upper >= lower.max() * (1.0 - 1e-12))
    both = np.concatenate((m0_elem.reshape(e, size)[keep], m1_elem.reshape(e, size)[keep]),
                          axis=1)
    _, first = np.unique(both, axis=0, return_index=True)
    return keep[np.sort(first)]


class _ReferenceElement:
    """One element of ``geometry`` (its first) with coefficients ``m (1, n, ..)``."""

    def __init__(self, geometry: ElementGeometry, m: np.ndarray):
        dim, size = geometry.dim, geometry.jw[0].size
        self.derivatives = _reference_derivatives(geometry.order, dim)
        self.metric = [[np.asarray(geometry.metric[a, b, 0]).ravel() for b in range(dim)]
                       for a in range(dim)]
        self.jw = np.asarray(geometry.jw[0]).ravel()
        k = np.zeros((size, size))
        for a in range(dim):
            for b in range(dim):
                k += self.derivatives[a].T @ (self.metric[a][b][:, None] * self.derivatives[b])
        r = 1.0 / np.sqrt(self.jw)
        lam, vec = np.linalg.eigh(r[:, None] * k * r[None, :])
        self.top_pair = lam[-1], r * vec[:, -1]  # generalized eigenvector of (K, M)

    def stiffness_weights(self, x: np.ndarray) -> np.ndarray:
        """``q (size,)`` with ``x^T K(m1) x = m1 . q`` for coefficients ``m1`` at the points."""
        dx = [d @ x for d in self.derivatives]
        dim = len(dx)
        return sum(self.metric[a][b] * dx[a] * dx[b] for a in range(dim) for b in range(dim))


def stable_time_step(geometry: ElementGeometry, m0_elem: np.ndarray,
                     m1_elem: np.ndarray) -> float:
    """The leapfrog stability limit ``2 / sqrt(max eigenvalue)`` (s) bounded element by
    element (``element_max_eigenvalues``); ``inf`` for no elements. Take the minimum over
    subdomains for a decomposed mesh. In 3D only the elements that can hold the maximum
    get their dense eigenproblem (``_candidate_elements``; the same value as all of them)."""
    if geometry.dim == 3:
        keep = _candidate_elements(geometry, m0_elem, m1_elem)
        if keep is not None:
            sub = ElementGeometry(geometry.order, geometry.coords[:, keep], geometry.jw[keep],
                                  geometry.metric[:, :, keep])
            m0_elem, m1_elem, geometry = m0_elem[keep], m1_elem[keep], sub
    lam = element_max_eigenvalues(geometry, m0_elem, m1_elem)
    return 2.0 / np.sqrt(lam.max()) if lam.size else float("inf")
