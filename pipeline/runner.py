"""Running a step on every block: Dask, retries, progress, done-markers, resume.

``run_blockwise(step, blocks, name=..., state_dir=...)`` calls ``step(block)``
once for every block that is not done yet. A step reads its inputs from Zarr,
computes, writes only the block's write region and returns a *small* summary
(a table of fragments, edges, puncta, per-label sums). When the step returns,
the summary is written atomically to ``state_dir/name/<block id>.pkl``: that
file is the block's done-marker, so a rerun (after a crash, a kill or a
Ctrl-C) skips finished blocks and gets their summaries back from disk.

Large arrays never travel through the scheduler: only blocks go out and
summaries come back.

GPU runs (``Executor(config, device="gpu")``): every block task asks the
scheduler for one unit of the worker resource ``GPU``, so a worker runs as
many blocks at once as it has GPUs. A local cluster for a GPU run is dask-cuda's
``LocalCUDACluster`` (one worker per GPU) when dask-cuda is installed, else one
worker holding one GPU. Workers of an existing cluster must declare the
resource (``dask worker ADDRESS --resources GPU=1`` per GPU, or
``dask cuda worker ADDRESS --resources GPU=1``); a cluster where none does is
refused up front (:class:`~pipeline.errors.PipelineError`) instead of leaving
the tasks waiting forever.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import CancelledError
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from .backend import gpu_count
from .blocks import Block
from .config import ComputeConfig
from .errors import BlockError, PipelineError
from .memory import track_peak, worker_heap_environ
from .storage import crash_point, read_json, read_pickle, storage_error, write_json, write_pickle

__all__ = ["Executor", "StoredSummaries", "run_blockwise", "block_marker", "GPU_RESOURCE"]

log = logging.getLogger(__name__)

#: Name of the Dask worker resource a GPU block task holds one unit of.
GPU_RESOURCE = "GPU"


class Executor(AbstractContextManager):
    """Where block tasks run: this process, a new LocalCluster, or a cluster by address.

    Use as a context manager; the local cluster (if any) is closed on exit.

    Parameters
    ----------
    config : ComputeConfig, optional
        Scheduler, local cluster size, retries.
    device : {"cpu", "gpu"}
        The array backend the block tasks use, already resolved
        (:func:`pipeline.backend.resolve_device`). ``gpu`` makes every block
        task hold one ``GPU`` worker resource (see the module docstring);
        ``cpu`` (the default) leaves scheduling as Dask does it.

    Examples
    --------
    >>> with Executor(ComputeConfig(scheduler="synchronous")) as ex:  # doctest: +SKIP
    ...     summaries = run_blockwise(step, grid, name="fragments", state_dir=d, executor=ex)
    """

    def __init__(self, config: ComputeConfig | None = None, *, device: str = "cpu"):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"Executor device must be 'cpu' or 'gpu' (resolve 'auto' first), got {device!r}")
        self.config = config or ComputeConfig()
        self.device = device
        self.client = None
        self._cluster = None
        self.dashboard_link: str | None = None

    @property
    def synchronous(self) -> bool:
        return self.config.scheduler == "synchronous"

    @property
    def task_resources(self) -> dict[str, int] | None:
        """Worker resources each block task holds: one GPU in a GPU run, none otherwise."""
        if self.device == "gpu" and not self.synchronous:
            return {GPU_RESOURCE: 1}
        return None

    def __enter__(self) -> "Executor":
        if self.synchronous:
            return self
        from distributed import Client

        # distributed configures its own loggers at import; keep them to warnings
        # unless the user asked for debug output.
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("distributed").setLevel(logging.WARNING)
        scheduler = self.config.scheduler
        if scheduler == "local":
            self._cluster = local_cluster(self.config, self.device)
            self.client = Client(self._cluster)
        else:
            try:
                self.client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise PipelineError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
            if self.task_resources:
                try:
                    check_worker_resources(self.client, self.task_resources, scheduler)
                except BaseException:
                    self.client.close()
                    self.client = None
                    raise
        self.dashboard_link = self.client.dashboard_link
        log.info("Dask dashboard: %s", self.dashboard_link)
        return self

    def __exit__(self, *exc_info):
        if self.client is not None:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
        self.client = self._cluster = None
        return False


def local_cluster(config: ComputeConfig, device: str = "cpu"):
    """Start the local Dask cluster of a run (worker processes on this machine, loopback only).

    CPU: a ``LocalCluster`` of ``config.n_workers`` workers (0: one per core).
    GPU: dask-cuda's ``LocalCUDACluster`` when importable — one worker per GPU
    (at most ``config.n_workers`` when set), each pinned to its device and
    declaring ``GPU=1``; without dask-cuda a worker cannot be pinned to a
    device, so one ``LocalCluster`` worker declares ``GPU=1`` and uses the
    first GPU (a warning says so when there are more).
    """
    import dask

    # each nanny reads this when it is made, inside LocalCluster(...)
    with dask.config.set({f"distributed.nanny.pre-spawn-environ.{name}": value
                          for name, value in worker_heap_environ().items()}):
        return _start_local_cluster(config, device)


def _start_local_cluster(config: ComputeConfig, device: str):
    common = dict(threads_per_worker=config.threads_per_worker, dashboard_address=config.dashboard_address,
                  memory_limit=config.memory_limit, silence_logs=logging.WARNING)
    if device != "gpu":
        from distributed import LocalCluster

        return LocalCluster(n_workers=config.n_workers or os.cpu_count() or 1, host="127.0.0.1",
                            processes=True, **common)
    gpus = max(gpu_count(), 1)
    n_workers = min(config.n_workers or gpus, gpus)
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        LocalCUDACluster = None
    if LocalCUDACluster is not None:
        log.info("local GPU cluster: dask-cuda LocalCUDACluster, %d worker(s), one GPU each", n_workers)
        return LocalCUDACluster(n_workers=n_workers, host="127.0.0.1", resources={GPU_RESOURCE: 1}, **common)
    from distributed import LocalCluster

    if gpus > 1:
        log.warning("%d GPUs visible but dask-cuda is not installed: running on one GPU "
                    "(pip install dask-cuda to use them all)", gpus)
    return LocalCluster(n_workers=1, host="127.0.0.1", processes=True, resources={GPU_RESOURCE: 1}, **common)


def check_worker_resources(client, resources: dict[str, int], address: str, wait_s: float = 30.0) -> None:
    """Make sure some worker of the cluster can run a task needing ``resources``.

    A task asking for a resource that no worker has waits forever; this turns
    that into an error. Workers that are connected but lack the resource are
    refused at once; a cluster with no worker yet gets ``wait_s`` seconds for
    one to connect.

    Raises
    ------
    PipelineError
        Naming the scheduler, the resource and how to start suitable workers.
    """
    deadline = time.monotonic() + wait_s
    while True:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
        able = [addr for addr, info in workers.items()
                if all((info.get("resources") or {}).get(k, 0) >= v for k, v in resources.items())]
        if able:
            log.info("%d of %d worker(s) at %s have %s", len(able), len(workers), address, resources)
            return
        if workers or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    wanted = ", ".join(f"{k}={v}" for k, v in resources.items())
    seen = "no worker connected" if not workers else (
        f"its {len(workers)} worker(s) declare "
        + "; ".join(sorted({str(info.get("resources") or {}) for info in workers.values()})))
    raise PipelineError(
        f"the Dask scheduler at {address} has no worker with the resource {wanted} that GPU blocks need "
        f"({seen}); start one worker per GPU with 'dask worker {address} --resources {wanted}' "
        "(or 'dask cuda worker ... --resources GPU=1'), or run with --device cpu"
    )


def block_marker(state_dir, name: str, block: Block) -> Path:
    """Path of the done-marker (and summary) of ``block`` for step ``name``."""
    return Path(state_dir) / name / f"{block.id}.pkl"


def _fingerprint(params) -> str:
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _prepare_state(step_dir: Path, params) -> None:
    """Create the step's state folder; drop stale markers when the parameters changed."""
    params_file = step_dir / "_params.json"
    fingerprint = _fingerprint(params)
    if step_dir.exists():
        # Markers are only written after _params.json, so markers without it are
        # left over from a removal cut short by a kill: trust none of them.
        try:
            previous = read_json(params_file).get("fingerprint")
        except (OSError, ValueError, AttributeError):
            previous = None  # missing, or damaged from outside
        if previous != fingerprint:
            if previous is not None:
                log.warning("%s: parameters changed since the last run; recomputing every block", step_dir.name)
            shutil.rmtree(step_dir)
    step_dir.mkdir(parents=True, exist_ok=True)
    write_json(params_file, {"fingerprint": fingerprint, "params": params})


def _read_marker(marker: str):
    """The summary stored in a done-marker, or ``_MISSING`` when absent or unreadable."""
    try:
        return read_pickle(marker)
    except FileNotFoundError:
        return _MISSING
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError, TypeError) as exc:
        # Markers are written atomically, so this is outside damage (a copied run
        # directory cut short, a bad disk): recompute the block rather than trust it.
        log.warning("unreadable done-marker %s (%s: %s); recomputing its block", marker, type(exc).__name__, exc)
        try:
            os.unlink(marker)
        except OSError:
            pass
        return _MISSING


_MISSING = object()


def _run_one(block: Block, marker: str, step: Callable[[Block], Any]):
    """The task body: run ``step`` on ``block`` unless done, then record it durably."""
    if os.path.exists(marker):
        # A retried or duplicated task (a worker died after finishing) does no work twice.
        summary = _read_marker(marker)
        if summary is not _MISSING:
            return summary
    try:
        summary = step(block)
    except OSError as exc:
        # Disk full or read-only output: one line naming the file, not a retried traceback.
        where = f"{block}: {exc.filename}" if getattr(exc, "filename", None) else str(block)
        raise storage_error(where, exc) from exc
    crash_point(f"block:{Path(marker).parent.name}:written")
    write_pickle(marker, summary)
    crash_point(f"block:{Path(marker).parent.name}:done")
    return summary


def _block_failed(name, block, retries, exc) -> BlockError:
    return BlockError(
        f"step {name!r}: {block} failed after {retries + 1} attempt(s): "
        f"{type(exc).__name__}: {exc}"
    )


class StoredSummaries(Sequence):
    """The summaries of a finished pass, read from their done-markers one at a time.

    What :func:`run_blockwise` returns with ``in_memory=False``: a sequence
    in block order that holds only the marker paths, so a reduction over
    millions of blocks (``for summary in summaries: ...``) keeps one summary
    resident at a time, and may walk the sequence more than once. Each item
    is read from disk again on every access.
    """

    def __init__(self, name: str, blocks: Sequence[Block], markers: Sequence[str]):
        self.name = name
        self._blocks = list(blocks)
        self._markers = list(markers)

    def __len__(self) -> int:
        return len(self._markers)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        summary = _read_marker(self._markers[index])
        if summary is _MISSING:
            raise BlockError(f"step {self.name!r}: {self._blocks[index]} finished but its done-marker "
                             f"{self._markers[index]} is missing or unreadable")
        return summary

    def __repr__(self) -> str:
        return f"StoredSummaries({self.name!r}, {len(self)} blocks)"


def run_blockwise(
    step: Callable[[Block], Any],
    blocks: Sequence[Block],
    *,
    name: str,
    state_dir,
    executor: Executor | None = None,
    params: dict | None = None,
    progress: bool = True,
    in_memory: bool = True,
) -> list | StoredSummaries:
    """Run ``step`` on every block not yet done and return all summaries in block order.

    Parameters
    ----------
    step : callable
        ``step(block) -> summary``; must be picklable (a top-level function or a
        ``functools.partial`` of one), idempotent, and write only ``block.write``.
    blocks : sequence of Block
    name : str
        Step name: the folder of its done-markers and the progress bar label.
    state_dir : path
        Where done-markers live (inside the run directory).
    executor : Executor, optional
        Defaults to a synchronous in-process executor.
    params : dict, optional
        The step's parameters; when they differ from the last run's, earlier
        done-markers are discarded.
    progress : bool
        Show a progress bar.
    in_memory : bool
        Return the summaries as a list (default). False returns a
        :class:`StoredSummaries` that reads each one from its done-marker
        when asked: for summaries whose total grows with the block count but
        whose reduction does not (the codebook's votes), so the reduction
        holds one block's summary at a time.

    Returns
    -------
    list or StoredSummaries
        One summary per block, in the order of ``blocks``.

    Raises
    ------
    BlockError
        If a block still fails after the configured retries; its message names the block.
    """
    executor = executor or Executor(ComputeConfig(scheduler="synchronous"))
    blocks = list(blocks)
    step_dir = Path(state_dir) / name
    _prepare_state(step_dir, params or {})
    markers = {b.id: str(block_marker(state_dir, name, b)) for b in blocks}
    summaries = {}
    for b in blocks:
        if os.path.exists(markers[b.id]):
            # read even when not kept: an unreadable marker is removed and its block run again
            found = _read_marker(markers[b.id])
            if found is not _MISSING:
                summaries[b.id] = found if in_memory else None
    pending = [b for b in blocks if b.id not in summaries]
    done = len(blocks) - len(pending)
    if done:
        log.info("%s: %d of %d blocks already done, resuming", name, done, len(blocks))
    retries = executor.config.retries
    started = time.perf_counter()
    bar = tqdm(total=len(blocks), initial=done, desc=name, unit="block", disable=not progress, leave=False)
    # this process's peak RSS during the pass (pipeline.memory.pass_peaks): the blocks' own
    # where they run here (synchronous scheduler), the client's otherwise
    with track_peak(name), contextlib.closing(bar):
        if executor.synchronous or executor.client is None:
            for block in pending:
                for attempt in range(retries + 1):
                    try:
                        _run_one(block, markers[block.id], step)
                        break
                    except PipelineError:
                        raise
                    except Exception as exc:
                        if attempt == retries:
                            raise _block_failed(name, block, retries, exc) from exc
                        log.warning("%s: %s failed (%s), retrying", name, block, exc)
                bar.update(1)
        else:
            _run_distributed(executor.client, step, pending, markers, name, retries, bar,
                             resources=executor.task_resources)
    log.info("%s: %d blocks in %.1f s", name, len(pending), time.perf_counter() - started)
    if not in_memory:
        missing = [b for b in blocks if not os.path.exists(markers[b.id])]
        if missing:
            raise BlockError(f"step {name!r}: {missing[0]} finished but its done-marker {markers[missing[0].id]} "
                             "is missing")
        return StoredSummaries(name, blocks, [markers[b.id] for b in blocks])
    out = []
    for b in blocks:
        if b.id not in summaries:
            summaries[b.id] = _read_marker(markers[b.id])
            if summaries[b.id] is _MISSING:
                raise BlockError(f"step {name!r}: {b} finished but its done-marker {markers[b.id]} is missing")
        out.append(summaries[b.id])
    return out


def _run_distributed(client, step, pending, markers, name, retries, bar, wave: int = 4096, resources=None):
    """Submit blocks in waves so the scheduler never holds a huge graph.

    ``resources`` (e.g. ``{"GPU": 1}``) is what each task holds on its worker.
    """
    from distributed import as_completed

    by_key = {}
    queue = list(pending)

    def submit(batch):
        futures = client.map(
            _run_one,
            batch,
            [markers[b.id] for b in batch],
            step=step,
            key=[f"{name}-{b.id}" for b in batch],
            retries=retries,
            resources=resources,
            pure=False,
        )
        by_key.update({f.key: b for f, b in zip(futures, batch)})
        return futures

    batch, queue = queue[:wave], queue[wave:]
    running = as_completed(submit(batch))
    for future in running:
        block = by_key[future.key]
        try:
            future.result()
        except (Exception, CancelledError) as exc:
            client.cancel(list(running.futures))
            running.clear()
            if isinstance(exc, PipelineError):
                raise
            raise _block_failed(name, block, retries, exc) from exc
        finally:
            future.release()
        bar.update(1)
        if queue and running.count() < wave // 2:
            batch, queue = queue[:wave], queue[wave:]
            running.update(submit(batch))
