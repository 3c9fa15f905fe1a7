"""The result cache of a job's output folder: product hashes, a state file, a lock.

Every product is keyed by a hash of the settings that determine it. The state file
``<output>/.fwimpi-state.json`` (written atomically after each product) records the hash
and the summary entries of every finished product, so a rerun reuses what is done, a job
killed mid-way resumes, and changed settings recompute only what they touch. The lock
``<output>/.fwimpi.lock`` refuses a second run into the same folder.
"""

import hashlib
import json
import os
import socket
import uuid
from pathlib import Path

from .. import __version__
from ..errors import ConfigError
from ..mesh.files import remove_temp_files, write_json_atomic
from .spec import JobSpec

STATE_NAME = ".fwimpi-state.json"
LOCK_NAME = ".fwimpi.lock"
LOCK_ENV = "FWIMPI_LOCK_TOKEN"


def _hash(*parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _file_stamp(path) -> dict | None:
    if path is None:
        return None
    stat = Path(path).stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def product_hashes(spec: JobSpec, gradients: bool) -> dict[str, str]:
    """Hash of the settings of every product: ``model``, ``event/<name>``,
    ``mapping/<name>``, ``smoothed/<name>``. The rank count is left out: products agree
    to 1e-12 whatever it is."""
    r = spec.resolved
    model = _hash(__version__, r["domain"], r["model"], _file_stamp(spec.model.file),
                  r["simulation_configuration"])
    out = {"model": model}
    misfit = r.get("misfit_configuration")
    observed = _file_stamp(spec.misfit.observed_data) if spec.misfit else None
    compression = r.get("wavefield_compression") if gradients else None
    for event in r["events"]:
        out[f"event/{event['event_name']}"] = _hash(model, event, misfit, observed,
                                                    compression, gradients)
    events = sorted((k, v) for k, v in out.items() if k.startswith("event/"))
    if gradients:
        for mapping in r.get("mappings") or []:
            out[f"mapping/{mapping['name']}"] = _hash(events, mapping)
        smoothing = r.get("smoothing")
        if smoothing:
            out[f"smoothed/{smoothing['apply_to']}"] = _hash(
                out[f"mapping/{smoothing['apply_to']}"], smoothing)
    return out


class JobState:
    """What is done in an output folder. Read by rank 0 (``read``) and handed to the other
    ranks (``products``), so every rank takes the same decisions; written by rank 0 only."""

    def __init__(self, output: Path, hashes: dict[str, str], products: dict[str, dict]):
        self.output, self.hashes = Path(output), hashes
        self.path = self.output / STATE_NAME
        self.products = products

    @classmethod
    def read(cls, output: Path, hashes: dict[str, str]) -> "JobState":
        """The state file's products whose hash matches and whose files exist."""
        output = Path(output)
        try:
            stored = json.loads((output / STATE_NAME).read_text())
        except (OSError, ValueError):
            stored = {}
        products = stored.get("products", {}) if isinstance(stored, dict) else {}
        if not isinstance(products, dict):
            products = {}
        return cls(output, hashes, {
            key: entry for key, entry in products.items()
            if isinstance(entry, dict) and hashes.get(key) == entry.get("hash")
            and all((output / rel).is_file() for rel in entry.get("files", []))})

    def done(self, key: str) -> dict | None:
        """The recorded entry of a finished product with the current settings, or None."""
        return self.products.get(key)

    def all_done(self) -> bool:
        return all(key in self.products for key in self.hashes)

    def record(self, key: str, files: list[str], **entry) -> None:
        """Rank 0: mark a product finished (its files relative to the output folder)."""
        self.products[key] = {"hash": self.hashes[key], "files": files, **entry}
        write_json_atomic(self.path, {"products": self.products})


class OutputLock:
    """Refuses a second run into the same output folder (``with OutputLock(folder):``).

    A launcher that holds the lock passes its token to the ranks it starts through the
    environment (``LOCK_ENV``); they find it held by them. A lock left by a process that
    no longer runs on this host is taken over.
    """

    def __init__(self, output: Path):
        self.path = Path(output) / LOCK_NAME
        self.token = None
        self.owned = False

    def __enter__(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        inherited = os.environ.get(LOCK_ENV)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if inherited and holder.get("token") == inherited:
                    self.token = inherited
                    return self
                if holder and self._stale(holder):
                    self.path.unlink(missing_ok=True)
                    continue
                raise ConfigError(
                    f"output: another fwimpi run (pid {holder.get('pid')} on "
                    f"{holder.get('host')}) is writing to {self.path.parent}; wait for it to "
                    f"end, or remove {self.path} if it is gone") from None
            self.token = uuid.uuid4().hex
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(),
                           "token": self.token}, f)
            self.owned = True
            return self
        raise ConfigError(f"output: cannot take the lock {self.path}")

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _stale(holder: dict) -> bool:
        if holder.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(holder.get("pid", -1)), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, ValueError, OverflowError):
            return False
        return False

    def __exit__(self, *exc) -> None:
        if self.owned:
            self.path.unlink(missing_ok=True)


def remove_stale_temp_files(output: Path) -> list[Path]:
    """Rank 0, under the lock: remove the temp files a killed run left behind (only names
    carrying fwimpi's temp marker)."""
    return remove_temp_files(output)
