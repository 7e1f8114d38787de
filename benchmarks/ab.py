"""Two checkouts side by side: the pipeline in fresh processes, alternating between them.

    git worktree add ../baseline <commit>
    .venv/bin/python -m benchmarks.ab ../baseline [--shape 64,256,256] [--repeats 3] [--contact-method unmix]

A speed-up of a few per cent is below this machine's drift from one hour (or
one day) to the next, so a change is timed against its baseline in one run:
each timed run is a fresh process (numba's cache, glibc's settings and the
page cache start the same way), and the two checkouts alternate so that a
slow spell hits both. One synthetic sample (seed 0) is generated into a
temporary folder with this checkout's code; one untimed warm-up run of each
side precedes the timed ones. Printed: median wall and CPU seconds, the
``segment`` stage (from ``run.json``), Mvox/s per core and the ratio to the
baseline, and whether both sides wrote the same labels (SHA-1 of the label
image): a change meant to keep the bits must print ``same labels: yes``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from .suite import _make_sample, _shape, scratch_dir

log = logging.getLogger("benchmarks.ab")

HERE = Path(__file__).resolve().parents[1]


#: The child process: one pipeline run with the checkout's code, one JSON line. Self-contained
#: (``python -c``), so that a baseline checkout older than this script runs it too.
_CHILD = """
import hashlib, json, sys, time
from pathlib import Path
import zarr
import workflows.run as run
from workflows.spec import WorkflowConfig
sample, out, block, method = sys.argv[1:5]
config = WorkflowConfig.model_validate({
    "name": "ab", "input": {"volume": str(Path(sample) / "volume.zarr")}, "output": out,
    "compute": {"scheduler": "synchronous", "device": "cpu", "block_shape": [int(v) for v in block.split(",")]},
    "segment": {"contact_method": method}})
t0, c0 = time.perf_counter(), time.process_time()
run.run_workflow(config, progress=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
labels = zarr.open_array(str(Path(out) / "labels.zarr" / "neurons" / "0"), mode="r")[:]
record = json.loads((Path(out) / "run.json").read_text())
sys.stdout.write(json.dumps({"wall_s": wall, "cpu_s": cpu, "segment_s": record["timings_s"]["segment"],
                             "labels": hashlib.sha1(labels.tobytes()).hexdigest(),
                             "code": str(Path(run.__file__).resolve().parents[1])}) + "\\n")
"""


def _run_child(checkout: Path, sample: Path, out: Path, block_shape, contact_method: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", _CHILD, str(sample), str(out), ",".join(map(str, block_shape)), contact_method]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=checkout, env=_env(checkout))
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.ab child in {checkout} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    if Path(record["code"]) != checkout:
        raise RuntimeError(f"the run meant for {checkout} imported the pipeline from {record['code']}")
    return record


def _env(checkout: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(checkout) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", nargs="?", type=Path, help="root of the baseline checkout (a git worktree)")
    parser.add_argument("--shape", type=_shape, default=(64, 256, 256), help="sample z,y,x (default 64,256,256)")
    parser.add_argument("--block-shape", type=_shape, default=(64, 128, 128), help="default 64,128,128")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
    parser.add_argument("--contact-method", default="unmix", choices=("unmix", "cosine"),
                        help="segment.contact_method of the runs (default unmix)")
    parser.add_argument("--tmpdir", default=None, help="where the temporary sample and runs go")
    args = parser.parse_args(argv)
    if args.baseline is None:
        parser.error("give the baseline checkout's root (e.g. a `git worktree add ../baseline <commit>`)")
    baseline = args.baseline.resolve()
    if not (baseline / "workflows" / "run.py").is_file():
        parser.error(f"{baseline} is not a checkout of this repository (no workflows/run.py)")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    sides = {"baseline": baseline, "this": HERE}
    root = scratch_dir("oc-ab-", args.tmpdir)
    try:
        sample = _make_sample(root, args.shape, 0)
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        for i in range(args.repeats + 1):
            for name, checkout in sides.items():
                record = _run_child(checkout, sample, root / "run", args.block_shape, args.contact_method)
                log.info("%s %s: %.1f s wall, %.1f s CPU", "warm-up" if i == 0 else f"run {i}", name,
                         record["wall_s"], record["cpu_s"])
                if i:
                    runs[name].append(record)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mvox = float(np.prod(args.shape)) / 1e6
    med = {name: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "segment_s")}
           for name, rs in runs.items()}
    labels = {r["labels"] for rs in runs.values() for r in rs}
    print(f"pipeline {'x'.join(map(str, args.shape))}, blocks {'x'.join(map(str, args.block_shape))}, "
          f"contact_method {args.contact_method}, synchronous, medians of {args.repeats} fresh processes per side")
    print(f"baseline: {baseline}\nthis:     {HERE}")
    print(f"{'side':9s} {'wall s':>8s} {'CPU s':>8s} {'segment s':>10s} {'Mvox/s/core':>12s} {'wall x':>7s}")
    for name, m in med.items():
        print(f"{name:9s} {m['wall_s']:8.2f} {m['cpu_s']:8.2f} {m['segment_s']:10.2f} {mvox / m['cpu_s']:12.3f}"
              f" {m['wall_s'] / med['baseline']['wall_s']:7.3f}")
    print(f"same labels: {'yes' if len(labels) == 1 else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
