"""Rank-parallel mesh files: the same bytes of content as ``fwimpi.mesh.files.write_mesh_h5``.

Files hold points in the natural (mesh) order, in 2D (points ``(P, 2)``, sub-quads) and in
3D (points ``(P, 3)``, cells ``(E, (N+1)**3)``, sub-hexahedra ``/mesh/hexes``) alike. Each
rank owns a contiguous slice of points ``[lo, hi)`` and of elements ``[elo, ehi)``; the slices
tile the ranges in rank order and may be empty. Every rank opens the file with
``driver="mpio"`` and creates the same datasets (collective metadata); each writes or reads its
own rows with independent transfers, so that no rank ever waits inside HDF5 for a rank whose
transfer failed.

Failure never deadlocks:

- everything that can fail on one rank alone (shapes, ranges, names, attributes, disagreement
  between ranks, room on the disk) is checked before the file is opened and agreed, so every
  rank raises the same error and nothing is written;
- a transfer that fails on one rank (a full disk, an I/O error) is agreed before the next
  collective call (the collective close), and raised on every rank; the temporary file is
  removed; a rank that saw the failure waits for the others under a watchdog
  (``collective.agree``) that ends the job rather than hang.

A write is atomic like the serial one: all ranks write root's ``.<name>.fwimpi-tmp<pid>``;
after the collective close the ranks agree on success, then rank 0 writes the XDMF sidecar
and renames the file, or removes the temporary file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from fwimpi.errors import FwimpiError
from fwimpi.parallel.collective import CollectiveIOError, agree, check_free_space, watchdog
from fwimpi.mesh.files import (
    _MESH_RESERVED,
    _SUBCELLS,
    MESH_FORMAT,
    FileFormatError,
    atomic_path,
    decode_attrs,
    encode_attrs,
    linear_cells,
    mesh_layout,
    temp_path,
    xdmf_text,
)

_RESERVED = _MESH_RESERVED + ("nprocs",)


def block_range(n: int, comm) -> tuple[int, int]:
    """This rank's slice ``[lo, hi)`` of ``n`` items split in contiguous blocks over ``comm``.

    Rank r gets ``n // size`` items, plus one for ``r < n % size``: PETSc's default layout
    (``PETSC_DECIDE``). No communication.
    """
    if n < 0:
        raise ValueError(f"block_range: n must be >= 0, got {n}")
    q, r = divmod(n, comm.size)
    lo = comm.rank * q + min(comm.rank, r)
    return lo, lo + q + (comm.rank < r)


# --------------------------------------------------------------------------- agreement


def _check_tiling(what: str, ranges, n: int) -> None:
    """Raise FileFormatError unless ``ranges`` (one per rank) tile ``[0, n)`` in rank order."""
    stops = [0] + [hi for _, hi in ranges]
    if any(lo != stop or hi < lo for (lo, hi), stop in zip(ranges, stops)) or stops[-1] != n:
        raise FileFormatError(
            f"{what}: ranges {[tuple(r) for r in ranges]} must tile [0, {n}) in rank order "
            "(use block_range)"
        )


# --------------------------------------------------------------------------- HDF5 rows


def _open(comm, path, mode: str) -> h5py.File:
    if h5py.get_config().mpi:
        return h5py.File(path, mode, driver="mpio", comm=comm)
    return h5py.File(path, mode)  # comm.size == 1, checked by _check_driver


def _check_driver(comm) -> None:
    if comm.size > 1 and not h5py.get_config().mpi:
        raise FwimpiError(
            f"h5py was loaded without MPI but comm has {comm.size} ranks: Debian's h5py picks "
            "its MPI build only if OMPI_COMM_WORLD_SIZE, MPI_LOCALNRANKS or H5PY_ALWAYS_USE_MPI "
            "is set; set H5PY_ALWAYS_USE_MPI=1 (e.g. under srun)"
        )


def _write_rows(dset: h5py.Dataset, start: int, arr: np.ndarray) -> None:
    """Independent write of rows ``[start, start + len(arr))`` (nothing for no rows)."""
    if len(arr):
        dset[start:start + len(arr)] = arr


def _read_rows(dset: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """Independent read of rows ``[start, stop)``."""
    if stop > start:
        return dset[start:stop]
    return np.empty((0,) + dset.shape[1:], dtype=dset.dtype)


# --------------------------------------------------------------------------- writer


def _rows(what: str, value, shape: tuple[int, ...], dtype) -> np.ndarray:
    arr = np.ascontiguousarray(value, dtype=dtype)
    if arr.shape != shape:
        raise FileFormatError(f"{what}: expected this rank's shape {shape}, got {arr.shape}")
    return arr


def _local_slices(comm, n_points, ranges, points, mass, fields, n_elements, cells, order, attrs,
                  dim):
    """Validated ``dataset -> (first row, rows)`` of this rank, layout and root attributes."""
    _check_driver(comm)
    if not (isinstance(order, (int, np.integer)) and order >= 1):
        raise FileFormatError(f"order: must be an integer >= 1, got {order!r}")
    if dim not in (2, 3):
        raise FileFormatError(f"dim: must be 2 or 3, got {dim!r}")
    (lo, hi), (elo, ehi) = ranges
    if not (0 <= lo <= hi <= n_points and 0 <= elo <= ehi <= n_elements):
        raise FileFormatError(
            f"point_range {(lo, hi)}, element_range {(elo, ehi)}: must satisfy "
            f"0 <= lo <= hi <= n_points={n_points}, 0 <= elo <= ehi <= n_elements={n_elements}"
        )
    if "mass" in fields:
        raise FileFormatError("field name 'mass': reserved for /mesh/mass, rename the field")
    layout = mesh_layout(n_points, n_elements, order, fields, dim)  # checks field names
    np_, ne = hi - lo, ehi - elo
    cells = _rows("/mesh/cells", cells, (ne, (order + 1) ** dim), np.int64)
    if cells.size and (cells.min() < 0 or cells.max() >= n_points):
        raise FileFormatError(
            f"/mesh/cells: indices must lie in [0, {n_points}), got {cells.min()}..{cells.max()}"
        )
    slices = {
        "mesh/points": (lo, _rows("/mesh/points", points, (np_, dim), np.float64)),
        "mesh/cells": (elo, cells),
        _SUBCELLS[dim][0]: (elo * order ** dim, linear_cells(cells, order, dim)),
        "mesh/mass": (lo, _rows("/mesh/mass", mass, (np_,), np.float64)),
    }
    for name, value in fields.items():
        slices[f"fields/{name}"] = (lo, _rows(f"/fields/{name}", value, (np_,), np.float64))
    root = encode_attrs(attrs, _RESERVED) | {
        "order": int(order), "format": MESH_FORMAT, "nprocs": comm.size}
    return slices, layout, root


def write_mesh_h5_collective(
    comm,
    path: str | os.PathLike,
    *,
    n_points: int,
    point_range: tuple[int, int],
    points: np.ndarray,
    mass: np.ndarray,
    fields: Mapping[str, np.ndarray],
    n_elements: int,
    element_range: tuple[int, int],
    cells: np.ndarray,
    order: int,
    attrs: Mapping,
    dim: int | None = None,
) -> None:
    """Write a mesh file and its ``.xdmf`` sidecar from slices, atomically. Collective on comm.

    Same file as ``write_mesh_h5`` of the gathered arrays, whatever the number of ranks, plus
    the root attribute ``nprocs = comm.size``. This rank gives points ``(hi-lo, dim)``, mass
    and each field ``(hi-lo,)`` for ``point_range = (lo, hi)``, and cells
    ``(ehi-elo, (order+1)**dim)`` int global point indices for ``element_range = (elo, ehi)``;
    ``dim`` (2 or 3) defaults to the columns of ``points``. All ranks pass the same
    ``n_points``, ``n_elements``, ``order``, ``dim``, field names (same order) and ``attrs``.
    Raises FileFormatError on every rank if any rank's input is wrong (nothing is written),
    CollectiveIOError on every rank if writing failed (no target, temporary file removed).
    """
    path = Path(path)
    what = f"write_mesh_h5_collective({path})"
    error = header = None
    try:
        ranges = (tuple(map(int, point_range)), tuple(map(int, element_range)))
        if dim is None:
            dim = np.shape(points)[1] if np.ndim(points) == 2 else None
        slices, layout, root = _local_slices(comm, n_points, ranges, points, mass, fields,
                                             n_elements, cells, order, attrs, dim)
        header = repr((int(n_points), int(n_elements), int(order), int(dim), list(fields),
                       sorted(root.items())))
        if comm.rank == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
    except Exception as exc:  # noqa: BLE001 - agreed below, raised on every rank
        error = exc
    gathered = comm.allgather(None if error else (ranges, header))
    if None not in gathered:  # the same checks on the same data: the same result everywhere
        try:
            _check_tiling("point_range", [g[0][0] for g in gathered], n_points)
            _check_tiling("element_range", [g[0][1] for g in gathered], n_elements)
            if len({g[1] for g in gathered}) > 1:
                raise FileFormatError(
                    "n_points, n_elements, order, dim, field names (in order) and attrs must "
                    f"be the same on every rank; per rank: {[g[1] for g in gathered]}"
                )
        except FileFormatError as exc:
            error = exc
    agree(comm, error, what, FileFormatError)

    check_free_space(comm, path.parent, _nbytes(layout), what)
    tmp = temp_path(path, pid=comm.bcast(os.getpid() if comm.rank == 0 else None, root=0))
    f = None
    try:
        try:
            f = _open(comm, tmp, "w")
            f.attrs.update(root)
            f.create_group("fields")
            for name, (shape, dtype) in layout.items():
                f.create_dataset(name, shape=shape, dtype=dtype)
        except Exception as exc:  # noqa: BLE001 - agreed, raised on every rank
            error = exc
        agree(comm, error, what, CollectiveIOError)
        try:
            for name, (start, arr) in slices.items():
                _write_rows(f[name], start, arr)
        except Exception as exc:  # noqa: BLE001
            error = exc
        agree(comm, error, what, CollectiveIOError)  # before the collective close
        opened, f = f, None
        try:
            opened.close()
        except Exception as exc:  # noqa: BLE001
            error = exc
        agree(comm, error, what, CollectiveIOError)
    except CollectiveIOError:
        if f is not None:  # every rank knows of the failure: close together, or end the job
            with watchdog(comm, f"{what}: closing the file after a failure"):
                try:
                    f.close()
                except Exception:  # noqa: BLE001 - the failure is already being raised
                    pass
        if comm.rank == 0:
            tmp.unlink(missing_ok=True)
        raise
    if comm.rank == 0:
        try:
            text = xdmf_text(path.name, n_points, n_elements * order ** dim, fields, dim)
            with atomic_path(path.with_suffix(".xdmf")) as tmp_xdmf:
                tmp_xdmf.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except Exception as exc:  # noqa: BLE001
            tmp.unlink(missing_ok=True)
            error = exc
    agree(comm, error, what, CollectiveIOError)


def _nbytes(layout: dict) -> int:
    """Bytes of the datasets of a mesh file's ``layout`` (name -> (shape, dtype))."""
    return sum(int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
               for shape, dtype in layout.values())


# --------------------------------------------------------------------------- reader


def read_mesh_h5_collective(
    comm,
    path: str | os.PathLike,
    point_range: tuple[int, int],
    element_range: tuple[int, int] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """This rank's slices of a mesh file's fields and mass. Collective on comm.

    Returns ``(fields name -> (hi-lo,), mass (hi-lo,), root attributes)`` for
    ``point_range = (lo, hi)``; the attributes are decoded (JSON ones too) and include
    ``format``, ``order`` and ``nprocs`` (the writer's rank count, any may read). The ranges
    must tile the file's points (and, if given, ``element_range`` its elements) in rank order,
    else FileFormatError on every rank, as for a wrong format tag.
    """
    path = Path(path)
    what = f"read_mesh_h5_collective({path})"
    error = f = mine = None
    try:
        mine = (tuple(map(int, point_range)),
                None if element_range is None else tuple(map(int, element_range)))
        _check_driver(comm)
        f = _open(comm, path, "r")
        attrs = decode_attrs(f.attrs)
        if attrs.get("format") != MESH_FORMAT:
            raise FileFormatError(
                f"format {attrs.get('format')!r}, expected {MESH_FORMAT!r}: not a mesh file")
        n_points, n_elements = len(f["mesh/mass"]), len(f["mesh/cells"])
        names = list(f["fields"])
        for name in names:
            if f["fields"][name].shape != (n_points,):
                raise FileFormatError(f"/fields/{name}: shape {f['fields'][name].shape}, "
                                      f"expected ({n_points},)")
    except Exception as exc:  # noqa: BLE001 - agreed below, raised on every rank
        error = exc
    gathered = comm.allgather(mine)
    if error is None and None not in gathered:  # same checks, same data on every rank
        try:
            _check_tiling(f"point_range ({path.name} has {n_points} points)",
                          [g[0] for g in gathered], n_points)
            if element_range is not None:
                _check_tiling(f"element_range ({path.name} has {n_elements} elements)",
                              [g[1] for g in gathered], n_elements)
        except FileFormatError as exc:
            error = exc
    try:
        agree(comm, error, what, FileFormatError)
        lo, hi = mine[0]
        try:
            mass = _read_rows(f["mesh/mass"], lo, hi)
            fields = {name: _read_rows(f["fields"][name], lo, hi) for name in names}
        except Exception as exc:  # noqa: BLE001
            error = exc
    finally:
        if f is not None:  # collective close (the open is collective: all or none have f)
            f.close()
    agree(comm, error, what, CollectiveIOError)
    return fields, mass, attrs
