"""GLL quadrature and Lagrange derivative matrices: exactness to round-off."""

import numpy as np
import pytest

from fwimpi.sem.geometry import point_weights
from fwimpi.sem.gll import derivative_matrix, gll_points_weights, lagrange_basis


@pytest.mark.parametrize("order", range(1, 11))
def test_quadrature_exact_up_to_degree_2n_minus_1(order):
    x, w = gll_points_weights(order)
    assert len(x) == order + 1 and np.all(np.diff(x) > 0) and x[0] == -1 and x[-1] == 1
    for degree in range(2 * order):
        exact = 2.0 / (degree + 1) if degree % 2 == 0 else 0.0
        assert abs(w @ x**degree - exact) < 1e-14
    # and not exact beyond: degree 2N is integrated with an error (GLL is not Gauss)
    assert abs(w @ x ** (2 * order) - 2.0 / (2 * order + 1)) > 1e-6


@pytest.mark.parametrize("order", range(1, 11))
def test_derivative_matrix_exact_up_to_degree_n(order):
    x, _ = gll_points_weights(order)
    d = derivative_matrix(order)
    rng = np.random.default_rng(order)
    coeffs = rng.standard_normal(order + 1)
    p = np.polynomial.Polynomial(coeffs)
    assert np.allclose(d @ p(x), p.deriv()(x), atol=1e-12 * np.abs(coeffs).sum() * order**2)
    for degree in range(order + 1):
        assert np.max(np.abs(d @ x**degree - degree * x ** max(degree - 1, 0))) < 1e-12


@pytest.mark.parametrize("order", [1, 4, 10])
def test_lagrange_interpolation_is_exact_for_the_element_polynomial(order):
    x, _ = gll_points_weights(order)
    assert np.allclose(lagrange_basis(x, x), np.eye(order + 1), atol=1e-14)
    rng = np.random.default_rng(0)
    ref = rng.uniform(-1, 1, (7, 2))
    cx, cy = rng.standard_normal(order + 1), rng.standard_normal(order + 1)
    f = lambda a, b: np.polyval(cx, a) * np.polyval(cy, b)  # noqa: E731
    xx, yy = np.meshgrid(x, x, indexing="xy")  # node a = i + n j
    values = f(xx, yy).ravel()
    assert np.allclose(point_weights(order, ref) @ values, f(ref[:, 0], ref[:, 1]), atol=1e-11)


def test_order_out_of_range():
    for bad in (0, 11, 2.5):
        with pytest.raises(ValueError):
            gll_points_weights(bad)
