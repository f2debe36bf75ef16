"""Durable file writes: a file appears whole or not at all, and a failed write is one line naming the file.

Every durable write of lotterylab passes through `atomic_path` (checkpoints, results, done markers, locks, plans,
claims, the dataset caches): tests/crash_worker.py injects its faults at this one point.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


class WriteError(OSError):
    """A durable write failed (disk full, quota, read-only): the message is one line naming the file."""

    def __str__(self) -> str:
        return self.args[0]


def _write_error(path: Path, error: OSError) -> WriteError:
    existing = next((folder for folder in path.parents if folder.is_dir()), Path("."))
    try:
        free = f"{shutil.disk_usage(existing).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        message = f"{path}: disk full ({free}); nothing was lost: free space and rerun the same command"
    else:
        message = f"{path}: write failed ({error.strerror or error}; {free}); nothing was lost: rerun the same command"
    written = WriteError(" ".join(message.split()))
    written.errno, written.filename = error.errno, str(path)
    return written


@contextlib.contextmanager
def atomic_path(path: Path, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `path`; once written, fsync it, move it to `path` and fsync the directory.

    `path` appears whole or not at all. An OSError while writing leaves it as it was (absent or its previous
    version) and becomes a WriteError. `exclusive`: link instead of rename, so that an existing `path` is kept and
    FileExistsError raised (a lock's content is on disk before anyone can see the lock).
    Every durable write of a run passes here: tests/test_crash_points.py injects its faults at this one point.
    """
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temp
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        (os.link if exclusive else os.replace)(temp, path)
    except (WriteError, FileExistsError):
        raise
    except OSError as error:
        raise _write_error(path, error) from error
    finally:
        temp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def atomic_write(path: Path, data: bytes) -> None:
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def exclusive_write(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists (False then); it is never seen empty or half-written."""
    try:
        with atomic_path(path, exclusive=True) as temp:
            temp.write_bytes(data)
    except FileExistsError:
        return False
    return True
