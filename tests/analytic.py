"""Analytic 2D acoustic solutions for verification."""

import numpy as np

from fwimpi.sem.wavelets import ricker


def green_ricker_2d(r, t, vp, rho, fc, t0, f=1.0):
    """Potential of ``m0 phi_tt - div(m1 grad phi) = f delta(x - xs) s(t)`` in free 2D space.

    With ``m0 = 1/(rho vp^2)``, ``m1 = 1/rho`` and the Ricker ``s``, the solution is
    ``phi(r, t) = f rho / (2 pi) * int_0^inf s(t - r cosh(theta) / vp) dtheta``
    (the 2D Green's function after substituting ``tau = r cosh(theta) / vp``).
    ``r (R,)`` in m, ``t (S,)`` in s; returns ``(R, S)``.
    """
    r = np.atleast_1d(r)[:, None, None]
    tt = np.asarray(t)[None, :, None]
    theta_max = np.arccosh(np.maximum((tt.max() + 1.0) * vp / r, 1.0 + 1e-12))
    s = np.linspace(0.0, 1.0, 4001)[None, None, :]
    theta = theta_max * s
    values = ricker(tt - r * np.cosh(theta) / vp, fc, t0)
    return f * rho / (2 * np.pi) * np.trapz(values, theta, axis=-1)


def green_ricker_3d(r, t, vp, rho, fc, t0, f=1.0):
    """Potential of ``m0 phi_tt - div(m1 grad phi) = f delta(x - xs) s(t)`` in free 3D space.

    With ``m0 = 1/(rho vp^2)``, ``m1 = 1/rho`` and the Ricker ``s``, the equation is
    ``phi_tt / vp^2 - lap(phi) = rho f delta s`` and the solution the retarded potential
    ``phi(r, t) = f rho s(t - r / vp) / (4 pi r)``. ``r (R,)`` in m, ``t (S,)`` in s;
    returns ``(R, S)``.
    """
    r = np.atleast_1d(np.asarray(r, dtype=float))[:, None]
    return f * rho * ricker(np.asarray(t)[None, :] - r / vp, fc, t0) / (4 * np.pi * r)


def neumann_box_images(source, bounds, radius):
    """Image sources ``(I, 3)`` of ``source (3,)`` in the box ``bounds ((lo, hi),) * 3`` with
    natural (Neumann) walls, all of positive sign, within ``radius`` m of the source: the
    free-space solutions of these images sum to the box's solution until ``radius / vp``.
    Along each axis the images are ``s + 2 k L`` and ``2 lo - s + 2 k L`` (``L = hi - lo``)."""
    axes = []
    for s, (lo, hi) in zip(source, bounds):
        length = hi - lo
        k = np.arange(-int(radius / (2 * length)) - 1, int(radius / (2 * length)) + 2)
        axes.append(np.concatenate((s + 2 * length * k, 2 * lo - s + 2 * length * k)))
    grid = np.meshgrid(*axes, indexing="ij")
    points = np.column_stack([a.ravel() for a in grid])
    return points[np.linalg.norm(points - np.asarray(source), axis=1) <= radius]
