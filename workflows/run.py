"""The end-to-end workflow: volume → segmentation → synapses → measurements → connectome.

Steps, each timed and recorded in ``run.json``::

    input      open the OME-Zarr volume (generating the sample first if asked)
    segment    fragments per block → stitched global ids → labels.zarr/neurons
    puncta     pre/post puncta per block, each with the neuron under it
    synapses   pre/post pairing, partner neurons, confidence
    measure    per-neuron statistics, reduced across blocks
    annotate   barcode calls and cell types
    connectome neurons/synapses/edges tables (Parquet)
    report     report.html: summary, slices with outlines and synapses, plots, evaluation

Blockwise steps keep done-markers under ``RUN/work``; rerunning a killed run
resumes them. ``run.json`` is written at the start (status ``running``) and
rewritten at the end (status ``complete``).

Reliability rules (tested in ``tests/test_reliability_*.py``):

- one run at a time per run directory: ``RUN/run.lock`` (:class:`pipeline.lock.RunLock`)
  names the holder; a second run is refused, a stale lock of a dead process is taken over;
- a run directory written by an incompatible version (``run.json``
  ``format_version`` other than :data:`FORMAT_VERSION`) is refused, never mixed;
- every table and metadata file is written atomically (temporary name, fsync, rename);
- an unwritable output (read-only, not a folder, disk full) is a one-line
  :class:`~pipeline.errors.PipelineError` naming the path;
- a workflow writes only inside its run directory, plus the folders its input
  step creates (:func:`workflows.spec.check_write_paths`, checked before
  anything is created): a path that escapes is a :class:`~pipeline.errors.ConfigError`
  naming the key.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from graph import Connectome
from graph.connectome import FORMAT_VERSION
import numpy as np
import pandas as pd

from graph.annotate import annotate_neurons, check_cell_type_channels
from graph.measure import measure_neurons
from graph.synapses import pair_puncta, synapses_from_puncta
from ingest import ingest
from pipeline import (BlockGrid, ConfigError, Executor, InputError, MissingChannelError, PipelineError, Volume,
                      resolve_device)
from pipeline.lock import RunLock
from pipeline.memory import MMAP_THRESHOLD, TRIM_THRESHOLD, pass_peaks, peak_rss_mib
from pipeline.storage import crash_point, read_json, storage_error, write_json, write_parquet, write_text_atomic
from pipeline.volume import open_label_image
from sample_data import write_sample
from segment import segment_volume
from segment.puncta import PUNCTA_COLUMNS, detect_puncta_volume

from .evaluate import evaluate_run
from .report import REPORT_FILE, write_report
from .spec import WorkflowConfig, check_write_paths

__all__ = ["FORMAT_VERSION", "run_workflow", "prepare_input", "limit_heap_retention", "peak_rss_mib"]

log = logging.getLogger(__name__)

#: Layout version of a run directory (``run.json`` ``format_version``). Bump it
#: when the layout of ``RUN/`` or ``RUN/work`` changes incompatibly.

_VERSIONED = ("optical-connectome", "numpy", "scipy", "scikit-image", "zarr", "dask", "distributed",
              "pandas", "pyarrow", "networkx", "connected-components-3d", "fastremap", "edt")


def _versions() -> dict:
    found = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


#: glibc ``mallopt`` parameters (``<malloc.h>``).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def limit_heap_retention(mmap_threshold: int | None = MMAP_THRESHOLD,
                         trim_threshold: int | None = TRIM_THRESHOLD) -> bool:
    """Keep freed block arrays from staying resident; True where applied.

    Three glibc settings, process-wide, set before the first block:

    * **one arena** (glibc's ``MALLOC_ARENA_MAX=1``). Zarr decodes chunks
      in a thread pool, and glibc gives each such thread an arena of its
      own: block arrays decoded there and freed later leave their pages
      resident in those arenas, where the main thread's next allocations
      cannot reuse them. Peak RSS of a 128x256x256 sample run 518-522 -> 481
      MiB, CPU time unchanged.
    * **a fixed mmap threshold** of :data:`MMAP_THRESHOLD` (``MALLOC_MMAP_THRESHOLD_``).
      glibc raises its threshold to the size of every mmapped array freed
      (up to 32 MiB), so after the first block a block's planes (2-8 MiB)
      come from the heap, whose freed pages stay resident between blocks
      and fragment: RSS between the relabel blocks of a 256^3 run sat at
      485-501 MiB with 250 MiB live. Fixed, every array of 1 MiB or more is
      mapped and unmapped on its own, and a block's peak is the live data
      plus its working set: peak RSS of that run 720 -> 623 MiB (BENCHMARKS.md
      "Session 11" has the CPU cost). Dask's worker processes already run
      with a fixed threshold (``distributed.nanny.pre-spawn-environ`` sets
      ``MALLOC_TRIM_THRESHOLD_``, which fixes it too).
    * **a trim threshold** of :data:`TRIM_THRESHOLD` (``MALLOC_TRIM_THRESHOLD_``).
      A fixed mmap threshold also freezes glibc's trim threshold at 128 KiB,
      so every time the small arrays of a step (below the mmap threshold:
      numba's tiles, per-label tables, zarr's chunk buffers) are freed the
      heap's top goes back to the kernel, and the next step faults the same
      pages in again. Keeping up to 64 MiB of free top costs at most that
      much resident memory, whatever the volume. 64x256x256 sample run with
      the cosine contact pass: 1.26 -> 0.51 M page faults, 13.8 -> 11.7 s;
      with the default pass 68.2 -> 66.4 s; peak RSS there +13 to +17 MiB,
      at 256^3 613.6 -> 674.4 MiB, at 512^3 735.9 MiB (BENCHMARKS.md "Session 14").

    Idempotent; skipped (False) without glibc, and each setting is left to
    the environment when it sets the matching variable (glibc read it).
    ``mmap_threshold=None`` keeps glibc's dynamic thresholds (one arena only;
    ``trim_threshold`` is then ignored, as glibc moves it with the mmap
    threshold); ``trim_threshold=None`` leaves glibc's 128 KiB.
    ``benchmarks.heap_cost`` compares them.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    wanted = {"MALLOC_ARENA_MAX": (_M_ARENA_MAX, 1)}
    if mmap_threshold is not None:
        wanted["MALLOC_MMAP_THRESHOLD_"] = (_M_MMAP_THRESHOLD, int(mmap_threshold))
        if trim_threshold is not None:
            wanted["MALLOC_TRIM_THRESHOLD_"] = (_M_TRIM_THRESHOLD, int(trim_threshold))
    todo = [setting for variable, setting in wanted.items() if variable not in os.environ]
    return bool(todo) and all(mallopt(param, value) == 1 for param, value in todo)


class _Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        #: this process's peak RSS (MiB) at the end of each step: where it rises is
        #: the step that set it (blocks run in this process only with the synchronous scheduler)
        self.peak_rss_mib: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        log.info("step %s ...", name)
        crash_point(f"step:{name}")
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        peak = peak_rss_mib()
        if peak is not None:
            self.peak_rss_mib[name] = round(peak, 1)
        log.info("step %s done in %.1f s", name, self.seconds[name])


def prepare_input(config: WorkflowConfig, progress: bool = False) -> Volume:
    """Open the input volume: ingest it or generate the bundled sample first when asked."""
    source = config.input
    if source.ingest is not None:
        step = source.ingest
        return ingest(step.sources, step.out, step.channels, overwrite=step.overwrite, progress=progress)
    if source.sample is not None:
        marker = source.sample.path / "truth" / "meta.json"
        if not marker.exists():
            log.info("generating the sample volume in %s", source.sample.path)
            write_sample(source.sample.path, source.sample.config, overwrite=True)
    return Volume.open(source.volume_path, mode="r")


def _grid(volume: Volume, config: WorkflowConfig) -> BlockGrid:
    block_shape = tuple(min(b, s) for b, s in zip(config.compute.block_shape, volume.spatial_shape))
    for b, c, s in zip(block_shape, volume.chunks, volume.spatial_shape):
        if b % c and b < s:
            raise ConfigError(
                f"compute.block_shape {list(config.compute.block_shape)} must be a multiple of the "
                f"volume's chunk shape {list(volume.chunks)} ({volume.path})"
            )
    return BlockGrid(volume.spatial_shape, block_shape, chunks=volume.chunks)


# Blockwise steps that read the neuron labels: their done-markers are only valid
# for the labels they were computed from.
_LABEL_CONSUMERS = ("puncta_pre", "puncta_post", "measure", "measure_histograms", "blocks/synapse_partners")


def _invalidate_label_consumers(run_dir: Path) -> None:
    """Drop downstream done-markers when the segmentation differs from the one they used.

    The segmentation is identified by its steps' parameter fingerprints and the
    fragment-to-neuron lookup table; both are deterministic, so an unchanged
    rerun keeps every marker.
    """
    work = run_dir / "work"
    digest = hashlib.sha256()
    for params in sorted(work.rglob("_params.json")):
        if params.parent.name.startswith("segment"):
            digest.update(params.read_bytes())
    for name in ("segment_lut.npz", "codebook.json"):
        if (work / name).exists():
            digest.update((work / name).read_bytes())
    fingerprint = digest.hexdigest()
    stamp = work / "labels.fingerprint"
    if stamp.exists() and stamp.read_text() == fingerprint:
        return
    for name in _LABEL_CONSUMERS:
        if (work / name).exists():
            log.info("segmentation changed: recomputing %s", name)
            shutil.rmtree(work / name)
    write_text_atomic(stamp, fingerprint)


def run_workflow(config: WorkflowConfig, *, progress: bool = True) -> Path:
    """Run every step of ``config`` and return the run directory.

    Parameters
    ----------
    config : WorkflowConfig
        The validated workflow (see :func:`workflows.spec.load_workflow`).
    progress : bool
        Show progress bars.
    """
    run_dir = Path(config.output)
    check_write_paths(config)
    # Peak memory of a run is one block's working set, not the heap left over from earlier blocks.
    limit_heap_retention()
    pass_peaks(clear=True)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PipelineError(f"output {run_dir} exists and is not a folder") from None
    except OSError as exc:
        raise PipelineError(f"output {run_dir}: cannot create the run directory: {exc.strerror}") from None
    with RunLock(run_dir):
        _check_run_dir(run_dir)
        for leftover in run_dir.glob(".*.tmp"):
            # A temporary file of an atomic write cut short by a kill; we hold the lock.
            leftover.unlink(missing_ok=True)
        try:
            return _run_locked(config, run_dir, progress)
        except OSError as exc:
            # Disk full, read-only or permission problems are the environment's, not bugs.
            error = storage_error(exc.filename or run_dir, exc)
            if error is exc:
                raise
            raise error from exc


def _check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory written by an incompatible version of the pipeline."""
    path = run_dir / "run.json"
    if not path.exists():
        return
    try:
        previous = read_json(path)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{path}: unreadable run record ({exc}); is {run_dir} a run directory? "
                            "Delete it or choose another output") from None
    version = previous.get("format_version") if isinstance(previous, dict) else None
    if version != FORMAT_VERSION:
        raise PipelineError(f"{path}: run directory format_version {version!r} is not {FORMAT_VERSION}, "
                            f"the version this pipeline writes; delete {run_dir} or choose another output")


def _check_signal(volume: Volume) -> None:
    """Refuse an empty (all-zero) or constant fill channel: there is nothing to segment.

    Such a volume would "succeed" with an empty connectome, which is almost
    always a failed ingest or the wrong file; it stops here instead.
    """
    for index in volume.channels_with_role("fill", required=True):
        value = volume.constant_value(index)
        if value is not None:
            what = "empty (every voxel is 0)" if value == 0 else f"constant (every voxel is {value})"
            raise InputError(f"{volume.path}: fill channel {volume.channels[index].name!r} is {what}; "
                             "nothing to segment (check the ingest or the input path)")


def _check_requested_channels(volume: Volume, config: WorkflowConfig) -> None:
    """Refuse, before any block runs, a workflow that asks for what the volume's channels cannot give."""
    if config.synapses.enabled:
        missing = [role for role in ("pre", "post") if not volume.channels_with_role(role)]
        if missing:
            roles = {c.name: c.role for c in volume.channels}
            raise MissingChannelError(
                f"{volume.path}: synapses need channels with roles 'pre' and 'post', and no channel has "
                f"role {' or '.join(repr(r) for r in missing)} (the volume's channels are {roles}); "
                "set the roles at ingest, or 'synapses: {enabled: false}' for neurons only")
    check_cell_type_channels(config.cell_types, volume)


def _no_puncta() -> pd.DataFrame:
    """An empty puncta table with the columns and dtypes of :func:`detect_puncta_volume`'s."""
    dtypes = {"punctum_id": np.int64, "iz": np.int64, "iy": np.int64, "ix": np.int64, "neuron_id": np.uint64}
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, np.float64)) for c in PUNCTA_COLUMNS})


def _run_locked(config: WorkflowConfig, run_dir: Path, progress: bool) -> Path:
    timer = _Timer()
    record = {
        "format_version": FORMAT_VERSION,
        "status": "running",
        "name": config.name,
        "config": config.model_dump(mode="json"),
        "versions": _versions(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(run_dir / "run.json", record)

    with timer.step("input"):
        volume = prepare_input(config)
        _check_signal(volume)
        _check_requested_channels(volume, config)
    device = resolve_device(config.compute.device)
    grid = _grid(volume, config)
    record.update({
        "input": str(volume.path),
        "shape": list(volume.spatial_shape),
        "channels": [{"name": c.name, "role": c.role} for c in volume.channels],
        "voxel_size": list(volume.voxel_size),
        "unit": volume.unit,
        "device": device,
        "block_shape": list(grid.block_shape),
        "n_blocks": len(grid),
    })
    work = run_dir / "work"
    with Executor(config.compute, device=device) as executor:
        record["dashboard"] = executor.dashboard_link
        with timer.step("segment"):
            seg_summary = segment_volume(volume, run_dir, config.segment, grid=grid, executor=executor, device=device)
        _invalidate_label_consumers(run_dir)
        labels = open_label_image(run_dir / "labels.zarr", "neurons")
        if config.synapses.enabled:
            with timer.step("puncta"):
                pre, post = detect_puncta_volume(volume, run_dir, config.puncta, grid=grid, executor=executor,
                                                 device=device)
        else:
            log.info("synapses.enabled is false: no puncta, no synapses")
            pre = post = _no_puncta()
        with timer.step("measure"):
            neurons = measure_neurons(volume, labels, grid=grid, executor=executor, state_dir=work)
        with timer.step("synapses"):
            if config.synapses.enabled:
                synapses = synapses_from_puncta(pre, post, volume.voxel_size, run_dir, config.synapses, grid=grid,
                                                executor=executor)
            else:
                synapses = pair_puncta(pre, post, volume.voxel_size, config.synapses)
    with timer.step("annotate"):
        neurons = annotate_neurons(neurons, volume, barcodes=config.barcodes, cell_types=config.cell_types,
                                   background=neurons.attrs.get("background"))
    with timer.step("connectome"):
        connectome = Connectome.from_tables(neurons, synapses)
        # pipeline.storage writes each table atomically *and* durably (fsync before rename).
        for name, table in (("neurons.parquet", connectome.neuron_table),
                            ("synapses.parquet", connectome.synapse_table),
                            ("edges.parquet", connectome.edge_table)):
            write_parquet(run_dir / name, table)

    record.update({
        "status": "complete",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "timings_s": timer.seconds,
        "total_s": round(sum(timer.seconds.values()), 3),
        "peak_rss_mib": timer.peak_rss_mib,
        # each blockwise pass's own peak (this process's; the blocks' where they ran here)
        "peak_rss_mib_by_pass": {name: round(r["peak_mib"], 1) for name, r in pass_peaks().items()
                                 if r["peak_mib"] is not None},
        # what was resident when each pass began and ended: its peak less its start is what its
        # blocks added; a start that grows with the volume is memory held between passes
        "rss_mib_by_pass": {name: {key: round(r[f"{key}_mib"], 1) for key in ("start", "peak", "end")}
                            for name, r in pass_peaks().items()
                            if None not in (r["start_mib"], r["peak_mib"], r["end_mib"])},
        "segment": seg_summary,
        "counts": {
            "neurons": int(len(connectome.neuron_table)),
            "synapses": int(len(connectome.synapse_table)),
            "edges": int(len(connectome.edge_table)),
            "puncta_pre": int(len(pre)),
            "puncta_post": int(len(post)),
        },
        "outputs": {
            "labels": "labels.zarr/neurons",
            "neurons": "neurons.parquet",
            "synapses": "synapses.parquet",
            "edges": "edges.parquet",
            "work": "work",
            "report": REPORT_FILE,
        },
    })
    write_json(run_dir / "run.json", record)
    log.info("run complete: %s", record["counts"])
    metrics = None
    if config.input.truth is not None:
        # Evaluated once here; the report and the command line reuse run.json's copy.
        metrics = evaluate_run(run_dir, config.input.truth)
        record["evaluation"] = {"truth": str(config.input.truth), "metrics": metrics}
        write_json(run_dir / "run.json", record)
    try:
        report = write_report(run_dir, truth=config.input.truth, metrics=metrics)
        log.info("report: %s", report)
    except PipelineError as exc:
        # The connectome is complete and durable; a report that cannot be drawn
        # (e.g. the truth folder moved) must not turn the run into a failure.
        log.warning("run complete but the report could not be written: %s", exc)
    return run_dir
