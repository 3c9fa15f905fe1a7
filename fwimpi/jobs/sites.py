"""Sites: how a job is launched (``<name>.yaml`` in a site folder).

A site file holds ``type: local`` (the default: ``mpirun`` on this machine, ``LocalSite``) or
``type: slurm`` (an sbatch script submitted to a SLURM partition, ``SlurmSite``; the batch
script and the submission are in ``fwimpi.jobs.slurm``).

Site folders, searched in this order (``site_folders``); the first holding ``<name>.yaml``
wins, so a user's site adds a new site or overrides a shipped one:

1. every folder in the environment variable ``FWIMPI_SITES`` (``os.pathsep``-separated);
2. ``$XDG_CONFIG_HOME/fwimpi/sites`` (default ``~/.config/fwimpi/sites``);
3. the sites shipped in the package, ``fwimpi/configs/sites`` (package data).

A SLURM site may name its own batch script template, ``batch_template: PATH`` (absolute, or
relative to the site file's folder); by default ``fwimpi/configs/slurm_batch.sh``.
"""

import os
import re
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import ClassVar

import yaml

from ..errors import ConfigError

#: the package data: shipped sites and the default batch template (files on disk once
#: installed, whether by ``pip install .`` or ``pip install -e .``)
CONFIGS: Traversable = resources.files("fwimpi").joinpath("configs")
SHIPPED_SITES: Traversable = CONFIGS.joinpath("sites")
SITES_ENV = "FWIMPI_SITES"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ARGUMENT = re.compile(r"[A-Za-z0-9_.,:=/+@-]+")


def user_site_folders() -> tuple[Path, ...]:
    """The user's site folders, first searched first: those of ``$FWIMPI_SITES``, then
    ``$XDG_CONFIG_HOME/fwimpi/sites``. Read from the environment at each call."""
    folders = [Path(os.path.abspath(os.path.expanduser(p)))
               for p in os.environ.get(SITES_ENV, "").split(os.pathsep) if p.strip()]
    config = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(config):  # unset, empty or relative: ignored (XDG base directory spec)
        config = os.path.join(os.path.expanduser("~"), ".config")
    folders.append(Path(config) / "fwimpi" / "sites")
    return tuple(folders)


def site_folders() -> tuple[Traversable, ...]:
    """Every site folder in search order: the user's (``user_site_folders``), then the
    shipped ones."""
    return (*user_site_folders(), SHIPPED_SITES)


def _site_files(folder: Traversable) -> tuple[Traversable, ...]:
    try:
        return tuple(p for p in folder.iterdir() if p.name.endswith(".yaml") and p.is_file())
    except OSError:  # missing folder, not a folder, not readable
        return ()


def known_sites() -> tuple[str, ...]:
    """The names of every site in every site folder, sorted."""
    return tuple(sorted({p.name[:-len(".yaml")] for folder in site_folders()
                         for p in _site_files(folder)}))


def find_site(name: str) -> tuple[Traversable, Traversable]:
    """``(folder, file)`` of site ``name``: ``<name>.yaml`` in the first site folder holding it.
    Raises ConfigError (field ``site``) listing the known sites and the folders searched."""
    if not _NAME.fullmatch(name or ""):
        raise ConfigError(f"site: invalid site name {name!r}")
    folders = site_folders()
    for folder in folders:
        path = folder.joinpath(f"{name}.yaml")
        try:
            if path.is_file():
                return folder, path
        except OSError as err:  # e.g. a folder of FWIMPI_SITES that we may not read
            raise ConfigError(f"site: cannot read {path}: {err.strerror or err}") from None
    raise ConfigError(f"site: no site '{name}' (known: {', '.join(known_sites()) or 'none'}; "
                      f"searched, in this order: {', '.join(str(f) for f in folders)})")


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
_TIME_LIMIT = re.compile(r"\d+|\d+:\d\d|\d+:\d\d:\d\d|\d+-\d+(:\d\d(:\d\d)?)?|UNLIMITED|INFINITE",
                         re.ASCII)  # ASCII digits only
_DIRECTIVE = re.compile(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:=/+@-]+)?")
# set by fwimpi itself from the job and the site: not allowed among the extra directives
RESERVED_DIRECTIVES = ("job-name", "partition", "time", "account", "ntasks", "output", "error",
                       "chdir", "overcommit", "parsable", "wrap")


def reserved_option(option: str) -> str | None:
    """The reserved sbatch option that ``option`` (a long option's name) sets, also when it
    abbreviates it (sbatch accepts any unambiguous prefix: ``--out`` for ``--output``)."""
    for reserved in RESERVED_DIRECTIVES:
        if reserved.startswith(option):
            return reserved
    return None


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
    #: the batch script template (a ``string.Template``); None: the shipped one,
    #: ``fwimpi/configs/slurm_batch.sh``
    batch_template: Traversable | None = None
    #: ``"event"``: every event runs as its own job step (``srun``) inside the allocation, so
    #: that one event's crash does not end the others; None: one MPI job for all events
    isolation: str | None = None


_LOCAL_KEYS = frozenset({"type", "launcher", "arguments"})
_SLURM_KEYS = frozenset({"type", "partition", "time_limit", "account", "directives", "launcher",
                         "arguments", "batch_template", "isolation"})


def load_site(name: str) -> LocalSite | SlurmSite:
    """Read and validate ``<name>.yaml`` from the first site folder holding it
    (``site_folders``). Raises ConfigError (field ``site``)."""
    folder, path = find_site(name)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        line = str(err).replace("\n", " ")
        raise ConfigError(f"site '{name}': {path} is not valid YAML: {line}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"site '{name}': cannot read {path}: {err}") from None
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
    return _slurm_site(name, data, launcher, tuple(arguments), folder)


def _slurm_site(name: str, data: dict, launcher: str, arguments: tuple[str, ...],
                folder: Traversable) -> SlurmSite:
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
        reserved = reserved_option(option)
        if reserved is not None:
            raise ConfigError(f"site '{name}'.directives[{i}]: --{reserved} is set by fwimpi "
                              f"(from the job or the site's own keys), got {d!r}")
    template = _batch_template(name, data.get("batch_template"), folder)
    isolation = data.get("isolation")
    if isolation not in (None, "event"):
        raise ConfigError(f"site '{name}'.isolation: must be 'event' (one job step per event) "
                          f"or null, got {isolation!r}")
    return SlurmSite(name, partition, time_limit, account, tuple(directives), launcher, arguments,
                     template, isolation)


def _batch_template(name: str, value, folder: Traversable) -> Traversable | None:
    """The site's ``batch_template``: absolute (``~`` expanded) or relative to the site file's
    folder, and an existing file; None (the shipped template) when not given."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or any(ord(c) < 32 for c in value):
        raise ConfigError(f"site '{name}'.batch_template: must be the path of a batch script "
                          f"template, absolute or relative to the site file's folder, "
                          f"got {value!r}")
    value = os.path.expanduser(value)
    template = Path(value) if os.path.isabs(value) else folder.joinpath(value)
    try:
        found = template.is_file()
    except OSError:
        found = False
    if not found:
        raise ConfigError(f"site '{name}'.batch_template: no such file: {str(template)!r}")
    return template
