"""Benchmark of the inversion example (jobs/inversion_true.yaml, jobs/inversion.yaml): per
iteration, the misfit relative to the initial one, the relative L2 error of VP in the domain
(against the true model, relative to the starting model's), the simulations spent (forward +
adjoint runs of one event; an evaluation of the model runs every event) and the wall time.

Goals (issue 11) after 20 updates: misfit ratio <= 0.02, model error reduced by >= 50%, at
most 1.3 model evaluations beyond the one gradient per iteration on average (line-search cost).
Runs in a temporary folder (or --keep DIR); `--ranks N` overrides ranks_per_job.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=None)
    p.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = p.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="fwimpi-bench-inversion-"))
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("inversion_true.yaml", "inversion.yaml"):
        shutil.copy(ROOT / "jobs" / name, folder / name)
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    ranks = ["--ranks", str(args.ranks)] if args.ranks else []
    fwimpi = [sys.executable, "-m", "fwimpi.cli", "-q"]
    for command in (["run", str(folder / "inversion_true.yaml"), "--forward-only"],
                    ["invert", str(folder / "inversion.yaml")]):
        subprocess.run([*fwimpi, *command, *ranks], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    out = folder / "runs" / "inversion"
    summary = json.loads((out / "summary.json").read_text())
    iterations = summary["inversion"]["iterations"]

    from fwimpi.jobs.spec import load_job_spec
    from fwimpi.mesh.model import ModelEvaluator

    true_spec = load_job_spec(folder / "inversion_true.yaml")
    with h5py.File(out / iterations[0]["model"]) as f:
        points = f["mesh/points"][...]
        mass = f["mesh/mass"][...]
    domain = true_spec.domain.box
    inside = ((points[:, 0] >= domain.x0) & (points[:, 0] <= domain.x1)
              & (points[:, 1] >= domain.y0) & (points[:, 1] <= domain.y1))
    vp_true = ModelEvaluator(true_spec.model, domain)(points)["VP"]
    n_events = len(true_spec.events)

    def error(path):
        with h5py.File(out / path) as f:
            vp = f["fields/VP"][...]
        d = (vp - vp_true)[inside]
        return float(np.sqrt(np.sum(mass[inside] * d**2)))

    e0, j0 = error(iterations[0]["model"]), iterations[0]["misfit"]
    print(f"{'iteration':>9} {'misfit/initial':>15} {'model error':>12} {'simulations':>12} "
          f"{'evaluations':>12} {'wall s':>8}")
    for it in iterations:
        print(f"{it['iteration']:>9d} {it['misfit'] / j0:>15.4f} {error(it['model']) / e0:>12.3f} "
              f"{it['simulations']:>12d} {it['simulations'] / n_events:>12.2f} "
              f"{it.get('seconds', float('nan')):>8.1f}")
    updates = iterations[1:]
    extra = np.mean([it["simulations"] / n_events - 1 for it in updates]) if updates else 0.0
    final = iterations[-1]
    print(f"after {len(updates)} updates: misfit ratio {final['misfit'] / j0:.4f} (goal <= 0.02), "
          f"model error {error(final['model']) / e0:.3f} of the start (goal <= 0.5), "
          f"{extra:.2f} evaluations beyond the gradient per iteration (goal <= 1.3); "
          f"{summary['simulation']['ranks']} rank(s), {summary['simulation']['n_points']} points")
    if args.keep is None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
