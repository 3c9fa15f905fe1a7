"""fwimpi: MPI-parallel full-waveform inversion with spectral elements."""

__version__ = "0.1.0"
