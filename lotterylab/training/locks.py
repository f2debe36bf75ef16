"""A lock file per run directory, so that two processes given the same config never both train it.

Rules (also in docs/reliability.md):
- The lock is `<run>/lock`, holding the holder's pid, host name and a random token. It is written to a temporary file
  and linked into place (`files.exclusive_write`), so it is never seen empty or half-written; an unreadable or
  empty lock (left by an older lotterylab, or a damaged disk) has no live holder and is taken over at once.
- The holder touches it at most every HEARTBEAT_S seconds while training, so a live lock is never old.
- A lock is stale when its pid is dead on this host, when it was taken by an earlier attempt of the same Slurm job
  (same SLURM_JOB_ID, lower SLURM_RESTART_COUNT: Slurm ends an attempt before it requeues the job, maybe onto another
  node), or when it has not been touched for `stale_after` seconds (default STALE_AFTER_S, or the
  LOTTERYLAB_STALE_LOCK_S environment variable). A stale lock is taken over with a warning naming the file and its
  holder.
- A process that finds a live lock waits (polling every POLL_S seconds) until it is released or goes stale.
- The lock is released in `finally`, and only by its holder.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
import warnings
from pathlib import Path

from lotterylab.core import files, paths

STALE_AFTER_S = 3600.0
HEARTBEAT_S = 60.0
POLL_S = 1.0


def _pid_is_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def slurm_attempt() -> tuple[str, int] | None:
    """(SLURM_JOB_ID, SLURM_RESTART_COUNT) inside a Slurm job; the count grows each time the job is requeued."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0")
    return job, int(restarts) if restarts.isdigit() else 0


class RunLock:
    """Context manager holding `path` exclusively; also a training callback that keeps the lock fresh."""

    reads_weights = False  # its on_step only touches the file: packed runs need not write weights back for it

    def __init__(self, path: Path, stale_after: float | None = None, poll: float = POLL_S):
        self.path = Path(path)
        self.stale_after = stale_after if stale_after is not None else float(
            os.environ.get("LOTTERYLAB_STALE_LOCK_S", STALE_AFTER_S))
        self.poll = poll
        self.token = uuid.uuid4().hex
        self.last_touch = 0.0

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}  # unreadable or empty: never written by a live holder

    def _stale_reason(self, holder: dict) -> str | None:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        if not holder:
            return "empty or unreadable, so no holder is recorded"
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
                and _pid_is_dead(holder["pid"]):
            return f"pid {holder['pid']} is dead on this host"
        mine, theirs = slurm_attempt(), holder.get("slurm")
        if mine is not None and isinstance(theirs, list) and len(theirs) == 2 and theirs[0] == mine[0] \
                and isinstance(theirs[1], int) and theirs[1] < mine[1]:
            return f"taken by attempt {theirs[1]} of Slurm job {mine[0]}, which is now at attempt {mine[1]}"
        if age > self.stale_after:
            return f"untouched for {age:.0f} s (> {self.stale_after:.0f} s)"
        return None

    def _try_create(self) -> bool:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time(), "token": self.token}
        attempt = slurm_attempt()
        if attempt is not None:
            holder["slurm"] = list(attempt)
        if not files.exclusive_write(self.path, json.dumps(holder).encode()):
            return False
        self.last_touch = time.monotonic()
        return True

    def _take_over(self, holder: dict, reason: str) -> None:
        """Move the stale lock aside, and delete it only if it is still the one judged stale."""
        aside = self.path.with_name(f"{self.path.name}.stale.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (ValueError, OSError):
            moved = {}
        if moved != holder:  # a new holder locked it between our check and the rename: give it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        else:
            warnings.warn(f"{self.path}: taking over a stale lock ({reason}; holder {holder})", stacklevel=3)
        aside.unlink(missing_ok=True)

    def try_acquire(self) -> bool:
        """Take the lock if it is free or stale; False at once if a live holder has it."""
        while not self._try_create():
            holder = self._holder()
            if holder is None:
                continue
            reason = self._stale_reason(holder)
            if reason is None:
                return False
            self._take_over(holder, reason)
        return True

    def holder(self) -> dict | None:
        """What the lock file records of its holder (pid, host, time), or None when there is no lock."""
        return self._holder()

    def is_held(self) -> bool:
        """Whether a live holder has the lock now (it exists and is not stale); takes and changes nothing."""
        holder = self._holder()
        return holder is not None and self._stale_reason(holder) is None

    def acquire(self) -> None:
        waiting = False
        while not self.try_acquire():
            if not waiting:
                print(f"lotterylab: {self.path} is held by {self._holder()}; waiting", file=sys.stderr, flush=True)
                waiting = True
            time.sleep(self.poll)

    def release(self) -> None:
        holder = self._holder()
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def on_step(self, trainer, stage: int, epoch: int, step: int) -> None:
        if time.monotonic() - self.last_touch > HEARTBEAT_S:
            os.utime(self.path)
            self.last_touch = time.monotonic()


def run_is_held(run_dir: Path) -> bool:
    """Whether another process is training the run in `run_dir`: its lock exists and is not stale."""
    return RunLock(paths.lock(run_dir)).is_held()
