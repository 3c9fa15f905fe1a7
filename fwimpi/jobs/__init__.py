"""Job specs, planning and running a job on ranks, sites (local, SLURM), the result cache, plots."""
