"""Discrete energy of the leapfrog scheme: conserved in a closed box, decaying with damping.

For ``M (u[n+1] - 2u[n] + u[n-1]) / dt^2 + C (u[n+1] - u[n-1]) / (2 dt) + K u[n] = f[n]``
with diagonal ``M``, ``C >= 0`` and symmetric ``K``, multiplying by ``(u[n+1] - u[n-1]) / 2``
gives, with ``v = (u[n+1] - u[n]) / dt`` and

    E^{n+1/2} = 1/2 v^T M v + 1/2 u[n+1]^T K u[n],

the exact balance

    E^{n+1/2} - E^{n-1/2} = f[n]^T (u[n+1] - u[n-1]) / 2
                            - (u[n+1] - u[n-1])^T C (u[n+1] - u[n-1]) / (4 dt).

So once the source is off, ``E`` is constant to round-off without damping and never grows
with it. ``E`` is positive below the stability limit (``dt^2/4 * max eig(M^-1 K) < 1``).
"""

import numpy as np

from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.sem.wavelets import ricker
from problems import margins, solver

# 10 x 10 rectangular elements (100 m x 95 m), order 4
DOMAIN = Box(0.0, 1000.0, -950.0, 0.0)
H, ORDER = 100.0, 4
FC = 5.0
T0 = 1.2 / FC
SOURCE = (400.0, -600.0)
N_AFTER = 10_000  # steps checked after the source stops


def model(points):
    """Heterogeneous (vertical gradient in vp and rho), constant extension outside DOMAIN."""
    y = DOMAIN.clamp(points)[:, 1]
    return {"VP": 1500.0 - y, "RHO": 1000.0 - y}


def energy_history(margin=0.0, absorbing_width=0.0):
    """Run with the CFL step until N_AFTER steps after the source stops.

    Returns (E, n_off, dt, problem). ``E[n]`` is ``E^{n-1/2}`` for n = 1..n_steps (``E[0]``
    unused), computed from the states
    ``u[n], u[n-1]`` the stepper passes to ``on_step``. The signal is exactly zero from
    sample ``n_off`` on, so ``E[n]`` is constant for ``n >= n_off`` in exact arithmetic.
    """
    mesh = build_mesh(DOMAIN, margin, H, ORDER)
    problem = solver(mesh, model, absorbing=margins(absorbing_width, 2000.0))
    dt = problem.axis.dt  # CFL-derived step
    n_off = int(np.ceil(3.0 * T0 / dt))  # first sample with the signal off
    n_steps = n_off + N_AFTER
    signal = ricker(dt * np.arange(n_steps), FC, T0)
    signal[n_off:] = 0.0  # |s| < 1e-22 there already; exactly zero makes E exactly constant
    _, src = problem.mesh.point_sampling(np.array([SOURCE]))
    _, rec = problem.mesh.point_sampling(np.array([[700.0, 0.0]]))
    m0, _ = problem.physics.coefficients(problem.model)
    mass, stiffness = m0 * problem.mesh.weights, problem.stiffness
    energy = np.full(n_steps + 1, np.nan)

    def on_step(n, u, u_old):
        # u, u_old are u[n], u[n-1]; the stepper reuses the arrays, so use them right away
        v = (u - u_old) / dt
        energy[n] = 0.5 * v @ (mass * v) + 0.5 * u @ stiffness.apply(u_old)

    traces = problem.stepper.run(n_steps, src, signal, rec, on_step=on_step)
    assert np.abs(traces).max() > 0.0
    return energy, n_off, dt, problem


def test_energy_is_conserved_in_closed_box():
    energy, n_off, dt, _ = energy_history()
    after = energy[n_off:]  # E^{n-1/2}, n >= n_off: constant in exact arithmetic
    e0 = after[0]
    drift = np.abs(after - e0).max() / e0
    print(f"\nclosed box: dt={dt:.4g} s, {len(after)} steps after the source stops "
          f"({len(after) * dt:.1f} s), E={e0:.6g}, max relative drift {drift:.2e}")
    assert np.isfinite(after).all()
    assert e0 > 0.0 and after.min() > 0.0
    # while the source acts the energy grows from zero: the source really injected it
    assert energy[1] < 1e-3 * e0
    assert len(after) == N_AFTER + 1
    # README: 4.8e-15 over 10,000 steps; measured 5.7e-15 here, no more than the round-off
    # of evaluating E (its step-to-step noise, 4.7e-15): nothing accumulates. 1e-12 leaves
    # room for a random walk of that round-off over the 10,000 steps (at most ~5e-13) while
    # any real energy error of the scheme fails.
    assert drift < 1e-12
    per_step = np.abs(np.diff(after)).max() / e0
    assert per_step < 2e-14  # measured 4.7e-15: one step changes E by round-off only


def test_energy_decays_with_absorbing_margins():
    energy, n_off, dt, problem = energy_history(margin=300.0, absorbing_width=300.0)
    assert problem.damping_rate.max() > 0.0
    after = energy[n_off:]
    e0 = after[0]
    steps = np.diff(after) / e0
    loss = -np.diff(after) / after[:-1]  # fraction of the current energy each step removes
    print(f"\nabsorbing margins: E_last/E_first = {after[-1] / e0:.2e}, "
          f"largest relative increase in a step {steps.max():.1e}, smallest loss per step "
          f"{loss.min():.2e} of the current energy")
    assert e0 > 0.0 and after.min() > 0.0
    # The damping term only removes energy, step by step: no step gains more than the
    # closed box's round-off per step (4.7e-15 of E; measured here: every step loses, the
    # largest change being -5.0e-16 of E_first).
    assert steps.max() < 1e-14
    # ... and every step removes a share of what is left (the Stacey edges: measured at
    # least 1.0e-5 per step, the wave keeps reaching them), so nothing is trapped undamped
    assert loss.min() > 5e-6
    # ... which removes nearly all of it over N_AFTER steps (measured 4.6e-11)
    assert after[-1] < 1e-10 * e0


def test_stiffness_symmetric_with_constants_in_null_space():
    mesh = build_mesh(DOMAIN, 0.0, H, ORDER)
    problem = solver(mesh, model)
    k = problem.stiffness
    rng = np.random.default_rng(0)
    u = rng.standard_normal(problem.mesh.n_local)
    v = rng.standard_normal(problem.mesh.n_local)
    vku, ukv = v @ k.apply(u), u @ k.apply(v)
    scale = np.sqrt((u @ k.apply(u)) * (v @ k.apply(v)))  # Cauchy-Schwarz bound on |v^T K u|
    print(f"\nsymmetry: |v'Ku - u'Kv| / sqrt(u'Ku v'Kv) = {abs(vku - ukv) / scale:.1e}")
    assert abs(vku - ukv) <= 1e-15 * scale  # measured 7.9e-18: round-off
    assert u @ k.apply(u) > 0.0
    k1 = k.apply(np.ones(problem.mesh.n_local))
    ku = k.apply(u)
    print(f"null space: |K 1|_inf / |K u|_inf = {np.abs(k1).max() / np.abs(ku).max():.1e}")
    assert np.abs(k1).max() <= 1e-15 * np.abs(ku).max()  # measured 2.1e-17
    # K annihilates constants only: a linear function has K x != 0 (natural boundaries)
    x = problem.mesh.coordinates[:, 0]
    assert np.abs(k.apply(x)).max() > 1e-6 * np.abs(ku).max()
