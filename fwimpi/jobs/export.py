"""`fwimpi export`: fwimpi files to other tools' formats and back.

- a mesh file (model, gradient, smoothed; 2D or 3D) -> VTU beside it (quads or hexahedra);
- a receivers file -> one SEG-Y file per event (``{event}.sgy`` beside it by default), with
  the receiver and source geometry in the trace headers (``fwimpi.mesh.segy``): the files
  are valid observed data as ``misfit_configuration.observed_data: .../{event}.sgy``. Only
  2D receivers (coordinates ``(R, 2)``: x and the vertical y): the SEG-Y writer carries a
  2D line's geometry, and 3D receivers are refused with a one-line error;
- a SEG-Y/SU file -> a receivers file of one event (named by the file's stem).

Exports never overwrite a file: a target that exists is an error naming it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..mesh.files import (FileFormatError, ReceiverData, read_attrs, read_mesh_h5,
                          read_receivers_h5, write_receivers_h5, write_vtu)
from ..mesh.segy import is_segy, read_segy, write_segy
from .spec import EVENT_PLACEHOLDER


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _free(target: Path) -> Path:
    if target.exists() or target.is_symlink():
        raise ConfigError(f"output: {target} exists; remove it or name another file")
    if not target.parent.is_dir():
        raise ConfigError(f"output: no folder {target.parent}")
    return target


def export_file(file: Path, output: Path | None = None, field: str | None = None,
                event: str | None = None, dt: float | None = None,
                dimension: int = 2) -> list[Path]:
    """Convert ``file`` by its kind (module docstring); returns the files written. A SEG-Y
    file is read as a 2D line or, ``dimension=3``, with 3D positions. Raises ConfigError (one
    line, naming the option or file) on anything it cannot convert."""
    if not file.is_file():
        raise ConfigError(f"file: no such file {file}")
    if dt is not None and not dt > 0:
        raise ConfigError(f"--dt: expected a positive sample interval in seconds, got {dt}")
    if is_segy(file):
        return [segy_to_receivers(file, output, field or "phi", event, dimension)]
    try:
        fmt = str(read_attrs(file).get("format", ""))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"file: {file} is not an fwimpi HDF5 file: {_one_line(err)}") from None
    if fmt.startswith("fwimpi-receivers"):
        return receivers_to_segy(file, output, field or "phi", event, dt)
    if not fmt.startswith("fwimpi-mesh"):
        raise ConfigError(f"file: {file} is not an fwimpi mesh or receivers file, nor SEG-Y")
    try:
        mesh = read_mesh_h5(file)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"file: {file} is not an fwimpi mesh file: {_one_line(err)}") from None
    target = _free(output or file.with_suffix(".vtu"))
    try:
        write_vtu(target, mesh.points, mesh.cells, mesh.order, mesh.fields, mesh.mass)
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ConfigError(f"file: {file} cannot be exported: {_one_line(err)}") from None
    return [target]


def _sources_of(attrs: dict, event: str) -> tuple[float, ...] | None:
    """The first source position ``(x, y[, z])`` of ``event`` in the job spec a receivers
    file carries."""
    try:
        for entry in attrs["job_spec"]["events"]:
            if entry["event_name"] == event:
                s = entry["sources"][0]
                return tuple(float(s[a]) for a in ("x", "y", "z") if a in s)
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return None


def receivers_to_segy(file: Path, output: Path | None, field: str, event: str | None,
                      dt: float | None) -> list[Path]:
    """One SEG-Y file per event of the receivers ``file`` (only ``event`` when given) at
    ``output`` (a path, with ``{event}`` when more than one event is written; default
    ``{event}.sgy`` beside ``file``)."""
    try:
        attrs = read_attrs(file)
        data = read_receivers_h5(file)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"file: {file} is not an fwimpi receivers file: {_one_line(err)}"
                          ) from None
    if event is not None:
        if event not in data:
            raise ConfigError(f"--event: no event '{event}' in {file} (it holds "
                              f"{', '.join(data) or 'none'})")
        data = {event: data[event]}
    pattern = str(output) if output is not None else str(file.parent / f"{EVENT_PLACEHOLDER}.sgy")
    if len(data) > 1 and EVENT_PLACEHOLDER not in pattern:
        raise ConfigError(f"output: {file} holds {len(data)} events; name the files with "
                          f"{EVENT_PLACEHOLDER}, e.g. data/{EVENT_PLACEHOLDER}.sgy")
    targets = {name: _free(Path(pattern.replace(EVENT_PLACEHOLDER, name))) for name in data}
    written = []
    for record, (name, rec) in enumerate(data.items(), start=1):
        if field not in rec.traces:
            raise ConfigError(f"--field: event '{name}' of {file} has no '{field}' traces "
                              f"(it has {', '.join(rec.traces)})")
        three = rec.coordinates.shape[1] == 3
        text = (f"fwimpi export of {file.name}, event {name}, field {field}\n"
                f"simulation dt {rec.dt!r} s, start time {rec.start_time!r} s\n"
                + (f"x = GroupX, SourceX; y = GroupY, SourceY (scalar SourceGroupScalar);\n"
                   f"vertical z = " if three else
                   f"x = GroupX, SourceX (scalar SourceGroupScalar); vertical y = ")
                + f"ReceiverGroupElevation,\nSourceSurfaceElevation (scalar ElevationScalar), m")
        try:
            written.append(write_segy(targets[name], rec, field, _sources_of(attrs, name),
                                      record=record, new_dt=dt, text=text))
        except (FileFormatError, ValueError) as err:
            raise ConfigError(f"--dt: event '{name}': {_one_line(err)}") from None
    return written


def segy_to_receivers(file: Path, output: Path | None, field: str,
                      event: str | None, dimension: int = 2) -> Path:
    """A receivers file (default: ``file`` with suffix ``.h5``) holding ``file``'s traces as
    ``field`` of one event (default: the file's stem), positions ``(R, dimension)``."""
    name = event or file.stem
    try:
        segy = read_segy(file, field, dimension)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ConfigError(f"file: {_one_line(err)}") from None
    target = _free(output or file.with_suffix(".h5"))
    attrs = {"kind": "receivers", "source_file": str(file.name)}
    rec: ReceiverData = segy.data
    try:
        write_receivers_h5(target, {name: rec}, attrs)
    except FileFormatError as err:
        raise ConfigError(f"--event: {_one_line(err)}") from None
    return target
