"""Models on 3D meshes: expressions in x, y, z, gridded (x, y, z) files with trilinear
interpolation, and a 3D model file written by fwimpi read back with its own mesh and dt."""

import pickle

import h5py
import numpy as np
import pytest

from fwimpi.errors import ConfigError
from fwimpi.mesh.expression import coordinate_names, compile_expression
from fwimpi.mesh.files import write_mesh_h5
from fwimpi.mesh.gridded import MAX_VALUES, read_gridded_model
from fwimpi.mesh.model import ModelEvaluator, ModelSource
from fwimpi.mesh.structured import Box
from fwimpi.mesh.structured3d import Box3, build_mesh3d

DOMAIN = Box3(0.0, 300.0, 0.0, 200.0, -200.0, 0.0)
MESH = build_mesh3d(DOMAIN, 50.0, 100.0, 2)  # 4 x 3 x 3 elements with margins, 441 points

# A non-uniform grid a little larger than the domain; z stored top down (decreasing).
X = np.array([-10.0, 40.0, 150.0, 260.0, 320.0])
Y = np.array([-5.0, 70.0, 210.0])
Z = np.array([10.0, -60.0, -130.0, -210.0])


def trilinear(x, y, z):
    """Exactly reproduced by trilinear interpolation (every monomial x^a y^b z^c, a,b,c <= 1)."""
    return (1500.0 + 0.7 * x - 0.4 * y - 2.0 * z + 1e-3 * x * y - 2e-3 * x * z
            + 1.5e-3 * y * z + 1e-5 * x * y * z)


def on_grid(x=X, y=Y, z=Z):
    return np.meshgrid(x, y, z, indexing="ij")


VP = trilinear(*on_grid())
RHO = 1000.0 + np.arange(VP.size, dtype=float).reshape(VP.shape)  # any positive field


def expected_at_mesh_points(fn):
    """``fn`` at the mesh points clamped onto the domain (constant outside it)."""
    return fn(*DOMAIN.clamp(MESH.points).T)


def one_line_error(exc, start):
    msg = str(exc.value)
    assert msg.startswith(start) and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------------------- expressions


def test_expressions_in_x_y_z_on_a_3d_mesh():
    ev = ModelEvaluator(ModelSource("1500 - z", "1000 + 0.5*x - y + 0.1*z"), DOMAIN)
    out = ev(MESH.points)
    assert ev.dim == 3 and ev.mesh is None and out["VP"].shape == (MESH.n_points,)
    np.testing.assert_array_equal(out["VP"], expected_at_mesh_points(lambda x, y, z: 1500 - z))
    np.testing.assert_array_equal(out["RHO"], expected_at_mesh_points(
        lambda x, y, z: 1000 + 0.5 * x - y + 0.1 * z))
    below = MESH.points[:, 2] < DOMAIN.z0
    assert below.any() and (out["VP"][below] == 1700.0).all()  # the bottom margin: z0's value
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(ev))(MESH.points)["VP"], out["VP"])
    # the compiler alone, as a region of interest uses it
    roi = compile_expression("where(z > -100, 1, 0)", "mappings[0].region_of_interest",
                             coordinate_names(3))
    np.testing.assert_array_equal(roi.at(MESH.points), (MESH.points[:, 2] > -100) * 1.0)
    with pytest.raises(ValueError, match=r"points must have shape \(n, 3\)"):
        roi.at(MESH.points[:, :2])


def test_z_is_an_unknown_name_in_2d_and_a_bad_value_names_the_3d_point():
    with pytest.raises(ConfigError) as exc:
        ModelEvaluator(ModelSource("1500 - z", "1000"), Box(0.0, 1.0, 0.0, 1.0))
    assert str(exc.value) == "model.vp: name 'z' is not allowed; use x, y, pi, e"
    with pytest.raises(ConfigError) as exc:
        compile_expression("z", "model.rho")
    assert str(exc.value) == "model.rho: name 'z' is not allowed; use x, y, pi, e"
    with pytest.raises(ConfigError) as exc:
        ModelEvaluator(ModelSource("1500", "1000 + w"), DOMAIN)
    assert str(exc.value) == "model.rho: name 'w' is not allowed; use x, y, z, pi, e"
    ev = ModelEvaluator(ModelSource("1500", "z + 100"), DOMAIN)
    with pytest.raises(ConfigError) as exc:
        ev(np.array([[10.0, 20.0, -150.0]]))
    assert str(exc.value) == ("model.rho: must be positive and finite, got -50 at x=10, "
                              "y=20, z=-150")


# ---------------------------------------------------------------------------- gridded files


def write_h5(path, **arrays):
    """Plain HDF5 (no dimension scales): coordinates and fields as given."""
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f[k] = v
    return path


def xarray_file(path, engine, order):
    xr = pytest.importorskip("xarray")
    ds = xr.Dataset({"vp": (["x", "y", "z"], VP), "rho": (["x", "y", "z"], RHO)},
                    coords={"x": X, "y": Y, "z": Z})
    ds.transpose(*order).to_netcdf(path, engine=engine)
    return path


@pytest.mark.parametrize("kind", [
    "hdf5 (x, y, z)", "hdf5 (z, y, x)",
    "netcdf4 (z, y, x)", "netcdf4 (y, x, z)", "netcdf3 (x, z, y)"])
def test_gridded_files_reproduce_a_trilinear_field_and_are_constant_outside(tmp_path, kind):
    fmt, order = kind.split(" ", 1)
    order = tuple(order.strip("()").split(", "))
    path = tmp_path / "model.nc"
    if fmt == "hdf5":
        perm = [("x", "y", "z").index(a) for a in order]
        write_h5(path, x=X, y=Y, z=Z, vp=VP.transpose(perm), rho=RHO.transpose(perm))
    else:
        xarray_file(path, {"netcdf4": "netcdf4", "netcdf3": "scipy"}[fmt], order)
    grid = read_gridded_model(path, dimension=3)
    assert grid.dim == 3 and grid.fields["vp"].shape == (5, 3, 4)
    assert grid.bounds == (-10.0, 320.0, -5.0, 210.0, -210.0, 10.0)  # z flipped to increasing
    ev = ModelEvaluator(ModelSource(file=path), DOMAIN)
    out = ev(MESH.points)
    np.testing.assert_allclose(out["VP"], expected_at_mesh_points(trilinear), rtol=1e-14)
    # outside the domain (the margins) each value is the one at the nearest domain point
    at_clamped = ev(DOMAIN.clamp(MESH.points))
    margin = (DOMAIN.clamp(MESH.points) != MESH.points).any(axis=1)
    assert margin.sum() == MESH.n_points - 7 * 5 * 5
    for name in ("VP", "RHO"):
        np.testing.assert_array_equal(out[name], at_clamped[name])


def test_a_2d_reader_ignores_3d_variables_and_a_3d_reader_2d_ones(tmp_path):
    path = write_h5(tmp_path / "m.h5", x=X, y=Y, z=Z, vp=VP, rho=RHO)
    with pytest.raises(ConfigError) as exc:
        read_gridded_model(path)
    one_line_error(exc, "model.file: no 2D variable over (x, y) in ")
    path = write_h5(tmp_path / "m2.h5", x=X, y=Y, z=Z, vp=VP[:, :, 0])
    with pytest.raises(ConfigError) as exc:
        read_gridded_model(path, dimension=3)
    one_line_error(exc, "model.file: no 3D variable over (x, y, z) in ")


def huge(path):
    """Declares 1000 x 1000 x 101 values (more than MAX_VALUES) and stores none."""
    with h5py.File(path, "w") as f:
        f["x"], f["y"], f["z"] = np.arange(1000.0), np.arange(1000.0), np.arange(101.0)
        f.create_dataset("vp", shape=(1000, 1000, 101), dtype="f8", chunks=(10, 10, 101))


@pytest.mark.parametrize("make, message", [
    (lambda p: write_h5(p, x=X, y=Y, vp=VP), "no 1D numeric coordinate variable 'z'"),
    (lambda p: write_h5(p, x=X, y=Y, z=Z[[0, 2, 1, 3]], vp=VP),
     "coordinate 'z' in '{p}' is not strictly monotonic"),
    (lambda p: write_h5(p, x=X, y=Y, z=Z[:1], vp=VP[:, :, :1]),
     "coordinate 'z' in '{p}' has 1 point(s)"),
    (lambda p: write_h5(p, x=X, y=Y, z=Z, vp=np.where(VP > 1600, np.nan, VP)),
     "variable 'vp' in '{p}' has"),
    (huge, f"variable 'vp' in '{{p}}' declares 101,000,000 values (shape (1000, 1000, 101)), "
           f"more than {MAX_VALUES:,}"),
    (lambda p: write_h5(p, x=X, y=Y, z=Z, VP=VP, vp=VP), "variables 'VP' and 'vp'"),
    (lambda p: p.write_bytes(b"CDF\x01 truncated"), "cannot read model file '{p}'"),
])
def test_malformed_3d_files_give_one_line_errors(tmp_path, make, message):
    path = tmp_path / "bad.h5"
    make(path)
    with pytest.raises(ConfigError) as exc:
        ModelEvaluator(ModelSource(file=path), DOMAIN)
    assert message.format(p=path) in one_line_error(exc, "model.file: ")


def test_a_grid_not_covering_the_domain_or_without_rho_is_refused(tmp_path):
    path = write_h5(tmp_path / "m.h5", x=X, y=Y, z=Z[:3], vp=VP[:, :, :3], rho=RHO[:, :, :3])
    with pytest.raises(ConfigError) as exc:
        ModelEvaluator(ModelSource(file=path), DOMAIN)
    assert str(exc.value) == (
        "model.file: the grid covers x in [-10, 320], y in [-5, 210], z in [-130, 10] but the "
        "domain is x in [0, 300], y in [0, 200], z in [-200, 0]")
    path = write_h5(tmp_path / "n.h5", x=X, y=Y, z=Z, vp=VP)
    with pytest.raises(ConfigError) as exc:
        ModelEvaluator(ModelSource(file=path), DOMAIN)
    one_line_error(exc, "model.file: no variable 'rho' in ")
    with pytest.raises(ConfigError) as exc:
        read_gridded_model(write_h5(tmp_path / "o.h5", x=X, y=Y, z=Z, vp=VP),
                           dimension=3).interpolate("vp", 0.0, 0.0, 50.0)
    assert str(exc.value) == ("model.file: point (0, 0, 50) lies outside the grid x in "
                              "[-10, 320], y in [-5, 210], z in [-210, 10]")


# ---------------------------------------------------------------------------- model files


def write_model_file(path, mesh, fields, dt=1.25e-3):
    write_mesh_h5(path, mesh.points, mesh.cells, np.ones(mesh.n_points), fields,
                  {"mesh": mesh.description(), "dt": dt, "kind": "model"})
    return path


def test_a_3d_model_file_is_read_back_with_its_own_mesh_and_dt(tmp_path):
    mesh = build_mesh3d(DOMAIN, 40.0, 120.0, 1)  # a mesh unlike the one the job would make
    rng = np.random.default_rng(3)
    fields = {"VP": 1500.0 + rng.random(mesh.n_points), "RHO": 1000.0 + rng.random(mesh.n_points)}
    path = write_model_file(tmp_path / "model.h5", mesh, fields)
    with h5py.File(path, "r") as f:
        assert f["mesh/points"].shape == (mesh.n_points, 3)
        assert f["mesh/cells"].shape == (mesh.n_elements, 8)
    ev = ModelEvaluator(ModelSource(file=path), DOMAIN)
    assert ev.mesh == mesh and ev.dt == 1.25e-3
    out = ev(mesh.points)
    for name in ("VP", "RHO"):
        np.testing.assert_array_equal(out[name], fields[name])
    some = np.array([7, 0, mesh.n_points - 1])
    np.testing.assert_array_equal(ev(mesh.points[some])["VP"], fields["VP"][some])
    with pytest.raises(ConfigError) as exc:
        ev(np.array([[1.0, 2.0, 3.0]]))
    one_line_error(exc, "model.file: point (1.0, 2.0, 3.0) is not a point of the mesh")


def test_a_3d_model_file_for_another_domain_or_dimension_is_refused(tmp_path):
    mesh = build_mesh3d(DOMAIN, 40.0, 120.0, 1)
    fields = {"VP": np.full(mesh.n_points, 1500.0), "RHO": np.full(mesh.n_points, 1000.0)}
    path = write_model_file(tmp_path / "model.h5", mesh, fields)
    with pytest.raises(ConfigError) as exc:
        ModelEvaluator(ModelSource(file=path), Box3(0.0, 300.0, 0.0, 200.0, -250.0, 0.0))
    assert str(exc.value) == (f"model.file: {path} was made for the domain x in [0, 300], "
                              f"y in [0, 200], z in [-200, 0], not this job's")
    with pytest.raises(ConfigError) as exc:
        ModelEvaluator(ModelSource(file=path), Box(0.0, 300.0, -200.0, 0.0))
    assert str(exc.value) == f"model.file: {path} holds a 3D mesh, but the domain is 2D"
