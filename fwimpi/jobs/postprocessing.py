"""Rank 0's step after the gradients: each mapping and the smoothing of the job, read from
and written to the output folder, with their PNGs, reusing finished products. The numerics
are ``fwimpi.inversion.postprocess``; this module does files, state and plots."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import NumericalError
from ..inversion.postprocess import map_event_gradients, smooth_gradient
from ..mesh.files import read_mesh_h5, with_kernels, without_kernels, write_mesh_h5
from .plotting import plot_field
from .spec import JobSpec
from .state import JobState

log = logging.getLogger("fwimpi")

#: Clip levels of the PNGs of every mapped and smoothed gradient (None: no clipping);
#: the tutorial shows its gradients at these.
PLOT_CLIPS = (None, 0.1, 0.8)


def map_and_smooth(spec: JobSpec, state: JobState, out: Path, attrs: dict) -> dict:
    """Root-only: each mapping of the raw gradients (per event, with that event's cutouts,
    summed over events), the smoothing of one of them, their files and plots. Reads the
    raw gradients and the prior model from their files; reuses finished products. Returns
    the summary's ``mappings``, ``smoothed`` and ``plots``."""
    model = read_mesh_h5(out / "model.h5")
    points, cells, mass = model.points, model.cells, model.mass
    products = {"mappings": {}, "smoothed": {}, "plots": []}

    def write(key: str, rel: str, fields: dict, **extra) -> None:
        if not all(np.isfinite(v).all() for v in fields.values()):
            raise NumericalError(f"{rel}: the gradient is not finite")
        write_mesh_h5(out / rel, points, cells, mass, with_kernels(fields, mass),
                      {**attrs, "nprocs": 1, **extra})
        plots = []
        for clip in PLOT_CLIPS:
            png = Path(rel).with_suffix("").as_posix() + (f"_clip{clip:g}" if clip else "") + ".png"
            plot_field(out / rel, out / png, clip=clip)
            plots.append(png)
        state.record(key, files=[rel, str(Path(rel).with_suffix(".xdmf")), *plots], path=rel,
                     plots=plots)

    def collect(key: str, kind: str, name: str) -> None:
        entry = state.done(key)
        products[kind][name] = entry["path"]
        products["plots"].extend(entry["plots"])

    raw = None
    for mapping in spec.mappings:
        key = f"mapping/{mapping.name}"
        if state.done(key) is not None:
            log.info("mapping %s: already computed; not run again", mapping.name)
        else:
            if raw is None:
                raw = {e.name: without_kernels(read_mesh_h5(
                    out / state.done(f"event/{e.name}")["summary"]["gradient"]).fields)
                    for e in spec.events}
            fields = map_event_gradients(mapping, raw, model.fields, points, spec.events)
            write(key, f"mappings/{mapping.name}.h5", fields, kind="mapped_gradient",
                  mapping=mapping.name, scaling=mapping.scaling)
            log.info("mapping %s written", mapping.name)
        collect(key, "mappings", mapping.name)
    if spec.smoothing is not None:
        name = spec.smoothing_applies_to
        key = f"smoothed/{name}"
        if state.done(key) is not None:
            log.info("smoothing of %s: already computed; not run again", name)
        else:
            mapped = without_kernels(read_mesh_h5(out / state.done(f"mapping/{name}")["path"]
                                                  ).fields)
            smoothed = smooth_gradient(spec.smoothing, mapped, points, cells, mass, model.order)
            write(key, f"smoothed/{name}.h5", smoothed, kind="smoothed_gradient", mapping=name,
                  smoothing_lengths_in_meters=dict(spec.smoothing.smoothing_lengths_in_meters))
            log.info("smoothed gradient of %s written", name)
        collect(key, "smoothed", name)
    return products
