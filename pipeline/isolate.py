"""Run one global, object-heavy step in a forked child process, so its garbage leaves with it.

A step such as the global agglomeration builds millions of small Python
objects (dicts, lists, tuples). Freed, they leave CPython's object arenas and
glibc's heap fragmented: pages the process keeps resident and that the big
NumPy buffers of the next blockwise pass cannot reuse. That resident garbage
grows with the volume. Run in a child forked from the main process, the step
reads the parent's tables without a copy (copy-on-write) and sends back only
its (small) result; when the child exits, every page it allocated goes back to
the operating system::

    main process ──fork──► child: result = fn(*args)      (reads the parent's pages)
         │                   │
         │◄──── pickled result, peak RSS ────┘  exit: its heap is gone
         ▼
    next pass starts on the heap it had before the step

Where ``fork`` is not available (not Linux), the step runs in the process.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import traceback
from dataclasses import dataclass

from .errors import PipelineError
from .memory import high_water_mib, track_peak

__all__ = ["IsolatedStepError", "IsolationReport", "call_isolated", "fork_available"]

log = logging.getLogger(__name__)


class IsolatedStepError(PipelineError, RuntimeError):
    """A step run in a child process raised, or the child died; the message names the step."""


@dataclass(frozen=True)
class IsolationReport:
    """How an isolated step ran.

    Attributes
    ----------
    isolated : bool
        True when it ran in a forked child process.
    start_rss_mib, peak_rss_mib : float or None
        The child's resident memory when it started (pages shared with the
        parent, counted by both) and its peak (Linux ``VmHWM``); None when
        the step ran in the process. Their difference bounds the memory the
        step added to the machine's.
    """

    isolated: bool
    start_rss_mib: float | None = None
    peak_rss_mib: float | None = None

    def to_dict(self) -> dict:
        return {"isolated": self.isolated, "start_rss_mib": self.start_rss_mib, "peak_rss_mib": self.peak_rss_mib}


def fork_available() -> bool:
    """Whether steps can run in a forked child: Linux, with the ``fork`` start method."""
    return sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()


def _child(writer, fn, args, kwargs) -> None:
    """The forked child: run ``fn``, send ``(status, payload, text, start RSS, peak RSS)`` back, exit.

    ``status`` is "ok" (payload: the result), "raised" (payload: the exception,
    text: its traceback) or "error" (text only: what could not be sent). The
    peak is the child's own: its high-water mark, inherited from the parent,
    is reset first.
    """
    with track_peak() as usage:
        try:
            message = ("ok", fn(*args, **kwargs), "")
        except BaseException as exc:  # noqa: BLE001 - everything the step raised goes back to the parent
            message = ("raised", exc, traceback.format_exc())
    start = usage["start_mib"]
    peak = usage["peak_mib"] if usage["peak_mib"] is not None else high_water_mib()
    try:
        writer.send((*message, start, peak))
    except Exception:  # noqa: BLE001 - an unpicklable result or exception: send its text instead
        what = "result" if message[0] == "ok" else "exception"
        writer.send(("error", None, f"the step's {what} could not be sent back to the main process:\n"
                     + message[2] + traceback.format_exc(), start, peak))
    writer.close()


def call_isolated(fn, /, *args, name: str, isolate: bool = True, **kwargs):
    """``fn(*args, **kwargs)`` in a forked child process; returns its result and an :class:`IsolationReport`.

    Parameters
    ----------
    fn : callable
        Any function; its arguments are not pickled (the child inherits
        them), its return value is.
    *args, **kwargs
        Passed to ``fn``.
    name : str
        The step's name, for messages.
    isolate : bool
        False (or no ``fork`` here) runs ``fn`` in this process.

    Returns
    -------
    result, IsolationReport

    Raises
    ------
    Exception
        Whatever ``fn`` raised in the child, re-raised here with the child's
        traceback added as a note.
    IsolatedStepError
        The child died without a result (killed for memory, say: the exit
        code is named), or its result or exception could not be pickled.
    """
    if not (isolate and fork_available()):
        return fn(*args, **kwargs), IsolationReport(isolated=False)
    context = multiprocessing.get_context("fork")
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(writer, fn, args, kwargs), name=f"isolated {name}",
                              daemon=True)
    process.start()
    writer.close()
    try:
        status, payload, text, start, peak = reader.recv()
    except EOFError:
        process.join()
        raise IsolatedStepError(f"{name}: its child process died without a result (exit code "
                                f"{process.exitcode}; a negative code is the signal, -9 often the "
                                "out-of-memory killer)") from None
    finally:
        reader.close()
    process.join()
    if status == "raised":
        payload.add_note(f"(raised in the child process of {name}; its traceback:)\n{text}")
        raise payload
    if status == "error":
        raise IsolatedStepError(f"{name} failed in its child process:\n{text}")
    report = IsolationReport(isolated=True, start_rss_mib=start, peak_rss_mib=peak)
    log.debug("%s ran in a child process: RSS %.0f MiB at start, peak %.0f MiB", name, start or 0.0, peak or 0.0)
    return payload, report
