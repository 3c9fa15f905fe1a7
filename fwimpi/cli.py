"""The ``fwimpi`` command line.

Exit status: 0 on success, 2 for bad input (one-line message naming the field, nothing
written), 1 for any other failure.
"""

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from pathlib import Path

from . import __version__
from .errors import ConfigError, FwimpiError

log = logging.getLogger("fwimpi")

EPILOG = """examples:
  fwimpi validate jobs/mapping_tutorial.yaml     check a job spec, print mesh size and time step
  fwimpi run jobs/mapping_tutorial.yaml          run it: receivers, misfit, gradients, mappings
  fwimpi run jobs/mapping_tutorial.yaml --forward-only
  fwimpi run jobs/mapping_tutorial.yaml --site slurm --no-wait   submit to SLURM
  fwimpi run jobs/inversion_true.yaml --forward-only      observed data from a true model
  fwimpi invert jobs/inversion.yaml                       the inversion: iterates, plots
  fwimpi status jobs/runs/mapping-tutorial                      state of that job
  fwimpi compression-study jobs/mapping_tutorial.yaml --intervals 1 5 10 20
  fwimpi plot jobs/runs/mapping-tutorial/gradient.h5 --field VP --clip 0.1
  fwimpi plot jobs/runs/mapping-tutorial/events/event/receivers.h5
  fwimpi export jobs/runs/mapping-tutorial/model.h5   write model.vtu beside it
  fwimpi export jobs/runs/mapping-tutorial/events/event/receivers.h5   event.sgy beside it
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fwimpi", description="Full-waveform inversion with spectral elements.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"fwimpi {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check a job spec and summarise what it would run",
                       description="Check a job spec without running it: schema, model, "
                       "mesh size, CFL time step, plausibility (units, wavelet band, duration). "
                       "Prints a short summary with memory and time estimates and any "
                       "warnings; --json prints the resolved settings and derived sizes.")
    v.add_argument("job", type=Path, help="YAML job spec")
    v.add_argument("--json", action="store_true",
                   help="print the resolved settings and derived sizes as JSON")

    for name, text in (("run", "run a job through its site (all its products, summary.json)"),
                       ("invert", "run the job's inversion through its site (iterates, "
                                  "summary.json)"),
                       ("exec", "run a job in this process (what a site launches)")):
        r = sub.add_parser(name, help=text, description=text)
        r.add_argument("job", type=Path, help="YAML job spec")
        if name != "invert":
            r.add_argument("--forward-only", action="store_true",
                           help="compute receivers and misfit, no gradient")
        r.add_argument("--concurrent-events", type=int, metavar="K",
                       help="simulate K events at once, each on ranks_per_job ranks "
                            "(default: the spec's concurrent_events)")
        if name == "exec":
            r.add_argument("--invert", action="store_true", help="run the inversion block")
            r.add_argument("--events", help="run only these events (comma-separated), nothing "
                                            "after them (a job step of a site with isolation)")
        else:
            r.add_argument("--site", help="site name: a user site (FWIMPI_SITES, "
                                          "~/.config/fwimpi/sites) or a shipped one "
                                          "(default: the spec's)")
            r.add_argument("--ranks", type=int, help="override ranks_per_job")
            r.add_argument("--no-wait", action="store_true",
                           help="SLURM: submit, print the job id and return")

    sp = sub.add_parser("steps", help="run a job as one job step per event (SLURM isolation)",
                        description="What the batch script of a SLURM site with `isolation: "
                        "event` runs inside its allocation: each event as its own `srun` job "
                        "step (K at a time, each retried), then one step for the rest of the job.")
    sp.add_argument("job", type=Path, help="YAML job spec")
    sp.add_argument("--site", required=True, help="the SLURM site (its launcher and arguments)")
    sp.add_argument("--ranks-per-job", type=int, required=True)
    sp.add_argument("--concurrent-events", type=int, default=1)
    sp.add_argument("--forward-only", action="store_true")

    st = sub.add_parser("status", help="state of a job submitted to SLURM",
                        description="Print the SLURM state and the log's tail of the job whose "
                        "output folder is given (what `fwimpi run --site slurm` recorded).")
    st.add_argument("output", type=Path, help="the job's output folder")

    cs = sub.add_parser(
        "compression-study", help="gradients for several sampling intervals, compared",
        description="Run the job's gradient with each forward_wavefield_sampling_interval into "
        "<output>/compression/interval_<N>/ and print the relative L2 difference of the raw "
        "gradient and of the mapped gradient against the first interval (the tutorial's study).")
    cs.add_argument("job", type=Path, help="YAML job spec (with a misfit_configuration)")
    cs.add_argument("--intervals", type=int, nargs="+", default=[1, 5, 10, 20])
    cs.add_argument("--mapping", help="mapping to compare (default: the spec's last)")
    cs.add_argument("--ranks", type=int, help="override ranks_per_job")

    pl = sub.add_parser("plot", help="plot a model, gradient or receivers file as PNG",
                        description="Plot a field of an fwimpi mesh file (gradients as kernels "
                        "gradient/mass, symmetric colour scale) or the traces of a receivers file.")
    pl.add_argument("file", type=Path, help="HDF5 file (model, gradient, receivers)")
    pl.add_argument("-o", "--output", type=Path, help="PNG path (default: beside the input)")
    pl.add_argument("--field", help="field to plot (default: the first; phi for receivers)")
    pl.add_argument("--clip", type=float, help="clip the colour scale at this fraction of the max")
    pl.add_argument("--no-crop", action="store_true", help="show the absorbing margins too")
    pl.add_argument("--event", help="event of a receivers file (default: the first)")
    pl.add_argument("--observed", type=Path, help="receivers file of observed data to overlay "
                    "on a receivers file's traces (matched by station, else position)")

    e = sub.add_parser("export", help="convert fwimpi files: mesh to VTU, receivers to and "
                       "from SEG-Y",
                       description="A mesh file (model, gradient) becomes VTU beside it; a "
                       "receivers file one SEG-Y file per event ({event}.sgy beside it), geometry "
                       "in the trace headers; a SEG-Y/SU file a receivers file of one event. "
                       "Existing files are never overwritten.")
    e.add_argument("file", type=Path, help="HDF5 mesh or receivers file, or SEG-Y/SU file")
    e.add_argument("-o", "--output", type=Path,
                   help="target (default: beside the input; SEG-Y: a pattern with {event})")
    e.add_argument("--field", help="receiver field to write or read as (default: phi)")
    e.add_argument("--event", help="only this event (SEG-Y in: the event's name; default: "
                   "the file's stem)")
    e.add_argument("--dt", type=float, help="SEG-Y sample interval in seconds (default: the "
                   "simulation's, rounded down to whole microseconds); traces are resampled")
    e.add_argument("--dimension", type=int, choices=(2, 3), default=2,
                   help="SEG-Y in: read a 2D line (x, elevation; default) or 3D positions "
                   "(x, y, elevation)")
    return p


def _setup_logging(quiet: bool) -> None:
    """INFO logs to stderr, WARNING and up with ``-q``; the ranks a quiet launcher starts are
    quiet too (``FWIMPI_QUIET=1`` in their environment)."""
    quiet = quiet or os.environ.get("FWIMPI_QUIET") == "1"
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
        format="[%(asctime)s] %(levelname)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
    )


def _validate(args) -> int:
    from .jobs.plan import plan_job, summary_text
    from .jobs.spec import load_job_spec

    spec = load_job_spec(args.job)
    plan = plan_job(spec, spec.ranks_per_job)
    derived, lines = plan.describe(), []
    if spec.inversion is not None:  # what `fwimpi invert` checks too: bounds, its time step
        inverting = plan_job(spec, spec.ranks_per_job, inversion=True)
        derived["inversion"] = {"dt": inverting.axis.dt, "n_steps": inverting.axis.n_steps}
        lines.append(f"inversion: {spec.inversion.iterations} updates at dt = "
                     f"{inverting.axis.dt:.4g} s ({inverting.axis.n_steps:,} steps), stable "
                     f"for the upper VP bound")
    if args.json:
        print(json.dumps({"job": spec.resolved, "derived": derived}, indent=2))
    else:
        print(summary_text(spec, plan, spec.ranks_per_job, spec.misfit is not None))
        for line in lines:
            print(line)
    return 0


#: The most ranks the local site starts: beyond a few per core they only wait for each other.
MAX_LOCAL_RANKS_PER_CORE = 8


def _run(args) -> int:
    """Validate, then run in this process (one rank) or launch ``ranks`` through the site."""
    from .jobs.plan import plan_job
    from .jobs.signals import stop_on_signals
    from .jobs.sites import load_site
    from .jobs.spec import load_job_spec
    from .jobs.state import (LOCK_ENV, JobState, OutputLock, check_output_folder,
                             product_hashes)

    spec = load_job_spec(args.job)
    if args.ranks is not None and args.ranks < 1:
        raise ConfigError(f"--ranks: must be a positive integer, got {args.ranks}")
    ranks = args.ranks or spec.ranks_per_job
    concurrent = getattr(args, "concurrent_events", None)
    if concurrent is not None and concurrent < 1:
        raise ConfigError(f"--concurrent-events: must be a positive integer, got {concurrent}")
    concurrent = concurrent or spec.concurrent_events
    site = load_site(args.site or spec.site)
    invert = getattr(args, "command", "run") == "invert"
    if invert and spec.inversion is None:
        raise ConfigError("inversion: the job spec has no inversion block (fwimpi invert runs it)")
    args.forward_only = getattr(args, "forward_only", False)
    gradients = spec.misfit is not None and not args.forward_only
    # every input check, before any MPI work or output
    plan = plan_job(spec, ranks, gradients, inversion=invert)
    for warning in plan.warnings:
        log.warning("%s", warning)
    check_output_folder(spec.output)
    if site.kind == "slurm":  # the batch job's `fwimpi exec` takes the output lock
        return _run_on_slurm(args, spec, site, ranks, concurrent)
    _check_local_resources(ranks * concurrent, plan.memory_per_rank,
                           "--ranks" if args.ranks else "ranks_per_job")
    state = JobState.read(spec.output, product_hashes(spec, gradients))
    if not invert and state.all_done() and (spec.output / "summary.json").is_file():
        log.info("all products of job %s are already computed; not run again", spec.name)
        print(json.dumps(json.loads((spec.output / "summary.json").read_text())["simulation"],
                         indent=2))
        return 0
    with stop_on_signals(), OutputLock(spec.output, spec.name) as lock:
        os.environ[LOCK_ENV] = lock.token  # the ranks started below find the lock theirs
        args.invert, args.concurrent_events = invert, concurrent
        if ranks * concurrent == 1:
            return _exec(args, in_process=True)
        extra = ("--forward-only",) if args.forward_only else ("--invert",) if invert else ()
        extra += ("--concurrent-events", str(concurrent))
        command = site.command(ranks * concurrent, args.job.resolve(), extra)
        log.info("launching: %s", " ".join(command))
        code = _wait_for(command, quiet=getattr(args, "quiet", False))
    if code == 0:
        _print_outcome(json.loads((spec.output / "summary.json").read_text()))
    return 1 if code < 0 else code


def _print_outcome(summary: dict) -> None:
    """What a run prints: the sizes and times; for an inversion, its misfit history."""
    print(json.dumps(summary["simulation"], indent=2))
    inversion = summary.get("inversion")
    if inversion:
        first = inversion["iterations"][0]["misfit"]
        for item in inversion["iterations"]:
            print(f"iteration {item['iteration']:3d} stage {item['stage']}: misfit "
                  f"{item['misfit']:.6e} ({item['misfit'] / first:.4f} of the initial), "
                  f"{item['simulations']} simulation(s)")
        print(f"final model: {inversion['final_model']}")


def _wait_for(command: list[str], grace: float = 30.0, quiet: bool = False) -> int:
    """Run ``command`` (quiet: its ranks log warnings only) and return its exit status; on
    SIGTERM or SIGINT pass the signal on, give it ``grace`` seconds to stop (then kill it),
    and raise Interrupted."""
    import subprocess

    from .jobs.signals import Interrupted

    env = {**os.environ, "FWIMPI_QUIET": "1"} if quiet else None
    proc = subprocess.Popen(command, env=env)
    try:
        return proc.wait()
    except Interrupted as stop:
        log.warning("%s: stopping the job's processes", stop)
        proc.send_signal(stop.signum)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise


def _check_local_resources(ranks: int, memory_per_rank: int, field: str) -> None:
    """Refuse more ranks or memory than this machine has for the local site."""
    cores = os.cpu_count() or 1
    if ranks > MAX_LOCAL_RANKS_PER_CORE * cores:
        raise ConfigError(f"{field}: {ranks} ranks on this machine's {cores} cores (the local "
                          f"site runs at most {MAX_LOCAL_RANKS_PER_CORE * cores}); use fewer "
                          f"ranks or a cluster site")
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if ranks * memory_per_rank > physical:
        raise ConfigError(f"{field}: the job needs about {ranks * memory_per_rank / 2**30:.1f} "
                          f"GB on {ranks} ranks, this machine has {physical / 2**30:.1f} GB; "
                          f"use a coarser mesh or a cluster site")


def _run_on_slurm(args, spec, site, ranks: int, concurrent: int = 1) -> int:
    from .jobs.slurm import run_on_slurm, status

    job_id, state = run_on_slurm(site, args.job.resolve(), spec.name, spec.output, ranks,
                                 args.forward_only, wait=not getattr(args, "no_wait", False),
                                 invert=getattr(args, "command", "run") == "invert",
                                 concurrent_events=concurrent)
    if getattr(args, "no_wait", False):
        print(job_id)
        return 0
    print(f"SLURM job {job_id}: {state}")
    if state != "COMPLETED":
        print(status(spec.output)["log_tail"], file=sys.stderr)
        return 1
    return 0


def _steps(args) -> int:
    """Run every pending event as its own job step, ``--concurrent-events`` at a time, each
    retried ``retries`` times; then the rest of the job (sums, mappings, summary) as one more
    step. Ends non-zero, naming them, when events still failed."""
    import subprocess
    import time

    from .jobs.sites import load_site
    from .jobs.spec import load_job_spec
    from .jobs.state import LOCK_ENV, JobState, OutputLock, product_hashes

    spec = load_job_spec(args.job)
    site = load_site(args.site)
    if site.kind != "slurm":
        raise ConfigError(f"--site: '{args.site}' is not a SLURM site")
    ranks, slots = args.ranks_per_job, max(1, args.concurrent_events)
    gradients = spec.misfit is not None and not args.forward_only
    state = JobState.read(spec.output, product_hashes(spec, gradients))
    pending = [e.name for e in spec.events if state.done(f"event/{e.name}") is None]
    extra = ["--forward-only"] if args.forward_only else []

    def step(events: list[str]) -> list[str]:
        tail = ["--events", ",".join(events)] if events else []
        return [site.launcher, *site.arguments, "--exact", "-n", str(ranks), sys.executable,
                "-m", "mpi4py", "-m", "fwimpi.cli", "exec", str(args.job.resolve()), *extra,
                *tail]

    with OutputLock(spec.output, spec.name) as lock:
        env = {**os.environ, LOCK_ENV: lock.token}
        attempts = {name: 0 for name in pending}
        queue, running, failed = list(pending), {}, {}
        while queue or running:
            while queue and len(running) < slots:
                name = queue.pop(0)
                attempts[name] += 1
                log.info("event %s: job step, attempt %d of %d", name, attempts[name],
                         spec.retries + 1)
                running[name] = subprocess.Popen(step([name]), env=env)
            for name, proc in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[name]
                if code == 0:
                    continue
                if attempts[name] <= spec.retries:
                    log.warning("event %s: its job step failed (exit status %d); retried", name,
                                code)
                    queue.append(name)
                else:
                    failed[name] = code
            time.sleep(0.2)
        if failed:
            raise FwimpiError(f"{len(failed)} of {len(spec.events)} event(s) failed after "
                              f"{spec.retries + 1} attempt(s): " + ", ".join(
                                  f"{n} (exit status {c})" for n, c in failed.items())
                              + "; the other events are done, a rerun computes only these")
        log.info("every event is done; the rest of the job runs as one job step")
        code = subprocess.run(step([]), env=env).returncode
    return 1 if code < 0 else code


def _status(args) -> int:
    from .jobs.slurm import status

    record = status(args.output)
    print(f"SLURM job {record['job_id']}: {record['state']}")
    if record.get("log_tail"):
        print(record["log_tail"])
    return 0


def _exec(args, in_process: bool = False) -> int:
    """Run the job on COMM_WORLD (what a site launches). An error on any rank, or SIGTERM or
    SIGINT, ends every rank: temporary files removed, a one-line reason, a non-zero status."""

    # Debian's h5py loads its MPI build only when it sees an MPI launcher's variables,
    # which srun does not set (DESIGN.md): say so before anything imports h5py.
    os.environ.setdefault("H5PY_ALWAYS_USE_MPI", "1")
    from mpi4py import MPI

    from .jobs.execution import run_job
    from .jobs.inversion import run_inversion
    from .jobs.signals import Interrupted, stop_on_signals
    from .jobs.spec import load_job_spec, read_job_text
    from .parallel.collective import decide_on_root

    comm = MPI.COMM_WORLD
    spec, pids = None, sorted(set(comm.allgather(os.getpid())))  # temp names carry a group root's
    try:
        with stop_on_signals():
            # one rank reads the spec: every rank parses the same text
            spec = load_job_spec(args.job, decide_on_root(comm, lambda: read_job_text(args.job)))
            with _collective_lock(comm, spec):
                concurrent = getattr(args, "concurrent_events", None)
                if getattr(args, "invert", False):
                    summary = run_inversion(spec, comm, concurrent)
                else:
                    only = getattr(args, "events", None)
                    summary = run_job(spec, comm, forward_only=args.forward_only,
                                      concurrent_events=concurrent,
                                      only_events=None if only is None else tuple(
                                          e for e in only.split(",") if e))
    except BaseException as err:  # noqa: BLE001 - any error must end every rank, never hang
        from .mesh.files import remove_temp_files

        if spec is not None:
            for pid in pids:
                try:
                    remove_temp_files(spec.output, pid)
                except OSError:
                    pass
        if comm.size == 1:
            raise
        if isinstance(err, Interrupted):
            code = err.exit_status
        elif isinstance(err, SystemExit):
            code = err.code if isinstance(err.code, int) and err.code else 1
        else:
            code = 2 if isinstance(err, ConfigError) else 1
        if not isinstance(err, (FwimpiError, OSError, MemoryError, SystemExit, Interrupted,
                                KeyboardInterrupt)):
            traceback.print_exc()  # a bug: show where
        word = "error" if code == 2 else "interrupted" if isinstance(err, Interrupted) else "failed"
        print(f"fwimpi: {word} (rank {comm.rank}): {_one_line(err)}", file=sys.stderr, flush=True)
        comm.Abort(code)
    if summary is not None and in_process:
        _print_outcome(summary)
    return 0


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, (ConfigError,)) or not text:
        return text or type(err).__name__
    return f"{type(err).__name__}: {text}" if not isinstance(err, FwimpiError) else text


def _compression_study(args) -> int:
    """Run the job once per interval (through ``fwimpi run``) and compare the gradients."""
    import copy

    import numpy as np
    import yaml

    from .jobs.plotting import plot_compression_study
    from .jobs.spec import load_job_data, load_job_spec, parse_job_spec
    from .mesh.files import read_mesh_h5, write_json_atomic

    spec = load_job_spec(args.job)
    if spec.misfit is None:
        raise ConfigError("misfit_configuration: a compression study needs gradients")
    if not args.intervals or any(i < 1 for i in args.intervals):
        raise ConfigError(f"--intervals: must be positive integers, got {args.intervals}")
    mapping = args.mapping or (spec.mappings[-1].name if spec.mappings else None)
    if mapping is not None and mapping not in {m.name for m in spec.mappings}:
        raise ConfigError(f"--mapping: no mapping '{mapping}' in the job spec")
    base = load_job_data(args.job)  # the loader `run` uses
    study = spec.output / "compression"
    runs = {}
    for interval in args.intervals:
        data = copy.deepcopy(base)
        data.setdefault("wavefield_compression", {})
        data["wavefield_compression"] = dict(data["wavefield_compression"] or {},
                                             forward_wavefield_sampling_interval=interval)
        data["output"] = str(study / f"interval_{interval}")
        data.pop("smoothing", None)
        parse_job_spec(data, args.job.parent)  # the variant is valid before it runs
        job = study / f"interval_{interval}.yaml"
        job.parent.mkdir(parents=True, exist_ok=True)
        job.write_text(yaml.safe_dump(data, sort_keys=False))
        code = _run(argparse.Namespace(job=job, forward_only=False, site=None, ranks=args.ranks,
                                       no_wait=False))
        if code != 0:
            return code
        summary = json.loads((study / f"interval_{interval}" / "summary.json").read_text())
        runs[interval] = study / f"interval_{interval}", summary
    ref_dir, ref = runs[args.intervals[0]]
    rows = []
    for interval, (folder, summary) in runs.items():
        row = {"interval": interval}
        for label, rel, ref_rel in (("raw", summary["gradient"], ref["gradient"]),) + (
                (("mapped", summary["mappings"][mapping], ref["mappings"][mapping]),)
                if mapping else ()):
            a = read_mesh_h5(folder / rel).fields["VP"]
            b = read_mesh_h5(ref_dir / ref_rel).fields["VP"]
            row[label] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
        rows.append(row)
    figure = study / "study.png"
    shown = "mapped" if mapping else "raw"
    plot_compression_study(
        [(f"interval {row['interval']}" + (" (reference)" if k == 0 else
                                           f": {row[shown]:.2e} relative L2")
          , folder / (summary["mappings"][mapping] if mapping else summary["gradient"]))
         for k, (row, (folder, summary)) in enumerate(zip(rows, runs.values()))],
        "VP", figure, f"dJ/dVP{f' mapped by {mapping}' if mapping else ''}: forward wavefield "
                      f"kept every N steps")
    write_json_atomic(study / "study.json", {"reference_interval": args.intervals[0],
                                             "mapping": mapping, "rows": rows,
                                             "figure": "study.png"})
    print(f"relative L2 difference of dJ/dVP against interval {args.intervals[0]}")
    print(f"{'interval':>8} {'raw gradient':>13}" + (f" {mapping + ' (mapped)':>16}" if mapping else ""))
    for row in rows:
        print(f"{row['interval']:>8d} {row['raw']:>13.3e}"
              + (f" {row['mapped']:>16.3e}" if mapping else ""))
    print(f"figure: {figure}")
    return 0


@contextlib.contextmanager
def _collective_lock(comm, spec):
    """Rank 0 checks the output folder, takes its lock (or finds it held by its launcher),
    names every rank's process in it and removes the temp files of a killed run; every rank
    raises if it cannot."""
    import socket

    from .jobs.state import OutputLock, check_output_folder, remove_stale_temp_files
    from .parallel.collective import decide_on_root

    output = spec.output
    lock = OutputLock(output, spec.name)
    processes = comm.gather((socket.gethostname(), os.getpid()), root=0)

    def take() -> None:
        check_output_folder(output)
        lock.__enter__()
        try:
            lock.add_processes(processes)
            for tmp in remove_stale_temp_files(output):
                log.info("removed %s, left by an interrupted run", tmp)
        except OSError as err:
            lock.__exit__(None, None, None)
            raise ConfigError(f"output: cannot prepare {output}: {err.strerror or err}") from None

    decide_on_root(comm, take)
    try:
        yield
    finally:
        if comm.rank == 0:
            lock.__exit__(None, None, None)


def _plot(args) -> int:
    import h5py

    from .jobs.plotting import plot_field, plot_traces

    if not args.file.is_file():
        raise ConfigError(f"file: no such file {args.file}")
    try:
        with h5py.File(args.file, "r") as f:
            fmt = str(f.attrs.get("format", ""))
    except OSError as err:
        raise ConfigError(f"file: {args.file} is not an HDF5 file: {err}") from None
    suffix = f"_{args.field}" if args.field else ""
    suffix += f"_clip{args.clip:g}" if args.clip else ""
    target = args.output or args.file.with_name(f"{args.file.stem}{suffix}.png")
    if not (fmt.startswith("fwimpi-receivers") or fmt.startswith("fwimpi-mesh")):
        raise ConfigError(f"file: {args.file} is not an fwimpi mesh or receivers file")
    try:
        if fmt.startswith("fwimpi-receivers"):
            plot_traces(args.file, target, args.event, args.field or "phi", args.observed)
        else:
            plot_field(args.file, target, args.field, args.clip, crop=not args.no_crop)
    except (OSError, KeyError, ValueError, TypeError, IndexError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"file: {args.file} cannot be plotted: {_one_line(err)}") from None
    print(target)
    return 0


def _export(args) -> int:
    from .jobs.export import export_file

    for path in export_file(args.file, args.output, args.field, args.event, args.dt,
                            dimension=args.dimension):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.quiet)
    commands = {"validate": _validate, "run": _run, "invert": _run, "exec": _exec,
                "steps": _steps,
                "plot": _plot,
                "export": _export, "compression-study": _compression_study, "status": _status}
    from .jobs.signals import Interrupted

    try:
        return commands[args.command](args)
    except ConfigError as err:
        print(f"fwimpi: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"fwimpi: {err}: the job stopped; finished products are kept and a rerun "
              f"resumes", file=sys.stderr)
        return err.exit_status
    except KeyboardInterrupt:
        print("fwimpi: interrupted by SIGINT", file=sys.stderr)
        return 130
    except FwimpiError as err:
        print(f"fwimpi: failed: {err}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as err:
        print(f"fwimpi: failed: {_one_line(err)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
