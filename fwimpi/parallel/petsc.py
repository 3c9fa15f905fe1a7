"""PETSc vectors of the SEM points: halo exchange and the natural (file) order.

The only module that knows how halos move. A local array holds a rank's points in the
order of ``LocalPart.points``: owned points first, then ghosts. ``HaloExchange.assemble``
sums the contributions of every rank to each shared point and gives all holders the sum:
``ghostUpdate(ADD, REVERSE)`` then ``ghostUpdate(INSERT, FORWARD)`` on a ghosted vector
whose storage *is* the numpy array the time loop accumulates into (no copies).
"""

import numpy as np
from petsc4py import PETSc

from .decomposition import LocalPart


class HaloExchange:
    """Collective on comm: a ghosted PETSc vector over one rank's local points."""

    def __init__(self, comm, part: LocalPart):
        self.comm = comm
        self.n_owned = part.n_owned
        #: The vector's storage, ``(n_owned + n_ghosts,)``: accumulate here, then assemble.
        self.buffer = np.zeros(len(part.points))
        self.vec = PETSc.Vec().createGhostWithArray(
            np.asarray(part.ghosts, dtype=PETSc.IntType), self.buffer,
            size=(part.n_owned, PETSc.DECIDE), comm=comm,
        )
        self.n_global = self.vec.getSize()

    def assemble(self, values: np.ndarray) -> None:
        """Sum shared-point values across ranks in place; collective.

        ``values`` is ``self.buffer`` in the time loop (no copy); any other local array
        is copied in and out.
        """
        own = values is self.buffer
        if not own:
            self.buffer[:] = values
        self.vec.ghostUpdate(addv=PETSc.InsertMode.ADD_VALUES, mode=PETSc.ScatterMode.REVERSE)
        self.vec.ghostUpdate(addv=PETSc.InsertMode.INSERT_VALUES, mode=PETSc.ScatterMode.FORWARD)
        if not own:
            values[:] = self.buffer

    def update_ghosts(self, values: np.ndarray) -> None:
        """Give the ghosts of ``values`` their owners' values (owned entries unchanged)."""
        self.buffer[:] = values
        self.vec.ghostUpdate(addv=PETSc.InsertMode.INSERT_VALUES, mode=PETSc.ScatterMode.FORWARD)
        values[:] = self.buffer

    def destroy(self) -> None:
        """Free the PETSc vector (collective)."""
        self.vec.destroy()


class NaturalOrder:
    """Collective on comm: moves owned point values to contiguous natural-order slices.

    Rank r gets the natural indices ``[lo, hi)`` of PETSc's default split (what it writes
    to files); ``to_natural`` and ``from_natural`` convert with a PETSc scatter.
    """

    def __init__(self, comm, part: LocalPart, petsc_of_natural: np.ndarray):
        n = len(petsc_of_natural)
        self.owned = PETSc.Vec().createMPI((part.n_owned, PETSc.DECIDE), comm=comm)
        self.natural = PETSc.Vec().createMPI((PETSc.DECIDE, n), comm=comm)
        self.lo, self.hi = self.natural.getOwnershipRange()
        src = PETSc.IS().createGeneral(
            np.asarray(petsc_of_natural[self.lo:self.hi], dtype=PETSc.IntType), comm=comm)
        dst = PETSc.IS().createStride(self.hi - self.lo, first=self.lo, step=1, comm=comm)
        self.scatter = PETSc.Scatter().create(self.owned, src, self.natural, dst)
        self._index_sets = (src, dst)

    def to_natural(self, local: np.ndarray) -> np.ndarray:
        """Natural slice ``(hi - lo,)`` from a local array (its owned part is used)."""
        self.owned.getArray()[:] = local[: self.owned.getLocalSize()]
        self.scatter.scatter(self.owned, self.natural, PETSc.InsertMode.INSERT_VALUES,
                             PETSc.ScatterMode.FORWARD)
        return self.natural.getArray().copy()

    def from_natural(self, natural_slice: np.ndarray) -> np.ndarray:
        """Owned values ``(n_owned,)`` from this rank's natural slice."""
        self.natural.getArray()[:] = natural_slice
        self.scatter.scatter(self.natural, self.owned, PETSc.InsertMode.INSERT_VALUES,
                             PETSc.ScatterMode.REVERSE)
        return self.owned.getArray().copy()

    def destroy(self) -> None:
        """Free the PETSc vectors and scatter (collective)."""
        for obj in (self.scatter, self.owned, self.natural, *self._index_sets):
            obj.destroy()
