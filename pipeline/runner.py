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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from concurrent.futures import CancelledError
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from .blocks import Block
from .config import ComputeConfig
from .errors import BlockError, PipelineError
from .storage import crash_point, read_json, read_pickle, storage_error, write_json, write_pickle

__all__ = ["Executor", "run_blockwise", "block_marker"]

log = logging.getLogger(__name__)


class Executor(AbstractContextManager):
    """Where block tasks run: this process, a new LocalCluster, or a cluster by address.

    Use as a context manager; the local cluster (if any) is closed on exit.

    Examples
    --------
    >>> with Executor(ComputeConfig(scheduler="synchronous")) as ex:  # doctest: +SKIP
    ...     summaries = run_blockwise(step, grid, name="fragments", state_dir=d, executor=ex)
    """

    def __init__(self, config: ComputeConfig | None = None):
        self.config = config or ComputeConfig()
        self.client = None
        self._cluster = None
        self.dashboard_link: str | None = None

    @property
    def synchronous(self) -> bool:
        return self.config.scheduler == "synchronous"

    def __enter__(self) -> "Executor":
        if self.synchronous:
            return self
        from distributed import Client, LocalCluster

        # distributed configures its own loggers at import; keep them to warnings
        # unless the user asked for debug output.
        if not log.isEnabledFor(logging.DEBUG):
            logging.getLogger("distributed").setLevel(logging.WARNING)
        scheduler = self.config.scheduler
        if scheduler == "local":
            n_workers = self.config.n_workers or os.cpu_count() or 1
            self._cluster = LocalCluster(
                n_workers=n_workers,
                threads_per_worker=self.config.threads_per_worker,
                dashboard_address=self.config.dashboard_address,
                host="127.0.0.1",
                memory_limit=self.config.memory_limit,
                processes=True,
                silence_logs=logging.WARNING,
            )
            self.client = Client(self._cluster)
        else:
            try:
                self.client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError) as exc:
                raise PipelineError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
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


def run_blockwise(
    step: Callable[[Block], Any],
    blocks: Sequence[Block],
    *,
    name: str,
    state_dir,
    executor: Executor | None = None,
    params: dict | None = None,
    progress: bool = True,
) -> list:
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

    Returns
    -------
    list
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
            found = _read_marker(markers[b.id])
            if found is not _MISSING:
                summaries[b.id] = found
    pending = [b for b in blocks if b.id not in summaries]
    done = len(blocks) - len(pending)
    if done:
        log.info("%s: %d of %d blocks already done, resuming", name, done, len(blocks))
    retries = executor.config.retries
    started = time.perf_counter()
    bar = tqdm(total=len(blocks), initial=done, desc=name, unit="block", disable=not progress, leave=False)
    try:
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
            _run_distributed(executor.client, step, pending, markers, name, retries, bar)
    finally:
        bar.close()
    log.info("%s: %d blocks in %.1f s", name, len(pending), time.perf_counter() - started)
    out = []
    for b in blocks:
        if b.id not in summaries:
            summaries[b.id] = _read_marker(markers[b.id])
            if summaries[b.id] is _MISSING:
                raise BlockError(f"step {name!r}: {b} finished but its done-marker {markers[b.id]} is missing")
        out.append(summaries[b.id])
    return out


def _run_distributed(client, step, pending, markers, name, retries, bar, wave: int = 4096):
    """Submit blocks in waves so the scheduler never holds a huge graph."""
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
