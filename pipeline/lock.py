"""One run at a time per run directory: a lock file naming its holder.

``RunLock(run_dir)`` guards a run directory for the duration of a run::

    with RunLock(run_dir):
        ...                       # only this process writes run_dir

The lock is the file ``RUN/run.lock``. It holds one JSON object naming the
holder: ``pid``, ``host``, ``started`` (ISO time), ``proc_start`` (the
process's start tick from ``/proc``, to tell a reused pid from the original
holder) and ``command``. Two mechanisms back each other up:

- an exclusive ``fcntl.flock`` on the open lock file, held for the whole run.
  The kernel drops it when the holder exits, however it dies (SIGKILL
  included), so on a local file system a live holder is always detected;
- the recorded holder. When the flock is free but the file still names a
  holder, that holder died without cleaning up (a kill, a power cut): on the
  same host we check its pid and take a stale lock over with a warning. A
  holder on *another* host cannot be checked from here (and some network file
  systems do not share flocks between hosts), so that lock is refused with a
  message that says which file to delete once the other run is known dead.

A second run on a locked directory fails with :class:`RunLockedError` naming
the holder as ``pid@host``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

from .errors import PipelineError

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "read_lock_holder"]

log = logging.getLogger(__name__)

LOCK_NAME = "run.lock"


class RunLockedError(PipelineError):
    """Another process holds the run directory's lock; the message names it as pid@host."""


def _proc_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), or None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after ')' are fixed.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def read_lock_holder(path) -> dict | None:
    """The holder recorded in a lock file, or None when the file is absent, empty or unreadable."""
    try:
        text = Path(path).read_text()
    except (FileNotFoundError, IsADirectoryError):
        return None
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
        return None
    return holder


def _describe(holder: dict | None) -> str:
    if not holder:
        return "an unknown process"
    started = f", started {holder['started']}" if holder.get("started") else ""
    return f"{holder.get('pid')}@{holder.get('host')}{started}"


class RunLock(AbstractContextManager):
    """Exclusive lock on a run directory (see the module docstring).

    Parameters
    ----------
    run_dir : path
        The run directory; it must exist.
    command : str, optional
        Recorded in the lock file for humans (defaults to this process's argv).

    Raises
    ------
    RunLockedError
        When another live process holds the lock, or a process on another host is recorded.
    PipelineError
        When the lock file cannot be created (read-only or missing directory).
    """

    def __init__(self, run_dir, command: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command if command is not None else " ".join(sys.argv)
        self.host = socket.gethostname()
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _refuse(self, holder, extra: str = "") -> RunLockedError:
        return RunLockedError(
            f"{self.run_dir} is in use by another run ({_describe(holder)}); "
            f"wait for it to finish or choose another output{extra}"
        )

    def _open_locked(self) -> int:
        """Open the lock file and take its flock; retry if it was replaced meanwhile."""
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise PipelineError(f"{self.path}: cannot create the run lock: {exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise self._refuse(read_lock_holder(self.path)) from None
                raise PipelineError(f"{self.path}: cannot lock: {exc.strerror}") from None
            # The previous holder may have unlinked the file between our open and
            # flock; then we hold a lock on a dead inode and must try again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
        raise PipelineError(f"{self.path}: the lock file keeps changing; is another run starting?")

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            raise PipelineError(f"{self.path}: lock already held by this handle")
        fd = self._open_locked()
        try:
            holder = read_lock_holder(self.path)
            if holder is not None:
                self._check_stale(holder)
            elif os.fstat(fd).st_size:
                log.warning("%s: unreadable lock file (a run killed while taking it?); taking it over", self.path)
            record = {
                "pid": os.getpid(),
                "host": self.host,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "proc_start": _proc_start(os.getpid()),
                "command": self.command,
            }
            data = (json.dumps(record) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise PipelineError(f"{self.path}: cannot write the run lock: {exc.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        log.debug("locked %s", self.path)
        return self

    def _check_stale(self, holder: dict) -> None:
        """We got the flock, yet a holder is recorded: decide whether it is dead."""
        pid, host = holder.get("pid"), holder.get("host")
        if host != self.host:
            raise self._refuse(holder, f"; it runs on another host, so if it is dead delete {self.path}")
        if pid == os.getpid():
            raise self._refuse(holder, " (this process already holds it)")
        alive = _pid_alive(pid)
        if alive and holder.get("proc_start") is not None:
            # Same pid but a different start time: the pid was reused by an unrelated process.
            alive = _proc_start(pid) == holder["proc_start"]
        if alive:
            # A live holder without the flock (a file system without flock support):
            # be safe and refuse.
            raise self._refuse(holder)
        log.warning("%s: stale lock of %s (process no longer running); taking it over",
                    self.path, _describe(holder))

    def release(self) -> None:
        """Remove the lock file and drop the flock (unlink first, so no waiter locks a dead file)."""
        if self._fd is None:
            return
        try:
            holder = read_lock_holder(self.path)
            if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == self.host:
                os.unlink(self.path)
        except OSError as exc:
            log.warning("%s: could not remove the run lock: %s", self.path, exc)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()
        return False
