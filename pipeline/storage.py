"""Durable small files: atomic writes of JSON, Parquet and pickles we made ourselves.

A reader never sees a half-written file: each writer writes a temporary file in
the same folder, flushes it to disk, then renames it over the target. A write
that fails for lack of space or permission raises :class:`StorageError` (a
:class:`~pipeline.errors.PipelineError`) naming the file.

Test hook: :func:`crash_point` marks the places where a kill is most
interesting (before and after each atomic rename, around each block's
done-marker, at each workflow step). With ``CONNECTOME_CRASH_AT=N`` in the
environment the process SIGKILLs itself at its N-th crash point; with
``CONNECTOME_CRASH_LOG=FILE`` it appends one line per crash point passed, so a
test can count them in an uninterrupted run. Neither variable is meant for
users; unset, the hook costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import PipelineError

__all__ = ["StorageError", "crash_point", "storage_error", "atomic_path", "write_json", "write_text_atomic", "read_json", "write_parquet", "write_pickle", "read_pickle", "array_digest"]


class StorageError(PipelineError, OSError):
    """A file could not be written (disk full, read-only, permission); the message names it."""

    def __str__(self):
        return str(self.strerror)


# OS errors that are the user's environment, not a bug: reported in one line.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                       errno.EISDIR, errno.EFBIG}

_crash_count = 0


def crash_point(tag: str) -> None:
    """Test hook: SIGKILL this process at the N-th call when ``CONNECTOME_CRASH_AT=N`` (see module doc)."""
    at = os.environ.get("CONNECTOME_CRASH_AT")
    record = os.environ.get("CONNECTOME_CRASH_LOG")
    if at is None and record is None:
        return
    global _crash_count
    _crash_count += 1
    if record:
        with open(record, "a") as f:
            f.write(f"{_crash_count} {tag}\n")
    if at is not None and _crash_count == int(at):
        os.kill(os.getpid(), signal.SIGKILL)


def storage_error(path, exc: OSError) -> OSError:
    """A :class:`StorageError` naming ``path`` for environment errors (disk full...), else ``exc``."""
    if isinstance(exc, PipelineError) or exc.errno not in _ENVIRONMENT_ERRNOS:
        return exc
    return StorageError(exc.errno, f"{path}: cannot write: {exc.strerror or os.strerror(exc.errno)}")


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Raises
    ------
    StorageError
        When the folder or file cannot be written (disk full, read-only, no permission).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise storage_error(path, exc) from None
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        crash_point(f"write:{path.name}:tmp")
        os.replace(tmp, path)
    except OSError as exc:
        raise storage_error(path, exc) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    crash_point(f"write:{path.name}:done")


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_json(path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text())


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_parquet(path, frame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_pickle(path, obj) -> None:
    """Pickle ``obj`` atomically. Only for files this pipeline writes itself."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def read_pickle(path):
    """Read a pickle this pipeline wrote (block summaries); never a user's file."""
    with open(path, "rb") as f:
        return pickle.load(f)


def array_digest(*arrays) -> str:
    """Short SHA-256 of the bytes of ``arrays`` (C order): a fingerprint for step parameters."""
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]
