"""The package's layers import downward only (DESIGN.md): a test walks the imports."""

import ast
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
}


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
