"""One mesh decomposed over the ranks of a communicator: the frame every distributed
computation stands on.

``DistributedMesh(comm, mesh)`` (a 2D ``StructuredMesh`` or a 3D ``StructuredMesh3D``: the
code is generic over ``mesh.dim``) holds the decomposition, this rank's elements and local points
(owned first, then ghosts), their geometry and assembled quadrature weights, the halo exchange,
the natural (file) order, reductions, gathers and rank-parallel files. Numerics take its arrays
and its ``assemble``; they never see the communicator. It holds PETSc objects: ``destroy()``
them, or use it as a context manager.

>>> from mpi4py import MPI
>>> from fwimpi.mesh.structured import Box, build_mesh
>>> with DistributedMesh(MPI.COMM_SELF, build_mesh(Box(0, 100, -50, 0), 0.0, 25.0, 2)) as dm:
...     dm.n_local, round(float(dm.weights.sum()), 6)
(45, 5000.0)
>>> from fwimpi.mesh.structured3d import Box3, build_mesh3d
>>> with DistributedMesh(MPI.COMM_SELF, build_mesh3d(Box3(0, 300, 0, 200, -100, 0), 0.0,
...                                                  100.0, 2)) as dm:
...     dm.n_local, dm.ibool.shape, round(float(dm.weights.sum()), 6)
(105, (6, 3, 3, 3), 6000000.0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from mpi4py import MPI

from ..errors import FwimpiError
from ..sem.geometry import point_weights
from ..sem.operators import assembled_sum
from ..sem.timestepper import PointSampling
from .collective import _rebuild, decide_on_root, on_root, watchdog

__all__ = ("DistributedMesh", "decide_on_root")
from .decomposition import decompose, local_part
from .petsc import HaloExchange, NaturalOrder


class DistributedMesh:
    """Collective on comm: ``mesh`` decomposed over the ranks of ``comm``.

    ``mesh`` is a ``StructuredMesh`` (2D) or ``StructuredMesh3D`` (3D); ``dim = mesh.dim``.
    Local arrays are ``(n_local,)`` over this rank's points in the order of ``points`` (natural
    indices; owned first, then ghosts). ``ibool (E_local, n, n)`` in 2D, ``(E_local, n, n, n)``
    in 3D (``n = order + 1``, ordered like ``mesh.ibool``) indexes them per element point;
    ``geometry`` is the local elements'; ``coordinates (n_local, dim)`` (m); ``weights`` the
    assembled quadrature weights ``w`` (lumped unit mass, m^dim). Natural slices ``(hi - lo,)``
    are this rank's contiguous share ``natural_range`` of the natural point order: what files
    hold.
    """

    def __init__(self, comm, mesh):
        self.comm, self.mesh = comm, mesh
        self.decomposition = decompose(mesh, comm.size)
        self.part = local_part(mesh, self.decomposition, comm.rank)
        self.halo = HaloExchange(comm, self.part)
        self.natural = NaturalOrder(comm, self.part, self.decomposition.petsc)
        self.elements = self.part.elements
        self.points = self.part.points
        lookup = np.full(mesh.n_points, -1, dtype=np.int64)
        lookup[self.points] = np.arange(len(self.points))
        self.ibool = lookup[mesh.ibool(self.elements)]
        self.geometry = mesh.geometry(self.elements)
        self.coordinates = mesh.points[self.points]
        self.weights = assembled_sum(self.ibool, self.geometry.jw, self.n_local)
        self.assemble(self.weights)

    # ------------------------------------------------------------------ sizes

    @property
    def n_local(self) -> int:
        return len(self.points)

    @property
    def n_owned(self) -> int:
        return self.part.n_owned

    @property
    def offset(self) -> int:
        """PETSc index of this rank's first owned point."""
        return int(self.decomposition.offsets[self.comm.rank])

    @property
    def n_global(self) -> int:
        return self.mesh.n_points

    @property
    def natural_range(self) -> tuple[int, int]:
        """``(lo, hi)``: the natural point indices of this rank's slice of a file."""
        return self.natural.lo, self.natural.hi

    # ------------------------------------------------------------------ halo

    @property
    def assembler(self) -> Callable[[np.ndarray], None] | None:
        """``assemble`` for the time loop, None on one rank (nothing to exchange)."""
        return self.assemble if self.comm.size > 1 else None

    @property
    def work(self) -> np.ndarray:
        """``(n_local,)``: the array ``assemble`` acts on without a copy."""
        return self.halo.buffer

    def assemble(self, values: np.ndarray) -> None:
        """Sum the values of shared points over the ranks, in place. Collective."""
        self.halo.assemble(values)

    def update_ghosts(self, values: np.ndarray) -> None:
        """Give ghost entries their owners' values, in place. Collective."""
        self.halo.update_ghosts(values)

    # ------------------------------------------------------------------ reductions

    def sum(self, value: float) -> float:
        """Sum over the ranks. Collective."""
        return self.comm.allreduce(value, op=MPI.SUM)

    def max(self, value: float) -> float:
        """Maximum over the ranks. Collective."""
        return self.comm.allreduce(value, op=MPI.MAX)

    def min(self, value: float) -> float:
        """Minimum over the ranks. Collective."""
        return self.comm.allreduce(value, op=MPI.MIN)

    def all(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank. Collective."""
        return bool(self.comm.allreduce(bool(flag), op=MPI.LAND))

    def bcast(self, obj, root: int = 0):
        """``obj`` of rank ``root`` on every rank. Collective."""
        return self.comm.bcast(obj, root=root)

    def agree(self, error: BaseException | None, what: str = "a step") -> None:
        """Collective: raise on every rank if any rank passes an error: the error itself on
        its rank, one of the same type (an FwimpiError), naming its rank, on the others. A
        rank with an error waits for the others under the watchdog (``collective``)."""
        mine = None if error is None else (type(error), str(error))
        if error is None:
            items = self.comm.allgather(mine)
        else:
            with watchdog(self.comm, f"{what}: {type(error).__name__}: {error}"):
                items = self.comm.allgather(mine)
        for rank, item in enumerate(items):
            if item is not None:
                if error is not None:
                    raise error
                raise _rebuild(item[0], f"{item[1]} (on rank {rank})")

    def on_root(self, step: Callable[[], object]):
        """Run ``step()`` on rank 0 while the others wait; an error there is raised on every
        rank. Returns the result on rank 0, None elsewhere. Collective."""
        return on_root(self.comm, step)

    # ------------------------------------------------------------------ natural order

    def to_natural(self, local: np.ndarray) -> np.ndarray:
        """This rank's natural slice ``(hi - lo,)`` of a local array. Collective."""
        return self.natural.to_natural(local)

    def from_natural(self, natural_slice: np.ndarray) -> np.ndarray:
        """A local array ``(n_local,)`` (ghosts filled) from natural slices. Collective."""
        local = np.zeros(self.n_local)
        local[: self.n_owned] = self.natural.from_natural(natural_slice)
        self.update_ghosts(local)
        return local

    # ------------------------------------------------------------------ points

    def point_sampling(self, xy: np.ndarray) -> tuple[np.ndarray, PointSampling]:
        """Interpolation rows for points ``(Q, dim)`` (m) that fall in this rank's elements.

        Returns the indices ``(q,)`` of the points kept and their ``PointSampling`` over
        local points (rows of ``(order+1)^dim`` indices and weights). A point on an edge or
        face shared by subdomains belongs to the lowest-numbered element, so exactly one rank
        keeps it.
        """
        mesh = self.mesh
        xy = np.atleast_2d(np.asarray(xy, dtype=float)).reshape(-1, mesh.dim)
        elem, ref = mesh.locate(xy)
        local = np.full(mesh.n_elements, -1)
        local[self.elements] = np.arange(len(self.elements))
        keep = np.flatnonzero(local[elem] >= 0)
        idx = self.ibool[local[elem[keep]]].reshape(len(keep), (mesh.order + 1) ** mesh.dim)
        return keep, PointSampling(idx, point_weights(mesh.order, ref[keep]))

    def gather_rows(self, keep: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray | None:
        """Rows ``(k, ...)`` held by the ranks for indices ``keep`` into one ``(n, ...)``
        array on rank 0 (None elsewhere); every index must be held by exactly one rank.
        Collective."""
        parts = self.comm.gather((np.asarray(keep), np.asarray(rows)), root=0)
        if self.comm.rank != 0:
            return None
        shape = next((r.shape[1:] for _, r in parts if len(r)), (0,))
        out = np.zeros((n,) + tuple(shape))
        seen = np.zeros(n, dtype=int)
        for k, r in parts:
            out[k] = r
            np.add.at(seen, k, 1)
        if not (seen == 1).all():
            raise FwimpiError("every row must be held by exactly one rank")
        return out

    # ------------------------------------------------------------------ files

    @property
    def natural_weights(self) -> np.ndarray:
        """This rank's natural slice of the weights ``w`` (the files' ``/mesh/mass``)."""
        if not hasattr(self, "_natural_weights"):
            self._natural_weights = self.to_natural(self.weights)
        return self._natural_weights

    def write_fields(self, path: Path, fields: dict[str, np.ndarray], attrs: dict,
                     kernels: bool = False) -> None:
        """Write a mesh file of ``fields`` (natural slices ``(hi - lo,)``) atomically: points
        ``(P, dim)``, cells ``(E, (order+1)^dim)``, sub-quads (2D) or sub-hexahedra (3D) and
        the weights as ``/mesh/mass``; ``kernels`` adds ``<name>_kernel = field / w``
        (gradients). Collective."""
        from ..mesh.files import with_kernels
        from .h5io import block_range, write_mesh_h5_collective

        mesh = self.mesh
        lo, hi = self.natural_range
        elo, ehi = block_range(mesh.n_elements, self.comm)
        if kernels:
            fields = with_kernels(fields, self.natural_weights)
        write_mesh_h5_collective(
            self.comm, path, n_points=mesh.n_points, point_range=(lo, hi),
            points=mesh.points[lo:hi], mass=self.natural_weights, fields=fields,
            n_elements=mesh.n_elements, element_range=(elo, ehi), cells=mesh.cells[elo:ehi],
            order=mesh.order, attrs=attrs, dim=mesh.dim)

    def read_fields(self, path: Path) -> dict[str, np.ndarray]:
        """This rank's natural slices of a mesh file's fields (less derived kernels).
        Collective."""
        from ..mesh.files import without_kernels
        from .h5io import read_mesh_h5_collective

        fields, _, _ = read_mesh_h5_collective(self.comm, path, self.natural_range)
        return without_kernels(fields)

    # ------------------------------------------------------------------ lifetime

    def destroy(self) -> None:
        """Free the PETSc objects (collective). The object is unusable afterwards."""
        for obj in (self.halo, self.natural):
            obj.destroy()

    def __enter__(self) -> "DistributedMesh":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:  # after a failure the other ranks may be elsewhere: no collective
            self.destroy()
