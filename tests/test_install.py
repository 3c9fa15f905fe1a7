"""A plain, NON-editable ``pip install`` works outside the source tree.

The test copies the package sources (``pyproject.toml``, ``README.md``, ``fwimpi/`` and the
``configs`` symlink) to ``tmp_path`` and installs that copy into a fresh venv; it builds there,
not in the checkout, so no stale ``build/`` of the checkout can leak into the wheel, and it
deletes the copy after the install, so the installed package cannot fall back on any source
tree. Then, from a folder outside the source tree, it runs a small job through the venv's
``fwimpi`` console script on the local site and renders the batch script of the shipped
``slurm`` site: the site files and the template must come from the installed package data.

How the venv gets its dependencies without the network, quickly:

- ``/usr/bin/python3 -m venv --system-site-packages``: Debian's numpy, scipy, h5py-mpi, mpi4py,
  petsc4py, matplotlib and pyyaml, as in ``scripts/setup.sh``; its ensurepip gives it pip and
  setuptools, and Debian's ``wheel`` is visible, so ``pip install --no-deps
  --no-build-isolation --no-index`` builds the wheel offline in a second or two;
- numba (with llvmlite) and meshio are pip packages of the project venv (``.venv``), not
  Debian's: after the install, a ``.pth`` file in the new venv adds the folders that hold them
  in the test's own interpreter to ``sys.path``. A ``.pth`` line that is a folder only adds
  that folder (its own ``.pth`` files, such as the project venv's editable-install hook, are not
  run), so the fwimpi that is imported is the one installed in the new venv; the test checks
  that ``fwimpi.__file__`` lies in the new venv.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_cli import SMALL_JOB

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
SOURCES = ("pyproject.toml", "README.md", "fwimpi", "configs")
# What an MPI launcher (or an MPI initialised in this process) leaves in the environment: the
# job's own mpirun must not see it (fwimpi.jobs.slurm.submission_env drops the same).
LAUNCHER_ENV = ("PMIX_", "PMI_", "OMPI_COMM_WORLD_", "OMPI_MCA_ess", "OMPI_MCA_orte_",
                "OMPI_MCA_pmix", "OMPI_APP_CTX_", "OMPI_NUM_APP_CTX", "OMPI_UNIVERSE_SIZE",
                "OMPI_FIRST_RANKS", "OMPI_ARGV", "OMPI_COMMAND", "OMPI_FILE_LOCATION", "ORTE_",
                "MPI_LOCALNRANKS", "MPI_LOCALRANKID")

CHECK_INSTALLED = r"""
import json, sys
from pathlib import Path
import fwimpi
from fwimpi.jobs import sites, slurm
site = sites.load_site("slurm")
script = slurm.render_batch_script(site, Path(sys.argv[1]), "small", Path(sys.argv[2]), 2, False,
                                   cores=2)
print(json.dumps({"fwimpi": fwimpi.__file__, "shipped_sites": str(sites.SHIPPED_SITES),
                  "template": str(slurm.TEMPLATE), "known": list(sites.known_sites()),
                  "site": site.name, "partition": site.partition, "script": script,
                  "executable": sys.executable, "path": sys.path}))
"""


def _venv_unavailable() -> str | None:
    """Why ``/usr/bin/python3 -m venv`` cannot make a venv with pip here (None: it can)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} does not exist"
    proc = subprocess.run([SYSTEM_PYTHON, "-c", "import venv, ensurepip"], capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"{SYSTEM_PYTHON} -m venv is unavailable (Debian: apt install python3-venv): {said}"
    return None


def _run(argv, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=180,
                          **kw)
    assert proc.returncode == 0, (f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _dependency_folders() -> list[str]:
    """The folders of this interpreter that hold numba, llvmlite and meshio, where they are
    not the system's (those the new venv sees through --system-site-packages)."""
    folders = []
    for name in ("numba", "llvmlite", "meshio", "yaml"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin, f"{name} is not installed in {sys.executable}"
        folder = str(Path(spec.origin).resolve().parents[1])
        if not folder.startswith("/usr/") and folder not in folders:
            folders.append(folder)
    return folders


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(LAUNCHER_ENV) and k not in ("PYTHONPATH", "PYTHONHOME",
                                                           "FWIMPI_SITES", "VIRTUAL_ENV")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg-config")  # no user sites: the shipped ones
    return env


def test_non_editable_install_runs_a_job_outside_the_source_tree(tmp_path):
    reason = _venv_unavailable()
    if reason:
        pytest.skip(reason)
    env = _clean_env(tmp_path)

    # the package sources, as a wheel is built from them (the configs symlink included)
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_symlink():
            os.symlink(os.readlink(path), src / name)
        elif path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(path, src / name)

    venv = tmp_path / "venv"
    _run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", venv], env=env)
    python, fwimpi = venv / "bin" / "python", venv / "bin" / "fwimpi"
    _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
          "--disable-pip-version-check", "-q", src], env=env, cwd=tmp_path)
    shutil.rmtree(src)
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_packages = Path(_run([python, "-c", purelib], env=env).stdout.strip())
    (site_packages / "fwimpi-test-dependencies.pth").write_text(
        "".join(f"{folder}\n" for folder in _dependency_folders()))
    installed = site_packages / "fwimpi"
    for data in ("configs/slurm_batch.sh", "configs/sites/local.yaml", "configs/sites/slurm.yaml"):
        assert (installed / data).is_file(), f"{data} is not in the installed package"
    assert not (site_packages / "configs").exists()  # the top-level symlink is not installed

    # a job from a folder outside the source tree, through the console script, 2 ranks
    work = tmp_path / "work"
    work.mkdir()
    (work / "job.yaml").write_text(SMALL_JOB.replace("ranks_per_job: 1", "ranks_per_job: 2"))
    proc = _run([fwimpi, "run", "job.yaml", "--site", "local"], env=env, cwd=work)
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert summary["simulation"]["ranks"] == 2, proc.stdout
    assert (work / "out" / summary["events"]["ev1"]["gradient"]).is_file()

    # the installed package, its shipped sites and its template, not the source tree's
    proc = _run([python, "-c", CHECK_INSTALLED, work / "job.yaml", work / "out"], env=env,
                cwd=work)
    found = json.loads(proc.stdout)
    assert Path(found["fwimpi"]) == installed / "__init__.py"
    assert Path(found["shipped_sites"]) == installed / "configs" / "sites"
    assert Path(found["template"]) == installed / "configs" / "slurm_batch.sh"
    assert not any(Path(p) == ROOT or str(ROOT / "fwimpi") in p for p in found["path"])
    assert {"local", "slurm"} <= set(found["known"])
    lines = found["script"].splitlines()
    assert lines[0] == "#!/bin/bash" and "#SBATCH --partition=debug" in lines
    assert "#SBATCH --ntasks=2" in lines and f"#SBATCH --chdir={work}" in lines
    assert (f"srun --mpi=pmix -n 2 {python} -m mpi4py -m fwimpi.cli exec {work}/job.yaml "
            f"|| status=$?") in lines
