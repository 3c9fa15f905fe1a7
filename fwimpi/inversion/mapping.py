"""Mapping between simulation space and inversion space (DESIGN.md, "Mapping and smoothing").

Root-only and pure: numpy arrays of the contract mesh layout in, arrays out; no files, no MPI.
A model, a gradient or an inversion-space vector is a ``dict`` from a parameter name (``VP``,
``RHO``) to an array ``(P,)`` over the global GLL points.

``Mapping.forward(x, prior)`` gives the simulation model of the inversion-space point ``x``;
``Mapping.adjoint(raw_gradient, prior, points, event)`` gives the gradient in inversion space:
the transpose of forward's Jacobian applied to the raw gradient ``dJ/dp_i``, then multiplied
point by point by the masks (source and receiver cutouts, region of interest).

Scalings, for each inverted parameter ``m`` with prior ``m0`` (point by point):

- ``absolute``: ``x = m``, ``m = x``, ``dm/dx = 1``;
- ``relative_deviation_from_prior``: ``x = (m - m0) / m0``, ``m = m0 (1 + x)``, ``dm/dx = m0``;
- ``logarithmic``: ``x = ln(m / m0)``, ``m = m0 exp(x)``, ``dm/dx = m0 exp(x) = m``.

The prior is ``x = 0`` for the relative and logarithmic scalings (``x = m0`` for absolute).
The adjoint evaluates the chain rule at the prior unless given ``x``: relative and absolute
scalings are affine, so the point does not matter; for the logarithmic one it does
(``g * m`` at the current model ``m``) — pass the current ``x`` in an iterative inversion.

Two or three dimensions: ``points`` are ``(P, 2)`` or ``(P, 3)`` (x, y[, z], z up in 3D), the
event positions have as many columns, cutouts are discs or spheres (Euclidean distance in the
points' dimension), and a region-of-interest expression is in x, y or x, y, z (``dimension``).

Masks act on the gradient only, as in the product whose tutorial fwimpi follows: ``forward``
ignores them, so a model update is confined to the region of interest because its gradient is.
A point is cut out when its distance to a source (receiver) of the event is strictly less
than the radius, so a radius of 0 cuts out nothing. The region of interest multiplies the
gradient by its weights (an expression is 1 where true and 0 where false, or any real
expression; an array gives the weights directly). ``linearized_forward`` applies the same masks
when given ``points`` (and the event), so the masked adjoint is the exact transpose of the
masked linearisation: the masks are a diagonal, symmetric preconditioner.

Pairing: plain Euclidean sums over points, ``<dm, g> = sum_p sum_i dm_p[i] g_p[i]`` — the
pairing in which the raw gradient ``dJ/dp_i`` is a derivative. Fields are never divided by the
quadrature weights here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping as MappingABC
from dataclasses import dataclass, field as dc_field
from types import MappingProxyType

import numpy as np

from fwimpi.errors import FwimpiError
from fwimpi.mesh.expression import Expression, compile_expression
from fwimpi.sem.physics import ACOUSTIC

PARAMETERS = ACOUSTIC.parameters
SCALINGS = ("absolute", "relative_deviation_from_prior", "logarithmic")
VARIABLES = MappingProxyType({2: ("x", "y"), 3: ("x", "y", "z")})  # of a region of interest


class MappingError(FwimpiError, ValueError):
    """A mapping that cannot be built or applied: bad option, missing or ill-shaped field."""


@dataclass(frozen=True)
class EventGeometry:
    """Positions (m) of an event's sources ``(S, d)`` and receivers ``(R, d)``, ``d`` = 2
    (x, y) or 3 (x, y, z): what the cutouts need. Both have the same number of columns (an
    empty array without columns takes the other's). ``from_events`` merges several events (for
    a gradient summed over them)."""

    sources: np.ndarray
    receivers: np.ndarray

    def __post_init__(self):
        arrays = {}
        for name in ("sources", "receivers"):
            value = getattr(self, name)
            arr = np.array(value, dtype=np.float64)
            if arr.ndim == 1 and arr.shape[0] in (2, 3):
                arr = arr[None, :]  # one point
            elif arr.size == 0 and (arr.ndim != 2 or arr.shape[1] not in (2, 3)):
                arr = None  # no points and no columns: the other array's
            if arr is not None and (arr.ndim != 2 or arr.shape[1] not in (2, 3)):
                raise MappingError(f"event {name}: expected coordinates (n, 2) or (n, 3) in "
                                   f"metres, got shape {np.shape(value)}")
            if arr is not None and not np.isfinite(arr).all():
                raise MappingError(f"event {name}: coordinates must be finite")
            arrays[name] = arr
        src, rec = arrays["sources"], arrays["receivers"]
        if src is not None and rec is not None and src.shape[1] != rec.shape[1]:
            raise MappingError(f"event sources: expected coordinates (n, {rec.shape[1]}) like "
                               f"the receivers, got shape {src.shape}")
        dim = next((a.shape[1] for a in (src, rec) if a is not None), 2)
        for name, arr in arrays.items():
            arr = np.zeros((0, dim)) if arr is None else arr
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)

    @property
    def dim(self) -> int:
        """2 or 3: the number of coordinates of each position."""
        return self.sources.shape[1]

    @classmethod
    def from_events(cls, events: Iterable) -> "EventGeometry":
        """All sources and receivers of ``events`` (objects with ``sources`` and ``receivers``
        sequences of items with a ``position`` of 2 or 3 coordinates, or ``x`` and ``y``, such
        as the job spec's ``Event``). Raises MappingError for events of mixed dimensions."""
        events = list(events)
        src = [_position(s) for e in events for s in e.sources]
        rec = [_position(r) for e in events for r in e.receivers]
        dims = {len(p) for p in src + rec}
        if len(dims) > 1:
            raise MappingError(f"events: positions of {' and '.join(map(str, sorted(dims)))} "
                               f"coordinates mixed")
        dim = dims.pop() if dims else 2
        return cls(np.array(src, float).reshape(-1, dim), np.array(rec, float).reshape(-1, dim))


def _position(item) -> tuple[float, ...]:
    """An acquisition item's position: its ``position`` tuple, else ``(x, y)``."""
    position = getattr(item, "position", None)
    return tuple(position) if position is not None else (item.x, item.y)


def _radius(value, name: str, where: str) -> float | None:
    if value is None:
        return None
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise MappingError(f"{where}.{name}: must be a number of metres or None, "
                           f"got {value!r}") from None
    if not np.isfinite(r) or r < 0:
        raise MappingError(f"{where}.{name}: must be finite and >= 0, got {value!r}")
    return r


def _within(points: np.ndarray, centres: np.ndarray, radius: float) -> np.ndarray:
    """Boolean ``(P,)``: points ``(P, d)`` strictly closer than ``radius`` to any of
    ``centres (C, d)`` (inside a disc in 2D, a sphere in 3D)."""
    if radius <= 0 or len(centres) == 0:
        return np.zeros(len(points), dtype=bool)
    from scipy.spatial import cKDTree  # root-only: mappings run after the simulations

    dist, _ = cKDTree(centres).query(points, k=1, distance_upper_bound=radius)
    return dist < radius


@dataclass(frozen=True, eq=False)
class Mapping:
    """Map between simulation space (VP, RHO at the GLL points) and an inversion space.

    ``inversion_parameters``: a non-empty subset of ``VP``, ``RHO``; ``scaling``: one of
    ``SCALINGS``; cutout radii in metres (None: no cutout; discs in 2D, spheres in 3D);
    ``region_of_interest``: None, an expression (safely parsed) in ``x``, ``y`` or, with
    ``dimension=3``, in ``x``, ``y``, ``z``, or an array of weights ``(P,)``. ``name``
    (optional) names it in a job; ``field`` is the path that error messages name
    (``mappings[i]`` when built from a job spec). ``dimension`` (2 or 3) is that of the mesh
    whose points the masks are evaluated at; only an expression needs it (the cutouts and the
    weights work in the dimension of the points given).

    >>> import numpy as np
    >>> m = Mapping(["VP"], scaling="relative_deviation_from_prior")
    >>> prior = {"VP": np.array([2000.0]), "RHO": np.array([1000.0])}
    >>> m.forward({"VP": np.array([0.1])}, prior)["VP"]
    array([2200.])
    """

    inversion_parameters: tuple[str, ...]
    scaling: str = "absolute"
    source_cutout_radius_in_meters: float | None = None
    receiver_cutout_radius_in_meters: float | None = None
    region_of_interest: str | np.ndarray | None = None
    name: str | None = None
    field: str = dc_field(default="mapping", repr=False)
    dimension: int = 2
    _roi: Expression | np.ndarray | None = dc_field(default=None, init=False, repr=False)

    def __post_init__(self):
        where = self.field
        params = self.inversion_parameters
        if isinstance(params, str):
            params = (params,)
        params = tuple(params)
        if not params:
            raise MappingError(f"{where}.inversion_parameters: must name at least one of "
                               f"{', '.join(PARAMETERS)}")
        for p in params:
            if p not in PARAMETERS:
                raise MappingError(f"{where}.inversion_parameters: unknown parameter {p!r}; "
                                   f"use {', '.join(PARAMETERS)}")
        if len(set(params)) != len(params):
            raise MappingError(f"{where}.inversion_parameters: {list(params)} names a "
                               f"parameter twice")
        object.__setattr__(self, "inversion_parameters", params)
        if self.scaling not in SCALINGS:
            raise MappingError(f"{where}.scaling: must be one of {', '.join(SCALINGS)}, got "
                               f"{self.scaling!r}")
        for name in ("source_cutout_radius_in_meters", "receiver_cutout_radius_in_meters"):
            object.__setattr__(self, name, _radius(getattr(self, name), name, where))
        if self.dimension not in (2, 3) or isinstance(self.dimension, bool):
            raise MappingError(f"{where}: dimension must be 2 or 3, got {self.dimension!r}")
        object.__setattr__(self, "dimension", int(self.dimension))
        roi = self.region_of_interest
        if roi is None:
            compiled = None
        elif isinstance(roi, str):
            compiled = compile_expression(roi, f"{where}.region_of_interest",
                                          VARIABLES[self.dimension])
        else:
            compiled = np.array(roi, dtype=np.float64)
            if compiled.ndim != 1:
                raise MappingError(f"{where}.region_of_interest: an array of weights must "
                                   f"have shape (n_points,), got {compiled.shape}")
            if not np.isfinite(compiled).all():
                raise MappingError(f"{where}.region_of_interest: weights must be finite")
            compiled.setflags(write=False)
            object.__setattr__(self, "region_of_interest", compiled)
        object.__setattr__(self, "_roi", compiled)

    @property
    def has_masks(self) -> bool:
        return (bool(self.source_cutout_radius_in_meters)
                or bool(self.receiver_cutout_radius_in_meters) or self._roi is not None)

    # ------------------------------------------------------------------ checks

    def _field(self, fields: MappingABC, name: str, what: str, n: int | None) -> np.ndarray:
        if name not in fields:
            raise MappingError(f"{self.field}: {what} has no field {name!r} (it has "
                               f"{', '.join(map(str, fields)) or 'none'})")
        arr = np.asarray(fields[name], dtype=np.float64)
        if arr.ndim != 1 or (n is not None and len(arr) != n):
            want = f"({n},)" if n is not None else "(n_points,)"
            raise MappingError(f"{self.field}: {what}[{name!r}] must have shape {want}, got "
                               f"{arr.shape}")
        return arr

    def _prior(self, prior: MappingABC) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(prior, MappingABC) or not prior:
            raise MappingError(f"{self.field}: prior must be a dict of fields, e.g. "
                               f"{{'VP': ..., 'RHO': ...}}")
        n = None
        out = {}
        for name in prior:
            arr = self._field(prior, name, "prior", n)
            n = len(arr)
            out[name] = arr
        for p in self.inversion_parameters:
            m0 = self._field(prior, p, "prior", n)
            if self.scaling != "absolute" and not (m0 > 0).all():
                raise MappingError(f"{self.field}: scaling {self.scaling!r} needs a positive "
                                   f"prior {p}, got minimum {m0.min():g}")
        return out, n

    def _x(self, x: MappingABC, n: int, what: str = "x") -> dict[str, np.ndarray]:
        extra = set(x) - set(self.inversion_parameters)
        if extra:
            raise MappingError(f"{self.field}: {what} has field(s) {sorted(extra)} that the "
                               f"mapping does not invert ({', '.join(self.inversion_parameters)})")
        return {p: self._field(x, p, what, n) for p in self.inversion_parameters}

    def _point(self, x: MappingABC | None, prior: dict, n: int) -> dict[str, np.ndarray]:
        """The inversion point (default: the prior's) as arrays."""
        return self.inverse(prior, prior) if x is None else self._x(x, n)

    def _slope(self, p: str, x: dict, prior: dict) -> np.ndarray:
        """``dm/dx`` of parameter ``p`` at the inversion point ``x`` (point by point)."""
        if self.scaling == "absolute":
            return np.ones_like(prior[p])
        if self.scaling == "relative_deviation_from_prior":
            return prior[p]
        return prior[p] * np.exp(x[p])

    # ------------------------------------------------------------------ maps

    def forward(self, x: MappingABC, prior: MappingABC) -> dict[str, np.ndarray]:
        """Simulation model (every parameter of ``prior``) of the inversion point ``x``; the
        parameters not inverted for are the prior's. Masks play no part."""
        prior, n = self._prior(prior)
        x = self._x(x, n)
        model = {name: m.copy() for name, m in prior.items()}
        for p in self.inversion_parameters:
            if self.scaling == "absolute":
                model[p] = x[p].copy()
            elif self.scaling == "relative_deviation_from_prior":
                model[p] = prior[p] * (1.0 + x[p])
            else:
                model[p] = prior[p] * np.exp(x[p])
        return model

    def inverse(self, model: MappingABC, prior: MappingABC) -> dict[str, np.ndarray]:
        """Inversion point of a simulation model (``forward``'s inverse on the inverted
        parameters): ``inverse(prior, prior)`` is the starting point."""
        prior, n = self._prior(prior)
        out = {}
        for p in self.inversion_parameters:
            m = self._field(model, p, "model", n)
            if self.scaling == "absolute":
                out[p] = m.copy()
            elif self.scaling == "relative_deviation_from_prior":
                out[p] = (m - prior[p]) / prior[p]
            else:
                if not (m > 0).all():
                    raise MappingError(f"{self.field}: logarithmic scaling needs a positive "
                                       f"model {p}, got minimum {m.min():g}")
                out[p] = np.log(m / prior[p])
        return out

    def masks(self, points: np.ndarray, event: EventGeometry | None = None) -> np.ndarray | None:
        """The product of the cutouts and the region of interest at ``points (P, 2)`` or
        ``(P, 3)``, or None when the mapping has no mask. Raises MappingError for a cutout
        without event, or positions of another dimension than the points."""
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] not in (2, 3):
            raise MappingError(f"{self.field}: points must have shape (n_points, 2) or "
                               f"(n_points, 3), got {points.shape}")
        if not self.has_masks:
            return None
        dim = points.shape[1]
        weight = np.ones(len(points))
        for kind, radius in (("source", self.source_cutout_radius_in_meters),
                             ("receiver", self.receiver_cutout_radius_in_meters)):
            if not radius:
                continue
            if event is None:
                raise MappingError(f"{self.field}.{kind}_cutout_radius_in_meters: a cutout of "
                                   f"{radius:g} m needs the event (its {kind} positions); pass "
                                   f"event=EventGeometry(...)")
            centres = event.sources if kind == "source" else event.receivers
            if len(centres) and centres.shape[1] != dim:
                raise MappingError(f"{self.field}.{kind}_cutout_radius_in_meters: the event's "
                                   f"{kind}s have {centres.shape[1]} coordinates, the mesh "
                                   f"points {dim}")
            weight[_within(points, centres, radius)] = 0.0
        if isinstance(self._roi, Expression):
            if dim != self.dimension:
                raise MappingError(f"{self.field}.region_of_interest: an expression in "
                                   f"{', '.join(VARIABLES[self.dimension])} for a {dim}D mesh "
                                   f"(build the mapping with dimension={dim})")
            weight *= self._roi(**dict(zip(VARIABLES[dim], points.T)))
        elif self._roi is not None:
            if len(self._roi) != len(points):
                raise MappingError(f"{self.field}.region_of_interest: {len(self._roi)} "
                                   f"weights for a mesh of {len(points)} points")
            weight *= self._roi
        return weight

    def linearized_forward(self, dx: MappingABC, prior: MappingABC, x: MappingABC | None = None,
                           points: np.ndarray | None = None,
                           event: EventGeometry | None = None) -> dict[str, np.ndarray]:
        """Jacobian of ``forward`` at ``x`` (default: the prior) applied to ``dx``: a model
        perturbation for every parameter of ``prior`` (zero for those not inverted).

        Without ``points`` no mask is applied (the plain Jacobian); with ``points`` (and the
        event for cutouts) ``dx`` is first multiplied by the masks, which makes ``adjoint``
        its exact transpose in the Euclidean pairing.
        """
        prior, n = self._prior(prior)
        dx = self._x(dx, n, "dx")
        at = self._point(x, prior, n)
        weight = None if points is None else self.masks(self._points(points, n), event)
        out = {name: np.zeros(n) for name in prior}
        for p in self.inversion_parameters:
            d = dx[p] if weight is None else weight * dx[p]
            out[p] = self._slope(p, at, prior) * d
        return out

    def adjoint(self, raw_gradient: MappingABC, prior: MappingABC, points: np.ndarray,
                event: EventGeometry | None = None,
                x: MappingABC | None = None) -> dict[str, np.ndarray]:
        """Gradient in inversion space (inverted parameters only) of the raw, simulation-space
        gradient ``dJ/dp_i``: ``g * dm/dx`` at ``x`` (default: the prior: ``g`` for absolute,
        ``g * m0`` for relative and logarithmic scaling), times the masks at ``points (P, 2)``
        or ``(P, 3)``.
        ``event`` gives the source and receiver positions; a cutout without it is an error.
        """
        prior, n = self._prior(prior)
        at = self._point(x, prior, n)
        weight = self.masks(self._points(points, n), event)
        out = {}
        for p in self.inversion_parameters:
            g = self._field(raw_gradient, p, "raw gradient", n) * self._slope(p, at, prior)
            out[p] = g if weight is None else g * weight
        return out

    def _points(self, points, n: int) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        if points.shape not in ((n, 2), (n, 3)):
            raise MappingError(f"{self.field}: points must have shape ({n}, 2) or ({n}, 3) "
                               f"like the fields, got {points.shape}")
        return points
