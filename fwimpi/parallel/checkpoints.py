"""Checkpoint files: the leapfrog states of one event's forward run, rank-parallel HDF5.

Each rank writes and reads the values of the points it owns, at its PETSc ownership
offset, so a file is only valid for the decomposition (``ranks_per_job``) that wrote it;
its ``settings`` attribute (JSON) records everything the states depend on, and a file is
reused only when they are equal and its content checks out: every state and the traces
carry the CRC-32 of each rank's slice, verified before reuse. Written atomically (a temp
name, renamed when complete) and failure-safe like the mesh files (``h5io``): the room is
checked first, transfers are independent and every step that can fail on one rank is
agreed before the next collective call.
"""

import json
import logging
import os
import zlib
from pathlib import Path

import h5py
import numpy as np

from ..mesh.files import temp_path
from ..sem.timestepper import State
from .collective import CollectiveIOError, agree, check_free_space, watchdog

log = logging.getLogger("fwimpi")

FORMAT = "fwimpi-checkpoints-2"


def _open(comm, path, mode: str) -> h5py.File:
    if comm.size > 1 or h5py.get_config().mpi:
        return h5py.File(path, mode, driver="mpio", comm=comm)
    return h5py.File(path, mode)


def _crc(values: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(values, dtype=np.float64).tobytes())


def stored_settings(path: Path) -> dict | None:
    """The settings a complete checkpoint file was written with (None if there is none or
    it cannot be read)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT or not f.attrs.get("complete", False):
                return None
            settings = json.loads(f.attrs["settings"])
            return settings if isinstance(settings, dict) else None
    except (OSError, KeyError, ValueError, TypeError):
        return None


def checkpoint_bytes(n_global: int, n_saves: int, n_receivers: int, n_steps: int) -> int:
    """Size (bytes) of a checkpoint file of ``n_saves`` states and the traces."""
    return 8 * (2 * n_global * n_saves + n_receivers * (n_steps + 1))


class CheckpointWriter:
    """Collective on comm: writes states ``(u[n], u[n-1])`` at chosen steps, then commits.

    ``offset`` is this rank's first PETSc index, ``n_owned`` its owned point count,
    ``n_global`` all points; ``nbytes`` the file's expected size (checked against the free
    space first). Every method raises CollectiveIOError on every rank if it failed on any.
    """

    def __init__(self, comm, path: Path, offset: int, n_owned: int, n_global: int,
                 settings: dict, nbytes: int = 0):
        self.comm, self.path = comm, Path(path)
        self.lo, self.hi, self.n_global = offset, offset + n_owned, n_global
        self.what = f"checkpoint file {self.path}"
        error = None
        if comm.rank == 0:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                error = exc
        agree(comm, error, self.what, CollectiveIOError)
        check_free_space(comm, self.path.parent, nbytes, self.what)
        self.tmp = temp_path(self.path, pid=comm.bcast(os.getpid(), root=0))
        self.file = None
        try:
            self.file = _open(comm, self.tmp, "w")
            self.file.attrs["format"] = FORMAT
            self.file.attrs["settings"] = json.dumps(settings, sort_keys=True)
            self.file.attrs["nprocs"] = comm.size
            self.file.attrs["complete"] = False
        except Exception as exc:  # noqa: BLE001 - agreed below
            error = exc
        self._agree(error)

    def _agree(self, error: BaseException | None) -> None:
        try:
            agree(self.comm, error, self.what, CollectiveIOError)
        except CollectiveIOError:
            self.abandon()
            raise

    def save(self, step: int, u: np.ndarray, u_old: np.ndarray) -> None:
        """Store the owned part of the state at ``step`` (collective: every rank calls)."""
        n = self.hi - self.lo
        crcs = self.comm.allgather([_crc(u[:n]), _crc(u_old[:n])])
        error = None
        try:
            group = self.file.create_group(f"states/{step}")
            group.attrs["crc32"] = np.array(crcs, dtype=np.int64)
            for name, values in (("u", u), ("u_old", u_old)):
                dset = group.create_dataset(name, (self.n_global,), "f8")
                if n > 0:
                    dset[self.lo:self.hi] = values[:n]
        except Exception as exc:  # noqa: BLE001 - agreed below
            error = exc
        self._agree(error)

    def load(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Read back the owned part of a state written by this run."""
        group = self.file[f"states/{step}"]
        return group["u"][self.lo:self.hi], group["u_old"][self.lo:self.hi]

    def commit(self, traces: np.ndarray | None, shape: tuple[int, int]) -> None:
        """Store the receiver traces ``shape`` (given on rank 0), mark complete, close and
        rename into place."""
        crc = self.comm.bcast(_crc(traces) if self.comm.rank == 0 else None, root=0)
        error = None
        try:
            dset = self.file.create_dataset("traces", shape, "f8")
            dset.attrs["crc32"] = crc
            if self.comm.rank == 0:
                dset[...] = traces
            self.file.attrs["complete"] = True
        except Exception as exc:  # noqa: BLE001
            error = exc
        self._agree(error)
        opened, self.file = self.file, None
        try:
            opened.close()
        except Exception as exc:  # noqa: BLE001
            error = exc
        self._agree(error)
        if self.comm.rank == 0:
            try:
                os.replace(self.tmp, self.path)
            except OSError as exc:
                error = exc
        self._agree(error)

    def abandon(self) -> None:
        """Close and remove the temp file after a failure that every rank knows of."""
        opened, self.file = self.file, None
        if opened is not None:
            with watchdog(self.comm, f"{self.what}: closing the file after a failure"):
                try:
                    opened.close()
                except Exception:  # noqa: BLE001 - a failure is already being raised
                    pass
        if self.comm.rank == 0:
            self.tmp.unlink(missing_ok=True)


class CheckpointReader:
    """Collective on comm: reads the owned part of stored states."""

    def __init__(self, comm, path: Path, offset: int, n_owned: int):
        self.comm = comm
        self.file = _open(comm, path, "r")
        self.lo, self.hi = offset, offset + n_owned
        self.steps = sorted(int(k) for k in self.file["states"])

    def verify(self) -> str | None:
        """Check every state of this rank's slice and the traces against their CRC-32:
        None when they match, else what does not (this rank's view; agree on it)."""
        try:
            if self.file.attrs.get("nprocs") != self.comm.size:
                return f"written by {self.file.attrs.get('nprocs')} ranks"
            for step in self.steps:
                group = self.file[f"states/{step}"]
                expected = np.asarray(group.attrs["crc32"])[self.comm.rank]
                u, u_old = group["u"][self.lo:self.hi], group["u_old"][self.lo:self.hi]
                if [_crc(u), _crc(u_old)] != [int(c) for c in expected]:
                    return f"the state at step {step} does not match its checksum"
            if self.comm.rank == 0:
                dset = self.file["traces"]
                if _crc(dset[...]) != int(dset.attrs["crc32"]):
                    return "the receiver traces do not match their checksum"
        except (OSError, KeyError, ValueError, IndexError, TypeError) as exc:
            return f"unreadable ({type(exc).__name__}: {exc})"
        return None

    def load(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Owned values ``(n_owned,)`` of ``u[step]`` and ``u[step - 1]``."""
        group = self.file[f"states/{step}"]
        return group["u"][self.lo:self.hi], group["u_old"][self.lo:self.hi]

    def traces(self) -> np.ndarray:
        """The receiver traces ``(R, n_steps + 1)`` of the run that wrote the file."""
        return self.file["traces"][...]

    def close(self) -> None:
        self.file.close()


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" if not isinstance(new.get(k), dict)
                     else f"{k} changed" for k in keys)


class EventCheckpoints:
    """Collective on ``mesh.comm``: the checkpoint file of one event's forward run.

    Reused when the settings stored in it equal ``settings`` (decided on rank 0 and
    broadcast, so every rank takes the same branch), else written anew. Offers what the
    gradient asks of checkpoints: ``spacing`` (steps), ``save(step, state)`` while writing,
    ``load(step) -> State`` (local arrays, ghosts filled) and ``traces``: the stored receiver
    traces ``(R, n_steps + 1)`` of a reused file (None when the forward run must happen).
    ``finish`` commits (or closes) the file.
    """

    def __init__(self, mesh, path: Path, settings: dict, spacing: int, label: str,
                 nbytes: int = 0):
        self.mesh, self.path, self.spacing = mesh, Path(path), spacing
        comm = mesh.comm
        stored = stored_settings(self.path) if comm.rank == 0 else None
        stored = comm.bcast(stored, root=0)
        self.reuse = stored == settings
        self.reader = self.writer = None
        self.traces = None
        if self.reuse:
            damage = None
            try:
                self.reader = CheckpointReader(comm, self.path, mesh.offset, mesh.n_owned)
                damage = self.reader.verify()
            except (OSError, KeyError, ValueError) as exc:
                damage = f"unreadable ({type(exc).__name__}: {exc})"
            damages = [d for d in comm.allgather(damage) if d is not None]
            if damages:
                self.reuse = False
                if self.reader is not None:
                    self.reader.close()
                    self.reader = None
                if comm.rank == 0:
                    log.warning("%s: the checkpoint file %s is damaged (%s); the forward "
                                "simulation runs again", label, self.path, damages[0])
            else:
                self.traces = comm.bcast(self.reader.traces() if comm.rank == 0 else None,
                                         root=0)
        if comm.rank == 0:
            if self.reuse:
                log.info("%s: checkpoints of an earlier run reused; the forward simulation is "
                         "not run again", label)
            elif stored is not None and stored != settings:
                log.info("%s: checkpoints exist for other settings (%s); the forward simulation "
                         "runs again", label, _differences(stored, settings))
        if not self.reuse:
            self.writer = CheckpointWriter(comm, self.path, mesh.offset, mesh.n_owned,
                                           mesh.n_global, settings, nbytes)

    def save(self, step: int, state: State) -> None:
        """Store the state at ``step`` (collective; only while writing)."""
        self.writer.save(step, state.u, state.u_old)

    def load(self, step: int) -> State:
        """The state at ``step`` on the local points (collective)."""
        u_owned, u_old_owned = (self.reader or self.writer).load(step)
        state = State(step, np.zeros(self.mesh.n_local), np.zeros(self.mesh.n_local))
        for target, owned in ((state.u, u_owned), (state.u_old, u_old_owned)):
            target[: len(owned)] = owned
            self.mesh.update_ghosts(target)
        return state

    def finish(self, traces_on_root: np.ndarray | None, shape: tuple[int, int]) -> None:
        """Commit a written file with the traces (given on rank 0), or close a read one."""
        if self.writer is not None:
            self.writer.commit(traces_on_root, shape)
        if self.reader is not None:
            self.reader.close()

    def abandon(self) -> None:
        """After a failure: remove a file being written, close one being read."""
        if self.writer is not None:
            self.writer.abandon()
        if self.reader is not None:
            self.reader.close()
