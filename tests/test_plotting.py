"""fwimpi plot: PNGs of models, gradient kernels (clipped, cropped) and traces."""

import json

import numpy as np
import pytest

from fwimpi.cli import main
from fwimpi.jobs.plotting import plot_field
from test_cli import write_job


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plot")
    assert main(["-q", "run", str(write_job(folder))]) == 0
    return folder / "out", json.loads((folder / "out/summary.json").read_text())


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_plot_outputs_exist(products, tmp_path):
    out, _ = products
    for name, kwargs in (("a.png", {}), ("b.png", {"clip": 0.1}), ("c.png", {"crop": False})):
        assert is_png(plot_field(out / "gradient.h5", tmp_path / name, "VP", **kwargs))
    # clipping changes the picture
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "b.png").read_bytes()


@pytest.mark.parametrize("args", [["--clip", "1.5"], ["--field", "NOPE"]])
def test_bad_plot_arguments_exit_2(products, args, capsys):
    out, _ = products
    assert main(["plot", str(out / "gradient.h5"), *args]) == 2
    assert "fwimpi: error:" in capsys.readouterr().err


def test_kernel_is_gradient_over_mass(products):
    from fwimpi.mesh.files import read_mesh_h5

    out, _ = products
    g = read_mesh_h5(out / "gradient.h5")
    kernel = g.fields["VP"] / g.mass
    assert np.all(np.isfinite(kernel)) and np.abs(kernel).max() > 0


@pytest.mark.parametrize("args", [["model.h5", "--field", "VP"], ["gradient.h5", "--clip", "0.1"],
                                  ["gradient.h5", "--no-crop"], ["events/ev1/receivers.h5"]])
def test_plot_command(products, args, capsys):
    from pathlib import Path

    out, _ = products
    assert main(["plot", str(out / args[0]), *args[1:]]) == 0
    assert is_png(Path(capsys.readouterr().out.strip()))
