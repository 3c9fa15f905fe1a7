"""Domain decomposition, PETSc vectors and halo exchange, rank-parallel HDF5."""
