"""The package's layers import downward only (DESIGN.md), the validation path imports no MPI,
and no module keeps mutable state at module level: tests walk the sources."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "fwimpi"
# layer -> fwimpi subpackages it may import (besides itself and fwimpi.errors / fwimpi root)
ALLOWED = {
    "sem": set(),
    "mesh": {"sem"},
    "parallel": {"sem", "mesh"},
    "inversion": {"sem", "mesh", "parallel"},
    "jobs": {"sem", "mesh", "parallel", "inversion"},
}
FORBIDDEN_THIRD_PARTY = {
    "sem": {"mpi4py", "petsc4py", "h5py", "meshio", "yaml"},
    "mesh": {"mpi4py", "petsc4py"},
    # the inversion layer gets its communication from parallel.DistributedMesh only
    "inversion": {"mpi4py"},
}
# modules that run in a launcher or in `fwimpi validate`: they must not initialise MPI
MPI_FREE = ("fwimpi.cli", "fwimpi.jobs.plan", "fwimpi.jobs.spec", "fwimpi.jobs.sites",
            "fwimpi.jobs.slurm", "fwimpi.jobs.state")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.add(".".join(base + ((node.module,) if node.module else ())))
            else:
                names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_point_downward(layer):
    for path in (ROOT / layer).rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "fwimpi" and len(parts) > 1 and parts[1] in ALLOWED:
                assert parts[1] == layer or parts[1] in ALLOWED[layer], f"{path.name} imports {name}"
            assert parts[0] not in FORBIDDEN_THIRD_PARTY.get(layer, set()), f"{path.name} imports {name}"


def test_validation_path_and_launcher_import_no_mpi(tmp_path):
    """Importing the launcher's modules, and planning a job with a gridded model file, leaves
    mpi4py and petsc4py unloaded (importing them initialises MPI)."""
    from test_cli import SMALL_JOB

    (tmp_path / "job.yaml").write_text(SMALL_JOB)
    code = ("import sys, importlib\n"
            f"for m in {MPI_FREE!r}: importlib.import_module(m)\n"
            "from fwimpi.jobs.plan import plan_job\n"
            "from fwimpi.jobs.spec import load_job_spec\n"
            f"plan_job(load_job_spec({str(tmp_path / 'job.yaml')!r}), 2).describe()\n"
            "import fwimpi; fwimpi.__version__\n"
            "bad = [m for m in ('mpi4py', 'mpi4py.MPI', 'petsc4py', 'petsc4py.PETSc') "
            "if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _module_level_mutables(path: Path) -> list[str]:
    """Module-level assignments of mutable containers (list/dict/set displays, their
    comprehensions and constructors) and ``global`` statements anywhere."""
    tree = ast.parse(path.read_text())
    found = []
    mutable_calls = {"list", "dict", "set", "defaultdict", "OrderedDict", "deque", "bytearray"}
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        if value is None:
            continue
        if isinstance(value, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp,
                              ast.SetComp)) or (
                isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
                and value.func.id in mutable_calls):
            found.append(f"{path.name}:{node.lineno}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            found.append(f"{path.name}:{node.lineno} global")
    return found


def test_no_module_level_mutable_state():
    """Constants are tuples, frozensets or read-only mappings; state lives in objects."""
    found = [hit for path in ROOT.rglob("*.py") for hit in _module_level_mutables(path)]
    assert not found, found


def test_the_mutable_state_check_finds_a_planted_module_level_list(tmp_path):
    (tmp_path / "bad.py").write_text("BUFFER: list = []\nCACHE = dict()\nOK = (1, 2)\n"
                                     "def f():\n    global OK\n")
    assert _module_level_mutables(tmp_path / "bad.py") == ["bad.py:1", "bad.py:2",
                                                           "bad.py:5 global"]
