#!/usr/bin/env bash
# Turn a fresh Debian 12 machine into a working fwimpi install; quick when all is there.
# Compiled dependencies (OpenMPI, PETSc/petsc4py, parallel HDF5/h5py, numpy, scipy,
# matplotlib) come from Debian; a venv made with --system-site-packages sees them and gets
# only pure-Python packages and numba from pip, with numpy pinned to Debian's version so
# that pip can never shadow it (DESIGN.md, dependency facts).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(python3-petsc4py python3-mpi4py python3-h5py-mpi libpetsc-real-dev openmpi-bin
          python3-venv python3-pip python3-numpy python3-scipy python3-matplotlib python3-yaml
          python3-xarray python3-netcdf4 python3-zfpy python3-segyio)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv (with Debian's site packages)"
  /usr/bin/python3 -m venv --system-site-packages .venv
fi

stamp=.venv/.fwimpi-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  constraints=$(mktemp)
  /usr/bin/python3 - > "$constraints" <<'PY'
import h5py, mpi4py, numpy, scipy
for m in (numpy, scipy, h5py, mpi4py):
    print(f"{m.__name__}=={m.__version__}")
PY
  echo "setup: pip install -e .[test] (pinned to Debian's: $(tr '\n' ' ' < "$constraints"))"
  .venv/bin/pip install -q --disable-pip-version-check -c "$constraints" -e ".[test]"
  rm -f "$constraints"
  touch "$stamp"
fi
.venv/bin/python -c "import fwimpi, numba, petsc4py, mpi4py, h5py, meshio, zfpy" \
  || { echo "setup: the installation is broken" >&2; exit 1; }
