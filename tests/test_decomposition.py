"""Partitioning, point ownership and PETSc numbering (serial checks of global data)."""

import numpy as np
import pytest

from fwimpi.errors import ConfigError
from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.parallel.decomposition import decompose, local_part, partition_elements
from fwimpi.sem.operators import AcousticStiffness

TUTORIAL = build_mesh(Box(0.0, 3000.0, -1000.0, 0.0), 1400.0, 75.0, 4)  # 78 x 32


@pytest.mark.parametrize("nparts", [1, 2, 3, 4, 5, 6, 7, 8, 13, 16])
def test_parts_are_balanced_compact_rectangles(nparts):
    part = partition_elements(TUTORIAL.nex, TUTORIAL.ney, TUTORIAL.hx, TUTORIAL.hy, nparts)
    counts = np.bincount(part, minlength=nparts)
    assert counts.min() > 0 and counts.max() / counts.mean() < 1.1
    grid = part.reshape(TUTORIAL.ney, TUTORIAL.nex)
    for r in range(nparts):
        rows, cols = np.nonzero(grid == r)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert box == counts[r], f"part {r} is not a rectangle"
        # compact: no part is a thin strip when the mesh allows better
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert max(h / w, w / h) < 8 or nparts <= 2


def test_prime_rank_counts_are_not_strips():
    # 7 ranks: strips would cut 6 interfaces of 32 elements; bisection much less
    part = partition_elements(TUTORIAL.nex, TUTORIAL.ney, TUTORIAL.hx, TUTORIAL.hy, 7)
    grid = part.reshape(TUTORIAL.ney, TUTORIAL.nex)
    cut = np.count_nonzero(grid[:, 1:] != grid[:, :-1]) + np.count_nonzero(grid[1:] != grid[:-1])
    assert cut < 6 * TUTORIAL.ney


def test_more_ranks_than_elements_is_a_clear_error():
    with pytest.raises(ConfigError, match="ranks_per_job"):
        partition_elements(3, 2, 1.0, 1.0, 7)


@pytest.mark.parametrize("nparts", [1, 2, 3, 4])
def test_ownership_and_local_assembly_reproduce_the_serial_operator(nparts):
    mesh = build_mesh(Box(0.0, 900.0, -500.0, 0.0), 200.0, 100.0, 3)
    dec = decompose(mesh, nparts)
    assert np.array_equal(np.sort(dec.petsc), np.arange(mesh.n_points))
    assert dec.offsets[-1] == mesh.n_points
    geometry = mesh.geometry()
    rng = np.random.default_rng(nparts)
    m1 = rng.uniform(0.5, 2.0, mesh.n_points)
    u = rng.standard_normal(mesh.n_points)
    ib = mesh.ibool()
    serial = AcousticStiffness(geometry, ib, m1).apply(u)
    total = np.zeros(mesh.n_points)
    owned_seen = np.zeros(mesh.n_points, dtype=int)
    for rank in range(nparts):
        part = local_part(mesh, dec, rank)
        assert np.all(dec.owner[part.points[: part.n_owned]] == rank)
        assert np.all(dec.owner[part.points[part.n_owned:]] != rank)
        assert np.array_equal(part.ghosts, dec.petsc[part.points[part.n_owned:]])
        owned_seen[part.points[: part.n_owned]] += 1
        lookup = np.full(mesh.n_points, -1)
        lookup[part.points] = np.arange(len(part.points))
        local_ib = lookup[mesh.ibool(part.elements)]
        k = AcousticStiffness(mesh.geometry(part.elements), local_ib, m1[part.points])
        np.add.at(total, part.points, k.apply(u[part.points]))
    assert np.all(owned_seen == 1)
    assert np.allclose(total, serial, rtol=0, atol=1e-13 * np.abs(serial).max())
