"""Running a job through SLURM: the batch script, sbatch, scontrol and scancel.

``render_batch_script`` is pure: it fills the site's batch template (a ``string.Template``: the
site's ``batch_template``, by default the shipped ``fwimpi/configs/slurm_batch.sh``, package
data) from a validated ``SlurmSite`` and the job, and validates every value that reaches the script
(names by pattern; paths absolute and made of a safe set of characters) so that nothing a user
writes can inject shell or extra ``#SBATCH`` lines. The other functions are thin wrappers around
the SLURM commands, always with argv lists (never a shell).

Files of a submission, under the job's output folder::

    <output>/slurm/<name>.sbatch     the rendered script
    <output>/slurm/<name>-<id>.log   its stdout and stderr (every rank's)
    <output>/slurm/job.json          {"job_id", "state", "script", "log", "job", "ranks", ...}

Accounting is off on the test cluster (no ``sacct``), so states come from ``scontrol show job``;
a job that scontrol no longer knows (``MinJobAge`` after its end) is ``UNKNOWN``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import subprocess
import sys
import time
from pathlib import Path

from ..errors import ConfigError, FwimpiError
from ..mesh.files import atomic_path, write_json_atomic
from .sites import CONFIGS, SlurmSite
from .state import mark_output_folder

#: the shipped batch script template (package data)
TEMPLATE = CONFIGS.joinpath("slurm_batch.sh")
#: the placeholders a batch template may use (``$name`` or ``${name}``; ``$$`` is a ``$``)
TEMPLATE_KEYS = ("job_name", "partition", "time_limit", "ranks", "workdir", "log", "directives",
                 "site", "launcher", "arguments", "python", "job", "forward_only",
                 "overcommit_env", "command")

#: states after which a job never changes again (``UNKNOWN``: scontrol has forgotten it)
FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED", "UNKNOWN",
})

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9_.+/@-]*")
_JOB_STATE = re.compile(r"(?:^|\s)JobState=(\S+)")
_COMMAND_TIMEOUT = 60  # seconds for one sbatch/scontrol/scancel call
# What an MPI launcher (or an initialised singleton MPI) leaves in the environment: passed on
# through sbatch to the job's ranks, it would make them join a dead launcher instead of srun's.
_LAUNCHER_ENV = ("PMIX_", "PMI_", "OMPI_COMM_WORLD_", "OMPI_MCA_ess", "OMPI_MCA_orte_",
                 "OMPI_MCA_pmix", "OMPI_APP_CTX_", "OMPI_NUM_APP_CTX", "OMPI_UNIVERSE_SIZE",
                 "OMPI_FIRST_RANKS", "OMPI_ARGV", "OMPI_COMMAND", "OMPI_FILE_LOCATION",
                 "ORTE_", "MPI_LOCALNRANKS", "MPI_LOCALRANKID")


class SlurmError(FwimpiError):
    """A SLURM command failed (not installed, controller unreachable, submission refused)."""


class WaitTimeout(SlurmError):
    """``wait`` gave up before the job reached a final state."""

    def __init__(self, job_id: int, state: str, seconds: float):
        super().__init__(f"SLURM job {job_id} still {state} after {seconds:g} s")
        self.job_id, self.state = job_id, state


# --------------------------------------------------------------------------- the batch script


def check_job_name(name: str, field: str = "name") -> str:
    """``name`` if it is safe as a SLURM job name and file name, else ConfigError."""
    if not isinstance(name, str) or not _JOB_NAME.fullmatch(name):
        raise ConfigError(f"{field}: must be 1-64 characters from A-Z a-z 0-9 _ . - starting "
                          f"with a letter or digit, got {name!r}")
    return name


def check_path(path, field: str) -> str:
    """``path`` as a string if it is absolute and plain (A-Z a-z 0-9 _ . + / @ -), else
    ConfigError naming ``field``. Such a path needs no quoting in a shell or #SBATCH line."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(text, str) or not _SAFE_PATH.fullmatch(text):
        raise ConfigError(f"{field}: must be an absolute path of the characters A-Z a-z 0-9 "
                          f"_ . + / @ - (no spaces, quotes, newlines, $ or ;), got {path!r}")
    if any(part == ".." for part in text.split("/")):
        raise ConfigError(f"{field}: must not contain '..', got {text!r}")
    return text


def _check_site(site: SlurmSite) -> None:
    """Re-check the site values that reach the script (a SlurmSite may be built by hand)."""
    from .sites import (_ARGUMENT, _DIRECTIVE, _PARTITION, _TIME_LIMIT,  # noqa: PLC0415
                        reserved_option)

    if not isinstance(site, SlurmSite):
        raise ConfigError(f"site: a SLURM site is needed, got {type(site).__name__}")
    where = f"site '{site.name}'"
    checks = [("partition", site.partition, _PARTITION),
              ("time_limit", site.time_limit, _TIME_LIMIT), ("launcher", site.launcher, _ARGUMENT)]
    if site.account is not None:
        checks.append(("account", site.account, _PARTITION))
    checks += [(f"arguments[{i}]", a, _ARGUMENT) for i, a in enumerate(site.arguments)]
    checks += [(f"directives[{i}]", d, _DIRECTIVE) for i, d in enumerate(site.directives)]
    for field, value, pattern in checks:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ConfigError(f"{where}.{field}: invalid value {value!r}")
    for i, d in enumerate(site.directives):
        if reserved_option(d[2:].split("=", 1)[0]) is not None:
            raise ConfigError(f"{where}.directives[{i}]: {d!r} is set by fwimpi")
    check_job_name(site.name, "site")


def batch_template(site: SlurmSite) -> string.Template:
    """The site's batch template (``site.batch_template``, else the shipped ``TEMPLATE``),
    checked: readable, valid ``$`` syntax and only the placeholders of ``TEMPLATE_KEYS``.
    Raises ConfigError naming ``site '<name>'.batch_template``."""
    path = TEMPLATE if site.batch_template is None else site.batch_template
    if isinstance(path, (str, os.PathLike)):  # a SlurmSite built by hand
        path = Path(path)
    field = f"site '{site.name}'.batch_template"
    try:
        template = string.Template(path.read_text())
    except (OSError, UnicodeDecodeError, AttributeError, TypeError) as err:
        raise ConfigError(f"{field}: cannot read {str(path)!r}: {err}") from None
    if not template.is_valid():
        raise ConfigError(f"{field}: {str(path)!r} has a '$' that is not a placeholder "
                          f"(write $$ for a literal $)")
    unknown = sorted(set(template.get_identifiers()) - set(TEMPLATE_KEYS))
    if unknown:
        raise ConfigError(f"{field}: unknown placeholder(s) {', '.join(unknown)} in "
                          f"{str(path)!r} (known: {', '.join(TEMPLATE_KEYS)})")
    return template


def render_batch_script(site: SlurmSite, job_path: Path, job_name: str, output_dir: Path,
                        ranks: int, forward_only: bool, *, invert: bool = False,
                        concurrent_events: int = 1, cores: int | None = None,
                        python: str | None = None) -> str:
    """The sbatch script that runs ``fwimpi exec job_path`` on ``ranks`` ranks.

    ``cores``: cores the job may use (the partition's); more ranks than that adds
    ``--overcommit`` (default: this machine's CPU count). ``python``: the interpreter that
    runs fwimpi (default ``sys.executable``, the venv's). The template is
    ``batch_template(site)``. Raises ConfigError naming the field for any value that is not
    safe in the script.
    """
    _check_site(site)
    job_name = check_job_name(job_name, "name")
    job = check_path(job_path, "job")
    out = check_path(output_dir, "output")
    python = check_path(python or sys.executable, "python")
    if isinstance(ranks, bool) or not isinstance(ranks, int) or not 1 <= ranks <= 100_000:
        raise ConfigError(f"ranks: must be a positive integer, got {ranks!r}")
    cores = cores if cores is not None else (os.cpu_count() or 1)
    directives = []
    if site.account is not None:
        directives.append(f"--account={site.account}")
    if ranks > cores:
        directives.append("--overcommit")
    directives += site.directives
    extra = ((" --forward-only" if forward_only else " --invert" if invert else "")
             + (f" --concurrent-events {concurrent_events}" if concurrent_events > 1 else ""))
    if site.isolation == "event":
        if invert:
            raise ConfigError(f"site '{site.name}'.isolation: an inversion runs every event of "
                              f"each iteration in one MPI job; use a site without isolation")
        # a driver in the allocation starts one job step per event (fwimpi.cli steps)
        command = (f"{python} -m fwimpi.cli steps {job} --site {site.name} "
                   f"--ranks-per-job {ranks // concurrent_events} "
                   f"--concurrent-events {concurrent_events}"
                   + (" --forward-only" if forward_only else ""))
    else:
        command = (f"{site.launcher} {' '.join(site.arguments)} -n {ranks} {python} -m mpi4py "
                   f"-m fwimpi.cli exec {job}{extra}").replace("  ", " ")
    template = batch_template(site)
    if site.isolation == "event" and "command" not in template.get_identifiers():
        raise ConfigError(f"site '{site.name}'.batch_template: isolation needs the template to "
                          f"run $command")
    values = {
        "job_name": job_name, "partition": site.partition, "time_limit": site.time_limit,
        "ranks": str(ranks), "workdir": str(Path(job).parent),
        "log": f"{out}/slurm/{job_name}-%j.log",
        "directives": "\n".join(f"#SBATCH {d}" for d in directives),
        "site": site.name, "launcher": site.launcher, "arguments": " ".join(site.arguments),
        # the template's ``forward_only`` placeholder holds exec's extra arguments
        "python": python, "job": job, "forward_only": extra, "command": command,
        # more ranks than cores: waiting ranks must yield their core (srun does not tell
        # OpenMPI that it is oversubscribed, and busy polling then slows everything ~10x)
        "overcommit_env": "export OMPI_MCA_mpi_yield_when_idle=1" if ranks > cores else "",
    }
    return template.substitute(values)


# --------------------------------------------------------------------------- SLURM commands


def submission_env() -> dict[str, str]:
    """The environment a job is submitted with: this process's, less any MPI launcher's state.

    ``os.environ`` is the environment Python started with; an MPI initialised in this process
    (mpi4py as a singleton) adds PMIx variables at the C level only, which a child inheriting
    the C environment would pass on; an explicit ``env`` leaves them out.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_ENV)}


def _slurm(argv: list[str], what: str,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which(argv[0])
    if exe is None:
        raise SlurmError(f"{argv[0]} is not on PATH: is SLURM installed here? "
                         f"(scripts/slurm_cluster.sh start sets up a test cluster)")
    try:
        return subprocess.run([exe, *argv[1:]], capture_output=True, text=True,
                              timeout=_COMMAND_TIMEOUT, check=False, env=env)
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{what}: {argv[0]} did not answer in {_COMMAND_TIMEOUT} s") from None


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


def submit(script_path: Path) -> int:
    """Submit a batch script with ``sbatch --parsable``; return the job id."""
    proc = _slurm(["sbatch", "--parsable", os.fspath(script_path)], "sbatch",
                  env=submission_env())
    first = proc.stdout.strip().split(";")[0]
    if proc.returncode != 0 or not first.isdigit():
        raise SlurmError(f"sbatch {script_path} failed: {_one_line(proc.stderr or proc.stdout)}")
    return int(first)


def parse_job_state(scontrol_output: str) -> str:
    """The ``JobState=`` of ``scontrol show job -o`` output ("UNKNOWN" if absent)."""
    match = _JOB_STATE.search(scontrol_output)
    return match.group(1) if match else "UNKNOWN"


def job_state(job_id: int) -> str:
    """The job's state from ``scontrol show job -o``; "UNKNOWN" when scontrol forgot it."""
    proc = _slurm(["scontrol", "show", "job", "-o", str(int(job_id))], "scontrol")
    if proc.returncode != 0:
        if "invalid job id" in (proc.stderr + proc.stdout).lower():
            return "UNKNOWN"
        raise SlurmError(f"scontrol show job {job_id} failed: {_one_line(proc.stderr)}")
    return parse_job_state(proc.stdout)


def wait(job_id: int, poll: float = 1.0, timeout: float | None = None) -> str:
    """Poll ``job_state`` every ``poll`` seconds until a final state (FINAL_STATES); return
    it. Raises WaitTimeout after ``timeout`` seconds (None: wait forever)."""
    start = time.monotonic()
    while True:
        state = job_state(job_id)
        if state in FINAL_STATES:
            return state
        if timeout is not None and time.monotonic() - start >= timeout:
            raise WaitTimeout(job_id, state, timeout)
        time.sleep(poll)


_follow = wait  # run_on_slurm's argument ``wait`` hides the function


def cancel(job_id: int) -> None:
    """``scancel`` the job (a job already finished or forgotten is no error)."""
    proc = _slurm(["scancel", str(int(job_id))], "scancel")
    text = (proc.stderr + proc.stdout).lower()
    if proc.returncode != 0 and "invalid job id" not in text and "already completing" not in text:
        raise SlurmError(f"scancel {job_id} failed: {_one_line(proc.stderr)}")


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a text file ("" when it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max(64 * 1024, 4096 * lines)))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:]) if lines > 0 else ""


def partition_cpus(partition: str) -> int | None:
    """Total CPUs of a partition (``sinfo -h -p P -o %C``: allocated/idle/other/total)."""
    try:
        proc = _slurm(["sinfo", "-h", "-p", partition, "-o", "%C"], "sinfo")
    except SlurmError:
        return None
    fields = proc.stdout.strip().splitlines()[0].split("/") if proc.stdout.strip() else []
    ok = proc.returncode == 0 and len(fields) == 4 and fields[3].isdigit()
    return int(fields[3]) if ok else None


# --------------------------------------------------------------------------- a job on SLURM


def slurm_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "slurm"


def run_on_slurm(site: SlurmSite, job_path: Path, spec_name: str, output_dir: Path, ranks: int,
                 forward_only: bool, wait: bool = True, poll: float = 1.0, invert: bool = False,
                 concurrent_events: int = 1,
                 timeout: float | None = None) -> tuple[int, str]:
    """Render, write and submit the batch script of a job; record it in ``slurm/job.json``.

    With ``wait`` follow it until a final state, record that and return ``(job_id, state)``;
    without, return the state right after submission (PENDING, RUNNING...).
    """
    job_path = Path(os.path.abspath(job_path))
    output_dir = Path(os.path.abspath(output_dir))
    cores = partition_cpus(site.partition)
    text = render_batch_script(site, job_path, spec_name, output_dir,
                               ranks * concurrent_events, forward_only, invert=invert,
                               concurrent_events=concurrent_events,
                               cores=cores)
    mark_output_folder(output_dir, spec_name)  # the batch script is the folder's first file
    folder = slurm_dir(output_dir)
    script = folder / f"{spec_name}.sbatch"
    with atomic_path(script) as tmp:
        tmp.write_text(text)
        tmp.chmod(0o755)
    job_id = submit(script)
    record = {"job_id": job_id, "state": "SUBMITTED", "script": str(script),
              "log": str(folder / f"{spec_name}-{job_id}.log"), "job": str(job_path),
              "name": spec_name, "ranks": ranks * concurrent_events, "forward_only": forward_only,
              "invert": invert, "concurrent_events": concurrent_events,
              "site": site.name, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(folder / "job.json", record)
    state = job_state(job_id)
    if wait:
        state = _follow(job_id, poll=poll, timeout=timeout)
    _record_state(folder / "job.json", record, state)
    return job_id, state


def _record_state(path: Path, record: dict, state: str) -> None:
    known = record.get("state")
    if known != state and not (state == "UNKNOWN" and known in FINAL_STATES):
        record = {**record, "state": state}
        if state in FINAL_STATES:
            record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(path, record)


def status(output_dir: Path, lines: int = 20) -> dict:
    """What ``slurm/job.json`` of ``output_dir`` records, with the live state from scontrol
    (or the recorded final state once scontrol has forgotten the job) and the log's tail."""
    path = slurm_dir(output_dir) / "job.json"
    if not path.is_file():
        raise ConfigError(f"output: no SLURM job recorded in {path}")
    try:
        record = json.loads(path.read_text())
        job_id = int(record["job_id"])
    except (ValueError, KeyError, TypeError) as err:
        raise FwimpiError(f"{path} is damaged: {err}") from None
    live = job_state(job_id)
    state = record.get("state", "UNKNOWN") if live == "UNKNOWN" and record.get(
        "state") in FINAL_STATES else live
    _record_state(path, record, state)
    return {**record, "state": state, "live": live != "UNKNOWN",
            "log_tail": log_tail(Path(record.get("log", "")), lines) if record.get("log") else ""}
