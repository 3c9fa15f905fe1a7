"""The benchmarks' case: the tutorial job (``jobs/mapping_tutorial.yaml``) as a
``fwimpi.Simulation``, its mesh refined ``refine`` times per axis (element size 75/refine m),
set up exactly as ``fwimpi run`` sets it up."""

from pathlib import Path

import yaml

from fwimpi.api import Simulation
from fwimpi.jobs.spec import parse_job_spec
from fwimpi.sem.timestepper import TimeAxis

JOB = Path(__file__).resolve().parents[1] / "jobs" / "mapping_tutorial.yaml"


def tutorial_spec(refine: int = 1, end_time: float | None = None):
    """The tutorial's JobSpec with ``elements_per_wavelength`` times ``refine``."""
    data = yaml.safe_load(JOB.read_text())
    sim = data["simulation_configuration"]
    sim["elements_per_wavelength"] *= refine
    if end_time is not None:
        sim["end_time_in_seconds"] = end_time
    return parse_job_spec(data, JOB.parent)


def tutorial(comm, refine: int = 1, end_time: float | None = None,
             steps: int | None = None) -> Simulation:
    """The tutorial's Simulation on ``comm`` (collective): ``end_time`` (s) or ``steps``
    at the job's CFL time step."""
    sim = Simulation(tutorial_spec(refine, end_time), comm)
    if steps is not None:
        sim.close()
        sim = Simulation(sim.spec, comm, plan=sim.plan, axis=TimeAxis(sim.plan.axis.dt, steps))
    return sim
