"""Agreement between the ranks of a communicator, so that a failure on one rank never
leaves the others waiting.

- ``agree``: every rank passes its error (or None); if any rank has one, every rank raises
  the same error naming the ranks and their messages.
- ``decide_on_root``: rank 0 takes a decision (reads a file, plans the job) and every rank
  gets the result, or the same error.
- A rank that holds an error and enters an agreement arms a watchdog: if the other ranks
  never arrive (they wait inside a collective of a library that failed on this rank only,
  e.g. HDF5 on a full disk), the watchdog ends the whole job with ``MPI_Abort`` and the
  reason after ``WATCHDOG_SECONDS``, instead of a hang.
- ``check_free_space``: a write is refused on every rank, before any file is opened, when
  the folder's file system lacks the room for it.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from ..errors import FwimpiError

#: How long (s) a rank that saw a failure waits for the others to agree before it ends the
#: job. Agreement normally takes milliseconds; the others only miss it when they are stuck.
WATCHDOG_SECONDS = float(os.environ.get("FWIMPI_WATCHDOG_SECONDS", "20"))


class CollectiveIOError(FwimpiError, OSError):
    """A collective read or write failed on at least one rank (raised on every rank)."""


@contextmanager
def watchdog(comm, reason: str, seconds: float | None = None) -> Iterator[None]:
    """While the block runs, a timer that ends the job (``MPI_Abort``, status 1) with
    ``reason`` if the block has not finished after ``seconds`` (default WATCHDOG_SECONDS)."""
    seconds = WATCHDOG_SECONDS if seconds is None else seconds

    def expire() -> None:
        print(f"fwimpi: failed (rank {comm.rank}): {reason}; the other ranks did not answer "
              f"within {seconds:g} s, ending the job", file=sys.stderr, flush=True)
        comm.Abort(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _rebuild(cls: type, message: str) -> FwimpiError:
    """An exception of ``cls`` with ``message`` (FwimpiError if ``cls`` needs more)."""
    if not (isinstance(cls, type) and issubclass(cls, FwimpiError)):
        cls = FwimpiError
    try:
        return cls(message)
    except TypeError:
        return FwimpiError(message)


def agree(comm, error: BaseException | None, what: str,
          cls: type[FwimpiError] = FwimpiError) -> None:
    """Collective on comm: if any rank passes an error, raise ``cls`` on every rank, naming
    the ranks and their messages (``what failed on k of n rank(s): rank 1: OSError: ...``).
    A rank with an error waits for the others under the watchdog."""
    mine = None if error is None else f"{type(error).__name__}: {error}"
    if error is None:
        errors = comm.allgather(mine)
    else:
        with watchdog(comm, f"{what}: {mine}"):
            errors = comm.allgather(mine)
    by_message: dict[str, list[int]] = {}
    for rank, msg in enumerate(errors):
        if msg is not None:
            by_message.setdefault(msg, []).append(rank)
    if by_message:
        raise _rebuild(cls, f"{what} failed on {sum(map(len, by_message.values()))} of "
                            f"{comm.size} rank(s): " + "; ".join(
                                f"rank {','.join(map(str, ranks))}: {msg}"
                                for msg, ranks in by_message.items())) from error


def decide_on_root(comm, step: Callable[[], object]):
    """Run ``step()`` on rank 0 and give its result to every rank; an error there is raised
    on every rank (the same FwimpiError type and message). Collective on comm.

    For every decision taken from a file (a plan, a state file): one rank reads, so ranks
    that would read differently cannot take different branches and hang.
    """
    outcome, error = None, None
    if comm.rank == 0:
        try:
            outcome = (True, step())
        except Exception as err:  # noqa: BLE001 - raised below, on every rank
            error = err
            cls = type(err) if isinstance(err, FwimpiError) else FwimpiError
            text = str(err) if isinstance(err, FwimpiError) else f"{type(err).__name__}: {err}"
            outcome = (False, (cls, text))
    ok, value = comm.bcast(outcome, root=0)
    if ok:
        return value
    if isinstance(error, FwimpiError):
        raise error
    raise _rebuild(*value) from error


def on_root(comm, step: Callable[[], object]):
    """Run ``step()`` on rank 0 while the others wait; an error there is raised on every
    rank (its type when it is an FwimpiError). Returns the result on rank 0, None elsewhere.
    Collective on comm."""
    result, error = None, None
    if comm.rank == 0:
        try:
            result = step()
        except Exception as err:  # noqa: BLE001 - raised below, on every rank
            error = err
    failure = comm.bcast(None if error is None else (
        type(error) if isinstance(error, FwimpiError) else FwimpiError,
        str(error) if isinstance(error, FwimpiError) else f"{type(error).__name__}: {error}"),
        root=0)
    if failure is not None:
        if error is not None:
            raise error
        raise _rebuild(*failure)
    return result


def free_bytes(folder: Path) -> int:
    """Bytes available to this user on the file system of ``folder`` (or of its nearest
    existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


#: Room kept free beyond a write's estimated size (HDF5 metadata, sidecars): a fixed part
#: (bytes) and a fraction of the size.
SPACE_MARGIN = 64 * 1024
SPACE_MARGIN_FRACTION = 0.02


def check_free_space(comm, folder: Path, nbytes: int, what: str) -> None:
    """Collective on comm: raise CollectiveIOError on every rank, before anything is
    written, if ``folder``'s file system has less than ``nbytes`` (plus a margin) free."""
    def check() -> None:
        free = free_bytes(folder)
        if free < nbytes * (1 + SPACE_MARGIN_FRACTION) + SPACE_MARGIN:
            raise CollectiveIOError(
                f"{what}: not enough space in {folder}: it needs {nbytes / 2**20:.1f} MB, "
                f"{free / 2**20:.1f} MB are free")
    decide_on_root(comm, check)
