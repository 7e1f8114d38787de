"""This process's resident memory: now, its peak, and the peak of each blockwise pass.

Linux keeps one high-water mark of a process's resident memory (``VmHWM``).
Writing ``5`` to ``/proc/self/clear_refs`` resets it to the current RSS, so a
pass can measure its own peak::

    RSS ▲        pass A           pass B
        │      ╭──╮ peak A      ╭─╮ peak B
        │   ╭──╯  ╰──╮       ╭──╯ ╰─╮
        │───╯        ╰───────╯      ╰──
        └──┬─────────────┬──────────────► time
         reset         reset   (the mark before each reset is kept)

A reset also lowers what ``getrusage`` reports as ``ru_maxrss``, so the
process-wide peak is :func:`peak_rss_mib`: the highest mark seen before any
reset, or the current mark if higher. Nested passes are measured too: an
inner reset first hands the mark it erases to every pass still open.
Where ``/proc`` is not there, every reading is None and nothing is reset.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "current_rss_mib", "high_water_mib", "pass_peaks", "peak_rss_mib",
           "track_peak", "worker_heap_environ"]

#: Allocations of at least this many bytes get pages of their own (``mmap``), returned on free.
MMAP_THRESHOLD = 1 << 20

#: Free memory at the top of the heap is given back to the kernel only beyond this many bytes.
TRIM_THRESHOLD = 64 << 20

log = logging.getLogger(__name__)

_lock = threading.Lock()
_highest = 0.0                 # the highest VmHWM read before a reset erased it
_open: list[dict] = []         # records of the passes being measured (innermost last)
_pass_peaks: dict[str, dict] = {}


def _status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` field (``VmRSS``, ``VmHWM``) in MiB; None where unreadable."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def current_rss_mib() -> float | None:
    """Resident memory of this process now (``VmRSS``, MiB); None where unavailable."""
    return _status_mib("VmRSS")


def high_water_mib() -> float | None:
    """The kernel's high-water mark of this process (``VmHWM``, MiB) since its last reset; None where unavailable."""
    return _status_mib("VmHWM")


def peak_rss_mib() -> float | None:
    """Peak resident memory of this process so far (MiB), across every pass's reset; None where unavailable."""
    hwm = _status_mib("VmHWM")
    if hwm is None:
        return None
    with _lock:
        return max(hwm, _highest)


def _reset_high_water() -> bool:
    """Hand the current mark to the process and the open passes, then reset it; False where not allowed."""
    global _highest
    hwm = _status_mib("VmHWM")
    if hwm is None:
        return False
    _highest = max(_highest, hwm)
    for record in _open:
        record["peak_mib"] = max(record["peak_mib"] or 0.0, hwm)
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


@contextmanager
def track_peak(name: str | None = None):
    """Measure this process's peak RSS inside the ``with`` block.

    Yields a dict whose ``start_mib``, ``peak_mib`` and ``end_mib`` are filled
    in (``peak_mib`` when the block ends; None where the mark cannot be
    reset). With a ``name``, the record is also kept in :func:`pass_peaks`.
    """
    record = {"start_mib": current_rss_mib(), "peak_mib": None, "end_mib": None}
    with _lock:
        resettable = _reset_high_water()
        _open.append(record)
    try:
        yield record
    finally:
        global _highest
        with _lock:
            _open.remove(record)
            hwm = _status_mib("VmHWM")
            if hwm is not None:
                _highest = max(_highest, hwm)
            record["peak_mib"] = max(record["peak_mib"] or 0.0, hwm) if (resettable and hwm is not None) else None
            record["end_mib"] = current_rss_mib()
            if name is not None:
                _pass_peaks[name] = dict(record)
        if name is not None and record["peak_mib"] is not None:
            log.info("%s: peak RSS %.0f MiB (%.0f at its start)", name, record["peak_mib"], record["start_mib"] or 0.0)


def pass_peaks(clear: bool = False) -> dict[str, dict]:
    """The records of the named passes measured so far (a copy), by name; ``clear`` forgets them."""
    with _lock:
        out = {name: dict(record) for name, record in _pass_peaks.items()}
        if clear:
            _pass_peaks.clear()
    return out


def worker_heap_environ() -> dict[str, str]:
    """glibc's variables for a worker process: the settings of ``workflows.run.limit_heap_retention``.

    Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_`` to 64 KiB before it spawns a
    worker, which also fixes glibc's mmap threshold at its 128 KiB default:
    every array of 128 KiB or more is then mapped fresh and every freed heap
    top goes back to the kernel, so a block's steps fault their pages in
    again and again. A worker gets one arena, a 1 MiB mmap threshold and a
    64 MiB trim threshold instead, as the run process does. Variables this
    process's environment sets are passed on unchanged.
    """
    wanted = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
              "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
    return {name: os.environ.get(name, value) for name, value in wanted.items()}
