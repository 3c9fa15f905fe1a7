"""Progress of long time loops, logged from rank 0 only: step, rate, remaining time."""

import logging
import time

log = logging.getLogger("fwimpi")


class Progress:
    """Callable ``progress(step)`` counting the steps of a task of ``n_steps`` steps (time
    loops of ``points`` points: forward, recomputed chunks, adjoint, in any order).

    Logs at most every ``every`` seconds (so never for tasks shorter than that), only where
    ``active`` (rank 0). ``start(label, n_steps)`` begins a new task.
    """

    def __init__(self, points: int, active: bool, every: float = 10.0):
        self.points, self.active, self.every = points, active, every
        self.label, self.n_steps, self.done, self.t0, self.last = "", 1, 0, 0.0, 0.0

    def start(self, label: str, n_steps: int) -> None:
        self.label, self.n_steps, self.done = label, max(n_steps, 1), 0
        self.t0 = self.last = time.monotonic()

    def __call__(self, step: int) -> None:
        self.done += 1
        if not self.active:
            return
        now = time.monotonic()
        done = self.done
        if now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.t0
        rate = self.points * done / elapsed / 1e6
        remaining = elapsed / done * (self.n_steps - done)
        log.info("%s: step %d of %d (%.0f%%), %.0f M point-updates/s, %.0f s remaining",
                 self.label, done, self.n_steps, 100.0 * done / self.n_steps, rate, remaining)
