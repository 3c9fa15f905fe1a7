"""Rank-parallel mesh files (fwimpi.parallel.h5io): the serial writer's file on 1-4 ranks.

The MPI runs launch tests/mpi/h5io_roundtrip.py under mpirun; the rest run in this process on
COMM_SELF (h5py without MPI here: the serial fallback).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from fwimpi.mesh.files import FileFormatError, write_mesh_h5, write_receivers_h5
from fwimpi.parallel.h5io import block_range, read_mesh_h5_collective, write_mesh_h5_collective

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "mpi" / "h5io_roundtrip.py"
MPIRUN = shutil.which("mpirun")
needs_mpirun = pytest.mark.skipif(MPIRUN is None, reason="mpirun not on PATH (openmpi-bin)")

_spec = importlib.util.spec_from_file_location("h5io_roundtrip", SCRIPT)
roundtrip = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(roundtrip)  # build_mesh, ATTRS; MPI is imported only by its main()


def mpirun(n: int, mode: str, directory: Path, timeout: float = 120):
    env = os.environ | {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    cmd = [MPIRUN, "--oversubscribe", "-n", str(n), sys.executable, "-m", "mpi4py",
           str(SCRIPT), mode, str(directory)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def contents(path: Path) -> dict:
    """Every group and dataset: kind, dtype, shape, raw bytes, attributes (with their dtypes)."""

    def attrs(obj):
        return {k: (v, np.asarray(v).dtype) for k, v in obj.attrs.items()}

    with h5py.File(path) as f:
        out = {"/": ("group", attrs(f))}
        f.visititems(lambda name, obj: out.__setitem__(name, (
            ("dataset", obj.dtype, obj.shape, obj[()].tobytes(), attrs(obj))
            if isinstance(obj, h5py.Dataset) else ("group", attrs(obj)))))
    return out


def assert_same_as_serial(path: Path, reference_dir: Path, nprocs: int) -> None:
    """``path`` holds what write_mesh_h5 writes for the same mesh, plus ``nprocs``."""
    points, cells, mass, fields = roundtrip.build_mesh()
    reference = reference_dir / path.name
    write_mesh_h5(reference, points, cells, mass, fields, roundtrip.ATTRS)
    got, want = contents(path), contents(reference)
    assert got["/"][1].pop("nprocs")[0] == nprocs
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name
    xdmf = path.with_suffix(".xdmf").read_text()
    assert xdmf == reference.with_suffix(".xdmf").read_text()


# --------------------------------------------------------------------------- in this process


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [0, 1, 5, 160])
def test_block_range_tiles_like_petsc_decide(n, size):
    ranges = [block_range(n, SimpleNamespace(size=size, rank=r)) for r in range(size)]
    assert [lo for lo, _ in ranges] == [0] + [hi for _, hi in ranges[:-1]]
    assert ranges[-1][1] == n
    assert [hi - lo for lo, hi in ranges] == [n // size + (r < n % size) for r in range(size)]


@pytest.fixture
def comm_self():
    return pytest.importorskip("mpi4py.MPI").COMM_SELF


def write_whole(comm, path, **overrides):
    points, cells, mass, fields = roundtrip.build_mesh()
    kwargs = dict(n_points=len(points), point_range=(0, len(points)), points=points, mass=mass,
                  fields=fields, n_elements=len(cells), element_range=(0, len(cells)),
                  cells=cells, order=roundtrip.ORDER, attrs=roundtrip.ATTRS)
    write_mesh_h5_collective(comm, path, **kwargs | overrides)


def test_comm_self_write_and_read(tmp_path, comm_self):
    write_whole(comm_self, tmp_path / "out" / "mesh.h5")
    assert_same_as_serial(tmp_path / "out" / "mesh.h5", tmp_path, nprocs=1)
    points, _, mass, fields = roundtrip.build_mesh()
    got, got_mass, attrs = read_mesh_h5_collective(comm_self, tmp_path / "out" / "mesh.h5",
                                                   (0, len(points)))
    assert attrs == roundtrip.ATTRS | {"format": "fwimpi-mesh-1", "order": 3, "nprocs": 1}
    np.testing.assert_array_equal(got_mass, mass)
    assert got.keys() == set(fields) and all(np.array_equal(got[k], fields[k]) for k in fields)


def test_comm_self_bad_input_writes_nothing(tmp_path, comm_self):
    with pytest.raises(FileFormatError, match=r"rank 0: .*/fields/VP: expected .*\(160,\)"):
        write_whole(comm_self, tmp_path / "mesh.h5", fields={"VP": np.zeros(159)})
    with pytest.raises(FileFormatError, match=r"point_range: ranges .* must tile \[0, 161\)"):
        write_whole(comm_self, tmp_path / "mesh.h5", n_points=161)
    with pytest.raises(FileFormatError, match="reserved"):
        write_whole(comm_self, tmp_path / "mesh.h5", attrs={"nprocs": 3})
    assert list(tmp_path.iterdir()) == []


def test_comm_self_read_errors(tmp_path, comm_self):
    write_whole(comm_self, tmp_path / "mesh.h5")
    with pytest.raises(FileFormatError, match=r"mesh.h5 has 160 points\).* tile \[0, 160\)"):
        read_mesh_h5_collective(comm_self, tmp_path / "mesh.h5", (0, 159))
    with pytest.raises(FileFormatError, match=r"has 15 elements"):
        read_mesh_h5_collective(comm_self, tmp_path / "mesh.h5", (0, 160), (0, 14))
    write_receivers_h5(tmp_path / "receivers.h5", {}, {})
    with pytest.raises(FileFormatError, match="format 'fwimpi-receivers-1', expected"):
        read_mesh_h5_collective(comm_self, tmp_path / "receivers.h5", (0, 160))
    with pytest.raises(FileFormatError, match="rank 0: "):
        read_mesh_h5_collective(comm_self, tmp_path / "missing.h5", (0, 160))


# --------------------------------------------------------------------------- under mpirun


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Directory with mesh_np{N}.h5 and mesh_np{N}_uneven.h5 written on N = 1..4 ranks."""
    if MPIRUN is None:
        pytest.skip("mpirun not on PATH (openmpi-bin)")
    directory = tmp_path_factory.mktemp("parallel_h5")
    for n in (1, 2, 3, 4):
        run = mpirun(n, "write", directory)
        assert run.returncode == 0, f"write on {n} ranks:\n{run.stdout}\n{run.stderr}"
    return directory


@needs_mpirun
@pytest.mark.parametrize("split", ["", "_uneven"])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_parallel_write_is_the_serial_file(written, tmp_path, n, split):
    assert_same_as_serial(written / f"mesh_np{n}{split}.h5", tmp_path, nprocs=n)
    assert not list(written.glob(".*tmp*"))


@needs_mpirun
@pytest.mark.parametrize("n", [1, 2, 3])
def test_read_four_rank_file_on_fewer_ranks(written, n):
    run = mpirun(n, "read", written)
    assert run.returncode == 0, f"read on {n} ranks:\n{run.stdout}\n{run.stderr}"


@needs_mpirun
@pytest.mark.parametrize("mode, error, message", [
    ("fail", "FileFormatError", "rank 1: FileFormatError: /fields/VP: expected"),
    ("fail-io", "CollectiveIOError", "rank 1: OSError: injected I/O error"),
])
def test_one_failing_rank_fails_all_and_leaves_nothing(tmp_path, mode, error, message):
    start = time.perf_counter()
    run = mpirun(3, mode, tmp_path)
    assert run.returncode != 0 and time.perf_counter() - start < 60
    assert message in run.stderr, run.stderr
    assert json.loads((tmp_path / "raised.json").read_text()) == [error] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raised.json"]
