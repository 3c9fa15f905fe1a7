"""Groups of ranks that simulate events concurrently.

``EventGroups(world, ranks_per_event)`` splits ``world`` into ``count`` groups of
``ranks_per_event`` consecutive ranks; each group decomposes the same mesh the same way, so
the natural slice of a group's rank ``r`` is the same in every group. Tasks (events) are handed
to groups as they become free: a group's leader takes the next index from a counter held by
world rank 0 (an atomic fetch-and-add on an MPI window, which needs nothing from rank 0 while
it computes), not a fixed round-robin, so uneven events balance. ``sum_over_groups`` adds an
array over the groups (one reduction), ``gather_to_root`` brings the leaders' results to world
rank 0.

With one group (``count == 1``) the group is the whole of ``world``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from mpi4py import MPI

from ..errors import ConfigError


class EventGroups:
    """Collective on world: ``world`` split into groups of ``ranks_per_event`` ranks.

    ``comm`` is this rank's group (its communicator), ``index`` the group's number, ``count``
    the number of groups, ``leader`` whether this rank is its group's rank 0.
    """

    def __init__(self, world, ranks_per_event: int):
        if ranks_per_event < 1 or world.size % ranks_per_event:
            raise ConfigError(f"concurrent_events: {world.size} ranks are not a whole number of "
                              f"groups of ranks_per_job = {ranks_per_event}")
        self.world = world
        self.count = world.size // ranks_per_event
        self.index = world.rank // ranks_per_event
        self.comm = world.Split(self.index, world.rank)
        # ranks with the same place in their group: a reduction over groups
        self.across = world.Split(self.comm.rank, world.rank)
        self.leader = self.comm.rank == 0
        self.leaders = world.Split(0 if self.leader else MPI.UNDEFINED, world.rank)
        self._window = MPI.Win.Allocate(8 if world.rank == 0 else 0, 8, comm=world)
        self.reset()

    def reset(self) -> None:
        """Set the task counter to 0. Collective on world."""
        if self.world.rank == 0:
            self._window.Lock(0, MPI.LOCK_EXCLUSIVE)
            self._window.Put(np.zeros(1, dtype=np.int64), 0)
            self._window.Unlock(0)
        self.world.Barrier()

    def next_task(self) -> int:
        """The next task index (0, 1, ...) for this group. Collective on the group."""
        index = None
        if self.leader:
            got, one = np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64)
            self._window.Lock(0, MPI.LOCK_SHARED)
            self._window.Fetch_and_op(one, got, 0, 0, MPI.SUM)
            self._window.Unlock(0)
            index = int(got[0])
        return self.comm.bcast(index, root=0)

    def run(self, n_tasks: int, task: Callable[[int], object]) -> dict[int, object]:
        """Run ``task(i)`` (collective on the group; its result on the group leader) for
        ``i < n_tasks``, each by the first free group. Collective on world. Returns this
        group leader's results ``{i: result}`` (empty on other ranks)."""
        self.reset()
        results = {}
        while (i := self.next_task()) < n_tasks:
            result = task(i)
            if self.leader:
                results[i] = result
        return results

    def gather_to_root(self, mine: dict) -> dict | None:
        """Merge the leaders' dictionaries on world rank 0 (None elsewhere). Collective on
        world (ranks that are not leaders take no part but must call too)."""
        if not self.leader:
            return None
        parts = self.leaders.gather(mine, root=0)
        if self.world.rank != 0:
            return None
        merged = {}
        for part in parts:
            merged.update(part)
        return merged

    def sum_over_groups(self, values: np.ndarray) -> np.ndarray:
        """``values`` summed over the groups (same shape on every rank of a place). Collective
        on world."""
        if self.count == 1:
            return values
        out = np.empty_like(values)
        self.across.Allreduce(np.ascontiguousarray(values), out, op=MPI.SUM)
        return out

    def max_over_groups(self, value: float) -> float:
        """The largest ``value`` of any rank of any group. Collective on world."""
        return self.world.allreduce(value, op=MPI.MAX)

    def free(self) -> None:
        """Free the window and communicators. Collective on world."""
        self._window.Free()
        for comm in (self.comm, self.across):
            comm.Free()
        if self.leaders != MPI.COMM_NULL:
            self.leaders.Free()

    def __enter__(self) -> "EventGroups":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:  # after a failure the other ranks may be elsewhere: no collective
            self.free()
