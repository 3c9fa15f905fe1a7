#!/bin/bash
#SBATCH --job-name=$job_name
#SBATCH --partition=$partition
#SBATCH --time=$time_limit
#SBATCH --ntasks=$ranks
#SBATCH --chdir=$workdir
#SBATCH --output=$log
$directives
# Rendered by fwimpi (fwimpi/jobs/slurm.py) from fwimpi/configs/slurm_batch.sh for site '$site';
# every value above and below was validated (names by pattern, paths absolute and plain).
set -uo pipefail
# Debian's h5py loads its MPI build only when one of these is set, and srun sets none of them.
export H5PY_ALWAYS_USE_MPI=1
# OpenMPI refuses to run as root without these (test clusters and containers run as root).
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
$overcommit_env
echo "fwimpi: SLURM job $${SLURM_JOB_ID:-?} on $${SLURM_JOB_NODELIST:-?}, $ranks rank(s): $job"
status=0
# $$command: `srun ... fwimpi.cli exec JOB`, or with the site's isolation: `fwimpi.cli steps JOB`,
# which runs every event as its own job step (retried), then the rest of the job
$command || status=$$?
echo "fwimpi: exit status $$status"
exit $$status
