"""Benchmark: ingest of a 2-channel uint16 TIFF-plane folder vs plain tifffile + zarr.

For each size N (a volume of N x N x N voxels per channel, one TIFF file per
z plane, one folder per channel) this writes the input once, then times, in
the same run and alternating:

``ingest``
    ``ingest.ingest`` (synchronous executor: blocks in this process, Zarr
    compressing chunks on its thread pool), OME-Zarr 0.5 output with chunks
    (64, 128, 128), zstd, display windows, done-markers.
``baseline``
    ``tifffile.imread`` of each channel's files into memory (the whole
    channel), then one ``zarr`` v3 array write with the same chunks and
    compressor. No validation, no metadata, not out-of-core.
``ingest-zstd1``
    ``ingest`` with ``compression_level=1`` (the lever when Zarr's default
    zstd level 3 bounds the write speed).

Every measurement runs in a fresh subprocess, which reports the seconds of
the work itself (imports excluded) and its peak resident memory
(``pipeline.memory.peak_rss_mib``: ``VmHWM`` kept across the passes' resets). The table gives medians over ``--repeats`` runs, throughput
in Mvox/s (voxels of both channels), and the largest peak RSS.

Usage::

    .venv/bin/python benchmarks/ingest_bench.py --sizes 256 512 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

__all__ = ["main"]

log = logging.getLogger("ingest_bench")
CHUNKS = (64, 128, 128)
CHANNELS = 2
METHODS = ("ingest", "baseline", "ingest-zstd1")


def write_input(folder: Path, n: int, seed: int = 0) -> None:
    """A 2-channel uint16 volume as one TIFF file per plane, one folder per channel.

    Smooth structure plus noise, so that compression behaves roughly as on
    microscopy data rather than on pure noise or constants.
    """
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    for c in range(CHANNELS):
        d = folder / f"ch{c}"
        d.mkdir(parents=True, exist_ok=True)
        for z in range(n):
            structure = 800 + 600 * np.sin(xx / (9 + c) + z / 13) * np.cos(yy / (11 + c) - z / 17)
            plane = structure + rng.integers(0, 200, size=(n, n), dtype=np.int32)
            tifffile.imwrite(d / f"plane_{z:05d}.tif", plane.astype(np.uint16))


def _run_ingest(src: Path, out: Path, **options) -> None:
    from ingest import ingest

    spec = {"channels": [{"name": "ch{i}", "role": "marker"}]}
    ingest([src], out, spec, chunks=CHUNKS, levels=1, progress=False, **options)


def _run_baseline(src: Path, out: Path) -> None:
    import tifffile
    import zarr

    folders = sorted(d for d in src.iterdir() if d.is_dir())
    array = None
    for c, d in enumerate(folders):
        files = sorted(str(f) for f in d.glob("*.tif"))
        data = tifffile.imread(files)  # the whole channel in memory
        if array is None:
            array = zarr.create_array(str(out), shape=(len(folders),) + data.shape, chunks=(1,) + CHUNKS,
                                      dtype=data.dtype, zarr_format=3)
        array[c] = data
        del data


def worker(method: str, src: Path, out: Path) -> dict:
    """Run one measurement in this (fresh) process."""
    if out.exists():
        shutil.rmtree(out)
    import ingest  # noqa: F401  (imports are not timed)
    import tifffile  # noqa: F401
    import zarr  # noqa: F401

    run = {"ingest": _run_ingest, "baseline": _run_baseline,
           "ingest-zstd1": partial(_run_ingest, compression_level=1)}[method]
    started = time.perf_counter()
    run(src, out)
    seconds = time.perf_counter() - started
    # ingest's blockwise passes reset the kernel's mark (pipeline.memory), which ru_maxrss reads
    from pipeline.memory import peak_rss_mib

    peak = peak_rss_mib()
    return {"seconds": seconds,
            "maxrss_mib": peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _measure(method: str, src: Path, out: Path) -> dict:
    os.sync()  # start each run without another run's pending writeback
    cmd = [sys.executable, __file__, "--worker", method, "--input", str(src), "--output", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.input, args.output)))
        return 0

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ingest_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    load = os.getloadavg()
    try:
        for n in args.sizes:
            src = work / f"tiff_{n}"
            if not src.exists():
                t = time.perf_counter()
                write_input(src, n)
                log.info("wrote %d^3 x %d channel TIFF planes in %.1f s", n, CHANNELS, time.perf_counter() - t)
            runs = {m: [] for m in args.methods}
            for r in range(args.repeats):
                for method in args.methods:  # alternate, so drift hits every method alike
                    m = _measure(method, src, work / f"out_{method}_{n}.zarr")
                    runs[method].append(m)
                    log.info("N=%d %-12s run %d: %.2f s, peak RSS %.0f MiB",
                             n, method, r + 1, m["seconds"], m["maxrss_mib"])
            voxels = CHANNELS * n ** 3
            for method, ms in runs.items():
                median = statistics.median(m["seconds"] for m in ms)
                results.append({
                    "size": n, "method": method, "median_s": median, "mvox_per_s": voxels / median / 1e6,
                    "peak_rss_mib": max(m["maxrss_mib"] for m in ms), "runs": [m["seconds"] for m in ms],
                })
            shutil.rmtree(src)
            for method in runs:
                shutil.rmtree(work / f"out_{method}_{n}.zarr", ignore_errors=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    cores = os.cpu_count()
    print(f"\n2-channel uint16 TIFF-plane folder -> Zarr (chunks {CHUNKS}, zstd), {cores} cores, "
          f"median of {args.repeats}")
    print(f"load average before the run: {load[0]:.2f}, after: {os.getloadavg()[0]:.2f}")
    print(f"{'N^3':>6} {'method':<13} {'median s':>9} {'Mvox/s':>8} {'peak RSS MiB':>13}  runs (s)")
    for r in results:
        runs = " ".join(f"{t:.2f}" for t in r["runs"])
        print(f"{r['size']:>6} {r['method']:<13} {r['median_s']:>9.2f} {r['mvox_per_s']:>8.1f} "
              f"{r['peak_rss_mib']:>13.0f}  {runs}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
