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


class WavefieldBuffer:
    """Memory for the stored forward wavefield, kept by a solver and reused by every event
    and gradient it computes: fresh memory costs a page fault per 4 KiB on first touch
    (1.1 s for the 414 MB of the tutorial's whole wavefield on the test machines)."""

    def __init__(self):
        self._data: np.ndarray | None = None

    def rows(self, shape: tuple[int, int]) -> np.ndarray:
        """A ``shape`` array, reusing this buffer's memory when it is large enough."""
        need = shape[0] * shape[1]
        if self._data is None or self._data.size < need:
            self._data = None  # free the old memory before taking the new
            self._data = np.empty(need)
        return self._data[:need].reshape(shape)


def memory_optimal_spacing(n_steps: int, interval: int) -> int:
    """Checkpoint spacing (a multiple of ``interval``) minimising checkpoints + one chunk."""
    return interval * max(1, round(math.sqrt(2.0 * n_steps / interval)))


class ForwardWavefield:
    """``u[m]`` for the adjoint run: checkpoints, chunk recomputation, compression.

    The samples of one chunk (steps ``c0, c0 + interval, ...`` and the chunk's end) live
    in one ``(rows, P)`` array of ``buffer``, reused by every chunk. ``save(step, state)``
    (optional) receives the state every ``save_every`` steps of the forward run, e.g. to
    write checkpoint files; ``load(step) -> State`` replaces the in-memory checkpoints
    when the forward run is not repeated (``reuse``).
    """

    def __init__(self, stepper: LeapfrogStepper, sources: PointSampling, signals: np.ndarray,
                 n_steps: int, interval: int, chunk: int, buffer: WavefieldBuffer,
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
        self.rows = buffer.rows((span // interval + 2, stepper.n_points))
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


@dataclass
class CheckpointIO:
    """Where a forward run's states go: ``save(step, state)`` every ``spacing`` steps;
    ``load(step) -> State`` reads them back (for the chunks of this run, or of an earlier
    run whose states are reused), so no checkpoint is kept in memory. ``traces``: the
    receiver traces ``(R, n_steps + 1)`` of an earlier run whose states ``load`` reads (the
    forward run is then not repeated), or None. ``parallel.checkpoints.EventCheckpoints``
    offers the same, in files."""

    spacing: int
    save: Callable[[int, State], None] | None = None
    load: Callable[[int], State] | None = None
    traces: np.ndarray | None = None
