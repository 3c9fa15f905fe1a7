"""Serial file contract: mesh HDF5 + XDMF, VTU, receivers, atomic writes."""

import json
import shutil
import xml.etree.ElementTree as ET

import h5py
import meshio
import numpy as np
import pytest

from fwimpi.mesh.files import (
    FileFormatError,
    ReceiverData,
    atomic_path,
    quads_from_cells,
    read_attrs,
    read_mesh_h5,
    read_receivers_h5,
    write_json_atomic,
    write_mesh_h5,
    write_receivers_h5,
    write_vtu,
)

ATTRS = {"kind": "model", "misfit": 1.25, "n_steps": 3, "smoothed": False,
         "config": {"VP": [1.0, 2.0], "name": "x"}, "parameters": ["VP", "RHO"]}


def box_mesh(nx=2, ny=1, order=2, lx=2.0, ly=1.0):
    """Points (P, 2) on [0, lx] x [0, ly] (equispaced nodes) and cells (E, (N+1)**2)."""
    gx, gy = nx * order + 1, ny * order + 1
    x, y = np.meshgrid(np.linspace(0.0, lx, gx), np.linspace(0.0, ly, gy))
    points = np.column_stack([x.ravel(), y.ravel()])  # global index ix + gx * iy
    i, j = (a.ravel() for a in np.meshgrid(np.arange(order + 1), np.arange(order + 1)))
    cells = np.array([ex * order + i + gx * (ey * order + j)
                      for ey in range(ny) for ex in range(nx)], dtype=np.int64)
    return points, cells


@pytest.fixture
def mesh():
    points, cells = box_mesh()
    rng = np.random.default_rng(0)
    mass = rng.uniform(0.1, 1.0, len(points))
    fields = {"VP": 1500.0 - points[:, 1], "RHO": rng.uniform(1000, 2000, len(points))}
    return points, cells, mass, fields


def signed_areas(points, quads):
    x, y = points[quads, 0], points[quads, 1]
    return 0.5 * np.sum(x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y, axis=1)


def test_mesh_round_trip_exact(tmp_path, mesh):
    points, cells, mass, fields = mesh
    write_mesh_h5(tmp_path / "out" / "model.h5", points, cells, mass, fields, ATTRS)
    m = read_mesh_h5(tmp_path / "out" / "model.h5")
    assert m.order == 2 and m.attrs == ATTRS
    np.testing.assert_array_equal(m.points, points)
    np.testing.assert_array_equal(m.cells, cells)
    np.testing.assert_array_equal(m.mass, mass)
    assert m.fields.keys() == fields.keys()
    for name in fields:
        np.testing.assert_array_equal(m.fields[name], fields[name])
    with h5py.File(tmp_path / "out" / "model.h5") as f:
        assert f["mesh/cells"].shape == (2, 9) and f["mesh/cells"].dtype == np.int64
        assert f["mesh/points"].dtype == np.float64 and f["fields/VP"].shape == (15,)
        assert f.attrs["format"] == "fwimpi-mesh-1" and f.attrs["order"] == 2
        assert json.loads(f.attrs["config"]) == ATTRS["config"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.h5", "model.xdmf"]


@pytest.mark.parametrize("order", [1, 2, 4])
def test_quads_count_and_orientation(order):
    points, cells = box_mesh(nx=3, ny=2, order=order)
    quads = quads_from_cells(cells, order)
    assert quads.shape == (6 * order * order, 4) and quads.dtype == np.int64
    area = signed_areas(points, quads)
    assert np.all(area > 0)
    np.testing.assert_allclose(area.sum(), 2.0)  # the quads tile the box
    if order == 1:
        np.testing.assert_array_equal(quads, cells[:, [0, 1, 3, 2]])


def test_quads_in_file(tmp_path, mesh):
    points, cells, mass, fields = mesh
    write_mesh_h5(tmp_path / "m.h5", points, cells, mass, fields, {})
    with h5py.File(tmp_path / "m.h5") as f:
        quads = f["mesh/quads"][()]
    assert quads.shape == (8, 4)
    np.testing.assert_array_equal(quads[0], [0, 1, 6, 5])
    assert np.all(signed_areas(points, quads) > 0)


def test_xdmf_names_existing_datasets(tmp_path, mesh):
    points, cells, mass, fields = mesh
    write_mesh_h5(tmp_path / "m.h5", points, cells, mass, fields, ATTRS)
    root = ET.parse(tmp_path / "m.xdmf").getroot()
    assert root.tag == "Xdmf" and root.get("Version") == "3.0"
    grid = root.find("Domain/Grid")
    assert grid.get("GridType") == "Uniform"
    topology = grid.find("Topology")
    assert topology.get("TopologyType") == "Quadrilateral"
    assert topology.get("NumberOfElements") == "8"
    assert grid.find("Geometry").get("GeometryType") == "XY"
    names = {a.get("Name") for a in grid.findall("Attribute")}
    assert names == {"mass", "VP", "RHO"}
    assert all(a.get("Center") == "Node" for a in grid.findall("Attribute"))
    items = root.findall(".//DataItem")
    assert len(items) == 5
    with h5py.File(tmp_path / "m.h5") as f:
        for item in items:
            file_name, dataset = item.text.strip().split(":")
            assert file_name == "m.h5" and item.get("Format") == "HDF"
            dims = tuple(int(d) for d in item.get("Dimensions").split())
            assert f[dataset].shape == dims
            kind = {"Int": "i", "Float": "f"}[item.get("NumberType")]
            assert f[dataset].dtype.kind == kind and f[dataset].dtype.itemsize == 8


def test_xdmf_pair_moves_and_reads_with_meshio(tmp_path, mesh):
    points, cells, mass, fields = mesh
    write_mesh_h5(tmp_path / "a" / "m.h5", points, cells, mass, fields, {})
    shutil.move(tmp_path / "a", tmp_path / "b")
    m = meshio.read(tmp_path / "b" / "m.xdmf")
    np.testing.assert_array_equal(m.points, points)
    assert m.cells[0].type == "quad" and len(m.cells[0].data) == 8
    np.testing.assert_array_equal(m.point_data["VP"], fields["VP"])
    np.testing.assert_array_equal(m.point_data["mass"], mass)


def test_vtu(tmp_path, mesh):
    points, cells, mass, fields = mesh
    write_vtu(tmp_path / "v" / "m.vtu", points, cells, 2, fields, mass=mass)
    m = meshio.read(tmp_path / "v" / "m.vtu")
    assert m.points.shape == (15, 3)
    np.testing.assert_array_equal(m.points[:, :2], points)
    assert m.cells[0].type == "quad"
    np.testing.assert_array_equal(m.cells[0].data, quads_from_cells(cells, 2))
    assert set(m.point_data) == {"VP", "RHO", "mass"}
    np.testing.assert_array_equal(m.point_data["RHO"], fields["RHO"])
    assert [p.name for p in (tmp_path / "v").iterdir()] == ["m.vtu"]
    with pytest.raises(ValueError, match="order"):
        write_vtu(tmp_path / "w.vtu", points, cells, 3, fields)


def test_bad_field_leaves_nothing(tmp_path, mesh):
    points, cells, mass, fields = mesh
    bad = dict(fields, VS=np.ones(len(points) - 1))
    with pytest.raises(ValueError, match="/fields/VS"):
        write_mesh_h5(tmp_path / "m.h5", points, cells, mass, bad, {})
    with pytest.raises(ValueError, match="VS"):
        write_vtu(tmp_path / "m.vtu", points, cells, 2, bad)
    with pytest.raises(ValueError, match="reserved"):
        write_mesh_h5(tmp_path / "m.h5", points, cells, mass, {"mass": mass}, {})
    with pytest.raises(ValueError, match="field name"):
        write_mesh_h5(tmp_path / "m.h5", points, cells, mass, {"V/P": mass}, {})
    with pytest.raises(ValueError, match="attribute 'x'"):
        write_mesh_h5(tmp_path / "m.h5", points, cells, mass, fields, {"x": None})
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_old_file(tmp_path, mesh):
    points, cells, mass, fields = mesh
    write_mesh_h5(tmp_path / "m.h5", points, cells, mass, fields, {"kind": "old"})
    with pytest.raises(ValueError):
        write_mesh_h5(tmp_path / "m.h5", points, cells, mass[:-1], fields, {"kind": "new"})
    assert read_mesh_h5(tmp_path / "m.h5").attrs == {"kind": "old"}
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "m.h5") as tmp:
        tmp.write_bytes(b"partial")
        assert tmp.name.startswith(".m.h5.fwimpi-tmp")
        raise RuntimeError("crash while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5", "m.xdmf"]
    assert read_mesh_h5(tmp_path / "m.h5").attrs == {"kind": "old"}


def receivers(n_receivers=3, n_samples=5, seed=0):
    rng = np.random.default_rng(seed)
    return ReceiverData(
        traces={"phi": rng.normal(size=(n_receivers, n_samples)),
                "grad.x": rng.normal(size=(n_receivers, n_samples))},
        coordinates=rng.uniform(size=(n_receivers, 2)),
        dt=1e-3,
        start_time=-0.0125,
        stations=tuple(f"XX.R{r:02d}" for r in range(n_receivers - 1)) + ("Zürich",),
    )


def test_receivers_round_trip(tmp_path):
    events = {"event_0000": receivers(), "event-1.b": receivers(4, 7, seed=1)}
    write_receivers_h5(tmp_path / "r" / "rec.h5", events, {"kind": "receivers", "ranks": 2})
    back = read_receivers_h5(tmp_path / "r" / "rec.h5")
    assert back.keys() == events.keys()
    for name, data in events.items():
        got = back[name]
        assert got.traces.keys() == data.traces.keys()
        for field in data.traces:
            np.testing.assert_array_equal(got.traces[field], data.traces[field])
        np.testing.assert_array_equal(got.coordinates, data.coordinates)
        assert (got.dt, got.start_time, got.stations) == (data.dt, data.start_time, data.stations)
    assert read_attrs(tmp_path / "r" / "rec.h5") == {
        "kind": "receivers", "ranks": 2, "format": "fwimpi-receivers-1"}
    with h5py.File(tmp_path / "r" / "rec.h5") as f:
        group = f["event-1.b"]
        assert group["phi"].shape == (4, 7) and group["coordinates"].shape == (4, 2)
        for obj in (group, group["phi"], group["grad.x"]):
            assert obj.attrs["dt"] == 1e-3 and obj.attrs["start_time"] == -0.0125
    with pytest.raises(FileFormatError, match="format"):
        read_mesh_h5(tmp_path / "r" / "rec.h5")


@pytest.mark.parametrize("name", ["", "_e", "a/b", "ev ent", ".hidden"])
def test_bad_event_name(tmp_path, name):
    with pytest.raises(ValueError, match="event name"):
        write_receivers_h5(tmp_path / "rec.h5", {name: receivers()}, {})
    assert list(tmp_path.iterdir()) == []


def test_bad_receiver_data():
    good = receivers()
    with pytest.raises(ValueError, match="field name"):
        ReceiverData({"p hi": good.traces["phi"]}, good.coordinates, 1e-3, 0.0, good.stations)
    with pytest.raises(ValueError, match="reserved"):
        ReceiverData({"stations": good.traces["phi"]}, good.coordinates, 1e-3, 0.0, good.stations)
    with pytest.raises(ValueError, match="n_samples=5"):
        ReceiverData({"a": np.zeros((3, 5)), "b": np.zeros((3, 4))},
                     good.coordinates, 1e-3, 0.0, good.stations)
    with pytest.raises(ValueError, match="stations"):
        ReceiverData(good.traces, good.coordinates, 1e-3, 0.0, good.stations[:2])
    with pytest.raises(ValueError, match="dt"):
        ReceiverData(good.traces, good.coordinates, 0.0, 0.0, good.stations)


def test_write_json_atomic(tmp_path):
    obj = {"job": "tutorial", "events": {"b": {"misfit": np.float64(0.5)}, "a": {}},
           "simulation": {"ranks": np.int64(4)}, "plots": ["p.png"]}
    write_json_atomic(tmp_path / "deep" / "summary.json", obj)
    text = (tmp_path / "deep" / "summary.json").read_text()
    assert json.loads(text) == {"job": "tutorial", "events": {"a": {}, "b": {"misfit": 0.5}},
                                "simulation": {"ranks": 4}, "plots": ["p.png"]}
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "deep" / "summary.json", {"bad": object()})
    assert [p.name for p in (tmp_path / "deep").iterdir()] == ["summary.json"]
