"""The stiffness kernels: symmetric, exact energy of linear fields, both kernels agree."""

import numpy as np
import pytest

from fwimpi.mesh.structured import Box, build_mesh
from fwimpi.sem.geometry import element_geometry
from fwimpi.sem.operators import AcousticStiffness


def test_rectangle_kernel_equals_the_general_kernel():
    mesh = build_mesh(Box(0.0, 1000.0, -600.0, 0.0), 300.0, 90.0, 4)
    rng = np.random.default_rng(1)
    m1 = rng.uniform(0.5, 2.0, mesh.n_points)
    u = rng.standard_normal(mesh.n_points)
    fast = AcousticStiffness(mesh.geometry(), mesh.ibool(), m1)
    slow = AcousticStiffness(mesh.geometry(), mesh.ibool(), m1, general=True)
    assert fast.rectangles and not slow.rectangles
    a, b = fast.apply(u), slow.apply(u)
    assert np.allclose(a, b, rtol=0, atol=1e-13 * np.abs(b).max())


def parallelogram_mesh(nx, ny, order, shear=0.4):
    """Sheared structured mesh (affine elements): x' = x + shear * y."""
    n = order + 1
    ex, ey = np.meshgrid(np.arange(nx), np.arange(ny), indexing="xy")
    ex, ey = ex.ravel(), ey.ravel()
    c = np.stack([np.column_stack((ex + a, ey + b)) for a, b in ((0, 0), (1, 0), (1, 1), (0, 1))],
                 axis=1).astype(float)
    c[..., 0] += shear * c[..., 1]
    npx = nx * order + 1
    j, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    ibool = (ey[:, None, None] * order + j) * npx + ex[:, None, None] * order + i
    return element_geometry(c, order), ibool, npx * (ny * order + 1)


@pytest.mark.parametrize("order", [1, 2, 4, 7])
def test_general_kernel_on_sheared_elements(order):
    geometry, ibool, n_points = parallelogram_mesh(4, 3, order)
    m1 = np.ones(n_points)
    k = AcousticStiffness(geometry, ibool, m1)
    assert not k.rectangles
    x = np.zeros(n_points)
    y = np.zeros(n_points)
    x[ibool.ravel()] = geometry.coords[0].ravel()
    y[ibool.ravel()] = geometry.coords[1].ravel()
    u = 2.0 * x - 3.0 * y
    area = 4 * 3  # shear keeps the area
    assert np.isclose(u @ k.apply(u), (2.0**2 + 3.0**2) * area, rtol=1e-12)
    assert np.abs(k.apply(np.ones(n_points))).max() < 1e-12
    rng = np.random.default_rng(order)
    v, w = rng.standard_normal((2, n_points))
    assert np.isclose(v @ k.apply(w), w @ k.apply(v), rtol=1e-12)
    assert w @ k.apply(w) > 0


def test_element_eigenvalue_bound_is_a_tight_upper_bound_of_the_global_one():
    from fwimpi.sem.operators import assembled_sum
    from fwimpi.sem.timestepper import element_max_eigenvalues

    mesh = build_mesh(Box(0.0, 400.0, -300.0, 0.0), 0.0, 100.0, 3)
    ib = mesh.ibool()
    rng = np.random.default_rng(2)
    m0, m1 = rng.uniform(0.8, 1.2, (2, mesh.n_points))
    geometry = mesh.geometry()
    k = AcousticStiffness(geometry, ib, m1)
    dense = np.column_stack([k.apply(e) for e in np.eye(mesh.n_points)])
    mass = m0 * assembled_sum(ib, geometry.jw, mesh.n_points)
    s = 1.0 / np.sqrt(mass)
    global_max = np.linalg.eigvalsh(s[:, None] * dense * s[None, :]).max()
    bound = element_max_eigenvalues(geometry, m0[ib], m1[ib]).max()
    assert global_max <= bound <= 1.3 * global_max
