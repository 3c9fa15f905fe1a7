"""The benchmarks' case: the tutorial job (``jobs/mapping_tutorial.yaml``, or in 3D
``jobs/tutorial_3d.yaml``) as a ``fwimpi.Simulation``, its mesh refined ``refine`` times per
axis (element size 75/refine m in 2D, 150/refine m in 3D), set up exactly as ``fwimpi run``
sets it up."""

from pathlib import Path

import yaml

from fwimpi.api import Simulation
from fwimpi.jobs.spec import parse_job_spec
from fwimpi.sem.timestepper import TimeAxis

JOB = Path(__file__).resolve().parents[1] / "jobs" / "mapping_tutorial.yaml"
JOB3D = JOB.parent / "tutorial_3d.yaml"


def tutorial_spec(refine: float = 1, end_time: float | None = None, dimension: int = 2):
    """The tutorial's JobSpec (``dimension`` 2 or 3) with ``elements_per_wavelength`` times
    ``refine``."""
    job = JOB3D if dimension == 3 else JOB
    data = yaml.safe_load(job.read_text())
    sim = data["simulation_configuration"]
    sim["elements_per_wavelength"] *= refine
    if end_time is not None:
        sim["end_time_in_seconds"] = end_time
    return parse_job_spec(data, job.parent)


def tutorial(comm, refine: float = 1, end_time: float | None = None,
             steps: int | None = None, dimension: int = 2) -> Simulation:
    """The tutorial's Simulation on ``comm`` (collective): ``end_time`` (s) or ``steps``
    at the job's CFL time step."""
    sim = Simulation(tutorial_spec(refine, end_time, dimension), comm)
    if steps is not None:
        sim.close()
        sim = Simulation(sim.spec, comm, plan=sim.plan, axis=TimeAxis(sim.plan.axis.dt, steps))
    return sim
