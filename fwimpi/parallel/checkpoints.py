"""Checkpoint files: the leapfrog states of one event's forward run, rank-parallel HDF5.

Each rank writes and reads the values of the points it owns, at its PETSc ownership
offset, so a file is only valid for the decomposition (``ranks_per_job``) that wrote it;
its ``settings`` attribute (JSON) records everything the states depend on, and a file is
reused only when they are equal. Written atomically: a temp name, renamed when complete.
"""

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np

from ..mesh.files import temp_path
from ..sem.timestepper import State

log = logging.getLogger("fwimpi")

FORMAT = "fwimpi-checkpoints-1"


def _open(comm, path, mode: str) -> h5py.File:
    if comm.size > 1 or h5py.get_config().mpi:
        return h5py.File(path, mode, driver="mpio", comm=comm)
    return h5py.File(path, mode)


def stored_settings(path: Path) -> dict | None:
    """The settings a complete checkpoint file was written with (None if there is none)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT or not f.attrs.get("complete", False):
                return None
            return json.loads(f.attrs["settings"])
    except (OSError, KeyError, ValueError):
        return None


class CheckpointWriter:
    """Collective on comm: writes states ``(u[n], u[n-1])`` at chosen steps, then commits.

    ``offset`` is this rank's first PETSc index, ``n_owned`` its owned point count,
    ``n_global`` all points.
    """

    def __init__(self, comm, path: Path, offset: int, n_owned: int, n_global: int,
                 settings: dict):
        self.comm, self.path = comm, Path(path)
        self.lo, self.hi, self.n_global = offset, offset + n_owned, n_global
        if comm.rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_path(self.path, pid=comm.bcast(os.getpid(), root=0))
        self.file = _open(comm, self.tmp, "w")
        self.file.attrs["format"] = FORMAT
        self.file.attrs["settings"] = json.dumps(settings, sort_keys=True)
        self.file.attrs["nprocs"] = comm.size
        self.file.attrs["complete"] = False

    def save(self, step: int, u: np.ndarray, u_old: np.ndarray) -> None:
        """Store the owned part of the state at ``step`` (collective: every rank calls)."""
        for name, values in (("u", u), ("u_old", u_old)):
            dset = self.file.create_dataset(f"states/{step}/{name}", (self.n_global,), "f8")
            if self.hi > self.lo:
                dset[self.lo:self.hi] = values[: self.hi - self.lo]

    def load(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Read back the owned part of a state written by this run."""
        group = self.file[f"states/{step}"]
        return group["u"][self.lo:self.hi], group["u_old"][self.lo:self.hi]

    def commit(self, traces: np.ndarray | None, shape: tuple[int, int]) -> None:
        """Store the receiver traces ``shape`` (given on rank 0), mark complete, close and
        rename into place."""
        dset = self.file.create_dataset("traces", shape, "f8")
        if self.comm.rank == 0:
            dset[...] = traces
        self.file.attrs["complete"] = True
        self.file.close()
        self.comm.Barrier()
        if self.comm.rank == 0:
            os.replace(self.tmp, self.path)
        self.comm.Barrier()

    def abandon(self) -> None:
        """Close and remove the temp file (after a failure on this rank)."""
        try:
            self.file.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


class CheckpointReader:
    """Collective on comm: reads the owned part of stored states."""

    def __init__(self, comm, path: Path, offset: int, n_owned: int):
        self.file = _open(comm, path, "r")
        self.lo, self.hi = offset, offset + n_owned
        self.steps = sorted(int(k) for k in self.file["states"])

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

    def __init__(self, mesh, path: Path, settings: dict, spacing: int, label: str):
        self.mesh, self.path, self.spacing = mesh, Path(path), spacing
        comm = mesh.comm
        stored = stored_settings(self.path) if comm.rank == 0 else None
        stored = comm.bcast(stored, root=0)
        self.reuse = stored == settings
        if comm.rank == 0:
            if self.reuse:
                log.info("%s: checkpoints of an earlier run reused; the forward simulation is "
                         "not run again", label)
            elif stored is not None:
                log.info("%s: checkpoints exist for other settings (%s); the forward simulation "
                         "runs again", label, _differences(stored, settings))
        self.reader = self.writer = None
        if self.reuse:
            self.reader = CheckpointReader(comm, self.path, mesh.offset, mesh.n_owned)
            self.traces = self.reader.traces()
        else:
            self.traces = None
            self.writer = CheckpointWriter(comm, self.path, mesh.offset, mesh.n_owned,
                                           mesh.n_global, settings)

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
