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
