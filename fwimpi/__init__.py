"""fwimpi: MPI-parallel full-waveform inversion with spectral elements.

``import fwimpi`` is light (no MPI); the Python API loads on first use:
``fwimpi.Simulation`` (a job's solver on a communicator, ``fwimpi.api``) and
``fwimpi.load_job_spec`` (a YAML job spec into its objects, ``fwimpi.jobs.spec``).
"""

__version__ = "0.3.0"

__all__ = ("Simulation", "load_job_spec", "parse_job_spec", "__version__")


def __getattr__(name: str):
    if name == "Simulation":
        from .api import Simulation

        return Simulation
    if name in ("load_job_spec", "parse_job_spec"):
        from .jobs import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'fwimpi' has no attribute {name!r}")
