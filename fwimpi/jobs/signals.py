"""SIGTERM and SIGINT stop a job cleanly: within ``stop_on_signals`` they raise
``Interrupted`` in the main thread, so a launcher passes them on to what it started and a
rank removes its temporary files and ends the job, instead of dying with files half-written
and a lock or child processes left behind."""

import signal
from contextlib import contextmanager
from typing import Iterator

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """The process got SIGTERM or SIGINT; ``exit_status`` is ``128 + signal number``. Like
    KeyboardInterrupt, not an Exception: no generic handler swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGINT raises Interrupted; later ones are
    ignored while the clean-up runs. The previous handlers come back afterwards."""
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def handler(signum, frame):
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
