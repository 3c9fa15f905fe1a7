"""Sites: how a job is launched (``configs/sites/<name>.yaml``)."""

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ConfigError

SITES_DIR = Path(__file__).resolve().parents[2] / "configs" / "sites"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ARGUMENT = re.compile(r"[A-Za-z0-9_.,:=/+@-]+")


@dataclass(frozen=True)
class LocalSite:
    """``mpirun``-style launcher with extra arguments."""

    name: str
    launcher: str
    arguments: tuple[str, ...]

    def command(self, ranks: int, job: Path, extra: tuple[str, ...] = ()) -> list[str]:
        """The argv that runs ``fwimpi exec job`` on ``ranks`` ranks (no shell involved)."""
        exe = shutil.which(self.launcher)
        if exe is None:
            raise ConfigError(f"site '{self.name}'.launcher: '{self.launcher}' is not on PATH")
        root = ["--allow-run-as-root"] if os.geteuid() == 0 and "mpirun" in self.launcher else []
        return [exe, "-n", str(ranks), *root, *self.arguments, sys.executable, "-m", "mpi4py",
                "-m", "fwimpi.cli", "exec", str(job), *extra]


def load_site(name: str) -> LocalSite:
    """Read and validate ``configs/sites/<name>.yaml``. Raises ConfigError (field ``site``)."""
    if not _NAME.fullmatch(name or ""):
        raise ConfigError(f"site: invalid site name {name!r}")
    path = SITES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SITES_DIR.glob("*.yaml"))
        raise ConfigError(f"site: no site '{name}' in {SITES_DIR} (known: {', '.join(known)})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or set(data) - {"launcher", "arguments"}:
        raise ConfigError(f"site '{name}': {path} must hold only 'launcher' and 'arguments'")
    launcher = data.get("launcher", "mpirun")
    arguments = data.get("arguments") or []
    if not isinstance(launcher, str) or not _ARGUMENT.fullmatch(launcher):
        raise ConfigError(f"site '{name}'.launcher: invalid value {launcher!r}")
    if not isinstance(arguments, list) or not all(
            isinstance(a, str) and _ARGUMENT.fullmatch(a) for a in arguments):
        raise ConfigError(f"site '{name}'.arguments: must be a list of plain words, got {arguments!r}")
    return LocalSite(name, launcher, tuple(arguments))
