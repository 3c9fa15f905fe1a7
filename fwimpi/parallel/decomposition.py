"""Domain decomposition of a structured mesh over ``nparts`` ranks (no MPI calls here).

Elements are split by recursive coordinate bisection of the element grid (2 or 3 axes): a
block for k ranks is cut across its longest side (in metres) into parts for ``k // 2`` and
``k - k // 2`` ranks, in proportion, so any rank count (primes included) gets compact,
balanced boxes of elements with small interfaces.

Each global GLL point is owned by the lowest rank among those whose elements touch it. The
PETSc numbering puts rank r's owned points in one contiguous range, in natural order
within the range; files stay in the natural (mesh) order whatever the decomposition.
Everything here is generic over ``mesh.dim`` (2D ``StructuredMesh``, 3D ``StructuredMesh3D``):
elements are numbered ``e = ex + nex * ey`` in 2D and ``e = ex + nex * (ey + ney * ez)`` in 3D.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError


def partition_grid(shape, sizes, nparts: int) -> np.ndarray:
    """Rank of each element ``(prod(shape),)`` of an element grid ``shape = (nex, ney[, nez])``
    with element sizes ``sizes = (hx, hy[, hz])`` (m), elements numbered x fastest.

    A block is cut along its longest side in metres (ties: x before y before z) among the
    axes more than one element long. Raises ConfigError (field ``ranks_per_job``) if a part
    would get no element.
    """
    shape = tuple(int(n) for n in shape)
    sizes = tuple(sizes)
    if len(shape) not in (2, 3) or len(sizes) != len(shape):
        raise ValueError(f"partition_grid: 2 or 3 axes, got shape {shape}, sizes {sizes}")
    n_elements = int(np.prod(shape))
    grid = " x ".join(map(str, shape))
    if nparts < 1 or nparts > n_elements:
        raise ConfigError(
            f"ranks_per_job: {nparts} ranks for a mesh of {n_elements} elements; "
            f"use 1..{n_elements} ranks (at least one element per rank)"
        )
    dim = len(shape)
    part = np.empty(shape[::-1], dtype=np.int64)  # [.., ey, ex]: ravel gives e

    def split(lo: list, hi: list, k: int, first: int) -> None:
        if k == 1:
            part[tuple(slice(lo[a], hi[a]) for a in reversed(range(dim)))] = first
            return
        counts = [hi[a] - lo[a] for a in range(dim)]
        if int(np.prod(counts)) < k:
            raise ConfigError(
                f"ranks_per_job: {nparts} ranks cannot be balanced over {grid} "
                f"elements; use fewer ranks"
            )
        k1 = k // 2
        total = int(np.prod(counts))
        # the longest side in metres first (ties: x, y, z) among axes longer than one element
        axes = sorted((a for a in range(dim) if counts[a] > 1),
                      key=lambda a: (-(counts[a] * sizes[a]), a))
        for axis in axes:
            n = counts[axis]
            rest = total // n  # elements per slice across the cut
            cut = min(max(int(round(n * k1 / k)), 1), n - 1)
            # at least one element per rank on either side: the proportional cut, moved
            # only when it leaves too few (a cut that suffices is kept as it is)
            least, most = -(-k1 // rest), n - -(-(k - k1) // rest)
            if least <= most:
                cut = min(max(cut, least), most)
                break
        else:
            raise ConfigError(
                f"ranks_per_job: {nparts} ranks cannot be balanced over {grid} "
                f"elements; use fewer ranks"
            )
        mid = lo[axis] + cut
        split(lo, hi[:axis] + [mid] + hi[axis + 1:], k1, first)
        split(lo[:axis] + [mid] + lo[axis + 1:], hi, k - k1, first + k1)

    split([0] * dim, list(shape), nparts, 0)
    return part.ravel()


def partition_elements(nex: int, ney: int, hx: float, hy: float, nparts: int) -> np.ndarray:
    """Rank of each element ``(nex * ney,)`` of an ``nex x ney`` grid (``e = ex + nex*ey``):
    ``partition_grid((nex, ney), (hx, hy), nparts)``.

    Raises ConfigError (field ``ranks_per_job``) if a part would get no element.
    """
    return partition_grid((nex, ney), (hx, hy), nparts)


def local_point_counts(shape, order: int, part: np.ndarray, *legacy) -> np.ndarray:
    """Local points (owned and ghosts) of each rank ``(nparts,)``: the GLL points of the box
    of elements it holds (the parts of ``partition_grid`` are boxes).

    ``local_point_counts(mesh.shape, mesh.order, part)``; the 2D form
    ``local_point_counts(nex, ney, order, part)`` is accepted too.
    """
    if legacy:  # (nex, ney, order, part)
        shape, order, part = (shape, order), part, legacy[0]
    shape = tuple(int(n) for n in shape)
    part = np.asarray(part)
    n = int(part.max()) + 1
    e = np.arange(int(np.prod(shape)))
    total = np.ones(n, dtype=np.int64)
    stride = 1
    for ne in shape:
        coord = (e // stride) % ne
        stride *= ne
        lo = np.full(n, np.iinfo(np.int64).max)
        hi = np.full(n, -1)
        np.minimum.at(lo, part, coord)
        np.maximum.at(hi, part, coord)
        total *= (hi - lo + 1) * order + 1
    return total


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


def decompose(mesh, nparts: int) -> Decomposition:
    """Partition ``mesh`` (2D or 3D structured) over ``nparts`` ranks and number its points
    for PETSc."""
    part = partition_grid(mesh.shape, mesh.sizes, nparts)
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


def local_part(mesh, decomposition: Decomposition, rank: int) -> LocalPart:
    """The share of ``rank`` (``mesh`` 2D or 3D structured)."""
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
