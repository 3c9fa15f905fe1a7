"""SEG-Y (and SU) traces of one event as `ReceiverData`, read and written with segyio.

Geometry of a 2D line (DESIGN.md, "Observed data"): receiver x from ``GroupX`` and the
vertical y from ``ReceiverGroupElevation``, the source from ``SourceX`` and
``SourceSurfaceElevation``. In 3D (``dimension=3``) the receivers are ``(GroupX, GroupY,
ReceiverGroupElevation)`` and the source ``(SourceX, SourceY, SourceSurfaceElevation)``, the
elevation being the vertical z. Coordinates are scaled by ``SourceGroupScalar`` and elevations
by ``ElevationScalar`` (SEG-Y rev 1: a positive scalar multiplies, a negative one divides, 0 means
1). The sample interval comes from the binary header (microseconds; the first trace header's
when the binary header has none, and always for SU), the start time from the delay recording
time (milliseconds). Samples are float32 (IEEE, format 5) when written; any format segyio reads
(IBM float, integers) when read.

segyio (Debian's ``python3-segyio``) is imported only when a SEG-Y file is read or written.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import MAX_TRACE_VALUES, FileFormatError, ReceiverData, atomic_path

#: File suffixes read as SEG-Y and as Seismic Unix.
SEGY_SUFFIXES = (".sgy", ".segy")
SU_SUFFIXES = (".su",)
#: The coordinate scalars tried when writing, finest first (mm, cm, dm, m).
_SCALARS = (-1000, -100, -10, 1)
_INT32 = 2**31 - 1
#: SEG-Y rev 1 holds the sample count in 16 bits (signed in the trace header).
MAX_SEGY_SAMPLES = 32767


def is_segy(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a SEG-Y or SU file (by its suffix)."""
    return Path(path).suffix.lower() in SEGY_SUFFIXES + SU_SUFFIXES


@dataclass(frozen=True)
class SegyTraces:
    """The traces of one SEG-Y file: ``data`` (receiver positions, samples, dt, start time,
    one field) and, per trace, the source position ``sources (R, dim)`` (m; NaN where the
    headers hold none) and the ``resolution`` (m) of the stored coordinates: positions are
    exact to half of it."""

    data: ReceiverData
    sources: np.ndarray
    resolution: float


def _factors(scalars: np.ndarray) -> np.ndarray:
    """SEG-Y rev 1 scalars as factors: a positive one multiplies, a negative one divides,
    0 means 1."""
    s = scalars.astype(np.float64)
    return np.where(s > 0, s, np.where(s < 0, 1.0 / np.abs(np.where(s == 0, 1, s)), 1.0))


def _scale(values: np.ndarray, scalars: np.ndarray) -> np.ndarray:
    return values.astype(np.float64) * _factors(scalars)


def _resolution(scalars: np.ndarray) -> float:
    """The coarsest step (m) of coordinates stored with ``scalars``."""
    return float(_factors(scalars).max()) if scalars.size else 1.0


def _segyio():
    """segyio, or a FileFormatError saying how to install it."""
    try:
        import segyio
        import segyio.su  # noqa: F401  (the SU reader)
    except ImportError:
        raise FileFormatError("SEG-Y needs segyio: apt-get install python3-segyio (or "
                              "scripts/setup.sh)") from None
    return segyio


def _open(path: Path):
    segyio = _segyio()

    opener = segyio.su.open if path.suffix.lower() in SU_SUFFIXES else segyio.open
    first = "little" if opener is not segyio.open else "big"
    errors = []
    for endian in (first, "little" if first == "big" else "big"):
        try:
            f = opener(str(path), "r", ignore_geometry=True, endian=endian)
        except (RuntimeError, OSError, ValueError) as err:
            errors.append(" ".join(str(err).split()))
            continue
        fmt = int(f.format) if hasattr(f, "format") and f.format is not None else 5
        if 0 < len(f.samples) <= 65535 and fmt in (1, 2, 3, 5, 6, 8, 10, 11, 12, 16):
            return f
        f.close()
        errors.append(f"{endian}-endian headers are implausible")
    raise FileFormatError(f"{path}: not a readable SEG-Y/SU file ({'; '.join(errors)})")


def read_segy(path: str | os.PathLike, field: str, dimension: int = 2) -> SegyTraces:
    """The traces of a SEG-Y/SU file as ``field`` of one event (stations named ``trace<k>``,
    k from 1 in file order), positions ``(R, dimension)``: ``dimension`` 2 reads a line (x,
    elevation), 3 adds ``GroupY``/``SourceY``. Sizes are bounded (``MAX_TRACE_VALUES``)
    before the samples are read; malformed headers raise FileFormatError naming the file and
    header."""
    if dimension not in (2, 3):
        raise ValueError(f"dimension: 2 or 3, got {dimension!r}")
    segyio = _segyio()
    path = Path(path)
    tf, bf = segyio.TraceField, segyio.BinField
    with _open(path) as f:
        n_traces, n_samples = int(f.tracecount), len(f.samples)
        if n_traces < 1:
            raise FileFormatError(f"{path}: holds no traces")
        if n_traces * n_samples > MAX_TRACE_VALUES:
            raise FileFormatError(f"{path}: {n_traces} traces of {n_samples} samples are more "
                                  f"than {MAX_TRACE_VALUES:,} values")
        interval = 0
        if path.suffix.lower() not in SU_SUFFIXES:
            interval = int(f.bin[bf.Interval])
        if interval <= 0:
            interval = int(f.header[0][tf.TRACE_SAMPLE_INTERVAL])
        if interval <= 0:
            raise FileFormatError(f"{path}: no sample interval (binary header Interval and "
                                  f"trace header TRACE_SAMPLE_INTERVAL are {interval})")

        def column(key):
            return np.asarray(f.attributes(key)[:], dtype=np.int64)

        delay = column(tf.DelayRecordingTime)
        if np.any(delay != delay[0]):
            k = int(np.flatnonzero(delay != delay[0])[0])
            raise FileFormatError(f"{path}: traces start at different times (delay recording "
                                  f"time {delay[0]} ms on trace 1, {delay[k]} ms on trace {k + 1})")
        scalco, scalel = column(tf.SourceGroupScalar), column(tf.ElevationScalar)
        horizontal = [tf.GroupX, tf.GroupY][: dimension - 1]
        receivers = np.column_stack([_scale(column(k), scalco) for k in horizontal]
                                    + [_scale(column(tf.ReceiverGroupElevation), scalel)])
        stored = [column(k) for k in [tf.SourceX, tf.SourceY][: dimension - 1]]
        sz = column(tf.SourceSurfaceElevation)
        sources = np.column_stack([_scale(s, scalco) for s in stored] + [_scale(sz, scalel)])
        none = sz == 0
        for s in stored:
            none &= s == 0
        sources[none] = np.nan  # no source position in the headers
        traces = np.asarray(f.trace.raw[:], dtype=np.float64).reshape(n_traces, n_samples)
    data = ReceiverData(traces={field: traces}, coordinates=receivers,
                        dt=interval / 1e6, start_time=float(delay[0]) / 1e3,
                        stations=tuple(f"trace{k + 1}" for k in range(n_traces)))
    return SegyTraces(data, sources, max(_resolution(scalco), _resolution(scalel)))


def _coordinate_scalar(values: np.ndarray, field: str) -> int:
    """The finest scalar of ``_SCALARS`` whose scaled ``values`` fit in 32 bits."""
    largest = float(np.abs(values).max()) if values.size else 0.0
    for s in _SCALARS:
        if largest * (abs(s) if s < 0 else 1.0 / s) < _INT32:
            return s
    raise FileFormatError(f"{field}: coordinates up to {largest:g} m do not fit SEG-Y headers")


def _stored(values: np.ndarray, scalar: int) -> np.ndarray:
    return np.rint(values * (abs(scalar) if scalar < 0 else 1.0 / scalar)).astype(np.int64)


def segy_time_axis(dt: float, start_time: float, n_samples: int,
                   new_dt: float | None = None) -> tuple[int, int, int]:
    """The SEG-Y time axis for traces of ``n_samples`` at ``start_time + k dt`` (s): sample
    interval (integer microseconds: ``new_dt`` when given, else ``dt`` rounded down), delay
    (integer milliseconds, rounded down: earlier samples are zero) and sample count (the
    samples up to the traces' end). Raises FileFormatError when it does not fit SEG-Y."""
    target = dt if new_dt is None else new_dt
    interval = int(math.floor(target * 1e6 + 1e-6))
    if not 1 <= interval <= 65535:
        raise FileFormatError(f"dt: a SEG-Y sample interval is 1 to 65535 microseconds, "
                              f"not {target * 1e6:g}")
    delay = int(math.floor(start_time * 1e3 + 1e-9))
    if not -32768 <= delay <= 32767:
        raise FileFormatError(f"start_time: {start_time:g} s does not fit SEG-Y's delay "
                              f"recording time")
    end = start_time + (n_samples - 1) * dt
    count = int(math.floor((end - delay * 1e-3) / (interval * 1e-6) + 1e-6)) + 1
    if count > MAX_SEGY_SAMPLES:
        raise FileFormatError(f"dt: {count} samples of {interval} us exceed SEG-Y's "
                              f"{MAX_SEGY_SAMPLES}; give a larger sample interval")
    return interval, delay, count


def write_segy(path: str | os.PathLike, data: ReceiverData, field: str,
               source: tuple[float, ...] | None, record: int = 1,
               new_dt: float | None = None, text: str = "") -> Path:
    """Write ``data.traces[field]`` as SEG-Y rev 1 (IEEE float32, big-endian), atomically: one
    trace per receiver in the file's order with its geometry (scalars chosen so positions are
    exact to 1 mm where they fit; coordinates ``(R, 2)``: x and elevation, ``(R, 3)``: x, y
    and elevation, the offset then horizontal), the ``source`` position (m, as many
    coordinates) on every trace, field record
    ``record``, and ``text`` in the textual header. Traces are resampled (band-limited) when
    their time axis is not whole microseconds and milliseconds (``segy_time_axis``)."""
    from fwimpi.sem.signals import resample

    segyio = _segyio()

    traces = np.asarray(data.traces[field], dtype=np.float64)
    interval, delay, count = segy_time_axis(data.dt, data.start_time, traces.shape[1], new_dt)
    exact = (count == traces.shape[1] and abs(interval * 1e-6 - data.dt) <= 1e-9 * data.dt
             and abs(delay * 1e-3 - data.start_time) <= 1e-9 * data.dt)
    if not exact:
        traces = resample(traces, data.dt, data.start_time, interval * 1e-6, delay * 1e-3,
                          count)
    coords = np.asarray(data.coordinates, dtype=np.float64)
    dim = coords.shape[1]
    if dim not in (2, 3):
        raise FileFormatError(f"coordinates: (R, 2) or (R, 3), got {coords.shape}")
    src = np.full(dim, np.nan) if source is None else np.asarray(source, dtype=np.float64)
    if src.shape != (dim,):
        raise FileFormatError(f"source: {dim} coordinates, got {source}")
    horizontal = np.concatenate([coords[:, :-1].ravel(), src[:-1][np.isfinite(src[:-1])]])
    vertical = np.concatenate([coords[:, -1], src[-1:][np.isfinite(src[-1:])]])
    scalco = _coordinate_scalar(horizontal, "coordinates")
    scalel = _coordinate_scalar(vertical, "coordinates")
    gx, gz = _stored(coords[:, 0], scalco), _stored(coords[:, -1], scalel)
    gy = _stored(coords[:, 1], scalco) if dim == 3 else np.zeros(len(coords), dtype=np.int64)
    sx = int(_stored(src[:1], scalco)[0]) if source is not None else 0
    sy = int(_stored(src[1:2], scalco)[0]) if source is not None and dim == 3 else 0
    sz = int(_stored(src[-1:], scalel)[0]) if source is not None else 0
    shift = coords[:, :-1] - (src[:-1] if source is not None else 0.0)
    offsets = (np.rint(shift[:, 0]) if dim == 2 else
               np.rint(np.hypot(shift[:, 0], shift[:, 1]))).astype(np.int64)

    spec = segyio.spec()
    spec.format = 5
    spec.samples = delay + interval * 1e-3 * np.arange(count)
    spec.tracecount = len(coords)
    spec.endian = "big"
    tf = segyio.TraceField
    with atomic_path(path) as tmp:
        with segyio.create(str(tmp), spec) as f:
            lines = [f"C{k + 1:2d} " for k in range(40)]
            for k, line in enumerate(text.splitlines()[:38]):
                lines[k] += line[:76]
            lines[38] += "SEG Y REV1"
            lines[39] += "END TEXTUAL HEADER"
            f.text[0] = "".join(f"{line:<80.80}" for line in lines).encode("ascii", "replace")
            f.bin.update({segyio.BinField.Interval: interval, segyio.BinField.Samples: count,
                          segyio.BinField.Format: 5, segyio.BinField.SEGYRevision: 0x0100,
                          segyio.BinField.Traces: len(coords),
                          segyio.BinField.MeasurementSystem: 1,
                          segyio.BinField.SortingCode: 1})
            for k in range(len(coords)):
                f.header[k] = {
                    tf.TRACE_SEQUENCE_LINE: k + 1, tf.TRACE_SEQUENCE_FILE: k + 1,
                    tf.FieldRecord: record, tf.TraceNumber: k + 1,
                    tf.TraceIdentificationCode: 1,
                    tf.SourceX: sx, tf.SourceY: sy, tf.SourceSurfaceElevation: sz,
                    tf.GroupX: int(gx[k]), tf.GroupY: int(gy[k]),
                    tf.ReceiverGroupElevation: int(gz[k]),
                    tf.offset: int(offsets[k]), tf.SourceGroupScalar: scalco,
                    tf.ElevationScalar: scalel, tf.CoordinateUnits: 1,
                    tf.DelayRecordingTime: delay, tf.TRACE_SAMPLE_COUNT: count,
                    tf.TRACE_SAMPLE_INTERVAL: interval,
                }
            for k, row in enumerate(traces.astype(np.float32)):
                f.trace[k] = np.ascontiguousarray(row)
    return Path(path)
