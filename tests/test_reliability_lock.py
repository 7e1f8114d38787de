"""One run at a time per run directory: RUN/run.lock names its holder; stale locks are taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.lock import LOCK_NAME, RunLock, RunLockedError, read_lock_holder
from workflows.cli import main

REPO = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_records_holder_and_is_removed(tmp_path):
    with RunLock(tmp_path, command="connectome run x.yaml") as lock:
        holder = read_lock_holder(tmp_path / LOCK_NAME)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["command"] == "connectome run x.yaml" and holder["started"]
        assert lock.held
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path):  # free again
        pass


def test_second_lock_in_same_process_is_refused(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=rf"{os.getpid()}@{socket.gethostname()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_held_by_another_process_is_refused(tmp_path):
    """A live holder in another process (flock held): refused, naming pid@host; the holder's file survives."""
    ready = tmp_path / "ready"
    script = textwrap.dedent(f"""
        import time, pathlib
        from pipeline.lock import RunLock
        with RunLock({str(tmp_path)!r}):
            pathlib.Path({str(ready)!r}).write_text("x")
            time.sleep(60)
    """)
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "lock holder did not start"
            time.sleep(0.05)
        with pytest.raises(RunLockedError) as info:
            RunLock(tmp_path).acquire()
        assert f"{holder.pid}@{socket.gethostname()}" in str(info.value)
        assert read_lock_holder(tmp_path / LOCK_NAME)["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
    # SIGKILLed holder: the kernel dropped its flock, its record says a dead pid -> stale, taken over.
    with RunLock(tmp_path):
        assert read_lock_holder(tmp_path / LOCK_NAME)["pid"] == os.getpid()


def test_stale_lock_of_dead_pid_is_taken_over_with_warning(tmp_path, caplog):
    dead = _dead_pid()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead, "host": socket.gethostname(),
                                                  "started": "2020-01-01T00:00:00"}))
    with caplog.at_level(logging.WARNING, logger="pipeline.lock"):
        with RunLock(tmp_path):
            assert read_lock_holder(tmp_path / LOCK_NAME)["pid"] == os.getpid()
    assert f"stale lock of {dead}@{socket.gethostname()}" in caplog.text


def test_reused_pid_is_stale(tmp_path, caplog):
    """The recorded pid is alive but started at another time: a reused pid, so the lock is stale."""
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                  "proc_start": -1}))
    with caplog.at_level(logging.WARNING, logger="pipeline.lock"):
        with RunLock(tmp_path):
            pass
    assert "stale lock" in caplog.text


def test_live_pid_without_flock_is_refused(tmp_path):
    """A live recorded holder (e.g. on a file system without flock) is never taken over."""
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    with pytest.raises(RunLockedError, match=f"{os.getppid()}@"):
        RunLock(tmp_path).acquire()


def test_lock_of_other_host_is_refused_and_says_which_file(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "node-17"}))
    with pytest.raises(RunLockedError) as info:
        RunLock(tmp_path).acquire()
    assert "4242@node-17" in str(info.value) and str(tmp_path / LOCK_NAME) in str(info.value)


def test_garbage_lock_file_is_taken_over(tmp_path, caplog):
    (tmp_path / LOCK_NAME).write_text('{"pid": 12')  # cut short by a kill while taking it
    with caplog.at_level(logging.WARNING, logger="pipeline.lock"):
        with RunLock(tmp_path):
            pass
    assert "unreadable lock file" in caplog.text


def test_unwritable_run_dir_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError, match="cannot create the run lock"):
        RunLock(tmp_path / "missing" / "dir").acquire()


def test_cli_run_refused_while_locked(tmp_path, capsys):
    """`connectome run` on a locked output exits 2 with one line naming pid@host; the run dir is untouched."""
    run = tmp_path / "run"
    run.mkdir()
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(f"input: {{volume: {tmp_path / 'v.zarr'}}}\noutput: {run}\n"
                        "compute: {scheduler: synchronous}\n")
    with RunLock(run):
        assert main(["run", str(workflow)]) == 2
    err = capsys.readouterr().err
    assert f"{os.getpid()}@{socket.gethostname()}" in err and "in use by another run" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (run / "run.json").exists()
