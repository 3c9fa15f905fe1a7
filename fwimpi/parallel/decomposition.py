"""Domain decomposition of a structured mesh over ``nparts`` ranks (no MPI calls here).

Elements are split by recursive coordinate bisection of the element grid: a region for k
ranks is cut across its longer side into parts for ``k // 2`` and ``k - k // 2`` ranks,
in proportion, so any rank count (primes included) gets compact, balanced rectangles of
elements with short interfaces.

Each global GLL point is owned by the lowest rank among those whose elements touch it. The
PETSc numbering puts rank r's owned points in one contiguous range, in natural order
within the range; files stay in the natural (mesh) order whatever the decomposition.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..mesh.structured import StructuredMesh


def partition_elements(nex: int, ney: int, hx: float, hy: float, nparts: int) -> np.ndarray:
    """Rank of each element ``(nex * ney,)`` of an ``nex x ney`` grid (``e = ex + nex*ey``).

    Raises ConfigError (field ``ranks_per_job``) if a part would get no element.
    """
    if nparts < 1 or nparts > nex * ney:
        raise ConfigError(
            f"ranks_per_job: {nparts} ranks for a mesh of {nex * ney} elements; "
            f"use 1..{nex * ney} ranks (at least one element per rank)"
        )
    part = np.empty((ney, nex), dtype=np.int64)

    def split(x0: int, x1: int, y0: int, y1: int, k: int, first: int) -> None:
        nx, ny = x1 - x0, y1 - y0
        if k == 1:
            part[y0:y1, x0:x1] = first
            return
        if nx * ny < k:
            raise ConfigError(
                f"ranks_per_job: {nparts} ranks cannot be balanced over {nex} x {ney} "
                f"elements; use fewer ranks"
            )
        k1 = k // 2
        along_x = (nx * hx >= ny * hy and nx > 1) or ny == 1
        n = nx if along_x else ny
        cut = min(max(int(round(n * k1 / k)), 1), n - 1)
        if along_x:
            split(x0, x0 + cut, y0, y1, k1, first)
            split(x0 + cut, x1, y0, y1, k - k1, first + k1)
        else:
            split(x0, x1, y0, y0 + cut, k1, first)
            split(x0, x1, y0 + cut, y1, k - k1, first + k1)

    split(0, nex, 0, ney, nparts, 0)
    return part.ravel()


def local_point_counts(nex: int, ney: int, order: int, part: np.ndarray) -> np.ndarray:
    """Local points (owned and ghosts) of each rank ``(nparts,)``: the GLL points of the
    rectangle of elements it holds (the parts of ``partition_elements`` are rectangles)."""
    ex, ey = np.arange(nex * ney) % nex, np.arange(nex * ney) // nex
    n = int(part.max()) + 1
    span = []
    for coord in (ex, ey):
        lo = np.full(n, np.iinfo(np.int64).max)
        hi = np.full(n, -1)
        np.minimum.at(lo, part, coord)
        np.maximum.at(hi, part, coord)
        span.append(hi - lo + 1)
    return (span[0] * order + 1) * (span[1] * order + 1)


@dataclass(frozen=True)
class Decomposition:
    """Global facts of a decomposition, the same on every rank.

    ``part (E,)`` rank of each element; ``owner (P,)`` rank owning each point;
    ``petsc (P,)`` PETSc global index of each natural point index; ``offsets (nparts+1,)``
    PETSc ownership ranges (rank r owns ``offsets[r]:offsets[r+1]``).
    """

    nparts: int
    part: np.ndarray
    owner: np.ndarray
    petsc: np.ndarray
    offsets: np.ndarray


def decompose(mesh: StructuredMesh, nparts: int) -> Decomposition:
    """Partition ``mesh`` over ``nparts`` ranks and number its points for PETSc."""
    part = partition_elements(mesh.nex, mesh.ney, mesh.hx, mesh.hy, nparts)
    ibool = mesh.ibool()
    owner = np.full(mesh.n_points, nparts, dtype=np.int64)
    np.minimum.at(owner, ibool.reshape(len(part), -1),
                  np.repeat(part[:, None], ibool[0].size, axis=1))
    counts = np.bincount(owner, minlength=nparts)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    order = np.argsort(owner, kind="stable")  # by owner, natural order within
    petsc = np.empty(mesh.n_points, dtype=np.int64)
    petsc[order] = np.arange(mesh.n_points)
    return Decomposition(nparts, part, owner, petsc, offsets)


@dataclass(frozen=True)
class LocalPart:
    """One rank's share: its elements and its local points, owned first, then ghosts.

    ``points (L,)`` natural indices of the local points: the first ``n_owned`` in PETSc
    order, then the ghosts (points of local elements owned by other ranks), by PETSc index.
    ``ghosts (L - n_owned,)`` PETSc indices of the ghosts.
    """

    rank: int
    elements: np.ndarray
    points: np.ndarray
    n_owned: int
    ghosts: np.ndarray


def local_part(mesh: StructuredMesh, decomposition: Decomposition, rank: int) -> LocalPart:
    """The share of ``rank``."""
    elements = np.flatnonzero(decomposition.part == rank)
    touched = np.unique(mesh.ibool(elements))
    owned = touched[decomposition.owner[touched] == rank]
    ghost = touched[decomposition.owner[touched] != rank]
    owned = owned[np.argsort(decomposition.petsc[owned])]
    ghost = ghost[np.argsort(decomposition.petsc[ghost])]
    if len(owned) != decomposition.offsets[rank + 1] - decomposition.offsets[rank]:
        raise AssertionError("a point owned by this rank lies outside its elements")
    return LocalPart(rank, elements, np.concatenate((owned, ghost)), len(owned),
                     decomposition.petsc[ghost])
