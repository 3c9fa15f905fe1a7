"""Sites: how a job is launched (``configs/sites/<name>.yaml``).

A site file holds ``type: local`` (the default: ``mpirun`` on this machine, ``LocalSite``) or
``type: slurm`` (an sbatch script submitted to a SLURM partition, ``SlurmSite``; the batch
script and the submission are in ``fwimpi.jobs.slurm``).
"""

import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import yaml

from ..errors import ConfigError

SITES_DIR = Path(__file__).resolve().parents[2] / "configs" / "sites"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ARGUMENT = re.compile(r"[A-Za-z0-9_.,:=/+@-]+")


@dataclass(frozen=True)
class LocalSite:
    """``mpirun``-style launcher with extra arguments."""

    kind: ClassVar[str] = "local"
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


# SLURM values that reach an #SBATCH line (fwimpi.jobs.slurm validates paths and names)
_PARTITION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TIME_LIMIT = re.compile(r"\d+|\d+:\d\d|\d+:\d\d:\d\d|\d+-\d+(:\d\d(:\d\d)?)?|UNLIMITED|INFINITE")
_DIRECTIVE = re.compile(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:=/+@-]+)?")
# set by fwimpi itself from the job and the site: not allowed among the extra directives
RESERVED_DIRECTIVES = ("job-name", "partition", "time", "account", "ntasks", "output", "error",
                       "chdir", "overcommit", "parsable", "wrap")


@dataclass(frozen=True)
class SlurmSite:
    """A SLURM partition: the job runs as a batch script that launches ``fwimpi exec`` with
    ``launcher arguments -n RANKS`` (``srun --mpi=pmix``). Ranks come from the job."""

    kind: ClassVar[str] = "slurm"
    name: str
    partition: str
    time_limit: str
    account: str | None
    directives: tuple[str, ...]
    launcher: str
    arguments: tuple[str, ...]


_LOCAL_KEYS = {"type", "launcher", "arguments"}
_SLURM_KEYS = {"type", "partition", "time_limit", "account", "directives", "launcher",
               "arguments"}


def load_site(name: str) -> LocalSite | SlurmSite:
    """Read and validate ``configs/sites/<name>.yaml``. Raises ConfigError (field ``site``)."""
    if not _NAME.fullmatch(name or ""):
        raise ConfigError(f"site: invalid site name {name!r}")
    path = SITES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SITES_DIR.glob("*.yaml"))
        raise ConfigError(f"site: no site '{name}' in {SITES_DIR} (known: {', '.join(known)})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        line = str(err).replace("\n", " ")
        raise ConfigError(f"site '{name}': {path} is not valid YAML: {line}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"site '{name}': {path} must hold a mapping of keys to values")
    kind = data.get("type", "local")
    if kind not in ("local", "slurm"):
        raise ConfigError(f"site '{name}'.type: must be 'local' or 'slurm', got {kind!r}")
    allowed = _LOCAL_KEYS if kind == "local" else _SLURM_KEYS
    if set(data) - allowed:
        unknown = ", ".join(sorted(map(str, set(data) - allowed)))
        raise ConfigError(f"site '{name}': unknown key(s) {unknown} in {path} "
                          f"(allowed for type {kind}: {', '.join(sorted(allowed))})")
    default = "mpirun" if kind == "local" else "srun"
    launcher = data.get("launcher", default)
    arguments = data.get("arguments")
    if arguments is None:
        arguments = [] if kind == "local" else ["--mpi=pmix"]
    if not isinstance(launcher, str) or not _ARGUMENT.fullmatch(launcher):
        raise ConfigError(f"site '{name}'.launcher: invalid value {launcher!r}")
    if not isinstance(arguments, list) or not all(
            isinstance(a, str) and _ARGUMENT.fullmatch(a) for a in arguments):
        raise ConfigError(f"site '{name}'.arguments: must be a list of plain words, got {arguments!r}")
    if kind == "local":
        return LocalSite(name, launcher, tuple(arguments))
    return _slurm_site(name, data, launcher, tuple(arguments))


def _slurm_site(name: str, data: dict, launcher: str, arguments: tuple[str, ...]) -> SlurmSite:
    partition = data.get("partition")
    if not isinstance(partition, str) or not _PARTITION.fullmatch(partition):
        raise ConfigError(f"site '{name}'.partition: must be a partition name "
                          f"(A-Z a-z 0-9 _ . -), got {partition!r}")
    time_limit = data.get("time_limit", "01:00:00")
    if not isinstance(time_limit, str) or not _TIME_LIMIT.fullmatch(time_limit):
        hint = " (quote it: YAML reads 01:00:00 as a number)" if isinstance(time_limit, int) else ""
        raise ConfigError(f"site '{name}'.time_limit: must be a SLURM time string such as "
                          f"\"30\", \"01:00:00\", \"2-00:00:00\" or \"UNLIMITED\", "
                          f"got {time_limit!r}{hint}")
    account = data.get("account")
    if account is not None and (not isinstance(account, str) or not _PARTITION.fullmatch(account)):
        raise ConfigError(f"site '{name}'.account: must be an account name "
                          f"(A-Z a-z 0-9 _ . -) or null, got {account!r}")
    directives = data.get("directives") or []
    if not isinstance(directives, list):
        raise ConfigError(f"site '{name}'.directives: must be a list of sbatch options such as "
                          f"\"--mem-per-cpu=2G\", got {directives!r}")
    for i, d in enumerate(directives):
        if not isinstance(d, str) or not _DIRECTIVE.fullmatch(d):
            raise ConfigError(f"site '{name}'.directives[{i}]: must be one long sbatch option "
                              f"--name or --name=value (value from A-Z a-z 0-9 _ . , : = / + @ -), "
                              f"got {d!r}")
        option = d[2:].split("=", 1)[0]
        if option in RESERVED_DIRECTIVES:
            raise ConfigError(f"site '{name}'.directives[{i}]: --{option} is set by fwimpi "
                              f"(from the job or the site's own keys), got {d!r}")
    return SlurmSite(name, partition, time_limit, account, tuple(directives), launcher, arguments)
