"""Which compressor the pipeline's arrays use: Zarr's default against ours, on the same bytes.

    .venv/bin/python -m benchmarks.codecs [--shape 64,256,256] [--repeats 5] [--threads 1]
                                          [--volume PATH/volume.zarr] [--tmpdir DIR]

The image of a synthetic sample (or of ``--volume``: level 0, every channel)
is written to a fresh Zarr v3 array with each codec below, the same chunks,
and read back, and so is its first label image (the sample's ``truth``); the codecs alternate, so a slow spell of a shared machine hits
them all. Zarr compresses chunks on a thread pool: ``--threads 1`` (default)
gives it one thread, so the speeds are per core. Printed per codec: how many
raw bytes each stored byte holds, the median write and read speed over
``--repeats`` runs after a warm-up (MB of raw image per second), and both
speeds as ratios to Zarr's default codec, which runs in the same process.

``zarr default``
    what ``zarr.create_array`` picks for numbers: zstd at level 3 (until
    session 22, every array the pipeline wrote);
``pipeline``
    :data:`pipeline.volume.COMPRESSORS`: Blosc's zstd at level 3 after a byte
    shuffle;
``blosc zstd 5 bitshuffle``
    ``ingest --compression blosc`` until session 22;
``blosc lz4 shuffle``
    the fastest candidate measured, for scale.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from pipeline import Volume

from .suite import _make_sample, _shape, machine_info, scratch_dir

log = logging.getLogger("benchmarks.codecs")


def candidates() -> dict:
    """The codecs compared, by name; the first is the baseline."""
    from zarr.codecs import BloscCodec, ZstdCodec

    from pipeline.volume import COMPRESSORS

    return {
        "zarr default (zstd 3)": (ZstdCodec(),),
        "pipeline (blosc zstd 3 shuffle)": COMPRESSORS,
        "blosc zstd 5 bitshuffle": (BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"),),
        "blosc lz4 5 shuffle": (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),),
    }


def _stored_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "zarr.json")


def compare(image: np.ndarray, chunks, work: Path, repeats: int) -> dict:
    """Ratio and median write/read seconds of each codec of :func:`candidates` on ``image``."""
    import zarr

    codecs = candidates()
    results = {name: {"write_s": [], "read_s": []} for name in codecs}
    for run in range(repeats + 1):                  # run 0 warms up: not kept
        for name, compressors in codecs.items():
            target = work / "codec.zarr"
            shutil.rmtree(target, ignore_errors=True)
            t0 = time.perf_counter()
            array = zarr.create_array(str(target), shape=image.shape, chunks=chunks, dtype=image.dtype,
                                      compressors=compressors, fill_value=0)
            array[...] = image
            t1 = time.perf_counter()
            back = zarr.open_array(str(target), mode="r")[...]
            t2 = time.perf_counter()
            if not np.array_equal(back, image):
                raise RuntimeError(f"codec {name!r} did not give the image back")
            if run:
                results[name]["write_s"].append(t1 - t0)
                results[name]["read_s"].append(t2 - t1)
            results[name]["ratio"] = image.nbytes / _stored_bytes(target)
    shutil.rmtree(work / "codec.zarr", ignore_errors=True)
    for entry in results.values():
        entry["write_mb_s"] = image.nbytes / statistics.median(entry["write_s"]) / 1e6
        entry["read_mb_s"] = image.nbytes / statistics.median(entry["read_s"]) / 1e6
    return results


def format_table(results: dict) -> str:
    base = next(iter(results.values()))
    lines = ["| codec | raw ÷ stored | write MB/s | read MB/s | write ÷ default | read ÷ default |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['ratio']:.2f} | {r['write_mb_s']:.0f} | {r['read_mb_s']:.0f} "
                     f"| ×{r['write_mb_s'] / base['write_mb_s']:.2f} | ×{r['read_mb_s'] / base['read_mb_s']:.2f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.codecs", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", type=_shape, default=(64, 256, 256), help="sample volume z,y,x (default 64,256,256)")
    p.add_argument("--volume", type=Path, help="an existing volume.zarr to read level 0 from instead of a sample")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per codec, after one warm-up (default 5)")
    p.add_argument("--threads", type=int, default=1, help="Zarr's codec threads (default 1: speeds per core)")
    p.add_argument("--seed", type=int, default=0, help="sample seed")
    p.add_argument("--tmpdir", help="where the temporary sample and arrays go")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        p.error("--repeats and --threads must be at least 1")
    return args


def main(argv=None) -> int:
    import zarr

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = scratch_dir("oc-codecs-", args.tmpdir)
    try:
        volume = args.volume or _make_sample(work, args.shape, args.seed) / "volume.zarr"
        sources = {"image": zarr.open_array(str(Path(volume) / "0"), mode="r")}
        label_names = Volume.open(volume, mode="r").label_names()
        if label_names:
            sources[f"labels {label_names[0]!r}"] = zarr.open_array(
                str(Path(volume) / "labels" / label_names[0] / "0"), mode="r")
        tables = {}
        with zarr.config.set({"threading.max_workers": args.threads}):
            for what, source in sources.items():
                data = np.asarray(source[...])
                tables[what] = (data, source.chunks, compare(data, source.chunks, work, args.repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = machine_info()
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}; zarr {zarr.__version__}, {args.threads} codec thread(s); "
          f"medians of {args.repeats} after a warm-up, codecs alternating")
    for what, (data, chunks, results) in tables.items():
        print(f"\n{what} {data.shape} {data.dtype} = {data.nbytes / 1e6:.0f} MB, chunks {chunks}")
        print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
