"""Benchmark of events at once: 4 events of the tutorial (its mesh, model, receivers and
misfit, sources at four positions), ranks_per_job 1, ``concurrent_events`` K = 1 and K = 2 on
this machine, runs interleaved (K = 1, K = 2, K = 1, ...), each into a fresh folder.

Prints, per run and as the median ratio K=2 / K=1: the wall time of the time loops (summary's
forward + adjoint seconds: for K groups side by side the slowest group's) and of the whole
``fwimpi run``. Goals (issue 12): time loops <= 0.55, whole job <= 0.6. The whole job also pays
fixed costs that K does not divide (validation in the launcher, MPI start-up and imports,
teardown: about 1.5 s here), so its ratio approaches the loops' as jobs grow (``--events``).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def job(folder: Path, events: int = 4) -> Path:
    data = yaml.safe_load((ROOT / "jobs" / "mapping_tutorial.yaml").read_text())
    event = data["events"][0]
    data["events"] = [{**event, "event_name": f"shot_{int(x)}",
                       "sources": [{**event["sources"][0], "x": float(x)}]}
                      for x in np.linspace(500.0, 2600.0, events)]
    data["ranks_per_job"] = 1
    for key in ("mappings", "smoothing"):
        data.pop(key)
    data["output"] = "out"
    path = folder / "events.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run(folder: Path, k: int, events: int) -> tuple[float, float]:
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    path = job(folder, events)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fwimpi.cli", "-q", "run", str(path),
                    "--concurrent-events", str(k)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    whole = time.perf_counter() - start
    sim = json.loads((folder / "out" / "summary.json").read_text())["simulation"]
    return sim["forward_seconds"] + sim["adjoint_seconds"], whole


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--events", type=int, default=4, help="events of the job (default 4)")
    args = p.parse_args()
    loops = {1: [], 2: []}
    wholes = {1: [], 2: []}
    print(f"{'K':>3} {'time loops s':>13} {'whole job s':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for k in (1, 2):
                folder = Path(tmp) / f"r{r}k{k}"
                folder.mkdir()
                loop, whole = run(folder, k, args.events)
                loops[k].append(loop)
                wholes[k].append(whole)
                print(f"{k:>3} {loop:>13.3f} {whole:>12.3f}", flush=True)
    ratio_loops = statistics.median(a / b for a, b in zip(loops[2], loops[1]))
    ratio_whole = statistics.median(a / b for a, b in zip(wholes[2], wholes[1]))
    print(f"K=2 / K=1 (median of interleaved pairs): time loops {ratio_loops:.3f} "
          f"(goal <= 0.55), whole job {ratio_whole:.3f} (goal <= 0.6)")


if __name__ == "__main__":
    main()
