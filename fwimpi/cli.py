"""The ``fwimpi`` command line.

Exit status: 0 on success, 2 for bad input (one-line message naming the field, nothing
written), 1 for any other failure.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import ConfigError, FwimpiError

EPILOG = """examples:
  fwimpi validate jobs/mapping_tutorial.yaml     check a job spec, print mesh size and time step
  fwimpi run jobs/mapping_tutorial.yaml          run it (receivers, misfit, summary.json)
  fwimpi run jobs/mapping_tutorial.yaml --forward-only
  fwimpi export runs/mapping-tutorial/model.h5   write model.vtu beside it for ParaView
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fwimpi", description="Full-waveform inversion with spectral elements.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"fwimpi {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check a job spec and print the resolved settings",
                       description="Check a job spec without running it: schema, model, "
                       "mesh size, CFL time step. Prints the resolved settings as JSON.")
    v.add_argument("job", type=Path, help="YAML job spec")

    for name, text in (("run", "run a job (receivers, misfit; summary.json)"),
                       ("exec", "run a job in this process (what a site launches)")):
        r = sub.add_parser(name, help=text, description=text)
        r.add_argument("job", type=Path, help="YAML job spec")
        r.add_argument("--forward-only", action="store_true",
                       help="compute receivers and misfit, no gradient")
        if name == "run":
            r.add_argument("--site", help="site name under configs/sites (default: the spec's)")
            r.add_argument("--ranks", type=int, help="override ranks_per_job")

    e = sub.add_parser("export", help="convert an fwimpi mesh HDF5 file to VTU",
                       description="Write the mesh and fields of an fwimpi HDF5 file as VTU.")
    e.add_argument("file", type=Path, help="HDF5 mesh file (model, gradient)")
    e.add_argument("-o", "--output", type=Path, help="VTU path (default: beside the input)")
    return p


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, stream=sys.stderr,
        format="[%(asctime)s] %(levelname)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
    )


def _validate(args) -> int:
    from .jobs.runner import describe, prepare
    from .jobs.spec import load_job_spec

    spec = load_job_spec(args.job)
    setup = prepare(spec)
    print(json.dumps({"job": spec.resolved, "derived": describe(setup)}, indent=2))
    return 0


def _run(args) -> int:
    from .jobs.runner import run_job
    from .jobs.spec import load_job_spec

    spec = load_job_spec(args.job)
    if getattr(args, "ranks", None) is not None and args.ranks < 1:
        raise ConfigError(f"--ranks: must be a positive integer, got {args.ranks}")
    ranks = getattr(args, "ranks", None) or spec.ranks_per_job
    if ranks > 1:
        logging.getLogger("fwimpi").warning(
            "ranks_per_job = %d: this version runs on one rank (domain decomposition "
            "is not implemented yet)", ranks)
    summary = run_job(spec, forward_only=args.forward_only)
    print(json.dumps(summary["simulation"], indent=2))
    return 0


def _export(args) -> int:
    from .mesh.files import read_mesh_h5, write_vtu

    if not args.file.is_file():
        raise ConfigError(f"file: no such file {args.file}")
    try:
        mesh = read_mesh_h5(args.file)
    except (OSError, ValueError) as err:
        raise ConfigError(f"file: {args.file} is not an fwimpi mesh file: {err}") from None
    target = args.output or args.file.with_suffix(".vtu")
    write_vtu(target, mesh.points, mesh.cells, mesh.order, mesh.fields, mesh.mass)
    print(target)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.quiet)
    commands = {"validate": _validate, "run": _run, "exec": _run, "export": _export}
    try:
        return commands[args.command](args)
    except ConfigError as err:
        print(f"fwimpi: error: {err}", file=sys.stderr)
        return 2
    except FwimpiError as err:
        print(f"fwimpi: failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
