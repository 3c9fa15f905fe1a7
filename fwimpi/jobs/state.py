"""The result cache of a job's output folder: product hashes, a state file, a lock.

Every product is keyed by a hash of the settings that determine it (input files by their
content). The state folder ``<output>/.fwimpi-state/`` holds one record per finished product
(``<key>.json``, written atomically by the rank that finished it, so groups of ranks working
on different events never write the same file): its hash, summary entries and the SHA-256 of
every file, so a rerun reuses what is done and intact, a job killed mid-way resumes, and
changed settings recompute only what they touch. The lock ``<output>/.fwimpi.lock``
names the job's processes and refuses a second run into the same folder; the marker
``<output>/.fwimpi-output`` says the folder is fwimpi's, and fwimpi refuses to write into a
non-empty folder that is not.
"""

import hashlib
import json
import os
import socket
import time
import uuid
from pathlib import Path

from .. import __version__
from ..errors import ConfigError
from ..mesh.files import remove_temp_files, temp_path, write_json_atomic
from .spec import JobSpec, observed_file

STATE_NAME = ".fwimpi-state"
LOCK_NAME = ".fwimpi.lock"
MARKER_NAME = ".fwimpi-output"
LOCK_ENV = "FWIMPI_LOCK_TOKEN"
#: Names that mark a folder as an fwimpi output folder.
OUTPUT_MARKERS = (MARKER_NAME, STATE_NAME, LOCK_NAME, "summary.json")


def _hash(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def file_digest(path) -> str:
    """SHA-256 of a file's content (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _content(path) -> dict | None:
    """An input file by its content (and name), so an in-place change is seen."""
    if path is None:
        return None
    try:
        return {"path": str(path), "sha256": file_digest(path)}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None


def product_hashes(spec: JobSpec, gradients: bool) -> dict[str, str]:
    """Hash of the settings of every product: ``model``, ``event/<name>``, ``gradient``
    (the sum over events), ``mapping/<name>``, ``smoothed/<name>``. The rank count is left out: products agree
    to 1e-12 whatever it is."""
    r = spec.resolved
    wavelet = getattr(spec.simulation.wavelet, "file", None)  # a Custom wavelet's file
    model = _hash(__version__, r["domain"], r["model"], _content(spec.model.file),
                  r["simulation_configuration"], _content(wavelet))
    out = {"model": model}
    misfit = r.get("misfit_configuration")
    compression = r.get("wavefield_compression") if gradients else None
    for event in r["events"]:
        observed = None
        if spec.misfit is not None and spec.misfit.observed_data is not None:
            observed = _content(observed_file(spec.misfit.observed_data, event["event_name"]))
        out[f"event/{event['event_name']}"] = _hash(model, event, misfit, observed,
                                                    compression, gradients)
    events = sorted((k, v) for k, v in out.items() if k.startswith("event/"))
    if gradients:
        out["gradient"] = _hash(events, "sum")
        for mapping in r.get("mappings") or []:
            out[f"mapping/{mapping['name']}"] = _hash(events, mapping)
        smoothing = r.get("smoothing")
        if smoothing:
            out[f"smoothed/{smoothing['apply_to']}"] = _hash(
                out[f"mapping/{smoothing['apply_to']}"], smoothing)
    return out


class JobState:
    """What is done in an output folder. Read by rank 0 (``read``) and handed to the other
    ranks (``products``), so every rank takes the same decisions; each product's record is
    written by the rank that finished it (``record``), in a file of its own."""

    def __init__(self, output: Path, hashes: dict[str, str], products: dict[str, dict]):
        self.output, self.hashes = Path(output), hashes
        self.path = self.output / STATE_NAME
        self.products = products

    @classmethod
    def read(cls, output: Path, hashes: dict[str, str]) -> "JobState":
        """The recorded products whose hash matches and whose files are intact (their
        content digests match the recorded ones); damaged records count as missing."""
        output = Path(output)
        products = {}
        for key in hashes:
            try:
                entry = json.loads(record_path(output, key).read_text())
            except (OSError, ValueError, RecursionError):
                continue
            if (isinstance(entry, dict) and entry.get("hash") == hashes[key]
                    and _intact(output, entry)):
                products[key] = entry
        return cls(output, hashes, products)

    def done(self, key: str) -> dict | None:
        """The recorded entry of a finished product with the current settings, or None."""
        return self.products.get(key)

    def all_done(self) -> bool:
        return all(key in self.products for key in self.hashes)

    def record(self, key: str, files: list[str], **entry) -> None:
        """Mark a product finished (its files relative to the output folder, with their
        content digests): by the one rank that finished it."""
        digests = {rel: file_digest(self.output / rel) for rel in files}
        self.products[key] = {"hash": self.hashes[key], "files": files, "sha256": digests,
                              **entry}
        write_json_atomic(record_path(self.output, key), self.products[key])


def record_path(output: Path, key: str) -> Path:
    """The file of a product's record: ``<output>/.fwimpi-state/<key, / as -->.json``."""
    return Path(output) / STATE_NAME / (key.replace("/", "--") + ".json")


def _intact(output: Path, entry: dict) -> bool:
    files, digests = entry.get("files"), entry.get("sha256")
    if not isinstance(files, list) or not isinstance(digests, dict):
        return False
    try:
        return all(isinstance(rel, str) and (output / rel).is_file()
                   and not (output / rel).is_symlink()
                   and digests.get(rel) == file_digest(output / rel) for rel in files)
    except OSError:
        return False


# --------------------------------------------------------------------------- the output folder


def check_output_folder(output: Path) -> None:
    """Refuse an output folder fwimpi must not write into (ConfigError naming ``output``):
    a path that is a file or too long, a non-empty folder that is not an fwimpi output
    folder, or one holding symbolic links (fwimpi never follows links there)."""
    output = Path(output)
    text = os.fsencode(str(output))
    if len(text) > 3000 or any(len(part) > 200 for part in text.split(b"/")):
        raise ConfigError(f"output: the path is too long ({len(text)} bytes, or a name longer "
                          f"than 200): {str(output)[:80]}...")
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise ConfigError(f"output: {output} exists and is not a folder")
    if not output.exists():
        return
    try:
        entries = list(output.iterdir())
    except OSError as err:
        raise ConfigError(f"output: cannot read the folder {output}: {err.strerror}") from None
    if entries and not any((output / m).exists() for m in OUTPUT_MARKERS):
        raise ConfigError(f"output: {output} is not empty and not an fwimpi output folder; "
                          f"choose a new or empty folder")
    for folder, dirs, files in os.walk(output):
        for name in dirs + files:
            if os.path.islink(os.path.join(folder, name)):
                raise ConfigError(f"output: {os.path.join(folder, name)} is a symbolic link; "
                                  f"fwimpi does not follow links in its output folder, remove it")


def mark_output_folder(output: Path, job: str) -> None:
    """Make ``output`` (if needed) and mark it as an fwimpi output folder. ConfigError if
    it cannot be written."""
    marker = Path(output) / MARKER_NAME
    if not marker.exists():
        try:
            write_json_atomic(marker, {"fwimpi_version": __version__, "job": job})
        except OSError as err:
            raise ConfigError(f"output: cannot write {marker}: {err.strerror or err}") from None


class OutputLock:
    """Refuses a second run into the same output folder (``with OutputLock(folder):``).

    The lock file is written whole (a temp file hard-linked into place), so it is never
    empty, and it names the job: its token, host and the pids of the launcher and, once
    ``add_processes`` is called, of every rank. A launcher passes its token to the ranks it
    starts (``LOCK_ENV``); they find the lock held by them. A lock whose processes are all
    gone (on this host) is taken over; a lock that fwimpi cannot read was not written by a
    running fwimpi and is replaced.
    """

    def __init__(self, output: Path, job: str = ""):
        self.path = Path(output) / LOCK_NAME
        self.job = job
        self.token = None
        self.owned = False

    def __enter__(self) -> "OutputLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"output: cannot create {self.path.parent}: "
                              f"{err.strerror or err}") from None
        inherited = os.environ.get(LOCK_ENV)
        for _ in range(3):
            holder = self._holder()
            if holder is not None:
                if inherited and holder.get("token") == inherited:
                    self.token = inherited
                    return self
                if not self._stale(holder):
                    processes = ", ".join(f"pid {p} on {h}" for h, p in _processes(holder))
                    raise ConfigError(
                        f"output: another fwimpi run ({processes}) is writing to "
                        f"{self.path.parent}; wait for it to end, or remove {self.path} if it "
                        f"is gone")
                self.path.unlink(missing_ok=True)
            self.token = uuid.uuid4().hex
            record = {"token": self.token, "job": self.job, "host": socket.gethostname(),
                      "pid": os.getpid(), "processes": [[socket.gethostname(), os.getpid()]],
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            try:
                self._link(record)
            except FileExistsError:
                continue
            self.owned = True
            self._mark()
            return self
        raise ConfigError(f"output: cannot take the lock {self.path}")

    def _link(self, record: dict) -> None:
        """Write ``record`` to a temp file and hard-link it as the lock (atomic, exclusive)."""
        tmp = temp_path(self.path)
        try:
            tmp.write_text(json.dumps(record))
            os.link(tmp, self.path)
        except FileExistsError:
            raise
        except OSError as err:
            raise ConfigError(f"output: cannot write the lock {self.path}: "
                              f"{err.strerror or err}") from None
        finally:
            tmp.unlink(missing_ok=True)

    def _mark(self) -> None:
        try:
            mark_output_folder(self.path.parent, self.job)
        except ConfigError:
            self.__exit__()
            raise

    def add_processes(self, processes: list[tuple[str, int]]) -> None:
        """Name every process of the job (host, pid) in the lock (atomically replaced)."""
        holder = self._holder() or {}
        if holder.get("token") != self.token:
            return
        holder["processes"] = [list(p) for p in processes] + [
            p for p in holder.get("processes", []) if tuple(p) not in set(map(tuple, processes))]
        write_json_atomic(self.path, holder)

    def _holder(self) -> dict | None:
        """The lock's record; None when there is no lock; {} when it cannot be read."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _stale(holder: dict) -> bool:
        """True when no process of the lock can still run: all on this host and gone (or
        the record is unreadable: fwimpi always writes it whole)."""
        processes = _processes(holder)
        if not processes:
            return True
        here = socket.gethostname()
        for host, pid in processes:
            if host != here:
                return False
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            except (PermissionError, OverflowError):
                return False
            return False
        return True

    def __exit__(self, *exc) -> None:
        if self.owned:
            holder = self._holder()
            if holder is not None and holder.get("token") in (self.token, None):
                self.path.unlink(missing_ok=True)
            self.owned = False


def _processes(holder: dict) -> list[tuple[str, int]]:
    """The (host, pid) pairs a lock record names (old records: ``host``, ``pid``)."""
    out = []
    items = holder.get("processes")
    if not isinstance(items, list):
        items = [[holder.get("host"), holder.get("pid")]]
    for item in items:
        if (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], int) and not isinstance(item[1], bool) and item[1] > 0):
            out.append((item[0], item[1]))
    return out


def remove_stale_temp_files(output: Path) -> list[Path]:
    """Rank 0, under the lock: remove the temp files a killed run left behind (only names
    carrying fwimpi's temp marker)."""
    return remove_temp_files(output)
