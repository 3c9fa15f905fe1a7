"""Compiled (numba) spectral-element kernels for the 2D and 3D acoustic operator.

The stiffness action ``K(m1) u`` is computed element by element with sum factorisation:
gather the element's values, differentiate along each reference axis with the GLL
derivative matrix, apply the metric times ``m1``, apply the transposed derivatives and
scatter-add. Elements are processed in blocks of BLOCK with the block index innermost, so
the arithmetic vectorises across elements (measured: 4x the element-by-element loop at
order 4); kernels are compiled once per tensor order with the order a compile-time constant.

3D (hexahedra) has one kernel, for meshes of identical axis-aligned boxes (the structured
3D mesh): the diagonal metric ``g11, g22, g33 (n, n, n)`` is the same in every element and
only ``m1`` is read per element point (from a blocked copy, as in 2D). Cost per element point (``n = N + 1``): ``6n`` flops for
the three derivatives, 6 for the metric and ``m1``, ``6n`` for the transposed derivatives,
i.e. ``12n + 6`` (66 at N = 4; 2D rectangles: ``8n + 4``, 44); a mesh point belongs to
``((N+1)/N)^3`` element points (1.95 at N = 4; 2D 1.56), so one point update is 129 flops
in 3D against 69 in 2D. Memory per point update: ``u`` read (8 B), ``m1`` read per element
point (15.6 B at N = 4), ``out`` read and written (16 B), the int32 point index read twice
per element point (15.6 B at N = 4): about 55 B (2D: 49 B), if the gathered neighbours stay
in cache. Measured rates: see ``AcousticStiffness``.
"""

from functools import lru_cache

import numba
import numpy as np

from .geometry import ElementGeometry
from .gll import derivative_matrix


BLOCK = 32  # elements processed together; the innermost loops run over them (SIMD)


@lru_cache(maxsize=None)
def _kernels(n: int):
    """The element kernel for ``n = order + 1`` points per axis and blocks of BLOCK elements."""
    nb = BLOCK

    @numba.njit(cache=True, fastmath=True, boundscheck=False)
    def add_stiffness(u, ibool, d, c11, c12, c22, out):
        """``out += K u``; u, out ``(P,)``; ibool, c** ``(n_blocks, n, n, BLOCK)``."""
        ul = np.empty((n, n, nb))
        f1 = np.empty((n, n, nb))
        f2 = np.empty((n, n, nb))
        r = np.empty((n, n, nb))
        for blk in range(ibool.shape[0]):
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        ul[j, i, b] = u[ibool[blk, j, i, b]]
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        uxi = 0.0
                        ueta = 0.0
                        for k in range(n):
                            uxi += d[i, k] * ul[j, k, b]
                            ueta += d[j, k] * ul[k, i, b]
                        f1[j, i, b] = c11[blk, j, i, b] * uxi + c12[blk, j, i, b] * ueta
                        f2[j, i, b] = c12[blk, j, i, b] * uxi + c22[blk, j, i, b] * ueta
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        s = 0.0
                        for k in range(n):
                            s += d[k, i] * f1[j, k, b] + d[k, j] * f2[k, i, b]
                        r[j, i, b] = s
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        out[ibool[blk, j, i, b]] += r[j, i, b]

    return add_stiffness


@lru_cache(maxsize=None)
def _rectangle_kernels(n: int):
    """Kernel for meshes of identical axis-aligned rectangles: the metric is the same
    ``(n, n)`` pair ``g11, g22`` in every element (``g12 = 0``), so only ``m1`` is read per
    element point: less than half the memory traffic of the general kernel. ``m1`` comes in
    the blocked layout (a contiguous stream, 1.56x the points' values at order 4) rather than
    gathered at the points (measured, whole forward loop: 1.17x the rate on the tutorial
    mesh, the same on it refined 4x per axis)."""
    nb = BLOCK

    @numba.njit(cache=True, fastmath=True, boundscheck=False)
    def add_stiffness(u, ibool, d, m1, g11, g22, out):
        """``out += K u``; u, out ``(P,)``; ibool, m1 ``(n_blocks, n, n, BLOCK)``."""
        ul = np.empty((n, n, nb))
        f1 = np.empty((n, n, nb))
        f2 = np.empty((n, n, nb))
        r = np.empty((n, n, nb))
        for blk in range(ibool.shape[0]):
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        ul[j, i, b] = u[ibool[blk, j, i, b]]
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        uxi = 0.0
                        ueta = 0.0
                        for k in range(n):
                            uxi += d[i, k] * ul[j, k, b]
                            ueta += d[j, k] * ul[k, i, b]
                        m = m1[blk, j, i, b]
                        f1[j, i, b] = m * g11[j, i] * uxi
                        f2[j, i, b] = m * g22[j, i] * ueta
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        s = 0.0
                        for k in range(n):
                            s += d[k, i] * f1[j, k, b] + d[k, j] * f2[k, i, b]
                        r[j, i, b] = s
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        out[ibool[blk, j, i, b]] += r[j, i, b]

    return add_stiffness


@lru_cache(maxsize=None)
def _rectangle_gradient_kernels(n: int):
    """Fused adjoint kernel for identical rectangles: ``out += K v`` and, per element
    point, ``acc += g11 v_xi u_xi + g22 v_eta u_eta`` (the m1 kernel ``grad v . grad u``
    with quadrature weights) in the blocked layout: contiguous, no scatter; ``m1`` blocked
    as in ``_rectangle_kernels``."""
    nb = BLOCK

    @numba.njit(cache=True, fastmath=True, boundscheck=False)
    def add(v, u, ibool, d, m1, g11, g22, out, acc):
        """v, u, out ``(P,)``; ibool, m1, acc ``(n_blocks, n, n, BLOCK)``; g** ``(n, n)``."""
        vl = np.empty((n, n, nb))
        ul = np.empty((n, n, nb))
        f1 = np.empty((n, n, nb))
        f2 = np.empty((n, n, nb))
        r = np.empty((n, n, nb))
        for blk in range(ibool.shape[0]):
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        p = ibool[blk, j, i, b]
                        vl[j, i, b] = v[p]
                        ul[j, i, b] = u[p]
            # the derivatives of v and u in one loop nest: each d[., k] is loaded once for
            # both and nothing is stored between them (measured: 2-5% faster than two nests
            # at orders 2-6)
            for j in range(n):
                for i in range(n):
                    w11 = g11[j, i]
                    w22 = g22[j, i]
                    for b in range(nb):
                        vxi = 0.0
                        veta = 0.0
                        uxi = 0.0
                        ueta = 0.0
                        for k in range(n):
                            vxi += d[i, k] * vl[j, k, b]
                            veta += d[j, k] * vl[k, i, b]
                            uxi += d[i, k] * ul[j, k, b]
                            ueta += d[j, k] * ul[k, i, b]
                        a11 = w11 * vxi
                        a22 = w22 * veta
                        m = m1[blk, j, i, b]
                        f1[j, i, b] = m * a11
                        f2[j, i, b] = m * a22
                        acc[blk, j, i, b] += a11 * uxi + a22 * ueta
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        s = 0.0
                        for k in range(n):
                            s += d[k, i] * f1[j, k, b] + d[k, j] * f2[k, i, b]
                        r[j, i, b] = s
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        out[ibool[blk, j, i, b]] += r[j, i, b]

    return add


@lru_cache(maxsize=None)
def _gradient_product_kernels(n: int):
    """General geometry: ``acc += g11 v_xi u_xi + g12 (v_xi u_eta + v_eta u_xi) +
    g22 v_eta u_eta`` per element point (blocked layout, like ``_kernels``)."""
    nb = BLOCK

    @numba.njit(cache=True, fastmath=True, boundscheck=False)
    def add(v, u, ibool, d, g11, g12, g22, acc):
        vl = np.empty((n, n, nb))
        ul = np.empty((n, n, nb))
        for blk in range(ibool.shape[0]):
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        vl[j, i, b] = v[ibool[blk, j, i, b]]
                        ul[j, i, b] = u[ibool[blk, j, i, b]]
            for j in range(n):
                for i in range(n):
                    for b in range(nb):
                        vxi = 0.0
                        veta = 0.0
                        uxi = 0.0
                        ueta = 0.0
                        for k in range(n):
                            vxi += d[i, k] * vl[j, k, b]
                            veta += d[j, k] * vl[k, i, b]
                            uxi += d[i, k] * ul[j, k, b]
                            ueta += d[j, k] * ul[k, i, b]
                        acc[blk, j, i, b] += (
                            g11[blk, j, i, b] * vxi * uxi + g22[blk, j, i, b] * veta * ueta
                            + g12[blk, j, i, b] * (vxi * ueta + veta * uxi))

    return add


@lru_cache(maxsize=None)
def _box_kernels(n: int):
    """3D kernel for meshes of identical axis-aligned boxes: the diagonal metric ``g11, g22,
    g33 (n, n, n)`` is the same in every element; ``m1`` comes blocked, as in
    ``_rectangle_kernels`` (1.95x the points' values at order 4; measured, whole forward loop,
    alternating: 1.08x the rate at 1.5e5 points, the same at 1.1e6)."""
    nb = BLOCK

    @numba.njit(cache=True, fastmath=True, boundscheck=False)
    def add_stiffness(u, ibool, n_elements, d, m1, g11, g22, g33, out):
        """``out += K u``; u, out ``(P,)``; ibool, m1 ``(n_blocks, n, n, n, BLOCK)`` ordered
        ``[blk, k, j, i, b]``; the first ``n_elements`` element slots are real (padding is
        computed with the others but not scattered)."""
        ul = np.empty((n, n, n, nb))
        f1 = np.empty((n, n, n, nb))
        f2 = np.empty((n, n, n, nb))
        f3 = np.empty((n, n, n, nb))
        r = np.empty((n, n, n, nb))
        for blk in range(ibool.shape[0]):
            for k in range(n):
                for j in range(n):
                    for i in range(n):
                        for b in range(nb):
                            ul[k, j, i, b] = u[ibool[blk, k, j, i, b]]
            for k in range(n):
                for j in range(n):
                    for i in range(n):
                        w1 = g11[k, j, i]
                        w2 = g22[k, j, i]
                        w3 = g33[k, j, i]
                        for b in range(nb):
                            uxi = 0.0
                            ueta = 0.0
                            uzeta = 0.0
                            for q in range(n):
                                uxi += d[i, q] * ul[k, j, q, b]
                                ueta += d[j, q] * ul[k, q, i, b]
                                uzeta += d[k, q] * ul[q, j, i, b]
                            m = m1[blk, k, j, i, b]
                            f1[k, j, i, b] = m * w1 * uxi
                            f2[k, j, i, b] = m * w2 * ueta
                            f3[k, j, i, b] = m * w3 * uzeta
            for k in range(n):
                for j in range(n):
                    for i in range(n):
                        for b in range(nb):
                            s = 0.0
                            for q in range(n):
                                s += (d[q, i] * f1[k, j, q, b] + d[q, j] * f2[k, q, i, b]
                                      + d[q, k] * f3[q, j, i, b])
                            r[k, j, i, b] = s
            valid = min(nb, n_elements - blk * nb)
            for k in range(n):
                for j in range(n):
                    for i in range(n):
                        for b in range(valid):
                            out[ibool[blk, k, j, i, b]] += r[k, j, i, b]

    return add_stiffness


@lru_cache(maxsize=None)
def _box_gradient_kernels(n: int):
    """Fused 3D adjoint kernel for identical boxes: ``out += K v`` and, per element point,
    ``acc += g11 v_xi u_xi + g22 v_eta u_eta + g33 v_zeta u_zeta`` (blocked layout)."""
    nb = BLOCK

    @numba.njit(cache=True, fastmath=True, boundscheck=False)
    def add(v, u, ibool, n_elements, d, m1, g11, g22, g33, out, acc):
        """v, u, out ``(P,)``; ibool, m1, acc ``(n_blocks, n, n, n, BLOCK)``; g** ``(n, n, n)``."""
        vl = np.empty((n, n, n, nb))
        ul = np.empty((n, n, n, nb))
        f1 = np.empty((n, n, n, nb))
        f2 = np.empty((n, n, n, nb))
        f3 = np.empty((n, n, n, nb))
        r = np.empty((n, n, n, nb))
        for blk in range(ibool.shape[0]):
            for k in range(n):
                for j in range(n):
                    for i in range(n):
                        for b in range(nb):
                            p = ibool[blk, k, j, i, b]
                            vl[k, j, i, b] = v[p]
                            ul[k, j, i, b] = u[p]
            for k in range(n):
                for j in range(n):
                    for i in range(n):
                        w1 = g11[k, j, i]
                        w2 = g22[k, j, i]
                        w3 = g33[k, j, i]
                        for b in range(nb):
                            vxi = 0.0
                            veta = 0.0
                            vzeta = 0.0
                            uxi = 0.0
                            ueta = 0.0
                            uzeta = 0.0
                            for q in range(n):
                                vxi += d[i, q] * vl[k, j, q, b]
                                veta += d[j, q] * vl[k, q, i, b]
                                vzeta += d[k, q] * vl[q, j, i, b]
                                uxi += d[i, q] * ul[k, j, q, b]
                                ueta += d[j, q] * ul[k, q, i, b]
                                uzeta += d[k, q] * ul[q, j, i, b]
                            a1 = w1 * vxi
                            a2 = w2 * veta
                            a3 = w3 * vzeta
                            m = m1[blk, k, j, i, b]
                            f1[k, j, i, b] = m * a1
                            f2[k, j, i, b] = m * a2
                            f3[k, j, i, b] = m * a3
                            acc[blk, k, j, i, b] += a1 * uxi + a2 * ueta + a3 * uzeta
            for k in range(n):
                for j in range(n):
                    for i in range(n):
                        for b in range(nb):
                            s = 0.0
                            for q in range(n):
                                s += (d[q, i] * f1[k, j, q, b] + d[q, j] * f2[k, q, i, b]
                                      + d[q, k] * f3[q, j, i, b])
                            r[k, j, i, b] = s
            valid = min(nb, n_elements - blk * nb)
            for k in range(n):
                for j in range(n):
                    for i in range(n):
                        for b in range(valid):
                            out[ibool[blk, k, j, i, b]] += r[k, j, i, b]

    return add


def to_blocks(a: np.ndarray, fill=0) -> np.ndarray:
    """Element-point array ``(E, n, n)`` or ``(E, n, n, n)`` -> blocked ``(ceil(E/BLOCK),
    n, n, BLOCK)`` or ``(ceil(E/BLOCK), n, n, n, BLOCK)``.

    Padding elements get ``fill`` (coefficients 0, so they add exactly nothing).
    """
    e, tail = a.shape[0], a.shape[1:]
    nblocks = -(-e // BLOCK)
    padded = np.full((nblocks * BLOCK,) + tail, fill, dtype=a.dtype)
    padded[:e] = a
    return np.ascontiguousarray(np.moveaxis(padded.reshape((nblocks, BLOCK) + tail), 1, -1))


class AcousticStiffness:
    """Stiffness action ``K(m1)`` of the acoustic operator on one set of elements.

    ``ibool (E, n, n)`` (2D) or ``(E, n, n, n)`` (3D) maps element points to (local) point
    indices; ``m1`` (``1/rho``, m^3/kg) is given at the points ``(P,)`` and can be replaced
    (``set_coefficient``) without rebuilding anything else. ``K`` is symmetric positive
    semi-definite. 2D meshes of identical axis-aligned rectangles use a leaner kernel (same
    result) unless ``general`` is set. 3D takes meshes of identical axis-aligned boxes only
    (diagonal metric, the same in every element, as the structured 3D mesh has): any other 3D
    geometry, or ``general``, raises ValueError.

    Measured rates at order 4 (mesh points updated per second, one Zen 4 core of a 2-core
    machine shared with other jobs, best of repeated runs, three sessions): ``add``, 2D
    rectangles 270-279e6 (1.0e5 points) and 192-208e6 (1.0e6); 3D boxes 166-171e6 (1.2e5)
    and 131-136e6 (1.1e6), i.e. 0.59-0.63 and 0.64-0.71 of 2D per point (0.53 from the
    flops alone). ``add_with_gradient``: 2D 194-199e6 and 122-129e6, 3D 110-118e6 and
    89-93e6 (0.56-0.59, 0.70-0.74). Blocks of 16 or 64 elements were no faster in 3D, 8 much
    slower; three separate sums in the transposed step, or the scatter fused into it, no
    faster either. These 2D figures are of ``m1`` gathered at the points; with ``m1`` blocked
    (now): ``add`` 306-314e6 against 256-270e6 gathered at 4.0e4 points, 170-198e6 against
    198-201e6 at 6.4e5 (one session, alternating); in the whole forward loop 1.17x and 1.0x.
    """

    def __init__(self, geometry: ElementGeometry, ibool: np.ndarray, m1: np.ndarray,
                 general: bool = False):
        if geometry.dim not in (2, 3):
            raise ValueError(f"AcousticStiffness: {geometry.dim}D elements are not supported")
        n = geometry.order + 1
        self.order = geometry.order
        self.dim = geometry.dim
        if ibool.shape != geometry.jw.shape:
            raise ValueError(f"ibool shape {ibool.shape} != geometry {geometry.jw.shape}")
        self._ibool_elements = np.asarray(ibool)
        self.ibool = to_blocks(np.asarray(ibool, dtype=np.int32))
        self.d = np.ascontiguousarray(derivative_matrix(geometry.order))
        self._n = n
        self.m1 = np.array(m1, dtype=float)
        if self.dim == 3:
            self._init_boxes(geometry, general)
            return
        g = (geometry.metric[0, 0], geometry.metric[0, 1], geometry.metric[1, 1])
        scale = max(np.abs(g[0]).max(initial=0.0), np.abs(g[2]).max(initial=0.0))
        self.rectangles = not general and len(ibool) > 0 and all(
            np.allclose(a, a[0], rtol=1e-13, atol=0) for a in (g[0], g[2])
        ) and np.abs(g[1]).max() <= 1e-13 * scale  # g12 of a rectangle is round-off
        self._geometry = g  # unblocked; blocked on first use by add_with_gradient
        if self.rectangles:
            self._m1_blocked = to_blocks(self.m1[self._ibool_elements])
            self._args = (self.d, self._m1_blocked, np.ascontiguousarray(g[0][0]),
                          np.ascontiguousarray(g[2][0]))
            self._kernel = _rectangle_kernels(n)
        else:
            self._args = (self.d, *(np.zeros(self.ibool.shape) for _ in g))
            self._kernel = _kernels(n)
            self.set_coefficient(self.m1)

    def _init_boxes(self, geometry: ElementGeometry, general: bool) -> None:
        """3D: check that the elements are identical axis-aligned boxes; set up their kernel."""
        if general:
            raise ValueError("AcousticStiffness: 3D has no general-geometry kernel")
        metric = geometry.metric
        diag = [metric[a, a] for a in range(3)]
        scale = max((np.abs(g).max(initial=0.0) for g in diag), default=0.0)
        off = max(np.abs(metric[a, b]).max(initial=0.0)
                  for a in range(3) for b in range(3) if a != b)
        if len(geometry.jw) and not (off <= 1e-13 * scale and all(
                np.allclose(g, g[0], rtol=1e-13, atol=0) for g in diag)):
            raise ValueError("AcousticStiffness: 3D elements must be identical axis-aligned "
                             "boxes (the same diagonal metric in every element)")
        n = self._n
        ref = [np.ascontiguousarray(g[0]) if len(g) else np.zeros((n, n, n)) for g in diag]
        self.rectangles = True  # identical axis-aligned elements: the lean kernel
        self._n_elements = len(geometry.jw)
        self._m1_blocked = to_blocks(self.m1[self._ibool_elements])
        self._args = (self._n_elements, self.d, self._m1_blocked, *ref)
        self._kernel = _box_kernels(n)
        self._valid = to_blocks(np.ones(self._n_elements, dtype=bool)[:, None, None, None]
                                * np.ones((1, n, n, n), dtype=bool), fill=False)

    def set_coefficient(self, m1: np.ndarray) -> None:
        """Replace ``m1 (P,)`` in place: the operator's structure and buffers are kept."""
        m1 = np.asarray(m1, dtype=float)
        if m1.shape != self.m1.shape:
            raise ValueError(f"m1: expected shape {self.m1.shape}, got {m1.shape}")
        self.m1[:] = m1
        if self.rectangles:  # 2D rectangles and 3D boxes
            self._m1_blocked[...] = to_blocks(self.m1[self._ibool_elements])
        else:
            m1_elem = self.m1[self._ibool_elements]
            for target, g in zip(self._args[1:], self._geometry):
                target[...] = to_blocks(m1_elem * g)

    def add(self, u: np.ndarray, out: np.ndarray) -> None:
        """``out += K u`` in place (``(P,)`` arrays; unassembled across ranks)."""
        self._kernel(u, self.ibool, *self._args, out)

    def gradient_accumulator(self) -> np.ndarray:
        """Zeroed per-element-point array for ``add_with_gradient`` (blocked layout)."""
        return np.zeros(self.ibool.shape)

    def add_with_gradient(self, v: np.ndarray, u: np.ndarray, out: np.ndarray,
                          acc: np.ndarray) -> None:
        """``out += K v`` and ``acc += `` the quadrature-weighted ``grad v . grad u`` at every
        element point (``acc`` from ``gradient_accumulator``; ``point_values`` sums it
        into ``v^T (dK/dm1_i) u`` per point i, unassembled across ranks)."""
        if self.dim == 3:
            _box_gradient_kernels(self._n)(v, u, self.ibool, *self._args, out, acc)
            return
        if self.rectangles:
            d, m1, g11, g22 = self._args
            _rectangle_gradient_kernels(self._n)(v, u, self.ibool, d, m1, g11, g22, out, acc)
            return
        if not hasattr(self, "_blocked_geometry"):
            self._blocked_geometry = tuple(to_blocks(np.asarray(a)) for a in self._geometry)
        self.add(v, out)
        _gradient_product_kernels(self._n)(v, u, self.ibool, self.d, *self._blocked_geometry, acc)

    def point_values(self, acc: np.ndarray, n_points: int) -> np.ndarray:
        """Sum a blocked per-element-point array into ``(n_points,)`` (padding adds 0)."""
        if self.dim == 3:  # the 3D kernels leave round-off in the padding's slots: skip them
            return np.bincount(self.ibool[self._valid], weights=acc[self._valid],
                               minlength=n_points)
        return np.bincount(self.ibool.ravel(), weights=acc.ravel(), minlength=n_points)

    def apply(self, u: np.ndarray) -> np.ndarray:
        """``K u`` as a new array."""
        out = np.zeros_like(u)
        self.add(u, out)
        return out


def assembled_sum(ibool: np.ndarray, values_elem: np.ndarray, n_points: int) -> np.ndarray:
    """Sum element-point values ``(E, n, n)`` or ``(E, n, n, n)`` into points ``(n_points,)``."""
    return np.bincount(ibool.ravel(), weights=values_elem.ravel(), minlength=n_points)
