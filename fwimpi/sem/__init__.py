"""Pure spectral-element numerics (numpy/numba only): no MPI, no files."""
