"""The parallel layer and the files in 3D: partitions of a 3D element grid, ownership and
PETSc numbering, and (real MPI ranks, tests/mpi/parallel3d.py) assembled weights, a
halo-assembled ``K u``, point sampling, rank-parallel mesh files and checkpoints on 1 to 4
ranks equal to the serial results; serial 3D mesh files (hexahedra, XDMF, VTU), receivers
``(R, 3)`` and ``fwimpi export`` of them."""

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import meshio
import numpy as np
import pytest

from fwimpi.errors import ConfigError
from fwimpi.jobs.export import export_file
from fwimpi.mesh.files import (FileFormatError, ReceiverData, hexes_from_cells, read_mesh_h5,
                               read_receivers_h5, write_mesh_h5, write_receivers_h5, write_vtu)
from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.mesh.structured3d import Box3, build_mesh3d
from fwimpi.parallel.decomposition import (decompose, local_part, local_point_counts,
                                           partition_elements, partition_grid)

SCRIPT = Path(__file__).parent / "mpi" / "parallel3d.py"
MPIRUN = shutil.which("mpirun")

# 16 x 12 x 8 elements of 50 x 60 x 90 m: 800 x 720 x 720 m
GRID, SIZES = (16, 12, 8), (50.0, 60.0, 90.0)


def boxes(part: np.ndarray, shape) -> list[tuple[int, ...]]:
    """Extent (elements along x, y, z) of each part; asserts that each part is a box."""
    grid = part.reshape(shape[::-1])
    out = []
    for r in range(int(part.max()) + 1):
        idx = np.nonzero(grid == r)
        extent = tuple(int(i.max() - i.min() + 1) for i in idx[::-1])
        assert np.prod(extent) == np.count_nonzero(grid == r), f"part {r} is not a box"
        out.append(extent)
    return out


# --------------------------------------------------------------------------- partitions


@pytest.mark.parametrize("nparts", range(1, 9))
def test_3d_parts_are_balanced_compact_boxes(nparts):
    part = partition_grid(GRID, SIZES, nparts)
    counts = np.bincount(part, minlength=nparts)
    assert counts.min() > 0 and counts.max() / counts.mean() < 1.1
    for extent in boxes(part, GRID):
        sides = np.multiply(extent, SIZES)  # metres
        assert sides.max() / sides.min() < 3.5, extent  # no slabs or strips
    # points (owned and ghosts) of each part: the GLL points of its box
    expected = [np.prod(np.multiply(e, 2) + 1) for e in boxes(part, GRID)]
    assert local_point_counts(GRID, 2, part).tolist() == expected


def test_3d_bisection_cuts_all_three_directions():
    part = partition_grid(GRID, SIZES, 8)
    assert sorted(boxes(part, GRID)) == [(8, 6, 4)] * 8  # halves along x, y and z
    # element faces between parts: one plane across each direction, 416 against the 672 of
    # the best slabs (7 planes of 12 x 8 faces)
    grid = part.reshape(GRID[::-1])
    cut = sum(np.count_nonzero(np.diff(grid, axis=a) != 0) for a in range(3))
    assert cut == 12 * 8 + 16 * 8 + 16 * 12


def test_2d_partition_is_the_2d_wrapper():
    mesh = build_mesh(Box(0.0, 3000.0, -1000.0, 0.0), 1400.0, 75.0, 4)
    for nparts in (3, 7, 13):
        assert np.array_equal(partition_elements(mesh.nex, mesh.ney, mesh.hx, mesh.hy, nparts),
                              partition_grid(mesh.shape, mesh.sizes, nparts))
        assert np.array_equal(decompose(mesh, nparts).part,
                              partition_grid(mesh.shape, mesh.sizes, nparts))


def test_a_cut_that_would_starve_a_side_is_moved():
    # 2 x 3 elements on 6 ranks: the proportional cut of the longer y side leaves 2
    # elements for 3 ranks; the cut along x gives 3 and 3
    part = partition_grid((2, 3), (1.0, 1.0), 6)
    assert sorted(np.bincount(part).tolist()) == [1] * 6
    part = partition_grid((2, 3, 1), (1.0, 1.0, 1.0), 6)
    assert sorted(np.bincount(part).tolist()) == [1] * 6


def test_too_many_ranks_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"^ranks_per_job: 25 ranks for a mesh of 24 elements"):
        partition_grid((4, 3, 2), (1.0, 1.0, 1.0), 25)
    mesh = build_mesh3d(Box3(0.0, 200.0, 0.0, 100.0, -100.0, 0.0), 0.0, 100.0, 2)  # 2 x 1 x 1
    with pytest.raises(ConfigError, match="ranks_per_job"):
        decompose(mesh, 3)


@pytest.mark.parametrize("nparts", [1, 2, 3, 5, 8])
def test_3d_ownership_and_petsc_numbering(nparts):
    mesh = build_mesh3d(Box3(0.0, 400.0, 0.0, 300.0, -200.0, 0.0), 100.0, 100.0, 2)
    dec = decompose(mesh, nparts)
    ib = mesh.ibool().reshape(mesh.n_elements, -1)
    lowest = np.full(mesh.n_points, nparts)
    np.minimum.at(lowest, ib, np.repeat(dec.part[:, None], ib.shape[1], axis=1))
    assert np.array_equal(dec.owner, lowest)  # the lowest touching rank owns
    assert np.array_equal(np.sort(dec.petsc), np.arange(mesh.n_points))
    owned_seen = np.zeros(mesh.n_points, dtype=int)
    counts = local_point_counts(mesh.shape, mesh.order, dec.part)
    for rank in range(nparts):
        part = local_part(mesh, dec, rank)
        owned = part.points[: part.n_owned]
        owned_seen[owned] += 1
        # a contiguous PETSc range, natural order within it
        assert np.array_equal(dec.petsc[owned], np.arange(dec.offsets[rank], dec.offsets[rank + 1]))
        assert np.all(np.diff(owned) > 0)
        assert np.all(dec.owner[part.points[part.n_owned:]] != rank)
        assert np.array_equal(part.ghosts, dec.petsc[part.points[part.n_owned:]])
        assert len(part.points) == counts[rank]
    assert np.all(owned_seen == 1)


# --------------------------------------------------------------------------- real MPI ranks


@pytest.fixture(scope="module")
def mpi_runs(tmp_path_factory):
    """tests/mpi/parallel3d.py on 1, 2, 3 and 4 ranks: folder of each run."""
    if MPIRUN is None:
        pytest.skip("mpirun not installed (openmpi-bin)")
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    out = {}
    for n in (1, 2, 3, 4):
        folder = tmp_path_factory.mktemp(f"p3d_np{n}")
        cmd = [MPIRUN, "-n", str(n), "--oversubscribe", sys.executable, "-m", "mpi4py",
               str(SCRIPT), str(folder)]
        # the script's watchdog ends a stuck run after 30 s per test; this is the last resort
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
        out[n] = (folder, proc.returncode, proc.stdout + proc.stderr)
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_distributed_3d_mesh_equals_the_serial_results(mpi_runs, n):
    folder, status, output = mpi_runs[n]
    print(output)
    assert status == 0, output
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["ranks"] == n and not summary["failed"] and len(summary["passed"]) == 6
    figures = summary["figures"]
    assert figures["test_weights_and_stiffness"]["K u: max relative difference"] <= 1e-12
    if n >= 3:
        assert figures["test_ownership_and_numbering"]["most ranks sharing a point"] >= 3


@pytest.mark.parametrize("n", [2, 3, 4])
def test_3d_mesh_file_written_on_n_ranks_equals_the_one_rank_file(mpi_runs, n):
    one, got = mpi_runs[1][0] / "mesh3d.h5", mpi_runs[n][0] / "mesh3d.h5"
    with h5py.File(one, "r") as a, h5py.File(got, "r") as b:
        for name in ("mesh/points", "mesh/cells", "mesh/hexes", "fields/VP", "fields/RHO"):
            assert np.array_equal(a[name][...], b[name][...]), name
        assert b["mesh/points"].shape[1] == 3 and b.attrs["nprocs"] == n
        assert np.allclose(b["mesh/mass"][...], a["mesh/mass"][...], rtol=1e-13, atol=0)
    assert got.with_suffix(".xdmf").read_text() == one.with_suffix(".xdmf").read_text()


def test_export_of_a_3d_mesh_file_written_on_three_ranks(mpi_runs, tmp_path):
    source = mpi_runs[3][0] / "mesh3d.h5"
    for suffix in (".h5", ".xdmf"):
        shutil.copy(source.with_suffix(suffix), tmp_path / f"mesh3d{suffix}")
    [target] = export_file(tmp_path / "mesh3d.h5")
    assert target == tmp_path / "mesh3d.vtu"
    vtu, f = meshio.read(target), read_mesh_h5(source)
    assert [c.type for c in vtu.cells] == ["hexahedron"]
    np.testing.assert_array_equal(vtu.points, f.points)
    np.testing.assert_array_equal(vtu.cells[0].data, hexes_from_cells(f.cells, f.order))
    np.testing.assert_array_equal(vtu.point_data["VP"], f.fields["VP"])
    np.testing.assert_array_equal(vtu.point_data["mass"], f.mass)
    # the XDMF sidecar, beside its file, reads as the same hexahedra
    xdmf = meshio.read(tmp_path / "mesh3d.xdmf")
    assert xdmf.cells[0].type == "hexahedron"
    np.testing.assert_array_equal(xdmf.cells[0].data, vtu.cells[0].data)


# --------------------------------------------------------------------------- serial files


def mesh3d_file(path, order):
    mesh = build_mesh3d(Box3(0.0, 300.0, 0.0, 200.0, -100.0, 0.0), 0.0, 100.0, order)
    rng = np.random.default_rng(order)
    mass = rng.uniform(0.5, 1.0, mesh.n_points)
    fields = {"VP": 1500.0 - mesh.points[:, 2]}
    write_mesh_h5(path, mesh.points, mesh.cells, mass, fields, {"kind": "model"})
    return mesh, mass, fields


def test_order_from_cells_and_the_points_dimension(tmp_path):
    # (N+1)^3 = 64 for order 3 in 3D is (N+1)^2 = 64 for order 7 in 2D
    mesh, mass, fields = mesh3d_file(tmp_path / "m3.h5", 3)
    f = read_mesh_h5(tmp_path / "m3.h5")
    assert f.cells.shape[1] == 64 and f.dim == 3 and f.order == 3
    np.testing.assert_array_equal(f.points, mesh.points)
    np.testing.assert_array_equal(f.cells, mesh.cells)
    np.testing.assert_array_equal(f.fields["VP"], fields["VP"])
    mesh2 = build_mesh(Box(0.0, 100.0, -100.0, 0.0), 0.0, 100.0, 7)
    write_mesh_h5(tmp_path / "m2.h5", mesh2.points, mesh2.cells, np.ones(mesh2.n_points), {}, {})
    f2 = read_mesh_h5(tmp_path / "m2.h5")
    assert f2.cells.shape[1] == 64 and f2.dim == 2 and f2.order == 7
    with h5py.File(tmp_path / "m2.h5", "r") as h:
        assert "mesh/quads" in h and "mesh/hexes" not in h
    with pytest.raises(FileFormatError,
                       match=r"cells: expected shape \(n_elements, \(order\+1\)\*\*3\)"):
        write_mesh_h5(tmp_path / "bad.h5", mesh.points, mesh.cells[:, :30], mass, {}, {})


@pytest.mark.parametrize("order", [1, 2])
def test_hexahedra_tile_the_box_with_positive_volume(tmp_path, order):
    mesh, _, _ = mesh3d_file(tmp_path / "m.h5", order)
    with h5py.File(tmp_path / "m.h5", "r") as f:
        hexes = f["mesh/hexes"][...]
    assert hexes.shape == (mesh.n_elements * order**3, 8)
    p = mesh.points[hexes]  # (H, 8, 3): VTK order, the bottom face counterclockwise seen from above
    lo, hi = p.min(axis=1), p.max(axis=1)
    assert np.array_equal(p[:, 0], lo) and np.array_equal(p[:, 6], hi)
    np.testing.assert_array_equal(p[:, 1], np.column_stack([hi[:, 0], lo[:, 1], lo[:, 2]]))
    np.testing.assert_array_equal(p[:, 3], np.column_stack([lo[:, 0], hi[:, 1], lo[:, 2]]))
    np.testing.assert_array_equal(p[:, 4:, :2], p[:, :4, :2])  # top face above the bottom one
    assert np.all(p[:, 4:, 2] > p[:, :4, 2])
    volume = np.prod(hi - lo, axis=1)
    assert volume.min() > 0
    np.testing.assert_allclose(volume.sum(), 300.0 * 200.0 * 100.0, rtol=1e-12)
    if order == 1:
        np.testing.assert_array_equal(hexes, mesh.cells[:, [0, 1, 3, 2, 4, 5, 7, 6]])


def test_3d_xdmf_names_existing_datasets(tmp_path):
    mesh, _, _ = mesh3d_file(tmp_path / "m.h5", 2)
    root = ET.parse(tmp_path / "m.xdmf").getroot()
    grid = root.find("Domain/Grid")
    assert grid.find("Topology").get("TopologyType") == "Hexahedron"
    assert grid.find("Geometry").get("GeometryType") == "XYZ"
    with h5py.File(tmp_path / "m.h5", "r") as f:
        for item in root.findall(".//DataItem"):
            name, dataset = item.text.strip().split(":")
            assert name == "m.h5"
            assert f[dataset].shape == tuple(int(d) for d in item.get("Dimensions").split())
    m = meshio.read(tmp_path / "m.xdmf")
    assert m.cells[0].type == "hexahedron" and len(m.cells[0].data) == mesh.n_elements * 8
    np.testing.assert_array_equal(m.points, mesh.points)


def test_3d_vtu(tmp_path):
    mesh, mass, fields = mesh3d_file(tmp_path / "m.h5", 2)
    write_vtu(tmp_path / "m.vtu", mesh.points, mesh.cells, 2, fields, mass=mass)
    m = meshio.read(tmp_path / "m.vtu")
    np.testing.assert_array_equal(m.points, mesh.points)
    assert m.cells[0].type == "hexahedron"
    np.testing.assert_array_equal(m.cells[0].data, hexes_from_cells(mesh.cells, 2))
    np.testing.assert_array_equal(m.point_data["VP"], fields["VP"])


def receivers3d(tmp_path):
    coords = np.column_stack([np.linspace(0.0, 300.0, 4), np.full(4, 50.0), np.zeros(4)])
    data = ReceiverData({"phi": np.arange(40.0).reshape(4, 10)}, coords, 1e-3, 0.0,
                        tuple(f"r{k}" for k in range(4)))
    write_receivers_h5(tmp_path / "receivers.h5", {"ev1": data}, {"kind": "receivers"})
    return data


def test_receivers_with_3d_coordinates_round_trip(tmp_path):
    data = receivers3d(tmp_path)
    got = read_receivers_h5(tmp_path / "receivers.h5")["ev1"]
    assert got.coordinates.shape == (4, 3)
    np.testing.assert_array_equal(got.coordinates, data.coordinates)
    np.testing.assert_array_equal(got.traces["phi"], data.traces["phi"])
    with pytest.raises(FileFormatError, match=r"\(n_receivers, 2\) or \(n_receivers, 3\)"):
        ReceiverData({"phi": np.zeros((4, 3))}, np.zeros((4, 4)), 1e-3, 0.0, "abcd")


def test_3d_receivers_go_to_segy_and_back(tmp_path):
    """x, y in GroupX/GroupY, z in the elevation, the source in SourceX/SourceY/
    SourceSurfaceElevation, the offset horizontal; read back with --dimension 3."""
    import segyio

    from fwimpi.mesh.segy import read_segy, write_segy

    data = receivers3d(tmp_path)
    write_segy(tmp_path / "ev1.sgy", data, "phi", (100.0, 250.0, -30.5))
    segy = read_segy(tmp_path / "ev1.sgy", "phi", dimension=3)
    np.testing.assert_allclose(segy.data.coordinates, data.coordinates, atol=1e-3, rtol=0)
    np.testing.assert_allclose(segy.sources, np.tile([100.0, 250.0, -30.5], (4, 1)), atol=1e-3)
    np.testing.assert_array_equal(segy.data.traces["phi"], data.traces["phi"])
    with segyio.open(tmp_path / "ev1.sgy", ignore_geometry=True) as f:
        assert list(f.attributes(segyio.TraceField.GroupY)[:]) == [50000] * 4
        offsets = list(f.attributes(segyio.TraceField.offset)[:])
    assert offsets == [round(np.hypot(x - 100.0, 50.0 - 250.0)) for x in data.coordinates[:, 0]]
    # through the command's function: receivers file -> SEG-Y -> receivers file
    (tmp_path / "ev1.sgy").unlink()
    (sgy,) = export_file(tmp_path / "receivers.h5")
    (back,) = export_file(sgy, tmp_path / "back.h5", dimension=3)
    again = read_receivers_h5(back)["ev1"]
    np.testing.assert_allclose(again.coordinates, data.coordinates, atol=1e-3, rtol=0)
    assert read_segy(sgy, "phi").data.coordinates.shape == (4, 2)  # a 2D reading: x, z
