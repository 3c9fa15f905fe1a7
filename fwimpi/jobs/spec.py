"""The job-spec schema (DESIGN.md, `examples/mapping_tutorial.yaml`) as frozen dataclasses.

`load_job_spec(path)` reads and validates a YAML job spec; `parse_job_spec(data, base_dir)`
validates an already-loaded mapping. Every problem raises `ConfigError` with a one-line
message that starts with the key path, e.g.
``simulation_configuration.tensor_order: must be an integer in 1..10, got 0``.
Lengths are in metres, times in seconds, frequencies in hertz.
"""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import yaml

from fwimpi.errors import ConfigError
from fwimpi.inversion.mapping import SCALINGS, Mapping, MappingError
from fwimpi.inversion.smoothing import ConstantSmoothing, SmoothingError
from fwimpi.mesh.model import ModelSource
from fwimpi.mesh.structured import Box
from fwimpi.mesh.structured3d import Box3
from fwimpi.sem.absorbing import AbsorbingBoundaries
from fwimpi.sem.acquisition import Event, PointSource, Receiver
from fwimpi.sem.misfits import MISFITS, Misfit, PressureMisfit
from fwimpi.sem.physics import ACOUSTIC
from fwimpi.sem.source_estimation import EstimatedWaveletMisfit
from fwimpi.sem.wavelets import Ricker

__all__ = ("AbsorbingBoundaries", "Compression", "Domain", "Event", "JobSpec",
           "LossyCompression", "MisfitConfig",
           "ModelSource", "PointSource", "Receiver", "Ricker", "SimulationConfig",
           "load_job_spec", "parse_job_spec")

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: What receivers record: the potential ``phi`` (Pa s^2) and the pressure ``p = -d2phi/dt2``
#: (Pa, what a hydrophone records; ``signals.pressure_operator``).
RECEIVER_FIELDS = ("phi", "p")
MAX_LINSPACE_POINTS = 1_000_000
#: Default memory for the gradient's forward wavefield, per rank: with it the tutorial's
#: gradient run peaks at 1.8x the forward run's memory (scripts/bench_gradient).
DEFAULT_MEMORY_PER_RANK_MB = 128.0
MAX_MEMORY_PER_RANK_MB = 1e7  # 10 TB
#: Mapping names may not end like the suffix of the PNGs of another mapping.
_CLIP_SUFFIX = re.compile(r"_clip[0-9.eE+-]*$")


# --------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Domain:
    """Box domain in metres: `x = (x0, x1)`, `y = (y0, y1)` and, in 3D, `z = (z0, z1)`. The
    last axis is vertical, up, with the free surface at its top (y1 in 2D, z1 in 3D)."""

    dimension: int
    x: tuple[float, float]
    y: tuple[float, float]
    z: tuple[float, float] | None = None

    @property
    def box(self) -> Box | Box3:
        if self.dimension == 3:
            return Box3(self.x[0], self.x[1], self.y[0], self.y[1], self.z[0], self.z[1])
        return Box(self.x[0], self.x[1], self.y[0], self.y[1])

    @property
    def axes(self) -> tuple[str, ...]:
        """The coordinate names: ``("x", "y")`` or ``("x", "y", "z")``."""
        return ("x", "y", "z")[: self.dimension]

    @property
    def top(self) -> float:
        """The free surface: the largest coordinate of the vertical axis (m)."""
        return getattr(self, self.axes[-1])[1]


@dataclass(frozen=True)
class SimulationConfig:
    """SEM settings; `time_step_in_seconds` None means CFL-derived; `absorbing` None: closed box."""

    name: str
    elements_per_wavelength: float
    tensor_order: int
    max_frequency_in_hertz: float
    end_time_in_seconds: float
    time_step_in_seconds: float | None
    wavelet: "Ricker | CustomWavelet"
    absorbing: AbsorbingBoundaries | None
    #: "neumann" (natural; a rigid wall for the potential) or "dirichlet" (phi = 0: the
    #: pressure-free surface)
    top_boundary: str = "neumann"


EVENT_PLACEHOLDER = "{event}"


def observed_file(observed: Path, event: str) -> Path:
    """The file holding ``event``'s observed data: ``observed`` itself (a receivers file),
    the receivers file an fwimpi output folder's ``summary.json`` names for the event, or
    the pattern with ``{event}`` replaced by the event's name. Raises ConfigError."""
    field = "misfit_configuration.observed_data"
    text = str(observed)
    if EVENT_PLACEHOLDER in text:
        path = Path(text.replace(EVENT_PLACEHOLDER, event))
        if not path.is_file():
            raise ConfigError(f"{field}: no file {path} for event '{event}'")
        return path
    if observed.is_dir():
        try:
            summary = json.loads((observed / "summary.json").read_text())
            rel = summary["events"][event]["receivers"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigError(f"{field}: {observed} is not an fwimpi output folder with "
                              f"receivers of event '{event}' (its summary.json names none)"
                              ) from None
        path = observed / str(rel)
        if not path.is_file() or observed.resolve() not in path.resolve().parents:
            raise ConfigError(f"{field}: the receivers of event '{event}' named in "
                              f"{observed / 'summary.json'} are not in that folder")
        return path
    return observed


@dataclass(frozen=True)
class MisfitConfig:
    """The misfit of the job: a registered `Misfit`, its observed data (a receivers file, an
    fwimpi output folder, or a path pattern with ``{event}``: ``observed_file``) and the
    receiver field it compares."""

    name: str
    observed_data: Path | None
    misfit: Misfit
    receiver_field: str
    #: estimate each event's source wavelet from its data (``source_estimation``)
    estimate_wavelet: bool = False

    @property
    def misfit_function(self) -> str:
        """The misfit's name in the job spec."""
        return self.misfit.name

    @property
    def on_potential(self):
        """The misfit as a function of the simulated ``phi`` traces: the registered one for
        ``receiver_field: phi``, wrapped in ``PressureMisfit`` for ``p``."""
        return PressureMisfit(self.misfit) if self.receiver_field == "p" else self.misfit

    def estimating(self, reduce):
        """``(misfit on phi, estimator)`` with the wavelet estimated (``reduce`` sums the
        spectra over ranks) on the compared field: ``J(F D phi, d)`` for ``p``, with ``F``
        fitted to ``D phi``, so ``F`` is the same filter of the source for either field."""
        estimator = EstimatedWaveletMisfit(self.misfit, reduce, [])
        return (PressureMisfit(estimator) if self.receiver_field == "p" else estimator,
                estimator)


@dataclass(frozen=True)
class LossyCompression:
    """`wavefield_compression.lossy`: the stored forward wavefield compressed by `codec`
    (`zfp`, fixed-accuracy mode) to within `tolerance` (0 < T < 1) times its peak."""

    codec: str
    tolerance: float


@dataclass(frozen=True)
class Compression:
    """Forward wavefield buffered every `forward_wavefield_sampling_interval` steps, exactly
    or (with `lossy`) compressed."""

    forward_wavefield_sampling_interval: int = 1
    memory_per_rank_in_mb: float = DEFAULT_MEMORY_PER_RANK_MB
    lossy: LossyCompression | None = None


@dataclass(frozen=True)
class Stage:
    """A stage of frequency continuation: traces low-pass filtered at
    ``max_frequency_in_hertz`` (None: unfiltered) for ``iterations`` model updates."""

    max_frequency_in_hertz: float | None
    iterations: int


@dataclass(frozen=True)
class InversionConfig:
    """The ``inversion`` block: the inversion space (a mapping's name, optionally on a
    coarser order-1 mesh of ``mesh_element_size_in_meters``), the preconditioner (the job's
    smoothing, or None), L-BFGS with ``memory`` pairs, hard ``bounds`` on the simulation
    model ``{parameter: (lo, hi)}`` and the stages."""

    mapping: str
    preconditioner: str | None
    memory: int
    stages: tuple[Stage, ...]
    bounds: dict
    mesh_element_size_in_meters: float | None = None

    @property
    def iterations(self) -> int:
        """Model updates over all stages."""
        return sum(stage.iterations for stage in self.stages)


@dataclass(frozen=True, eq=False)
class JobSpec:
    """A validated job spec built into the objects that do the work (events, wavelet,
    mappings, smoothing). `resolved` is its JSON-serialisable form with defaults filled in and
    absolute paths: it parses back to an equal JobSpec (specs are equal when their resolved
    forms and base folders are)."""

    name: str
    ranks_per_job: int
    site: str
    concurrent_events: int
    retries: int
    domain: Domain
    model: ModelSource
    events: tuple[Event, ...]
    simulation: SimulationConfig
    misfit: MisfitConfig | None
    compression: Compression
    mappings: tuple[Mapping, ...]
    smoothing: ConstantSmoothing | None
    smoothing_applies_to: str | None
    inversion: InversionConfig | None
    output: Path
    base_dir: Path
    resolved: dict = field(repr=False)

    def __eq__(self, other) -> bool:
        if not isinstance(other, JobSpec):
            return NotImplemented
        return (self.resolved, self.base_dir) == (other.resolved, other.base_dir)

    def __hash__(self) -> int:
        return hash(json.dumps(self.resolved, sort_keys=True))

    def mapping(self, name: str) -> Mapping:
        """The mapping called `name`."""
        return next(m for m in self.mappings if m.name == name)


# --------------------------------------------------------------------------- loading


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads `1e-3` and `2.0e3` as floats (YAML 1.2; PyYAML
    would read them as strings) and rejects a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*|[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


#: The largest job-spec file read (bytes), and the most YAML nodes it may expand to
#: (aliases counted at every use, so an alias bomb is refused before it is built).
MAX_SPEC_BYTES = 10 * 2**20
MAX_YAML_NODES = 1_000_000


def read_job_text(path: str | os.PathLike) -> str:
    """The text of the job spec at ``path``: a regular file of at most MAX_SPEC_BYTES,
    UTF-8. Raises ConfigError."""
    path = Path(path)
    try:
        with open(path, "rb", opener=_open_nonblocking) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ConfigError(f"{path}: cannot read job spec: not a regular file")
            raw = f.read(MAX_SPEC_BYTES + 1)
    except ConfigError:
        raise
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"{path}: cannot read job spec: {reason}") from None
    if len(raw) > MAX_SPEC_BYTES:
        raise ConfigError(f"{path}: cannot read job spec: larger than "
                          f"{MAX_SPEC_BYTES // 2**20} MB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file ({err.reason} at byte {err.start})"
                          ) from None


def _open_nonblocking(path, flags):
    """Open without blocking on a FIFO (whose reader would wait for a writer)."""
    return os.open(path, flags | os.O_NONBLOCK)


def _expanded_size(node, memo: dict) -> int:
    """Nodes of a composed YAML graph with every alias expanded (memoised: polynomial time)."""
    key = id(node)
    if key not in memo:
        memo[key] = 1  # cycles (recursive aliases) count once
        if isinstance(node, yaml.SequenceNode):
            memo[key] = 1 + sum(_expanded_size(n, memo) for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            memo[key] = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo)
                                for k, v in node.value)
    return memo[key]


def load_job_data(path: str | os.PathLike, text: str | None = None) -> dict:
    """The YAML mapping of the job spec at ``path`` (or its ``text``), read with fwimpi's
    safe loader: no Python tags, no duplicate keys, 1e-3 read as a number, at most
    MAX_YAML_NODES nodes once aliases are expanded. Raises ConfigError."""
    path = Path(path)
    if text is None:
        text = read_job_text(path)
    try:
        loader = _Loader(text)  # a SafeLoader: no Python tags are ever constructed
        try:
            node = loader.get_single_node()
            if node is not None:
                size = _expanded_size(node, {})
                if size > MAX_YAML_NODES:
                    raise ConfigError(f"{path}: the YAML expands to {size:.3g} nodes with its "
                                      f"aliases (at most {MAX_YAML_NODES:,})")
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(str(err.problem).split())
        if err.context:
            what += f" ({' '.join(err.context.split())})"
        raise ConfigError(f"{path}: {where}invalid YAML: {what}") from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        char = f"#x{err.character:04x}" if isinstance(err.character, int) else err.character
        raise ConfigError(f"{path}: line {line}: invalid YAML: unacceptable character "
                          f"{char}") from None
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError, MemoryError) as err:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values, "
                          f"got {_show(data)}")
    return data


def load_job_spec(path: str | os.PathLike, text: str | None = None) -> JobSpec:
    """Read, parse and validate the YAML job spec at `path` (or its already read ``text``);
    relative paths in it are resolved against its folder. Raises ConfigError."""
    path = Path(path)
    return parse_job_spec(load_job_data(path, text), base_dir=path.parent)


def parse_job_spec(data: dict, base_dir: str | os.PathLike) -> JobSpec:
    """Validate a loaded job spec into a JobSpec; relative paths resolve against `base_dir`."""
    base_dir = Path(os.path.abspath(Path(base_dir).expanduser()))
    if not isinstance(data, dict):
        _fail("job spec", "the top level must be a mapping of keys to values", data)
    d = _mapping(data, "", ("name", "ranks_per_job", "site", "concurrent_events", "retries",
                            "domain", "model", "events",
                            "simulation_configuration", "misfit_configuration",
                            "wavefield_compression", "mappings", "smoothing", "inversion",
                            "output"),
                 required=("name", "domain", "model", "events", "simulation_configuration"))
    name = _name(d["name"], "name")
    ranks = _opt(d, "", "ranks_per_job", 1,
                 lambda v, p: _number(v, p, integer=True, lo=1, hi=100_000))
    site = _opt(d, "", "site", "local", _name)
    concurrent = _opt(d, "", "concurrent_events", 1,
                      lambda v, p: _number(v, p, integer=True, lo=1, hi=100_000))
    retries = _opt(d, "", "retries", 1, lambda v, p: _number(v, p, integer=True, lo=0, hi=10))
    domain = _domain(d["domain"], "domain")
    model = _model(d["model"], "model", base_dir)
    events = _events(d["events"], "events", domain)
    simulation = _simulation(d["simulation_configuration"], "simulation_configuration", base_dir)
    misfit = _opt(d, "", "misfit_configuration", None, lambda v, p: _misfit(v, p, base_dir))
    compression = _opt(d, "", "wavefield_compression", Compression(), _compression)
    mappings = _opt(d, "", "mappings", (), lambda v, p: _mappings(v, p, domain.dimension))
    if mappings and misfit is None:
        _fail("mappings", "need misfit_configuration (a gradient to map); add it or remove "
                          "the mappings", d["mappings"])
    smoothing, applies_to = _opt(d, "", "smoothing", (None, None),
                                 lambda v, p: _smoothing(v, p, mappings, domain.dimension))
    inversion = _opt(d, "", "inversion", None,
                     lambda v, p: _inversion(v, p, mappings, smoothing, misfit, simulation))
    output = _opt(d, "", "output", _resolve_path(f"runs/{name}", base_dir),
                  lambda v, p: _path(v, p, base_dir))
    parts = dict(name=name, ranks_per_job=ranks, site=site, concurrent_events=concurrent,
                 retries=retries, domain=domain, model=model,
                 events=events, simulation=simulation, misfit=misfit, compression=compression,
                 mappings=mappings, smoothing=smoothing, smoothing_applies_to=applies_to,
                 inversion=inversion, output=output, base_dir=base_dir)
    return JobSpec(**parts, resolved=_resolved(**parts))


# --------------------------------------------------------------------------- blocks


def _domain(data, path) -> Domain:
    if isinstance(data, dict) and data.get("dimension") == 3:
        d = _mapping(data, path, ("dimension", "x", "y", "z"),
                     required=("dimension", "x", "y", "z"))
        return Domain(3, _interval(d["x"], f"{path}.x"), _interval(d["y"], f"{path}.y"),
                      _interval(d["z"], f"{path}.z"))
    d = _mapping(data, path, ("dimension", "x", "y"), required=("dimension", "x", "y"))
    dim = _number(d["dimension"], f"{path}.dimension", integer=True)
    if dim != 2:
        _fail(f"{path}.dimension", "must be 2 or 3", dim)
    return Domain(2, _interval(d["x"], f"{path}.x"), _interval(d["y"], f"{path}.y"))


def _interval(value, path) -> tuple[float, float]:
    items = _list(value, path)
    if len(items) != 2:
        _fail(path, "must be [min, max] in metres", value)
    lo, hi = (_number(v, f"{path}[{i}]") for i, v in enumerate(items))
    if not lo < hi:
        _fail(path, "must be [min, max] with min < max", value)
    return lo, hi


def _model(data, path, base_dir) -> ModelSource:
    d = _mapping(data, path, ("vp", "rho", "file"))
    if d.get("file") is not None:
        if d.get("vp") is not None or d.get("rho") is not None:
            _fail(path, "give either vp and rho (expressions) or file, not both", sorted(d))
        return ModelSource(None, None, _path(d["file"], f"{path}.file", base_dir, must_exist=True))
    for key in ("vp", "rho"):
        if d.get(key) is None:
            _fail(f"{path}.{key}", "missing: give vp and rho (expressions in the coordinates) or file")
    return ModelSource(_expression(d["vp"], f"{path}.vp"), _expression(d["rho"], f"{path}.rho"),
                       None)


def _events(data, path, domain) -> tuple[Event, ...]:
    events = []
    for i, item in enumerate(_list(data, path)):
        event = _event(item, f"{path}[{i}]", domain)
        if any(e.name == event.name for e in events):
            _fail(f"{path}[{i}].event_name", "duplicate event name, names must be unique",
                  event.name)
        events.append(event)
    return tuple(events)


def _event(data, path, domain) -> Event:
    d = _mapping(data, path, ("event_name", "sources", "receivers"),
                 required=("event_name", "sources", "receivers"))
    name = _name(d["event_name"], f"{path}.event_name")
    sources = tuple(_source(s, f"{path}.sources[{i}]", domain)
                    for i, s in enumerate(_list(d["sources"], f"{path}.sources")))
    receivers, stations = [], set()
    for i, item in enumerate(_list(d["receivers"], f"{path}.receivers")):
        item_path = f"{path}.receivers[{i}]"
        for receiver in _receiver_set(item, item_path, domain, first_index=len(receivers)):
            if receiver.station in stations:
                _fail(item_path, f"duplicate station name {receiver.station!r} in event "
                                 f"{name!r}, station names must be unique", item)
            stations.add(receiver.station)
            receivers.append(receiver)
    return Event(name, sources, tuple(receivers))


def _source(data, path, domain) -> PointSource:
    axes = domain.axes
    kind = f"ScalarPoint{domain.dimension}D"
    if isinstance(data, dict) and "type" in data:  # a 2D source in 3D: say so first
        _choice(data["type"], f"{path}.type", (kind,))
    d = _mapping(data, path, ("type",) + axes + ("f",), required=axes + ("f",))
    position = tuple(_inside(_number(d[a], f"{path}.{a}"), f"{path}.{a}", a, getattr(domain, a))
                     for a in axes)
    return PointSource(position, _number(d["f"], f"{path}.f"))


_RECEIVER_KEYS = MappingProxyType({"ArrayPoint2D": ("type", "x", "y", "fields"),
                                   "Point2D": ("type", "x", "y", "fields", "station_code"),
                                   "ArrayPoint3D": ("type", "x", "y", "z", "fields"),
                                   "Point3D": ("type", "x", "y", "z", "fields",
                                               "station_code")})


def _receiver_set(data, path, domain, first_index) -> list[Receiver]:
    """One Receiver per point of a `Point2D` or `ArrayPoint2D` entry (x and y broadcast), or
    of a `Point3D` or `ArrayPoint3D` entry (the grid of its x and y values at depth z; z
    defaults to the free surface)."""
    if not isinstance(data, dict):
        _fail(path, "must be a mapping", data)
    kinds = tuple(k for k in _RECEIVER_KEYS if k.endswith(f"{domain.dimension}D"))
    kind = _choice(data.get("type"), f"{path}.type", kinds)
    d = _mapping(data, path, _RECEIVER_KEYS[kind], required=("type", "x", "y"))
    if domain.dimension == 3:
        return _receiver_set3d(d, path, kind, domain, first_index)
    fields = _opt(d, path, "fields", ("phi",),
                  lambda v, p: _subset(v, p, RECEIVER_FIELDS))
    if kind == "Point2D":
        x = _inside(_number(d["x"], f"{path}.x"), f"{path}.x", "x", domain.x)
        y = _inside(_number(d["y"], f"{path}.y"), f"{path}.y", "y", domain.y)
        station = _opt(d, path, "station_code", f"R{first_index:04d}", _name)
        return [Receiver((x, y), station, fields)]
    axes = {axis: _coordinates(d[axis], f"{path}.{axis}") for axis in ("x", "y")}
    n = max(len(values) for values, _ in axes.values())
    for axis, (values, _) in axes.items():
        if len(values) not in (1, n):
            _fail(f"{path}.{axis}", f"has {len(values)} values, must have 1 or {n} "
                                    f"(the length of the other axis)", d[axis])
    columns = []
    for axis, (values, indexed) in axes.items():
        column = []
        for k in range(n):
            j = k if len(values) > 1 else 0
            point_path = f"{path}.{axis}[{j}]" if indexed else f"{path}.{axis}"
            column.append(_inside(values[j], point_path, axis, getattr(domain, axis)))
        columns.append(column)
    return [Receiver((x, y), f"R{first_index + k:04d}", fields)
            for k, (x, y) in enumerate(zip(*columns))]


def _receiver_set3d(d, path, kind, domain, first_index) -> list[Receiver]:
    fields = _opt(d, path, "fields", ("phi",), lambda v, p: _subset(v, p, RECEIVER_FIELDS))
    z = _inside(_opt(d, path, "z", domain.top, _number), f"{path}.z", "z", domain.z)
    if kind == "Point3D":
        x = _inside(_number(d["x"], f"{path}.x"), f"{path}.x", "x", domain.x)
        y = _inside(_number(d["y"], f"{path}.y"), f"{path}.y", "y", domain.y)
        station = _opt(d, path, "station_code", f"R{first_index:04d}", _name)
        return [Receiver((x, y, z), station, fields)]
    axes = {}
    for axis in ("x", "y"):
        values, indexed = _coordinates(d[axis], f"{path}.{axis}")
        axes[axis] = [_inside(v, f"{path}.{axis}[{j}]" if indexed else f"{path}.{axis}", axis,
                              getattr(domain, axis)) for j, v in enumerate(values)]
    if len(axes["x"]) * len(axes["y"]) > MAX_LINSPACE_POINTS:
        _fail(path, f"the grid of x and y has {len(axes['x']) * len(axes['y']):,} points, at "
                    f"most {MAX_LINSPACE_POINTS:,}", d)
    # the grid of x and y, x fastest
    points = [(x, y) for y in axes["y"] for x in axes["x"]]
    return [Receiver((x, y, z), f"R{first_index + k:04d}", fields)
            for k, (x, y) in enumerate(points)]


def _coordinates(value, path) -> tuple[list[float], bool]:
    """A number, a list of numbers or `{linspace: [start, stop, num]}`; returns the values
    and whether error paths should index them."""
    if isinstance(value, dict):
        d = _mapping(value, path, ("linspace",), required=("linspace",))
        args = _list(d["linspace"], f"{path}.linspace")
        if len(args) != 3:
            _fail(f"{path}.linspace", "must be [start, stop, num]", args)
        start = _number(args[0], f"{path}.linspace[0]")
        stop = _number(args[1], f"{path}.linspace[1]")
        num = _number(args[2], f"{path}.linspace[2]", integer=True, lo=1,
                      hi=MAX_LINSPACE_POINTS)
        return [float(v) for v in np.linspace(start, stop, num)], True
    if isinstance(value, list):
        return [_number(v, f"{path}[{i}]") for i, v in enumerate(_list(value, path))], True
    if not _is_number(value):
        _fail(path, "must be a number, a list of numbers or {linspace: [start, stop, num]}",
              value)
    return [_number(value, path)], False


def _simulation(data, path, base_dir) -> SimulationConfig:
    d = _mapping(data, path, (
        "name", "elements_per_wavelength", "tensor_order", "max_frequency_in_hertz",
        "end_time_in_seconds", "time_step_in_seconds", "wavelet", "absorbing_boundaries",
        "top_boundary"),
        required=("elements_per_wavelength", "tensor_order", "max_frequency_in_hertz",
                  "end_time_in_seconds", "wavelet"))
    end_time = _number(d["end_time_in_seconds"], f"{path}.end_time_in_seconds", positive=True)
    dt = _opt(d, path, "time_step_in_seconds", None, lambda v, p: _number(v, p, positive=True))
    if dt is not None and dt > end_time:
        _fail(f"{path}.time_step_in_seconds",
              f"must not exceed end_time_in_seconds ({end_time})", dt)
    return SimulationConfig(
        name=_opt(d, path, "name", "simulation", _name),
        elements_per_wavelength=_number(d["elements_per_wavelength"],
                                        f"{path}.elements_per_wavelength", positive=True),
        tensor_order=_number(d["tensor_order"], f"{path}.tensor_order", integer=True,
                             lo=1, hi=10),
        max_frequency_in_hertz=_number(d["max_frequency_in_hertz"],
                                       f"{path}.max_frequency_in_hertz", positive=True),
        end_time_in_seconds=end_time,
        time_step_in_seconds=dt,
        wavelet=_wavelet(d["wavelet"], f"{path}.wavelet", base_dir),
        absorbing=_opt(d, path, "absorbing_boundaries", None, _absorbing),
        top_boundary=_opt(d, path, "top_boundary", "neumann",
                          lambda v, p: _choice(v, p, ("neumann", "dirichlet"))))


@dataclass(frozen=True)
class CustomWavelet:
    """``{type: Custom, file: PATH}``: a source time function sampled in an HDF5 file
    (``/stf`` with attribute ``dt``), read when the job is planned."""

    file: Path


def _wavelet(data, path, base_dir) -> Ricker | CustomWavelet:
    if isinstance(data, dict) and data.get("type") == "Custom":
        d = _mapping(data, path, ("type", "file"), required=("type", "file"))
        return CustomWavelet(_path(d["file"], f"{path}.file", base_dir, must_exist=True))
    d = _mapping(data, path, ("type", "center_frequency", "time_shift_in_seconds"),
                 required=("type", "center_frequency"))
    _choice(d["type"], f"{path}.type", ("Ricker", "Custom"))
    return Ricker(_number(d["center_frequency"], f"{path}.center_frequency", positive=True),
                  _opt(d, path, "time_shift_in_seconds", None, _number))


def _absorbing(data, path) -> AbsorbingBoundaries:
    keys = ("reference_velocity", "number_of_wavelengths", "reference_frequency")
    d = _mapping(data, path, keys, required=keys)
    return AbsorbingBoundaries(
        _number(d["reference_velocity"], f"{path}.reference_velocity", positive=True),
        _number(d["number_of_wavelengths"], f"{path}.number_of_wavelengths", lo=0),
        _number(d["reference_frequency"], f"{path}.reference_frequency", positive=True))


def _misfit(data, path, base_dir) -> MisfitConfig:
    d = _mapping(data, path, ("name", "observed_data", "misfit_function", "receiver_field",
                              "estimate_wavelet"), required=("misfit_function",))
    misfit = MISFITS[_choice(d["misfit_function"], f"{path}.misfit_function", tuple(MISFITS))]
    observed = d.get("observed_data")
    if not misfit.needs_observed:
        if observed is not None:
            _fail(f"{path}.observed_data", f"must be null for misfit_function {misfit.name}",
                  observed)
    elif observed is None:
        _fail(f"{path}.observed_data",
              f"required for misfit_function {misfit.name} (a receivers file, an fwimpi "
              f"output folder or a pattern with {EVENT_PLACEHOLDER})", observed)
    else:
        observed = _observed(observed, f"{path}.observed_data", base_dir)
    return MisfitConfig(
        name=_opt(d, path, "name", "misfit", _name), observed_data=observed, misfit=misfit,
        receiver_field=_opt(d, path, "receiver_field", "phi",
                            lambda v, p: _choice(v, p, RECEIVER_FIELDS)),
        estimate_wavelet=_opt(d, path, "estimate_wavelet", False, _estimate(misfit)))


def _estimate(misfit):
    def parse(value, path) -> bool:
        if not isinstance(value, bool):
            _fail(path, "must be true or false", value)
        if value and not misfit.needs_observed:
            _fail(path, "estimating the wavelet needs observed data (L2 or "
                        "cross_correlation_time_shift)", value)
        return value
    return parse


def _observed(value, path, base_dir) -> Path:
    """A receivers file, an fwimpi output folder or a pattern with ``{event}``."""
    resolved = _path(value, path, base_dir)
    if EVENT_PLACEHOLDER in str(value):
        if str(value).count(EVENT_PLACEHOLDER) != 1 or EVENT_PLACEHOLDER in str(resolved.parent):
            _fail(path, f"a pattern must hold {EVENT_PLACEHOLDER} once, in the file name", value)
        if not resolved.parent.is_dir():
            _fail(path, f"no folder {resolved.parent}", value)
        return resolved
    if resolved.is_dir():
        if not (resolved / "summary.json").is_file():
            _fail(path, f"{resolved} is a folder without summary.json (not an fwimpi output "
                        f"folder)", value)
        return resolved
    if not resolved.is_file():
        _fail(path, f"no such file {resolved}", value)
    return resolved


def _compression(data, path) -> Compression:
    d = _mapping(data, path, ("forward_wavefield_sampling_interval", "memory_per_rank_in_mb",
                              "lossy"))
    return Compression(
        _opt(d, path, "forward_wavefield_sampling_interval", 1,
             lambda v, p: _number(v, p, integer=True, lo=1, hi=1_000_000)),
        _opt(d, path, "memory_per_rank_in_mb", DEFAULT_MEMORY_PER_RANK_MB,
             lambda v, p: _number(v, p, positive=True, hi=MAX_MEMORY_PER_RANK_MB)),
        _opt(d, path, "lossy", None, _lossy))


def _lossy(data, path) -> LossyCompression:
    """``{codec: zfp, tolerance: T}``, 0 < T < 1; the codec must be importable here."""
    d = _mapping(data, path, ("codec", "tolerance"), required=("codec", "tolerance"))
    codec = _choice(d["codec"], f"{path}.codec", ("zfp",))
    tolerance = _number(d["tolerance"], f"{path}.tolerance")
    if not 0.0 < tolerance < 1.0:
        _fail(f"{path}.tolerance", "must be a number > 0 and < 1 (relative to the "
                                   "wavefield's peak)", d["tolerance"])
    try:
        import zfpy  # noqa: F401  (Debian: python3-zfpy)
    except ImportError as err:
        raise ConfigError(f"{path}.codec: zfp needs the zfpy module (Debian package "
                          f"python3-zfpy, installed by scripts/setup.sh), which cannot be "
                          f"imported here: {' '.join(str(err).split())}") from None
    return LossyCompression(codec, tolerance)


def _mappings(data, path, dimension: int = 2) -> tuple[Mapping, ...]:
    if isinstance(data, list) and not data:
        return ()  # no mappings (as a resolved spec without any writes them)
    mappings = []
    for i, item in enumerate(_list(data, path)):
        mapping = _mapping_config(item, f"{path}[{i}]", dimension)
        if _CLIP_SUFFIX.search(mapping.name):
            _fail(f"{path}[{i}].name", "must not end in _clip<number>, the suffix of the "
                                       "clipped PNGs of a mapping", mapping.name)
        if any(m.name == mapping.name for m in mappings):
            _fail(f"{path}[{i}].name", "duplicate mapping name, names must be unique",
                  mapping.name)
        mappings.append(mapping)
    return tuple(mappings)


def _mapping_config(data, path, dimension: int = 2) -> Mapping:
    """A `Mapping` (the YAML types checked here, its own invariants by itself)."""
    d = _mapping(data, path, ("name", "inversion_parameters", "scaling",
                              "source_cutout_radius_in_meters",
                              "receiver_cutout_radius_in_meters", "region_of_interest"),
                 required=("name", "inversion_parameters"))

    def radius(key):
        return _opt(d, path, key, None, lambda v, p: _number(v, p, lo=0))

    try:
        return Mapping(
            name=_name(d["name"], f"{path}.name"),
            inversion_parameters=_subset(d["inversion_parameters"],
                                         f"{path}.inversion_parameters", ACOUSTIC.parameters),
            scaling=_opt(d, path, "scaling", "absolute", lambda v, p: _choice(v, p, SCALINGS)),
            source_cutout_radius_in_meters=radius("source_cutout_radius_in_meters"),
            receiver_cutout_radius_in_meters=radius("receiver_cutout_radius_in_meters"),
            region_of_interest=_opt(d, path, "region_of_interest", None, _string),
            field=path, dimension=dimension)
    except MappingError as err:
        raise ConfigError(str(err)) from None


def _smoothing(data, path, mappings, dimension: int = 2) -> tuple[ConstantSmoothing, str]:
    d = _mapping(data, path, ("apply_to", "type", "smoothing_lengths_in_meters"),
                 required=("apply_to", "type", "smoothing_lengths_in_meters"))
    names = tuple(m.name for m in mappings)
    if not names:
        _fail(f"{path}.apply_to", "must name a mapping, but the spec defines no mappings",
              d["apply_to"])
    apply_to = _choice(d["apply_to"], f"{path}.apply_to", names)
    _choice(d["type"], f"{path}.type", ("ConstantSmoothing",))
    parameters = next(m.inversion_parameters for m in mappings if m.name == apply_to)
    lengths_path = f"{path}.smoothing_lengths_in_meters"
    raw = d["smoothing_lengths_in_meters"]
    names = ", ".join(f"sigma_{a}" for a in "xyz"[:dimension])
    if not isinstance(raw, dict) or not raw:
        _fail(lengths_path, f"must be a non-empty mapping {{PARAMETER: [{names}]}}", raw)
    lengths = {}
    for key, value in raw.items():
        key_path = f"{lengths_path}.{_key(key)}"
        if not isinstance(key, str) or key not in parameters:
            _fail(key_path, f"must be an inversion parameter of mapping {apply_to!r}: "
                            f"{', '.join(parameters)}", key)
        items = _list(value, key_path)
        if len(items) != dimension:
            _fail(key_path, f"must be [{names}] in metres", value)
        lengths[key] = tuple(_number(v, f"{key_path}[{i}]", lo=0) for i, v in enumerate(items))
    try:
        return ConstantSmoothing(lengths, field=path), apply_to
    except SmoothingError as err:
        raise ConfigError(str(err)) from None


def _inversion(data, path, mappings, smoothing, misfit, simulation) -> InversionConfig:
    d = _mapping(data, path, ("mapping", "preconditioner", "method", "iterations", "bounds",
                              "stages", "mesh"), required=("mapping",))
    names = tuple(m.name for m in mappings)
    if not names:
        _fail(f"{path}.mapping", "must name a mapping, but the spec defines no mappings",
              d["mapping"])
    mapping = _choice(d["mapping"], f"{path}.mapping", names)
    if misfit is None or not misfit.misfit.needs_observed:
        _fail(f"{path}", "an inversion fits observed data: give misfit_configuration a misfit "
                         "with observed_data (L2 or cross_correlation_time_shift)")
    preconditioner = _opt(d, path, "preconditioner", None,
                          lambda v, p: _choice(v, p, ("smoothing",)))
    if preconditioner is not None and smoothing is None:
        _fail(f"{path}.preconditioner", "needs the job's smoothing block", preconditioner)
    method = _opt(d, path, "method", {"type": "lbfgs"}, lambda v, p: _mapping(v, p, ("type", "memory"),
                                                                             required=("type",)))
    _choice(method["type"], f"{path}.method.type", ("lbfgs",))
    memory = _opt(method, f"{path}.method", "memory", 5,
                  lambda v, p: _number(v, p, integer=True, lo=1, hi=100))
    iterations = _opt(d, path, "iterations", 10,
                      lambda v, p: _number(v, p, integer=True, lo=0, hi=10_000))
    if d.get("stages") is not None:
        stages = []
        for i, item in enumerate(_list(d["stages"], f"{path}.stages")):
            sp = f"{path}.stages[{i}]"
            st = _mapping(item, sp, ("max_frequency_in_hertz", "iterations"),
                          required=("max_frequency_in_hertz",))
            fmax = _number(st["max_frequency_in_hertz"], f"{sp}.max_frequency_in_hertz",
                           positive=True)
            if fmax > simulation.max_frequency_in_hertz:
                _fail(f"{sp}.max_frequency_in_hertz", f"must not exceed the simulation's "
                      f"max_frequency_in_hertz ({simulation.max_frequency_in_hertz:g})", fmax)
            stages.append(Stage(fmax, _opt(st, sp, "iterations", iterations,
                                           lambda v, p: _number(v, p, integer=True, lo=0,
                                                                hi=10_000))))
        stages = tuple(stages)
    else:
        stages = (Stage(None, iterations),)
    bounds = {}
    raw = _opt(d, path, "bounds", {}, lambda v, p: _mapping(v, p, ACOUSTIC.parameters))
    for key, value in raw.items():
        items = _list(value, f"{path}.bounds.{key}")
        if len(items) != 2:
            _fail(f"{path}.bounds.{key}", "must be [lower, upper]", value)
        lo, hi = (_number(v, f"{path}.bounds.{key}[{i}]", positive=True)
                  for i, v in enumerate(items))
        if not lo < hi:
            _fail(f"{path}.bounds.{key}", "must be [lower, upper] with lower < upper", value)
        bounds[key] = (lo, hi)
    size = None
    if d.get("mesh") is not None:
        m = _mapping(d["mesh"], f"{path}.mesh", ("element_size_in_meters",),
                     required=("element_size_in_meters",))
        size = _number(m["element_size_in_meters"], f"{path}.mesh.element_size_in_meters",
                       positive=True)
    return InversionConfig(mapping, preconditioner, memory, stages, bounds, size)


def _resolved(*, name, ranks_per_job, site, concurrent_events, retries, domain, model, events,
              simulation, misfit,
              compression, mappings, smoothing, smoothing_applies_to, inversion, output,
              base_dir) -> dict:
    """The spec in its own YAML vocabulary, defaults filled in, receivers expanded to
    Point2D entries and paths absolute: JSON-serialisable and parseable again."""
    sim, absorbing = simulation, simulation.absorbing
    return {
        "name": name, "ranks_per_job": ranks_per_job, "site": site,
        "concurrent_events": concurrent_events, "retries": retries,
        "domain": {"dimension": domain.dimension,
                   **{a: list(getattr(domain, a)) for a in domain.axes}},
        "model": ({"file": str(model.file)} if model.file is not None
                  else {"vp": model.vp, "rho": model.rho}),
        "events": [{
            "event_name": e.name,
            "sources": [{"type": f"ScalarPoint{domain.dimension}D",
                         **dict(zip(domain.axes, s.position)), "f": s.f} for s in e.sources],
            "receivers": [{"type": f"Point{domain.dimension}D",
                           **dict(zip(domain.axes, r.position)), "fields": list(r.fields),
                           "station_code": r.station} for r in e.receivers],
        } for e in events],
        "simulation_configuration": {
            "name": sim.name, "elements_per_wavelength": sim.elements_per_wavelength,
            "tensor_order": sim.tensor_order, "max_frequency_in_hertz": sim.max_frequency_in_hertz,
            "end_time_in_seconds": sim.end_time_in_seconds,
            "time_step_in_seconds": sim.time_step_in_seconds,
            "wavelet": ({"type": "Custom", "file": str(sim.wavelet.file)}
                        if isinstance(sim.wavelet, CustomWavelet) else
                        {"type": "Ricker", "center_frequency": sim.wavelet.center_frequency,
                         "time_shift_in_seconds": sim.wavelet.time_shift_in_seconds}),
            "absorbing_boundaries": None if absorbing is None else {
                "reference_velocity": absorbing.reference_velocity,
                "number_of_wavelengths": absorbing.number_of_wavelengths,
                "reference_frequency": absorbing.reference_frequency},
            "top_boundary": sim.top_boundary,
        },
        "misfit_configuration": None if misfit is None else {
            "name": misfit.name,
            "observed_data": None if misfit.observed_data is None else str(misfit.observed_data),
            "misfit_function": misfit.misfit_function, "receiver_field": misfit.receiver_field,
            "estimate_wavelet": misfit.estimate_wavelet},
        "wavefield_compression": {
            "forward_wavefield_sampling_interval":
                compression.forward_wavefield_sampling_interval,
            "memory_per_rank_in_mb": compression.memory_per_rank_in_mb,
            "lossy": None if compression.lossy is None else {
                "codec": compression.lossy.codec, "tolerance": compression.lossy.tolerance}},
        "mappings": [{
            "name": m.name, "inversion_parameters": list(m.inversion_parameters),
            "scaling": m.scaling,
            "source_cutout_radius_in_meters": m.source_cutout_radius_in_meters,
            "receiver_cutout_radius_in_meters": m.receiver_cutout_radius_in_meters,
            "region_of_interest": m.region_of_interest} for m in mappings],
        "smoothing": None if smoothing is None else {
            "apply_to": smoothing_applies_to, "type": "ConstantSmoothing",
            "smoothing_lengths_in_meters": {k: list(v) for k, v in
                                            smoothing.smoothing_lengths_in_meters.items()}},
        "inversion": None if inversion is None else {
            "mapping": inversion.mapping, "preconditioner": inversion.preconditioner,
            "method": {"type": "lbfgs", "memory": inversion.memory},
            "stages": [{"max_frequency_in_hertz": st.max_frequency_in_hertz,
                        "iterations": st.iterations} for st in inversion.stages]
            if inversion.stages[0].max_frequency_in_hertz is not None else None,
            "iterations": inversion.stages[0].iterations,
            "bounds": {k: list(v) for k, v in inversion.bounds.items()},
            "mesh": None if inversion.mesh_element_size_in_meters is None else
            {"element_size_in_meters": inversion.mesh_element_size_in_meters}},
        "output": str(output),
    }


# --------------------------------------------------------------------------- helpers


def _fail(path: str, what: str, *value: Any):
    """Raise ConfigError `<path>: <what>[, got <repr(value)>]`."""
    got = f", got {_show(value[0])}" if value else ""
    raise ConfigError(f"{path}: {what}{got}")


def _show(value: Any, limit: int = 80) -> str:
    """A short, one-line repr for messages."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__}>"
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _key(key: Any) -> str:
    """A mapping key as a path component: plain if it is a simple name, else its repr."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", key):
        return key
    return _show(key, limit=40)


def _join(path: str, key: Any) -> str:
    return f"{path}.{_key(key)}" if path else _key(key)


def _mapping(data, path, keys, required=()) -> dict:
    """Check that `data` is a mapping whose keys are among `keys`, with all of `required`."""
    if not isinstance(data, dict):
        _fail(path or "job spec", "must be a mapping of keys to values", data)
    for key in data:
        if not isinstance(key, str) or key not in keys:
            close = difflib.get_close_matches(key, keys, n=1) if isinstance(key, str) else []
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{_join(path, key)}: unknown key{hint}, allowed keys are "
                              f"{', '.join(keys)}")
    for key in required:
        if key not in data:
            raise ConfigError(f"{_join(path, key)}: missing required key")
    return data


def _opt(d: dict, path: str, key: str, default, parse):
    """`parse(d[key], path.key)`, or `default` when the key is absent or null."""
    value = d.get(key)
    return default if value is None else parse(value, _join(path, key))


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _number(value, path, *, integer=False, lo=None, hi=None, positive=False):
    """A finite float (ints accepted) or, with `integer`, an int; bools are refused."""
    kind = "an integer" if integer else "a finite number"
    if positive:
        kind += " > 0" if hi is None else f" > 0 and <= {hi:g}"
    elif lo is not None and hi is not None:
        kind += f" in {lo}..{hi}"
    elif lo is not None:
        kind += f" >= {lo}"
    if not _is_number(value) or (integer and not isinstance(value, numbers.Integral)):
        _fail(path, f"must be {kind}", value)
    try:
        number = int(value) if integer else float(value)
    except OverflowError:
        _fail(path, f"must be {kind}", value)
    if (not integer and not math.isfinite(number)) or (positive and not number > 0) \
            or (lo is not None and number < lo) or (hi is not None and number > hi):
        _fail(path, f"must be {kind}", value)
    return number


def _string(value, path) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(path, "must be a non-empty string", value)
    return value.strip()


def _expression(value, path) -> str:
    """An expression in x, y (string) or a constant (number, stored as its str)."""
    if _is_number(value):
        _number(value, path)  # finite
        return str(value)
    if not isinstance(value, str) or not value.strip():
        _fail(path, "must be a non-empty expression in the coordinates (x, y; x, y, z in "
                    "3D), or a number", value)
    return value.strip()


def _name(value, path) -> str:
    """A name safe in file names and batch scripts."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        _fail(path, "must be 1-64 characters from A-Z a-z 0-9 _ . - starting with a letter "
                    "or digit", value)
    return value


def _choice(value, path, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        _fail(path, f"must be one of {', '.join(choices)}", value)
    return value


def _list(value, path) -> list:
    if not isinstance(value, list) or not value:
        _fail(path, "must be a non-empty list", value)
    return value


def _subset(value, path, choices: tuple[str, ...]) -> tuple[str, ...]:
    """A non-empty list of distinct entries of `choices`."""
    items = _list(value, path)
    for i, item in enumerate(items):
        _choice(item, f"{path}[{i}]", choices)
        if item in items[:i]:
            _fail(f"{path}[{i}]", "duplicate entry, entries must be unique", item)
    return tuple(items)


def _resolve_path(value: str, base_dir: Path) -> Path:
    return Path(os.path.abspath(base_dir / Path(value).expanduser()))


def _path(value, path, base_dir, must_exist=False) -> Path:
    """A path relative to `base_dir` (or absolute), made absolute."""
    if not isinstance(value, str) or not value.strip() \
            or any(ord(c) < 32 or ord(c) == 127 for c in value):
        _fail(path, "must be a non-empty path without control characters", value)
    resolved = _resolve_path(value, base_dir)
    if must_exist and not resolved.is_file():
        _fail(path, f"no such file {resolved}", value)
    return resolved


def _inside(value: float, path, axis, bounds: tuple[float, float]) -> float:
    """`value` clamped into `bounds`, allowing 1e-9 of the domain size; else ConfigError."""
    lo, hi = bounds
    tol = 1e-9 * (hi - lo)
    if not lo - tol <= value <= hi + tol:
        _fail(path, f"must lie inside the domain, {axis} in [{lo}, {hi}]", value)
    return min(max(value, lo), hi)
