"""What the allocator settings of a run cost and save: the pipeline in fresh processes, alternating.

    .venv/bin/python -m benchmarks.heap_cost [--shape 64,256,256] [--repeats 3] [--modes lean,kept-top]
                                             [--contact-method unmix] [--workers 0]

:func:`workflows.run.limit_heap_retention` sets glibc's allocator before the
first block. Its settings are process-wide and cannot be undone, so each run
here is a fresh child process (``python -m benchmarks.heap_cost --child``),
and the modes alternate so that a slow spell of a shared machine hits all:

``glibc``
    glibc's defaults (an arena per thread, a dynamic mmap threshold).
``arena``
    one arena, dynamic mmap threshold: ``limit_heap_retention`` until session 11.
``lean``
    one arena and a fixed 1 MiB mmap threshold, which also freezes glibc's
    trim threshold at 128 KiB: ``limit_heap_retention`` in sessions 11-13.
``kept-top``
    ``lean`` with a 64 MiB trim threshold: ``limit_heap_retention`` now.
``nanny``
    with ``--workers``: the run process as ``kept-top``, but the workers keep
    what Dask's nanny gives them (a 64 KiB trim threshold, which fixes the
    mmap threshold at 128 KiB), as before ``pipeline.memory.worker_heap_environ``.

``--workers N`` runs the pipeline on a local cluster of N one-thread workers
instead of synchronously; the workers then get ``worker_heap_environ`` in every
mode but ``nanny``, and CPU seconds and faults include the worker processes
(``RUSAGE_CHILDREN``, counted once the cluster has closed); peak RSS stays
the run process's own.

One synthetic sample (seed 0) is generated into a temporary folder; one
untimed warm-up run (numba's cache, the page cache) precedes the timed ones.
Printed per mode: median wall and CPU seconds of the whole pipeline
(synchronous, device cpu), Mvox/s per core, minor page faults, and peak RSS
(``VmHWM``), each with its ratio to the first mode.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .suite import _make_sample, _shape, scratch_dir, _workflow_config

log = logging.getLogger("benchmarks.heap_cost")

MODES = ("glibc", "arena", "lean", "kept-top", "nanny")


def _child(mode: str, sample_dir: str, out: str, block_shape: str, contact_method: str, workers: str) -> int:
    """Subprocess body: one pipeline run under ``mode``; prints one JSON line."""
    import pipeline.runner
    import workflows.run as run

    if mode == "nanny":
        pipeline.runner.worker_heap_environ = dict
    if mode == "glibc":
        run.limit_heap_retention = lambda: False
    elif mode == "arena":
        run.limit_heap_retention = functools.partial(run.limit_heap_retention, mmap_threshold=None)
    elif mode == "lean":
        run.limit_heap_retention = functools.partial(run.limit_heap_retention, trim_threshold=None)
    config = _workflow_config(Path(sample_dir), Path(out), _shape(block_shape))
    config.segment.contact_method = contact_method
    if int(workers):
        config.compute.scheduler, config.compute.n_workers = "local", int(workers)
        config.compute.dashboard_address = "127.0.0.1:0"
    t0 = time.perf_counter()
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    run.run_workflow(config, progress=False)
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    record = {"mode": mode, "wall_s": time.perf_counter() - t0,
              "cpu_s": sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before)),
              "minor_faults": sum(a.ru_minflt - b.ru_minflt for a, b in zip(after, before)),
              "peak_rss_mib": run.peak_rss_mib()}
    sys.stdout.write(json.dumps(record) + "\n")
    return 0


def _run_child(mode: str, sample: Path, out: Path, block_shape, contact_method: str, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "benchmarks.heap_cost", "--child", mode, str(sample), str(out),
           ",".join(map(str, block_shape)), contact_method, str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"heap_cost child ({mode}) failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.heap_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=_shape, default=(64, 256, 256), help="sample z,y,x (default 64,256,256)")
    parser.add_argument("--block-shape", type=_shape, default=(64, 128, 128), help="default 64,128,128")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode (default 3)")
    parser.add_argument("--modes", default="lean,kept-top", help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--contact-method", default="unmix", choices=("unmix", "cosine"),
                        help="segment.contact_method of the runs (default unmix)")
    parser.add_argument("--workers", type=int, default=0,
                        help="run on a local cluster of this many workers (default 0: synchronous)")
    parser.add_argument("--tmpdir", default=None, help="where the temporary sample and runs go")
    parser.add_argument("--child", nargs=6, metavar=("MODE", "SAMPLE", "OUT", "BLOCK", "METHOD", "WORKERS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(*args.child)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes must name some of {', '.join(MODES)}, got {args.modes!r}")
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.workers < 0:
        parser.error(f"--workers must be 0 or more, got {args.workers}")
    if "nanny" in modes and not args.workers:
        parser.error("mode nanny is about Dask's workers: give --workers N")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    root = scratch_dir("oc-heap-", args.tmpdir)
    try:
        sample = _make_sample(root, args.shape, 0)
        log.info("warm-up run (%s, untimed)", modes[0])
        _run_child(modes[0], sample, root / "run", args.block_shape, args.contact_method, args.workers)
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        for i in range(args.repeats):
            for mode in modes:
                record = _run_child(mode, sample, root / "run", args.block_shape, args.contact_method,
                                    args.workers)
                log.info("run %d %s: %.1f s wall, %.1f s CPU, peak %.0f MiB", i + 1, mode, record["wall_s"],
                         record["cpu_s"], record["peak_rss_mib"])
                runs[mode].append(record)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mvox = float(np.prod(args.shape)) / 1e6
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("wall_s", "cpu_s", "minor_faults", "peak_rss_mib")}
           for m, rs in runs.items()}
    base = med[modes[0]]
    where = f"local cluster of {args.workers} workers" if args.workers else "synchronous"
    print(f"pipeline {'x'.join(map(str, args.shape))}, blocks {'x'.join(map(str, args.block_shape))}, "
          f"contact_method {args.contact_method}, {where}, medians of {args.repeats} fresh processes per mode")
    print(f"{'mode':8s} {'wall s':>8s} {'CPU s':>8s} {'Mvox/s/core':>12s} {'minor faults':>13s} {'peak MiB':>9s}"
          f" {'wall x':>7s} {'peak x':>7s}")
    for mode, m in med.items():
        print(f"{mode:8s} {m['wall_s']:8.1f} {m['cpu_s']:8.1f} {mvox / m['cpu_s']:12.3f} {m['minor_faults']:13.0f}"
              f" {m['peak_rss_mib']:9.0f} {m['wall_s'] / base['wall_s']:7.3f} {m['peak_rss_mib'] / base['peak_rss_mib']:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
