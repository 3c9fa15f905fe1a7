"""Adjoint gradients of a misfit with checkpointing and wavefield compression.

The forward run keeps checkpoints (the leapfrog state every C steps); the adjoint run goes
back chunk by chunk, recomputes each chunk's forward field from its checkpoint, keeps it
every ``interval`` steps (``forward_wavefield_sampling_interval``) and interpolates
linearly in between. With ``interval = 1`` the gradient is the exact derivative of the
computed misfit. When the whole sampled wavefield fits the memory budget, the forward run
keeps it directly and nothing is recomputed.
"""

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..sem.timestepper import LeapfrogStepper, PointSampling, State
from .forward import ForwardProblem, PointSource, TimeAxis


def plan_chunks(n_steps: int, interval: int, n_points: int, budget_bytes: float,
                checkpoints_on_disk: bool = True) -> int:
    """Checkpoint spacing C (a multiple of ``interval``) for a per-rank memory budget.

    All in memory (C >= n_steps) when the sampled wavefield fits. Otherwise one chunk of
    ``C / interval + 2`` samples must fit: with checkpoints on disk the fewest chunks the
    budget allows, of equal length (the forward run keeps the last one, so the adjoint
    recomputes the others); with checkpoints in memory C minimises their sum,
    ``C ~ sqrt(2 n_steps interval)``. Every chunk is recomputed once whatever C is.
    Raises ValueError if nothing fits.
    """
    snapshot = 8.0 * n_points
    whole = interval * math.ceil(n_steps / interval)
    if (whole // interval + 2) * snapshot <= budget_bytes:
        return whole
    if checkpoints_on_disk:
        c = interval * int(budget_bytes // snapshot - 2)
        need = 3 * snapshot
        if c >= interval:  # equal chunks: the last one, kept from the forward run, is full
            chunks = math.ceil(n_steps / c)
            c = interval * math.ceil(n_steps / (chunks * interval))
    else:
        c = memory_optimal_spacing(n_steps, interval)
        need = (c // interval + 2 + 2 * math.ceil(n_steps / c)) * snapshot
    if c < interval or need > budget_bytes:
        raise ValueError(f"needs at least {need / 2**20:.1f} MB per rank, the budget is "
                         f"{budget_bytes / 2**20:.1f} MB")
    return c


_BUFFER: list[np.ndarray] = []


def _buffer(shape: tuple[int, int]) -> np.ndarray:
    """A ``shape`` array reusing the previous call's memory when it is large enough:
    fresh memory costs a page fault per 4 KiB on first touch (1.1 s for the 414 MB of the
    tutorial's whole wavefield on the test machines), so events and repeated gradients
    in one process share it."""
    need = shape[0] * shape[1]
    if not _BUFFER or _BUFFER[0].size < need:
        _BUFFER[:] = [np.empty(need)]
    return _BUFFER[0][:need].reshape(shape)


def memory_optimal_spacing(n_steps: int, interval: int) -> int:
    """Checkpoint spacing (a multiple of ``interval``) minimising checkpoints + one chunk."""
    return interval * max(1, round(math.sqrt(2.0 * n_steps / interval)))


class ForwardWavefield:
    """``u[m]`` for the adjoint run: checkpoints, chunk recomputation, compression.

    The samples of one chunk (steps ``c0, c0 + interval, ...`` and the chunk's end) live
    in one preallocated ``(rows, P)`` array reused by every chunk. ``save(step, state)``
    (optional) receives the state every ``save_every`` steps of the forward run, e.g. to
    write checkpoint files; ``load(step) -> State`` replaces the in-memory checkpoints
    when the forward run is not repeated (``reuse``).
    """

    def __init__(self, stepper: LeapfrogStepper, sources: PointSampling, signals: np.ndarray,
                 n_steps: int, interval: int, chunk: int,
                 save: Callable[[int, State], None] | None = None, save_every: int | None = None,
                 load: Callable[[int], State] | None = None):
        if chunk % interval:
            raise ValueError(f"chunk {chunk} must be a multiple of the interval {interval}")
        self.stepper, self.sources, self.signals = stepper, sources, signals
        self.n_steps, self.interval, self.chunk = n_steps, interval, chunk
        self.checkpoints: dict[int, State] = {}  # in memory, when there is no ``load``
        self.save, self.save_every, self.load = save, save_every, load
        self.load_state = load or (lambda c: self.checkpoints[c].copy())
        span = min(chunk, n_steps)
        self.rows = _buffer((span // interval + 2, stepper.n_points))
        self._mix = np.empty(stepper.n_points)
        self._loaded = None  # (c0, c1) of the chunk in self.rows
        self.recomputed_steps = 0

    @property
    def peak_bytes(self) -> int:
        """Memory of the stored wavefield: chunk samples plus checkpoints."""
        return self.rows.nbytes + sum(2 * s.u.nbytes for s in self.checkpoints.values())

    def _row(self, k: int, c0: int, c1: int) -> int:
        return (k - c0) // self.interval if k != c1 else len(self.rows) - 1

    def _keep(self, c0: int, c1: int):
        """``on_step`` storing u at multiples of the interval and at the chunk's end."""
        def on_step(k, u, _):
            if (k - c0) % self.interval == 0 or k == c1:
                self.rows[self._row(k, c0, c1)] = u
        return on_step

    def run_forward(self, receivers: PointSampling) -> np.ndarray:
        """The forward run: traces ``(R, n_steps + 1)``; keeps checkpoints (or everything)."""
        traces = np.zeros((len(receivers), self.n_steps + 1))
        state = self.stepper.initial_state()
        in_memory = self.chunk >= self.n_steps
        if in_memory:
            self.rows[0] = state.u
            self._loaded = (0, self.n_steps)
        every = self.save_every or self.chunk
        stops = sorted(set(range(0, self.n_steps, every)) | set(range(0, self.n_steps, self.chunk)))
        last = ((self.n_steps - 1) // self.chunk) * self.chunk  # the adjoint's first chunk
        for c0, c1 in zip(stops, stops[1:] + [self.n_steps]):
            if self.save is not None and c0 % every == 0:
                self.save(c0, state)
            if not in_memory and self.load is None and c0 % self.chunk == 0:
                self.checkpoints[c0] = state.copy()
            keep = None
            if in_memory:
                keep = self._keep(0, self.n_steps)
            elif c0 >= last:  # keep the last chunk's samples now instead of recomputing them
                if c0 == last:
                    self.rows[0] = state.u
                keep = self._keep(last, self.n_steps)
                self._loaded = (last, self.n_steps)
            self.stepper.advance(state, c1, self.sources, self.signals, receivers, traces, keep)
        return traces

    def _load(self, m: int) -> tuple[int, int]:
        c0 = ((m - 1) // self.chunk) * self.chunk
        c1 = min(c0 + self.chunk, self.n_steps)
        if self._loaded != (c0, c1):
            state = self.load_state(c0)
            self.rows[0] = state.u
            self.stepper.advance(state, c1, self.sources, self.signals,
                                 on_step=self._keep(c0, c1))
            self.recomputed_steps += c1 - c0
            self._loaded = (c0, c1)
        return c0, c1

    def __call__(self, m: int) -> np.ndarray:
        """``u[m]`` (exact at stored steps, linear in time in between), 1 <= m <= n_steps.

        The array returned is reused by the next call."""
        c0, c1 = self._load(m)
        a = c0 + ((m - c0) // self.interval) * self.interval
        if a == m:
            return self.rows[self._row(m, c0, c1)]
        b = min(a + self.interval, c1)
        t = (m - a) / (b - a)
        np.multiply(self.rows[self._row(a, c0, c1)], 1.0 - t, out=self._mix)
        self._mix += t * self.rows[self._row(b, c0, c1)]
        return self._mix


@dataclass(frozen=True)
class EventGradient:
    """One event on one rank: misfit (global), gradients at the local points ``(L,)``."""

    misfit: float
    dvp: np.ndarray
    drho: np.ndarray
    receivers_kept: np.ndarray
    traces: np.ndarray
    forward_seconds: float
    adjoint_seconds: float
    recomputed_steps: int
    wavefield_bytes: int


MisfitFunction = Callable[[np.ndarray, np.ndarray], tuple[float, np.ndarray]]


@dataclass
class CheckpointIO:
    """Where a forward run's states go: ``save(step, state)`` every ``spacing`` steps;
    ``load(step) -> State`` reads them back (for the chunks of this run, or of an earlier
    run whose states are reused), so no checkpoint is kept in memory."""

    spacing: int
    save: Callable[[int, State], None] | None = None
    load: Callable[[int], State] | None = None


def event_gradient(
    problem: ForwardProblem,
    axis: TimeAxis,
    sources: list[PointSource],
    receivers_xy: np.ndarray,
    center_frequency: float,
    time_shift: float | None,
    misfit: MisfitFunction,
    reduce_sum: Callable[[float], float] = lambda v: v,
    interval: int = 1,
    chunk: int | None = None,
    checkpoints: CheckpointIO | None = None,
    stored_traces: np.ndarray | None = None,
) -> EventGradient:
    """Misfit and raw gradient ``dJ/dVP``, ``dJ/dRHO`` at the problem's local points.

    ``misfit(kept_receiver_indices, traces) -> (J_part, dJ/dtraces)`` acts on this rank's
    receivers; ``reduce_sum`` adds the parts of all ranks. ``chunk`` is the checkpoint
    spacing in steps (default: everything in memory). With ``checkpoints.save`` the
    forward run also hands its states to it; with ``checkpoints.load`` and the traces of
    all receivers ``stored_traces (R, n_steps + 1)`` of an earlier run, the forward run is
    not repeated: the adjoint recomputes the chunks from the stored states.
    """
    src, signals = problem.source_signals(sources, axis, center_frequency, time_shift)
    keep_r, rec = problem.sampling(receivers_xy)
    stepper = problem.stepper(axis.dt)
    if chunk is None:
        chunk = interval * math.ceil(axis.n_steps / interval)
    t0 = time.perf_counter()
    if stored_traces is not None:
        wavefield = ForwardWavefield(stepper, src, signals, axis.n_steps, interval,
                                     checkpoints.spacing, load=checkpoints.load)
        traces = np.ascontiguousarray(stored_traces[keep_r])
    else:
        save = checkpoints.save if checkpoints else None
        wavefield = ForwardWavefield(stepper, src, signals, axis.n_steps, interval, chunk,
                                     save=save, save_every=checkpoints.spacing if save else None,
                                     load=checkpoints.load if checkpoints else None)
        traces = wavefield.run_forward(rec)
    t1 = time.perf_counter()
    j_part, adjoint_sources = misfit(keep_r, traces)
    j = reduce_sum(j_part)
    t2 = time.perf_counter()
    g0, g1, _ = stepper.adjoint(axis.n_steps, rec, adjoint_sources, wavefield)
    t3 = time.perf_counter()
    # dJ/dm0 = -w g0 / dt^2, dJ/dm1 = -g1; m0 = 1/(rho vp^2), m1 = 1/rho
    djdm0 = -problem.weights * g0 / axis.dt**2
    djdm1 = -g1
    vp, rho = problem.vp, problem.rho
    dvp = djdm0 * (-2.0 / (rho * vp**3))
    drho = djdm0 * (-1.0 / (rho**2 * vp**2)) + djdm1 * (-1.0 / rho**2)
    return EventGradient(j, dvp, drho, keep_r, traces, t1 - t0, t3 - t2,
                         wavefield.recomputed_steps, wavefield.peak_bytes)
