"""The benchmark suite behind ``python -m benchmarks``.

One run generates one synthetic sample (:func:`sample_data.write_sample`, into
a temporary folder, not timed) and times on that same volume:

``pipeline``
    :func:`workflows.run.run_workflow` end to end (synchronous executor: every
    block in this one process; device ``cpu``), and each stage from the
    ``timings_s`` the run records in ``run.json`` (segment with its phases,
    puncta, measure, synapses pairing, annotate, connectome tables). Every
    repeat writes a fresh run directory, so nothing is resumed.
``skimage``
    scikit-image seeded watershed on the fill channel: Otsu foreground, EDT
    (scipy), seeds from ``peak_local_max`` of the EDT, then
    ``skimage.segmentation.watershed`` of ``-EDT`` masked to the foreground,
    and the dense (unmasked) watershed alone.
``waterz``
    ``waterz.agglomerate`` (its watershed + mean-affinity agglomeration) on
    nearest-neighbour affinities of the normalised fill, when waterz imports.
``cc3d``
    ``cc3d.connected_components`` vs ``scipy.ndimage.label`` on the same Otsu
    foreground, 6- and 26-connected (the label counts are checked equal).
``kernels``
    the per-stage kernels on the same volume, ours against the SciPy/NumPy
    reference they replace: ``pipeline.filters.gaussian`` (its numba one
    pass; its OpenCV path as a second row) vs
    ``scipy.ndimage.gaussian_filter`` (σ 2, truncate 4, reflect) and
    ``pipeline.filters.maximum`` vs ``scipy.ndimage.maximum_filter`` (3³,
    nearest) on the float32 fill channel (the largest difference from SciPy
    is reported), puncta detection (``segment.puncta.detect_puncta`` on the
    whole pre channel) and per-neuron statistics (``graph.measure.label_sums``
    of every channel over the truth labels) vs one plain ``np.bincount`` per
    channel; the statistics rows give channel-Mvox/s in the note.
``zarr``
    plain Zarr v3 write and read of the volume's bytes (all channels, same
    chunks, Zarr's default zstd codec, as the sample volume uses).
``rss``
    the pipeline in a fresh subprocess per shape (same block shape, synchronous:
    the client and every block in that one process, no evaluation), each
    reporting its peak resident memory (``VmHWM``; ``ru_maxrss`` where absent)
    and the peak reached by the end of each step (``run.json``
    ``peak_rss_mib``): out-of-core means the ratio stays near 1 while the
    volume grows.

Every timed function runs once untimed first (warm-up), then ``--repeats``
times; the table gives the median. Throughput is in Mvox/s of *spatial*
voxels (z*y*x; the sample has 14 channels per voxel), so the pipeline and the
single-channel baselines are comparable per voxel of tissue. Everything runs
in one process, single-threaded except Zarr's codec thread pool, so
"per core" equals the total; the measured CPU time / wall time of the
pipeline is reported beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import logging
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["main", "parse_args", "run_suite", "format_table", "machine_info", "timed"]

log = logging.getLogger("benchmarks")

ALL_STAGES = ("pipeline", "kernels", "skimage", "waterz", "cc3d", "zarr", "rss")
DEFAULT_SHAPE = (64, 256, 256)
DEFAULT_BLOCK = (64, 128, 128)
DEFAULT_RSS_SHAPES = ((64, 256, 256), (128, 256, 256))
QUICK_SHAPE = (32, 128, 128)
QUICK_BLOCK = (32, 128, 128)
QUICK_RSS_SHAPES = ((32, 128, 128), (64, 128, 128))


# ----------------------------------------------------------------------------- helpers

def _shape(text: str) -> tuple[int, int, int]:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"a shape is three sizes z,y,x (e.g. 64,256,256), got {text!r}")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is three integers z,y,x, got {text!r}") from None
    if any(v < 4 for v in values):
        raise argparse.ArgumentTypeError(f"every size must be at least 4, got {text!r}")
    return values


def _peak_rss_mib() -> float:
    """Peak resident memory of this process so far: :func:`pipeline.memory.peak_rss_mib`, else ``ru_maxrss``.

    Every blockwise pass resets the kernel's mark (to measure its own peak), which lowers
    ``ru_maxrss`` too; ``pipeline.memory`` keeps the marks it reset.
    """
    from pipeline.memory import peak_rss_mib

    peak = peak_rss_mib()
    return peak if peak is not None else _ru_maxrss_mib()


def _ru_maxrss_mib() -> float:
    """``getrusage``'s peak resident memory (Linux ``ru_maxrss`` is in KiB): since the last reset of the mark."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@contextlib.contextmanager
def _quiet_stdout():
    """Silence writes to file descriptor 1 (waterz's C++ core prints its progress there)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def machine_info() -> dict:
    """nproc, CPU model, RAM and library versions of this machine."""
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 1024 ** 2, 1)
    except OSError:
        pass
    versions = {}
    from importlib import metadata
    for name in ("numpy", "scipy", "scikit-image", "zarr", "connected-components-3d", "fastremap", "edt", "waterz"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"nproc": os.cpu_count(), "cpu_model": model, "ram_gib": ram_gib,
            "python": platform.python_version(), "platform": platform.platform(), "versions": versions}


def timed(fn: Callable[[], object], repeats: int, *, warmup: int = 1,
          setup: Callable[[], None] | None = None) -> dict:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` runs after ``warmup`` untimed runs.

    ``setup()`` (not timed) runs before every call, e.g. to remove the previous output.
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        if setup is not None:
            setup()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"median_s": statistics.median(walls), "runs_s": [round(w, 4) for w in walls],
            "cpu_s": statistics.median(cpus)}


# ----------------------------------------------------------------------------- the pipeline

def _workflow_config(sample_dir: Path, out: Path, block_shape):
    from workflows.spec import WorkflowConfig

    return WorkflowConfig.model_validate({
        "name": "benchmark",
        "input": {"volume": str(sample_dir / "volume.zarr")},
        "output": str(out),
        "compute": {"scheduler": "synchronous", "device": "cpu", "block_shape": list(block_shape)},
    })


def bench_pipeline(sample_dir: Path, work: Path, block_shape, repeats: int) -> dict:
    """Full pipeline and per-stage timings (from ``run.json``) over ``repeats`` fresh runs."""
    from workflows.run import run_workflow

    out = work / "run"
    records: list[dict] = []

    def setup():
        shutil.rmtree(out, ignore_errors=True)

    def once():
        run_workflow(_workflow_config(sample_dir, out, block_shape), progress=False)
        records.append(json.loads((out / "run.json").read_text()))

    result = timed(once, repeats, setup=setup)
    records = records[1:]                       # drop the warm-up's record
    stages = {}
    for name in records[0]["timings_s"]:
        stages[name] = statistics.median(r["timings_s"][name] for r in records)
    phases = {}
    for name in records[0]["segment"]["timings"]:
        if name != "total":
            phases[name] = statistics.median(r["segment"]["timings"][name] for r in records)
    result.update({"stages_s": stages, "segment_phases_s": phases, "counts": records[-1]["counts"],
                   "n_blocks": records[-1]["n_blocks"], "block_shape": records[-1]["block_shape"],
                   "n_channels": len(records[-1]["channels"])})
    shutil.rmtree(out, ignore_errors=True)
    return result


def profile_pipeline(sample_dir: Path, work: Path, block_shape, top: int = 25) -> str:
    """cProfile of one pipeline run: the ``top`` functions by own time and by cumulative time."""
    from workflows.run import run_workflow

    out = work / "run-profile"
    shutil.rmtree(out, ignore_errors=True)
    profiler = cProfile.Profile()
    profiler.enable()
    run_workflow(_workflow_config(sample_dir, out, block_shape), progress=False)
    profiler.disable()
    shutil.rmtree(out, ignore_errors=True)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).strip_dirs()
    text.write("=== by own time (tottime) ===\n")
    stats.sort_stats("tottime").print_stats(top)
    text.write("=== by cumulative time ===\n")
    stats.sort_stats("cumulative").print_stats(top)
    return text.getvalue()


# ----------------------------------------------------------------------------- baselines

def _fill_channel(sample_dir: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    from pipeline import Volume

    volume = Volume.open(sample_dir / "volume.zarr", mode="r")
    fill = volume.channels_with_role("fill", required=True)[0]
    image = np.asarray(volume.image[fill])
    return np.ascontiguousarray(image), tuple(volume.voxel_size)


def _foreground(fill: np.ndarray) -> np.ndarray:
    from skimage.filters import threshold_otsu

    return fill > threshold_otsu(fill)


def bench_skimage(fill: np.ndarray, voxel_size, repeats: int) -> dict:
    """scikit-image seeded watershed: seeds from the EDT of the Otsu foreground, masked and dense."""
    import scipy.ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    finest = min(voxel_size)
    sampling = tuple(v / finest for v in voxel_size)

    def seeds():
        fg = _foreground(fill)
        dist = ndi.distance_transform_edt(fg, sampling=sampling)
        peaks = peak_local_max(dist, min_distance=4, labels=fg, exclude_border=False)
        markers = np.zeros(fill.shape, dtype=np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        return fg, dist, markers

    fg, dist, markers = seeds()
    results = {"n_seeds": int(markers.max())}
    results["seeds"] = timed(seeds, repeats)
    results["watershed_masked"] = timed(lambda: watershed(-dist, markers, mask=fg), repeats)
    results["watershed_dense"] = timed(lambda: watershed(-dist, markers), repeats)
    # ours, on the same landscape, markers and mask: the bucket queue of segment.watershed
    from segment.flood import quantise
    from segment.watershed import LEVELS
    from segment.watershed import watershed as bucket_watershed

    results["watershed_ours"] = timed(lambda: bucket_watershed(-dist, markers, fg), repeats)
    ours = bucket_watershed(-dist, markers, fg)
    on_levels = watershed(quantise(-dist, fg, LEVELS).astype(np.float64), markers, mask=fg)
    # scikit-image's heap breaks ties between markers on one level its own way, ours in raster order
    results["watershed_ours_differing_on_levels"] = int(np.count_nonzero(ours != on_levels))
    results["watershed_ours_differing"] = int(np.count_nonzero(ours != watershed(-dist, markers, mask=fg)))
    level_of_markers = quantise(-dist, fg, LEVELS)[markers > 0]
    results["markers_sharing_a_level"] = int(level_of_markers.size - np.unique(level_of_markers).size)

    def chain():
        f, d, m = seeds()
        return watershed(-d, m, mask=f)

    results["chain_masked"] = timed(chain, repeats)
    return results


def bench_waterz(fill: np.ndarray, repeats: int) -> dict:
    """waterz watershed + mean-affinity agglomeration on affinities of the normalised fill."""
    try:
        import waterz
    except ImportError as exc:
        return {"skipped": f"waterz not importable ({exc}); `pip install waterz` to include it"}
    import scipy.ndimage as ndi

    lo, hi = np.percentile(fill, (1.0, 99.8))
    norm = np.clip((ndi.gaussian_filter(fill.astype(np.float32), 1.0) - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    affs = np.zeros((3,) + fill.shape, dtype=np.float32)
    affs[0, 1:] = np.minimum(norm[1:], norm[:-1])
    affs[1, :, 1:] = np.minimum(norm[:, 1:], norm[:, :-1])
    affs[2, :, :, 1:] = np.minimum(norm[:, :, 1:], norm[:, :, :-1])

    def run():
        return [np.array(seg, copy=True) for seg in waterz.agglomerate(affs, [0.5])]

    try:
        with _quiet_stdout():
            result = timed(run, repeats)
    except Exception as exc:  # waterz compiles its extension on first use; report, don't crash the suite
        return {"skipped": f"waterz failed: {type(exc).__name__}: {exc}"}
    result["note"] = "affinities (gaussian σ1, nearest-neighbour min) computed once, not timed"
    return result


def bench_cc3d(fill: np.ndarray, repeats: int) -> dict:
    """cc3d vs scipy.ndimage.label on the Otsu foreground, 6- and 26-connected."""
    import cc3d
    import scipy.ndimage as ndi

    fg = np.ascontiguousarray(_foreground(fill))
    out = {}
    for conn in (6, 26):
        structure = ndi.generate_binary_structure(3, 1 if conn == 6 else 3)
        n_cc3d = int(cc3d.connected_components(fg, connectivity=conn, out_dtype=np.uint32).max())
        n_scipy = int(ndi.label(fg, structure=structure)[1])
        out[f"cc3d_{conn}"] = timed(lambda: cc3d.connected_components(fg, connectivity=conn, out_dtype=np.uint32),
                                    repeats)
        out[f"scipy_{conn}"] = timed(lambda: ndi.label(fg, structure=structure), repeats)
        out[f"agree_{conn}"] = n_cc3d == n_scipy
        out[f"components_{conn}"] = n_cc3d
    return out


@contextlib.contextmanager
def _scipy_puncta_filters():
    """``segment.puncta`` with its filters on scipy.ndimage, as before ``pipeline.filters`` (the baseline)."""
    import scipy.ndimage as ndi

    import segment.puncta as puncta

    saved = puncta.gaussian, puncta.maximum
    puncta.gaussian = lambda image, sigma, order=0, truncate=4.0, mode="reflect": ndi.gaussian_filter(
        image, sigma, order=order, truncate=truncate, mode=mode)
    puncta.maximum = lambda image, size, mode="reflect": ndi.maximum_filter(image, size=size, mode=mode)
    try:
        yield
    finally:
        puncta.gaussian, puncta.maximum = saved


@contextlib.contextmanager
def _opencv_gaussian():
    """``pipeline.filters.gaussian`` on its OpenCV path: the numba one pass stands aside."""
    from pipeline import filters

    saved = filters._one_pass_kernel
    filters._one_pass_kernel = lambda: None
    try:
        yield
    finally:
        filters._one_pass_kernel = saved


def bench_kernels(sample_dir: Path, repeats: int) -> dict:
    """Our filters, puncta detection and per-neuron statistics vs the SciPy/NumPy references."""
    import scipy.ndimage as ndi

    from graph.measure import label_sums
    from pipeline import Volume
    from pipeline import filters
    from pipeline.filters import gaussian, maximum, opencv_available
    from segment.puncta import PunctaConfig, detect_puncta, dog_response, robust_noise

    volume = Volume.open(sample_dir / "volume.zarr", mode="r")
    fill = np.ascontiguousarray(volume.image[volume.channels_with_role("fill", required=True)[0]], np.float32)
    out = {"opencv": opencv_available()}
    ref = ndi.gaussian_filter(fill, 2.0, mode="reflect", truncate=4.0)
    out["gaussian_rel_err"] = float(np.abs(gaussian(fill, 2.0) - ref).max() / max(np.abs(ref).max(), 1e-30))
    out["gaussian_ours"] = timed(lambda: gaussian(fill, 2.0, mode="reflect", truncate=4.0), repeats)
    out["gaussian_engine"] = "numba one pass" if filters._one_pass_kernel() is not None else "OpenCV"
    with _opencv_gaussian():
        out["gaussian_opencv"] = timed(lambda: gaussian(fill, 2.0, mode="reflect", truncate=4.0), repeats)
    out["gaussian_scipy"] = timed(lambda: ndi.gaussian_filter(fill, 2.0, mode="reflect", truncate=4.0), repeats)
    out["maximum_equal"] = bool(np.array_equal(maximum(fill, 3, mode="nearest"),
                                               ndi.maximum_filter(fill, size=3, mode="nearest")))
    out["maximum_ours"] = timed(lambda: maximum(fill, 3, mode="nearest"), repeats)
    out["maximum_scipy"] = timed(lambda: ndi.maximum_filter(fill, size=3, mode="nearest"), repeats)
    del ref
    pre = np.asarray(volume.image[volume.channels_with_role("pre", required=True)[0]])
    config = PunctaConfig()
    noise = robust_noise(dog_response(pre, config))
    out["puncta_n"] = len(detect_puncta(pre, config, noise))
    out["puncta"] = timed(lambda: detect_puncta(pre, config, noise), repeats)
    with _scipy_puncta_filters():
        out["puncta_scipy_n"] = len(detect_puncta(pre, config, noise))
        out["puncta_scipy"] = timed(lambda: detect_puncta(pre, config, noise), repeats)
    labels = np.ascontiguousarray(volume.labels("truth")[...])
    channels = np.asarray(volume.image[...])
    out["stats_channels"] = int(channels.shape[0])
    out["stats_labels"] = len(label_sums(labels, channels))
    out["stats_ours"] = timed(lambda: label_sums(labels, channels), repeats)

    def bincount_reference():
        ids, inverse = np.unique(labels.ravel(), return_inverse=True)
        return [np.bincount(inverse, weights=channels[c].ravel(), minlength=len(ids))
                for c in range(channels.shape[0])]

    out["stats_bincount"] = timed(bincount_reference, repeats)
    return out


def bench_zarr(sample_dir: Path, work: Path, repeats: int) -> dict:
    """Plain Zarr v3 write and read of the whole sample image (all channels), same chunks and codec."""
    import zarr

    source = zarr.open_array(str(sample_dir / "volume.zarr" / "0"), mode="r")
    image = np.asarray(source[...])
    target = work / "plain.zarr"

    def setup():
        shutil.rmtree(target, ignore_errors=True)

    def write():
        arr = zarr.create_array(str(target), shape=image.shape, chunks=source.chunks, dtype=image.dtype,
                                compressors=source.compressors, fill_value=0)
        arr[...] = image

    out = {"write": timed(write, repeats, setup=setup)}
    arr = zarr.open_array(str(target), mode="r")
    out["read"] = timed(lambda: np.asarray(arr[...]), repeats)
    out["bytes"] = int(image.nbytes)
    out["chunks"] = list(source.chunks)
    out["codec"] = repr(source.compressors)
    shutil.rmtree(target, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- memory vs size

def _rss_child(sample_dir: str, out: str, block_shape: str) -> int:
    """Subprocess body: run the pipeline once, print peak RSS as one JSON line."""
    # import first so the baseline includes the libraries
    from workflows.run import peak_rss_mib, run_workflow

    # VmHWM (workflows.run.peak_rss_mib) restarts at exec, unlike ru_maxrss: a subprocess's
    # ru_maxrss starts at its parent's RSS at spawn time, so a small child of a big parent
    # would report the parent.
    hwm_before, maxrss_before = peak_rss_mib(), _ru_maxrss_mib()
    t0, c0 = time.perf_counter(), time.process_time()
    run_workflow(_workflow_config(Path(sample_dir), Path(out), _shape(block_shape)), progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    hwm, maxrss = peak_rss_mib(), _ru_maxrss_mib()
    record = json.loads((Path(out) / "run.json").read_text())
    sys.stdout.write(json.dumps({
        "peak_by_step_mib": record.get("peak_rss_mib", {}),
        "peak_by_pass_mib": record.get("peak_rss_mib_by_pass", {}),
        "rss_by_pass_mib": record.get("rss_mib_by_pass", {}),
        # VmHWM where available: ru_maxrss of a child starts at the parent's RSS (see above)
        "peak_rss_mib": hwm if hwm is not None else maxrss,
        "import_rss_mib": hwm_before if hwm_before is not None else maxrss_before,
        "source": "VmHWM" if hwm is not None else "ru_maxrss",
        # each pass resets the kernel's mark, which ru_maxrss reads too: only the last pass's peak
        "ru_maxrss_mib": maxrss, "wall_s": wall, "cpu_s": cpu}) + "\n")
    return 0


def bench_rss(samples: dict[tuple, Path], work: Path, block_shape) -> dict:
    """Peak RSS of one pipeline run per shape, each in a fresh subprocess."""
    rows = []
    for shape, sample_dir in samples.items():
        out = work / f"rss-{'x'.join(map(str, shape))}"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "benchmarks", "--rss-child", str(sample_dir), str(out),
               ",".join(map(str, block_shape))]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if proc.returncode != 0:
            raise RuntimeError(f"RSS child for shape {shape} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
        record = json.loads(proc.stdout.strip().splitlines()[-1])
        record["shape"] = list(shape)
        record["mvox"] = float(np.prod(shape)) / 1e6
        rows.append(record)
        shutil.rmtree(out, ignore_errors=True)
    result = {"block_shape": list(block_shape), "runs": rows}
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        result["volume_ratio"] = last["mvox"] / first["mvox"]
        result["peak_ratio"] = last["peak_rss_mib"] / first["peak_rss_mib"]
        grow = [r["peak_rss_mib"] - r["import_rss_mib"] for r in (first, last)]
        result["above_imports_ratio"] = grow[1] / grow[0] if grow[0] > 0 else None
    return result


# ----------------------------------------------------------------------------- the suite

def _make_sample(root: Path, shape, seed: int) -> Path:
    from sample_data import SampleConfig, write_sample

    path = root / f"sample-{'x'.join(map(str, shape))}"
    if not (path / "truth" / "meta.json").exists():
        t = time.perf_counter()
        write_sample(path, SampleConfig(shape=tuple(shape), seed=seed), overwrite=True)
        log.info("generated sample %s in %.1f s (not timed)", shape, time.perf_counter() - t)
    return path


def scratch_dir(prefix: str, tmpdir: str | None) -> Path:
    """A fresh temporary folder for samples and runs, inside ``tmpdir`` (created if missing) or the system's."""
    if tmpdir is not None:
        parent = Path(tmpdir)
        if parent.exists() and not parent.is_dir():
            raise SystemExit(f"--tmpdir {parent}: exists and is not a folder")
        parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=tmpdir))


def run_suite(args: argparse.Namespace) -> dict:
    """Run the selected benchmarks; returns everything measured as one JSON-able dict."""
    stages = args.stages
    root = scratch_dir("oc-bench-", args.tmpdir)
    try:
        report = {"machine": machine_info(), "shape": list(args.shape), "block_shape": list(args.block_shape),
                  "repeats": args.repeats, "warmup": 1, "stages": list(stages),
                  "mvox": float(np.prod(args.shape)) / 1e6, "command": " ".join(sys.argv)}
        sample = _make_sample(root, args.shape, args.seed)
        if "pipeline" in stages:
            log.info("timing the full pipeline (%d repeats + warm-up)", args.repeats)
            report["pipeline"] = bench_pipeline(sample, root, args.block_shape, args.repeats)
        if "kernels" in stages:
            log.info("timing the filters, puncta and statistics kernels against scipy/numpy")
            report["kernels"] = bench_kernels(sample, args.repeats)
        if any(s in stages for s in ("skimage", "waterz", "cc3d")):
            fill, voxel_size = _fill_channel(sample)
            if "skimage" in stages:
                log.info("timing scikit-image seeded watershed")
                report["skimage"] = bench_skimage(fill, voxel_size, args.repeats)
            if "waterz" in stages:
                log.info("timing waterz")
                report["waterz"] = bench_waterz(fill, args.repeats)
            if "cc3d" in stages:
                log.info("timing cc3d vs scipy.ndimage.label")
                report["cc3d"] = bench_cc3d(fill, args.repeats)
            del fill
        if "zarr" in stages:
            log.info("timing plain zarr read/write")
            report["zarr"] = bench_zarr(sample, root, args.repeats)
        if "rss" in stages:
            samples = {tuple(s): (sample if tuple(s) == tuple(args.shape) else _make_sample(root, s, args.seed))
                       for s in args.rss_shapes}
            log.info("peak RSS per shape %s (subprocesses)", list(samples))
            report["rss"] = bench_rss(samples, root, args.block_shape)
        if args.profile:
            log.info("profiling one pipeline run with cProfile")
            text = profile_pipeline(sample, root, args.block_shape)
            Path(args.profile).write_text(text)
            report["profile_path"] = str(args.profile)
        report["bench_process_peak_rss_mib"] = _peak_rss_mib()
        return report
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _row(name, seconds, mvox, ref_mvox_s=None, note=""):
    speed = mvox / seconds if seconds > 0 else float("inf")
    ratio = f"{ref_mvox_s / speed:.2f}" if ref_mvox_s is not None else ""
    return (name, f"{seconds:.4f}", f"{speed:.2f}", f"{speed:.2f}", ratio, note)


def format_table(report: dict) -> str:
    """The report as a plain-text table (Markdown pipe syntax)."""
    mvox = report["mvox"]
    lines = []
    m = report["machine"]
    lines.append(f"machine: {m['nproc']} cores, {m['cpu_model']}, {m['ram_gib']} GiB RAM; python {m['python']}")
    lines.append(f"volume {'x'.join(map(str, report['shape']))} = {mvox:.2f} Mvox (spatial), "
                 f"block {'x'.join(map(str, report['block_shape']))}, median of {report['repeats']} "
                 f"after 1 warm-up; 1 process, synchronous => Mvox/s per core = Mvox/s")
    pipe = report.get("pipeline")
    pipe_speed = mvox / pipe["median_s"] if pipe else None
    seg_speed = mvox / pipe["stages_s"]["segment"] if pipe else None
    if pipe:
        lines.append(f"pipeline: {pipe['n_channels']} channels, {pipe['n_blocks']} blocks, counts {pipe['counts']}, "
                     f"CPU/wall {pipe['cpu_s'] / pipe['median_s']:.2f}")
    header = ("what", "median s", "Mvox/s", "Mvox/s/core", "ours÷this", "note")
    rows = []
    if pipe:
        rows.append(_row("pipeline (full)", pipe["median_s"], mvox, None, "runs " + ", ".join(map(str, pipe["runs_s"]))))
        for name, s in pipe["stages_s"].items():
            rows.append(_row(f"  stage {name}", s, mvox, None, "from run.json") if s > 0 else
                        (f"  stage {name}", f"{s:.3f}", "-", "-", "", "from run.json"))
        for name, s in pipe["segment_phases_s"].items():
            if s > 0:
                rows.append(_row(f"    segment.{name}", s, mvox, None, ""))
    kn = report.get("kernels")
    if kn:
        g_speed = mvox / kn["gaussian_ours"]["median_s"]
        m_speed = mvox / kn["maximum_ours"]["median_s"]
        backend = "OpenCV" if kn["opencv"] else "scipy fallback"
        engine = kn.get("gaussian_engine", backend)
        rows.append(_row("gaussian σ2 (pipeline.filters)", kn["gaussian_ours"]["median_s"], mvox, None,
                         f"{engine}; max rel diff vs scipy {kn['gaussian_rel_err']:.1e}"))
        if "gaussian_opencv" in kn:
            rows.append(_row("gaussian σ2 (its OpenCV path)", kn["gaussian_opencv"]["median_s"], mvox, g_speed,
                             f"{backend}; ours÷this"))
        rows.append(_row("gaussian σ2 (scipy.ndimage)", kn["gaussian_scipy"]["median_s"], mvox, g_speed,
                         "ours÷scipy"))
        rows.append(_row("max filter 3³ (pipeline.filters)", kn["maximum_ours"]["median_s"], mvox, None,
                         f"{backend}; equal to scipy: {kn['maximum_equal']}"))
        rows.append(_row("max filter 3³ (scipy.ndimage)", kn["maximum_scipy"]["median_s"], mvox, m_speed,
                         "ours÷scipy"))
        p_speed = mvox / kn["puncta"]["median_s"]
        rows.append(_row("puncta detect_puncta (1 channel)", kn["puncta"]["median_s"], mvox, None,
                         f"{kn['puncta_n']} puncta, whole volume in memory"))
        rows.append(_row("  same with scipy.ndimage filters", kn["puncta_scipy"]["median_s"], mvox, p_speed,
                         f"{kn['puncta_scipy_n']} puncta; ours÷this"))
        nch = kn["stats_channels"]
        s_ours, s_ref = kn["stats_ours"]["median_s"], kn["stats_bincount"]["median_s"]
        rows.append(_row(f"per-neuron stats label_sums ({nch} ch)", s_ours, mvox, None,
                         f"{mvox * nch / s_ours:.0f} channel-Mvox/s; {kn['stats_labels']} labels"))
        rows.append(_row("  np.unique + bincount per channel", s_ref, mvox, (mvox / s_ours),
                         f"{mvox * nch / s_ref:.0f} channel-Mvox/s; ours÷this"))
    sk = report.get("skimage")
    if sk:
        ref = seg_speed
        rows.append(_row("skimage seeds (otsu+EDT+peak_local_max)", sk["seeds"]["median_s"], mvox, None,
                         f"{sk['n_seeds']} seeds"))
        rows.append(_row("skimage watershed masked", sk["watershed_masked"]["median_s"], mvox, ref, "segment÷this"))
        if "watershed_ours" in sk:
            ws_speed = mvox / sk["watershed_ours"]["median_s"]
            rows.append(_row("  segment.watershed, same input", sk["watershed_ours"]["median_s"], mvox, None,
                             f"voxels unlike skimage: {sk['watershed_ours_differing_on_levels']} on the same "
                             f"65,536 levels ({sk['markers_sharing_a_level']} seeds share a level), "
                             f"{sk['watershed_ours_differing']} on the floats"))
            rows.append(_row("  skimage watershed masked", sk["watershed_masked"]["median_s"], mvox, ws_speed,
                             "ours÷this"))
        rows.append(_row("skimage watershed dense", sk["watershed_dense"]["median_s"], mvox, ref, "segment÷this"))
        rows.append(_row("skimage chain (seeds+masked ws)", sk["chain_masked"]["median_s"], mvox, ref,
                         "segment÷this"))
        if pipe_speed:
            rows.append(_row("  (full pipeline vs skimage chain)", sk["chain_masked"]["median_s"], mvox, pipe_speed,
                             "pipeline÷this"))
    wz = report.get("waterz")
    if wz:
        if "skipped" in wz:
            rows.append(("waterz", "-", "-", "-", "", "skipped: " + wz["skipped"]))
        else:
            rows.append(_row("waterz agglomerate (ws+agglo)", wz["median_s"], mvox, seg_speed, "segment÷this"))
    cc = report.get("cc3d")
    if cc:
        for conn in (6, 26):
            cc3d_speed = mvox / cc[f"cc3d_{conn}"]["median_s"]
            rows.append(_row(f"cc3d label {conn}-conn (ours)", cc[f"cc3d_{conn}"]["median_s"], mvox, None,
                             f"same count as scipy: {cc[f'agree_{conn}']} ({cc[f'components_{conn}']})"))
            rows.append(_row(f"scipy.ndimage.label {conn}-conn", cc[f"scipy_{conn}"]["median_s"], mvox, cc3d_speed,
                             "cc3d÷this"))
    zr = report.get("zarr")
    if zr:
        for op in ("write", "read"):
            s = zr[op]["median_s"]
            rows.append(_row(f"zarr {op} (all channels)", s, mvox, pipe_speed,
                             f"{zr['bytes'] / 2**20 / s:.0f} MiB/s; pipeline÷this" if pipe_speed else
                             f"{zr['bytes'] / 2**20 / s:.0f} MiB/s"))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = "| " + " | ".join("{:<%d}" % w for w in widths) + " |"
    lines.append(fmt.format(*header))
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.extend(fmt.format(*r) for r in rows)
    rss = report.get("rss")
    if rss:
        lines.append("")
        lines.append(f"peak RSS (pipeline in a fresh subprocess per shape, VmHWM, block "
                     f"{'x'.join(map(str, rss['block_shape']))}):")
        for r in rss["runs"]:
            lines.append(f"  {'x'.join(map(str, r['shape']))} ({r['mvox']:.1f} Mvox): peak {r['peak_rss_mib']:.0f} MiB "
                         f"(after imports {r['import_rss_mib']:.0f} MiB), run {r['wall_s']:.1f} s")
            if r.get("peak_by_step_mib"):
                lines.append("    peak so far after each step: " + ", ".join(
                    f"{k} {v:.0f}" for k, v in r["peak_by_step_mib"].items()))
        if "peak_ratio" in rss:
            above = rss["above_imports_ratio"]
            lines.append(f"  volume x{rss['volume_ratio']:.2f} -> peak RSS x{rss['peak_ratio']:.2f}"
                         + (f" (above imports x{above:.2f})" if above is not None else ""))
    lines.append("GPU: not measured by this script (CPU only)")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=_shape, default=None, help="sample volume z,y,x (default 64,256,256)")
    parser.add_argument("--block-shape", type=_shape, default=None,
                        help="pipeline block shape z,y,x, a multiple of the chunks (32,128,128) (default 64,128,128)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per benchmark, after one warm-up (default 3)")
    parser.add_argument("--stages", default=",".join(ALL_STAGES),
                        help=f"comma-separated subset of {','.join(ALL_STAGES)} (default all)")
    parser.add_argument("--rss-shapes", type=_shape, nargs="+", default=None,
                        help="shapes for the peak-RSS comparison (default 64,256,256 128,256,256)")
    parser.add_argument("--quick", action="store_true",
                        help="small volume (32,128,128), RSS at 32,128,128 vs 64,128,128: about a minute")
    parser.add_argument("--seed", type=int, default=0, help="sample seed")
    parser.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    parser.add_argument("--profile", metavar="PATH", help="also cProfile one pipeline run, write the stats to PATH")
    parser.add_argument("--tmpdir", default=None, help="where the temporary sample and runs go")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the pipeline's own logging")
    parser.add_argument("--rss-child", nargs=3, metavar=("SAMPLE", "OUT", "BLOCK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        return args
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = sorted(set(stages) - set(ALL_STAGES))
    if unknown:
        parser.error(f"unknown --stages {unknown}; choose from {', '.join(ALL_STAGES)}")
    args.stages = stages
    if args.shape is None:
        args.shape = QUICK_SHAPE if args.quick else DEFAULT_SHAPE
    if args.block_shape is None:
        args.block_shape = QUICK_BLOCK if args.quick else DEFAULT_BLOCK
    if args.rss_shapes is None:
        args.rss_shapes = list(QUICK_RSS_SHAPES if args.quick else DEFAULT_RSS_SHAPES)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if not args.verbose:
        for name in ("workflows", "segment", "pipeline", "graph", "sample_data", "distributed"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if args.rss_child:
        return _rss_child(*args.rss_child)
    report = run_suite(args)
    sys.stdout.write(format_table(report) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
        log.info("wrote %s", args.json)
    return 0
