#!/usr/bin/env bash
# Install everything (scripts/setup.sh) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# OpenMPI as root and with more ranks than cores (the MPI tests use --oversubscribe too).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
exec .venv/bin/python -m pytest tests "$@"
