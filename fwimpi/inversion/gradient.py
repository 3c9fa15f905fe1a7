"""Adjoint gradients of a misfit with checkpointing and wavefield compression.

The forward run keeps checkpoints (the leapfrog state every C steps); the adjoint run goes
back chunk by chunk, recomputes each chunk's forward field from its checkpoint, keeps it
every ``interval`` steps (``forward_wavefield_sampling_interval``) and interpolates
linearly in between. With ``interval = 1`` the gradient is the exact derivative of the
computed misfit. When the whole sampled wavefield fits the memory budget, the forward run
keeps it directly and nothing is recomputed.

With lossy compression (``wavefield_compression.lossy``, ZFP in fixed-accuracy mode) the
samples are stored ZFP-compressed (``CompressedRows``): an error of at most the tolerance
times the wavefield's peak per value, a measured gradient error (about 0.1-0.17 times the
tolerance for dJ/dVP on the tutorial; README, Benchmarks) and 18-49x less memory at
tolerances 1e-4 to 1e-2, so that long runs keep the whole compressed wavefield instead of
recomputing it. It costs time: ZFP (de)compresses about 1 GB/s on one core, about 3
forward steps of the 2D solver per sample stored, more than recomputing it.
"""

import math
import mmap
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

try:  # ZFP 1.0 from Debian (python3-zfpy): only lossy compression needs it
    import zfpy
except ImportError:  # pragma: no cover - depends on the installation
    zfpy = None

from ..sem.timestepper import LeapfrogStepper, PointSampling, State


def plan_chunks(n_steps: int, interval: int, n_points: int, budget_bytes: float,
                checkpoints_on_disk: bool = True, lossy: float | None = None) -> int:
    """Checkpoint spacing C (a multiple of ``interval``) for a per-rank memory budget.

    All in memory (C >= n_steps) when the sampled wavefield fits. Otherwise one chunk of
    ``C / interval + 2`` samples must fit: with checkpoints on disk the fewest chunks the
    budget allows, of equal length (the forward run keeps the last one, so the adjoint
    recomputes the others); with checkpoints in memory C minimises their sum,
    ``C ~ sqrt(2 n_steps interval)``. Every chunk is recomputed once whatever C is.
    With ``lossy`` (the ZFP tolerance) a sample takes its estimated compressed size
    (``zfp_bits_per_value``, conservative) plus ``CompressedRows.BUFFERS`` uncompressed
    samples of working memory: the whole run's compressed samples when they fit, else
    chunks of compressed samples. Raises ValueError if nothing fits.
    """
    snapshot = raw = 8.0 * n_points
    fixed = 0.0
    if lossy is not None:
        snapshot = raw * zfp_bits_per_value(lossy) / 64.0
        fixed = CompressedRows.BUFFERS * raw
    whole = interval * math.ceil(n_steps / interval)
    if (whole // interval + 2) * snapshot + fixed <= budget_bytes:
        return whole
    if checkpoints_on_disk:
        c = interval * int((budget_bytes - fixed) // snapshot - 2)
        need = 3 * snapshot + fixed
        if c >= interval:  # equal chunks: the last one, kept from the forward run, is full
            chunks = math.ceil(n_steps / c)
            c = interval * math.ceil(n_steps / (chunks * interval))
    else:
        c = memory_optimal_spacing(n_steps, interval, raw / snapshot)
        need = (c // interval + 2) * snapshot + fixed + 2 * math.ceil(n_steps / c) * raw
    if c < interval or need > budget_bytes:
        raise ValueError(f"needs at least {need / 2**20:.1f} MB per rank, the budget is "
                         f"{budget_bytes / 2**20:.1f} MB")
    return c


def zfp_bits_per_value(tolerance: float) -> float:
    """The planning estimate of ZFP's compressed size (bits per value, at most 64) at a
    tolerance relative to the wavefield's peak, as ``CompressedRows`` stores it:
    ``0.7 log2(1/T) - 1``. Conservative: on the tutorial's densest samples (after the wave
    has filled the domain) ZFP took 1.7, 2.8, 5.1 and 7.2 bits at T = 1e-2 ... 1e-5, the
    estimate is 3.7, 6.0, 8.3 and 10.6; averaged over a run ZFP took less still."""
    return min(64.0, max(1.0, 0.7 * math.log2(1.0 / tolerance) - 1.0))


def prefaulted(n: int) -> np.ndarray:
    """``n`` float64 values of fresh memory, faulted in now rather than inside a time loop:
    anonymous memory mapped with ``MAP_POPULATE``, so the kernel provides every page in one
    call (104 MB in about 33 ms on the test machine, where first touches inside the loop
    cost 10-220 ms depending on the memory's state; transparent huge pages stalled up to
    150 ms on compaction). Elsewhere ``np.empty``, touched once."""
    populate = getattr(mmap, "MAP_POPULATE", 0)
    if populate:
        try:
            area = mmap.mmap(-1, max(int(n), 1) * 8,
                             flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
        except (OSError, ValueError):  # no memory map here: touch the pages instead
            pass
        else:
            return np.frombuffer(area, dtype=np.float64, count=n)
    out = np.empty(n)
    out[::512] = 0.0  # one write per 4 KiB page
    return out


class WavefieldBuffer:
    """Memory for the stored forward wavefield, kept by a solver and reused by every event
    and gradient it computes, faulted in once when it is taken (``prefaulted``): fresh
    memory touched inside the forward loop cost the tutorial's 4-rank job half its forward
    time."""

    def __init__(self):
        self._data: np.ndarray | None = None

    def rows(self, shape: tuple[int, int]) -> np.ndarray:
        """A ``shape`` array, reusing this buffer's memory when it is large enough."""
        need = shape[0] * shape[1]
        if self._data is None or self._data.size < need:
            self._data = None  # free the old memory before taking the new
            self._data = prefaulted(need)
        return self._data[:need].reshape(shape)


def memory_optimal_spacing(n_steps: int, interval: int, ratio: float = 1.0) -> int:
    """Checkpoint spacing (a multiple of ``interval``) minimising checkpoints + one chunk,
    a stored sample being ``1 / ratio`` of a checkpoint's snapshot (compression)."""
    return interval * max(1, round(math.sqrt(2.0 * n_steps * ratio / interval)))


class CompressedRows:
    """The ``(n_rows, P)`` samples of ``ForwardWavefield`` stored ZFP-compressed (zfpy,
    fixed-accuracy mode): a stand-in for its array, ``rows[i] = u`` and ``rows[i]``.

    Rows are compressed in groups of ``GROUP`` consecutive rows, one ``(GROUP, P)`` array
    per group, so that ZFP's 4 x 4 blocks span 4 samples in time and 4 points: 1.5-1.7x
    faster and 2-2.3x smaller than row by row on the tutorial. A group is compressed when its last
    row is written, or the last row of all (a chunk's end), or a row of another group;
    rows are written in increasing order (a chunk at a time). Reading a row decompresses
    its group, the two last ones read staying decompressed (the adjoint interpolates
    between neighbours, going backward).

    The accuracy is absolute: ZFP's tolerance for a group is ``tolerance`` times the
    running peak, the largest ``|u|`` written so far on this rank. With the whole run in
    memory that is the peak of the run up to the group (the first, weaker samples are kept
    more accurately); with chunks, of the samples stored so far (the forward run's last
    chunk, then the recomputed chunks, latest first). Either way it needs no communication
    and is never looser than ``tolerance`` times the wavefield's peak. ZFP keeps the error
    below its tolerance (at most 0.33 of it on the tutorial).
    """

    GROUP = 4
    #: uncompressed working memory, in samples: a group being written, two decompressed
    BUFFERS = 3 * GROUP

    def __init__(self, n_rows: int, n_points: int, tolerance: float):
        if zfpy is None:
            raise RuntimeError("lossy wavefield compression needs zfpy (Debian: python3-zfpy)")
        self.shape = (n_rows, n_points)
        self.tolerance = tolerance
        self.peak = 0.0
        self._packed: list[bytes | None] = [None] * math.ceil(n_rows / self.GROUP)
        self._packed_bytes = 0
        self.max_packed_bytes = 0
        self._stage = np.empty((self.GROUP, n_points))
        self._staged: int | None = None  # the group being written
        self._last = -1  # its last row written (offset in the group)
        self._cache: dict[int, np.ndarray] = {}  # decompressed groups, the last read last

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        """The largest memory taken: compressed groups plus the working arrays."""
        return self.max_packed_bytes + self.BUFFERS * self.shape[1] * 8

    def __setitem__(self, i: int, u: np.ndarray) -> None:
        g, k = divmod(i, self.GROUP)
        if self._staged is not None and self._staged != g:
            self._flush()
        if self._staged is None:
            self._staged, self._last = g, -1
        if k > self._last + 1:  # skipped rows (never read): repeat u, which costs nothing
            self._stage[self._last + 1:k] = u
        self._stage[k] = u
        self._last = k
        self.peak = max(self.peak, float(u.max(initial=0.0)), -float(u.min(initial=0.0)))
        if k == self.GROUP - 1 or i == len(self) - 1:
            self._flush()

    def _flush(self) -> None:
        g, rows = self._staged, self._stage[: self._last + 1]
        self._staged = None
        blob = zfpy.compress_numpy(rows, tolerance=self.tolerance * self.peak)
        old = self._packed[g]
        self._packed_bytes += len(blob) - (0 if old is None else len(old))
        self.max_packed_bytes = max(self.max_packed_bytes, self._packed_bytes)
        self._packed[g] = blob
        self._cache.pop(g, None)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._staged is not None:
            self._flush()
        g, k = divmod(i, self.GROUP)
        rows = self._cache.pop(g, None)
        if rows is None:
            rows = zfpy.decompress_numpy(self._packed[g])
            while len(self._cache) > 1:
                del self._cache[next(iter(self._cache))]  # the least recently read
        self._cache[g] = rows
        return rows[k]


class ForwardWavefield:
    """``u[m]`` for the adjoint run: checkpoints, chunk recomputation, compression.

    The samples of one chunk (steps ``c0, c0 + interval, ...`` and the chunk's end) live
    in one ``(rows, P)`` array of ``buffer``, reused by every chunk. ``save(step, state)``
    (optional) receives the state every ``save_every`` steps of the forward run, e.g. to
    write checkpoint files; ``load(step) -> State`` replaces the in-memory checkpoints
    when the forward run is not repeated (``reuse``). ``lossy`` (a ZFP tolerance relative
    to the wavefield's peak, or None) stores the samples compressed (``CompressedRows``)
    instead of in ``buffer``; None keeps them exactly.
    """

    def __init__(self, stepper: LeapfrogStepper, sources: PointSampling, signals: np.ndarray,
                 n_steps: int, interval: int, chunk: int, buffer: WavefieldBuffer,
                 save: Callable[[int, State], None] | None = None, save_every: int | None = None,
                 load: Callable[[int], State] | None = None, lossy: float | None = None):
        if chunk % interval:
            raise ValueError(f"chunk {chunk} must be a multiple of the interval {interval}")
        self.stepper, self.sources, self.signals = stepper, sources, signals
        self.n_steps, self.interval, self.chunk = n_steps, interval, chunk
        self.checkpoints: dict[int, State] = {}  # in memory, when there is no ``load``
        self.save, self.save_every, self.load = save, save_every, load
        self.load_state = load or (lambda c: self.checkpoints[c].copy())
        span = min(chunk, n_steps)
        shape = (span // interval + 2, stepper.n_points)
        self.rows = buffer.rows(shape) if lossy is None else CompressedRows(*shape, lossy)
        self._mix = np.empty(stepper.n_points)
        self._loaded = None  # (c0, c1) of the chunk in self.rows
        self.recomputed_steps = 0

    @property
    def peak_bytes(self) -> int:
        """Memory of the stored wavefield: chunk samples plus checkpoints."""
        return self.rows.nbytes + sum(2 * s.u.nbytes for s in self.checkpoints.values())

    def _row(self, k: int, c0: int, c1: int) -> int:
        return (k - c0) // self.interval if k != c1 else len(self.rows) - 1

    def _keep(self, c0: int, c1: int) -> dict:
        """``advance``'s arguments storing u at multiples of the interval and at the chunk's
        end: ``keep`` (rows and the row of each step) for an array, an ``on_step`` for the
        compressed rows."""
        steps = [k for k in range(c0 + 1, c1 + 1) if (k - c0) % self.interval == 0 or k == c1]
        if isinstance(self.rows, np.ndarray):
            row_of = np.full(c1 + 1, -1, dtype=np.int64)
            row_of[steps] = [self._row(k, c0, c1) for k in steps]
            return {"keep": (self.rows, row_of)}
        kept = set(steps)

        def on_step(k, u, _):
            if k in kept:
                self.rows[self._row(k, c0, c1)] = u
        return {"on_step": on_step}

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
        kept = self._keep(0 if in_memory else last, self.n_steps)
        for c0, c1 in zip(stops, stops[1:] + [self.n_steps]):
            if self.save is not None and c0 % every == 0:
                self.save(c0, state)
            if not in_memory and self.load is None and c0 % self.chunk == 0:
                self.checkpoints[c0] = state.copy()
            keep = {}
            if in_memory:
                keep = kept
            elif c0 >= last:  # keep the last chunk's samples now instead of recomputing them
                if c0 == last:
                    self.rows[0] = state.u
                keep = kept
                self._loaded = (last, self.n_steps)
            self.stepper.advance(state, c1, self.sources, self.signals, receivers, traces, **keep)
        return traces

    def _load(self, m: int) -> tuple[int, int]:
        c0 = ((m - 1) // self.chunk) * self.chunk
        c1 = min(c0 + self.chunk, self.n_steps)
        if self._loaded != (c0, c1):
            state = self.load_state(c0)
            self.rows[0] = state.u
            self.stepper.advance(state, c1, self.sources, self.signals, **self._keep(c0, c1))
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
