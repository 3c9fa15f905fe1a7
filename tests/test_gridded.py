"""Gridded model files: formats, dimension orders, flipped axes, bilinear exactness, errors."""

import importlib.util

import h5py
import numpy as np
import pytest

from fwimpi.errors import ConfigError
from fwimpi.mesh.gridded import GriddedModel, read_gridded_model

xr = pytest.importorskip("xarray")

X = np.linspace(0.0, 900.0, 10)
Y = np.linspace(-900.0, 0.0, 10)
XX, YY = np.meshgrid(X, Y, indexing="ij")


def tutorial_dataset():
    """The tutorial's model: vp = 1500 - y, rho = 1000 - y on a 10 x 10 grid, dims (x, y)."""
    return xr.Dataset({"vp": (["x", "y"], 1500.0 - YY), "rho": (["x", "y"], 1000.0 - YY)},
                      coords={"x": X, "y": Y})


ENGINES = [
    "netcdf4",
    "scipy",
    pytest.param("h5netcdf", marks=pytest.mark.skipif(
        importlib.util.find_spec("h5netcdf") is None, reason="h5netcdf is not installed")),
]


def check_tutorial(model):
    assert isinstance(model, GriddedModel)
    np.testing.assert_array_equal(model.x, X)
    np.testing.assert_array_equal(model.y, Y)
    assert set(model.fields) == {"vp", "rho"}
    for f in model.fields.values():
        assert f.shape == (10, 10) and f.dtype == np.float64
    np.testing.assert_array_equal(model.fields["vp"], 1500.0 - YY)
    np.testing.assert_array_equal(model.fields["rho"], 1000.0 - YY)
    assert model.bounds == (0.0, 900.0, -900.0, 0.0)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("order", [("x", "y"), ("y", "x")])
def test_xarray_files(tmp_path, engine, order):
    path = tmp_path / f"model_{engine}.nc"
    tutorial_dataset().transpose(*order).to_netcdf(path, engine=engine)
    model = read_gridded_model(path)
    check_tutorial(model)
    np.testing.assert_allclose(model.interpolate("VP", 450.0, -123.0), 1623.0, rtol=1e-14)


@pytest.mark.parametrize("engine", ENGINES)
def test_square_grid_in_yx_order_uses_dimension_names(tmp_path, engine):
    path = tmp_path / "m.nc"
    ds = tutorial_dataset()
    ds["vp"] = (["x", "y"], XX + 2 * YY)  # not symmetric, so a wrong transpose would show
    ds.transpose("y", "x").to_netcdf(path, engine=engine)
    np.testing.assert_array_equal(read_gridded_model(path).fields["vp"], XX + 2 * YY)


def test_uppercase_names_and_other_variables(tmp_path):
    path = tmp_path / "m.nc"
    ds = tutorial_dataset().rename({"vp": "VP"})
    ds["time"] = ("t", np.arange(3.0))
    ds["history"] = (["t", "x"], np.zeros((3, 10)))
    ds.to_netcdf(path, engine="netcdf4")
    model = read_gridded_model(path)
    assert set(model.fields) == {"vp", "rho"}
    np.testing.assert_array_equal(model.fields["vp"], 1500.0 - YY)


@pytest.mark.parametrize("order", ["xy", "yx"])
def test_plain_hdf5_without_dimension_scales(tmp_path, order):
    path = tmp_path / "plain.h5"
    x = np.linspace(0.0, 1.0, 4)
    y = np.linspace(0.0, 2.0, 3)
    vp = np.add.outer(x, 10 * y)
    with h5py.File(path, "w") as f:
        f["x"], f["y"] = x, y
        f["vp"] = vp if order == "xy" else vp.T
        f["notes"] = np.arange(5.0)  # ignored: not over (x, y)
    model = read_gridded_model(path)
    assert list(model.fields) == ["vp"]
    np.testing.assert_array_equal(model.fields["vp"], vp)


def test_plain_hdf5_square_grid_is_taken_as_xy(tmp_path):
    path = tmp_path / "square.h5"
    vp = np.arange(9.0).reshape(3, 3)
    with h5py.File(path, "w") as f:
        f["x"], f["y"], f["vp"] = np.arange(3.0), np.arange(3.0), vp
    np.testing.assert_array_equal(read_gridded_model(path).fields["vp"], vp)


@pytest.mark.parametrize("engine", ["netcdf4", "scipy"])
def test_decreasing_coordinates_are_flipped(tmp_path, engine):
    path = tmp_path / "m.nc"
    ds = tutorial_dataset().isel(y=slice(None, None, -1), x=slice(None, None, -1))
    assert ds.y.values[0] > ds.y.values[-1]
    ds.to_netcdf(path, engine=engine)
    check_tutorial(read_gridded_model(path))


def test_bilinear_is_exact_for_bilinear_functions(tmp_path):
    rng = np.random.default_rng(7)
    x = np.sort(rng.uniform(-3e3, 4e3, 13))
    y = np.sort(rng.uniform(-2e3, 0.0, 9))
    a, b, c, d = rng.normal(size=4)
    f = lambda x, y: 1500.0 * a + b * x + c * y + d * x * y / 1000.0  # noqa: E731
    path = tmp_path / "bilinear.h5"
    with h5py.File(path, "w") as h:
        h["x"], h["y"] = x, y
        h["vp"] = f(*np.meshgrid(x, y, indexing="ij"))
    model = read_gridded_model(path)
    xq = rng.uniform(x[0], x[-1], (50, 4))
    yq = rng.uniform(y[0], y[-1], (50, 4))
    out = model.interpolate("vp", xq, yq)
    assert out.shape == (50, 4) and out.dtype == np.float64
    scale = np.abs(model.fields["vp"]).max()
    np.testing.assert_allclose(out, f(xq, yq), rtol=0, atol=1e-12 * scale)
    # grid nodes, corners and the last grid lines are reproduced exactly
    gx, gy = np.meshgrid(x, y, indexing="ij")
    np.testing.assert_allclose(model.interpolate("vp", gx, gy), model.fields["vp"],
                               rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(model.interpolate("vp", x[-1], yq[:, 0]), f(x[-1], yq[:, 0]),
                               rtol=0, atol=1e-12 * scale)
    # broadcasting, and a point a hair outside (within 1e-9 of the extent) is clamped
    assert model.interpolate("vp", xq[:, :1], yq[0]).shape == (50, 4)
    eps = 1e-10 * (x[-1] - x[0])
    np.testing.assert_allclose(model.interpolate("vp", x[-1] + eps, y[0]), f(x[-1], y[0]),
                               rtol=0, atol=1e-9 * scale)


def model_file(tmp_path, name="m.h5", **datasets):
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f[k] = v
    return path


def test_outside_point(tmp_path):
    tutorial_dataset().to_netcdf(tmp_path / "m.nc", engine="netcdf4")
    model = read_gridded_model(tmp_path / "m.nc", field="model.file")
    with pytest.raises(ConfigError) as exc:
        model.interpolate("vp", np.array([100.0, 950.0]), np.array([-10.0, -20.0]))
    assert str(exc.value) == ("model.file: point (950, -20) lies outside the grid "
                              "x in [0, 900], y in [-900, 0]")
    with pytest.raises(ConfigError, match="outside"):
        model.interpolate("vp", 100.0, np.nan)


def test_missing_variable_lists_available(tmp_path):
    model = read_gridded_model(model_file(tmp_path, x=X, y=Y, rho=1000.0 - YY), field="m.f")
    with pytest.raises(ConfigError, match=r"^m.f: no variable 'vp' .*available: rho$"):
        model.interpolate("vp", 0.0, 0.0)


@pytest.mark.parametrize("datasets, match", [
    (dict(x=np.array([0.0, 2.0, 1.0]), y=np.arange(2.0), vp=np.zeros((3, 2))),
     "coordinate 'x' .* not strictly monotonic"),
    (dict(x=np.array([0.0, 1.0, 1.0]), y=np.arange(2.0), vp=np.zeros((3, 2))),
     "not strictly monotonic"),
    (dict(y=np.arange(2.0), vp=np.zeros((3, 2))), "no 1D numeric coordinate variable 'x'"),
    (dict(x=np.arange(3.0), vp=np.zeros((3, 2))), "no 1D numeric coordinate variable 'y'"),
    (dict(x=np.arange(1.0), y=np.arange(2.0), vp=np.zeros((1, 2))), "at least 2"),
    (dict(x=np.arange(3.0), y=np.array([0.0, np.nan]), vp=np.zeros((3, 2))), "'y' .* NaN"),
    (dict(x=np.arange(3.0), y=np.arange(2.0), vp=np.array([[0, 1], [2, np.nan], [4, 5]])),
     "variable 'vp' .* 1 NaN or missing"),
    (dict(x=np.arange(3.0), y=np.arange(2.0), vp=np.zeros((4, 4))), "no 2D variable"),
    (dict(x=np.arange(3.0), y=np.arange(2.0), vp=np.zeros((3, 2)), VP=np.ones((3, 2))),
     "differ only in case"),
])
def test_bad_files(tmp_path, datasets, match):
    path = model_file(tmp_path, **datasets)
    with pytest.raises(ConfigError, match=r"^model.vp: .*" + match) as exc:
        read_gridded_model(path, field="model.vp")
    assert "\n" not in str(exc.value)


def test_fill_value_counts_as_missing(tmp_path):
    path = tmp_path / "m.nc"
    ds = tutorial_dataset()
    ds["vp"].values[2, 3] = -999.0
    ds["vp"].encoding["_FillValue"] = -999.0
    ds.to_netcdf(path, engine="scipy")
    with pytest.raises(ConfigError, match="variable 'vp' .* 1 NaN or missing"):
        read_gridded_model(path)


@pytest.mark.parametrize("content", [b"x,y,vp\n0,0,1500\n", b"", b"CDF\x05" + b"\0" * 60,
                                     b"\x89HDF\r\n\x1a\n" + b"\0" * 60])
def test_not_a_model_file(tmp_path, content):
    path = tmp_path / "model.csv"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"^model.file: cannot read model file '.*model.csv'"):
        read_gridded_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"^model.file: cannot read '.*nope.h5'"):
        read_gridded_model(tmp_path / "nope.h5")


def test_model_is_read_only(tmp_path):
    model = read_gridded_model(model_file(tmp_path, x=X, y=Y, vp=1500.0 - YY))
    with pytest.raises(ValueError):
        model.fields["vp"][0, 0] = 0.0
    with pytest.raises(Exception):
        model.x = Y


def test_cf_packing_is_applied(tmp_path):
    path = tmp_path / "packed.nc"
    ds = tutorial_dataset()
    ds["vp"].encoding.update(dtype="int16", scale_factor=0.5, add_offset=1000.0)
    ds.to_netcdf(path, engine="netcdf4")
    np.testing.assert_array_equal(read_gridded_model(path).fields["vp"], 1500.0 - YY)


def test_netcdf4_dimensions_without_coordinate_variables(tmp_path):
    netCDF4 = pytest.importorskip("netCDF4")
    path = tmp_path / "nocoords.nc"
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("x", 4)
        nc.createDimension("y", 3)
        nc.createVariable("vp", "f8", ("x", "y"))[:] = np.ones((4, 3))
    with pytest.raises(ConfigError, match="no 1D numeric coordinate variable 'x'"):
        read_gridded_model(path)
