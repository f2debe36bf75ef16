"""Fault injection at a run's durable writes, for tests/test_crash_points.py; as a script, `lotterylab run` killed
right before its K-th durable write.

Every durable write of a run (config, lock, init weights, epoch and stage-end checkpoints, results, the completion
marker) passes through `files.atomic_path`, so counting its calls enumerates the write points.

Usage: crash_worker.py K CONFIG OUT THREADS   (SIGKILLs itself right before write K, counted from 0)
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from lotterylab.core import files


class Faults:
    """While entered, record every durable write's path and inject `mode` ('kill' or 'enospc') at write `at`."""

    def __init__(self, mode: str | None = None, at: int = -1):
        self.mode, self.at = mode, at
        self.written: list[Path] = []
        self.real = files.atomic_path

    @contextlib.contextmanager
    def atomic_path(self, path: Path, exclusive: bool = False) -> Iterator[Path]:
        index = len(self.written)
        self.written.append(Path(path))
        if index == self.at and self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        with self.real(path, exclusive) as temp:
            if index == self.at and self.mode == "enospc":
                temp.write_bytes(b"\0" * 4096)  # part of the file reached the disk before it filled up
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield temp

    def __enter__(self) -> Faults:
        files.atomic_path = self.atomic_path
        return self

    def __exit__(self, *exc) -> None:
        files.atomic_path = self.real


if __name__ == "__main__":
    at, config_file, out, threads = sys.argv[1:]
    import torch

    torch.set_num_threads(int(threads))  # the same arithmetic as the test process that resumes the run
    from lotterylab import cli

    with Faults("kill", int(at)):
        sys.exit(cli.main(["run", config_file, "--out", out]))
