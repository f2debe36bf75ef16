"""A study's progress while it trains: runs done of the total and the run training now, at its stage and epoch."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def watched() -> bool:
    """Whether a person sees this process's progress: a kernel a Jupyter server started for a notebook open in
    JupyterLab (it names the session in JPY_SESSION_NAME; papermill's kernels have none, so a report records no bar),
    or a terminal on stderr."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and hasattr(shell, "kernel"):
        return bool(os.environ.get("JPY_SESSION_NAME"))
    return sys.stderr.isatty()


def run_labels(served: Iterable[tuple[Path, dict[str, Any]]]) -> dict[Path, str]:
    """Per run directory, the coordinates of the points it serves, e.g. `method=sculpt_0.5 target=0.8,0.9 seed=0`
    (one SCULPT run serves every target)."""
    coords: dict[Path, dict[str, list[str]]] = {}
    for run_dir, point_coords in served:
        dims = coords.setdefault(run_dir, {})
        for dim, value in point_coords.items():
            text = f"{value:g}" if isinstance(value, float) else str(value)
            if text not in dims.setdefault(dim, []):
                dims[dim].append(text)
    return {run_dir: " ".join(f"{dim}={','.join(values)}" for dim, values in dims.items())
            for run_dir, dims in coords.items()}


class StudyProgress:
    """A runs callback (`runs.RunDriver`) over a study's runs: a tqdm.auto bar of runs done of the total, its postfix
    the run training now at its stage and epoch, where `show` (a widget in JupyterLab, text on a terminal's stderr);
    otherwise log records (DEBUG), which nobody sees unless logging is set up to show them."""

    def __init__(self, labels: dict[Path, str], done: Sequence[Path], show: bool):
        self.labels = labels
        self.finished = {Path(run_dir).resolve() for run_dir in done}
        self.training: dict[int, tuple[str, int, int]] = {}  # id(trainer) -> label, stages, epochs per stage
        self.started: dict[Path, float] = {}
        self.bar = None
        if show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(labels), initial=len(self.finished), unit="run", desc="runs",
                            dynamic_ncols=True)

    def _label(self, run_dir: Path) -> str:
        return self.labels.get(run_dir) or run_dir.name  # a coupled run's source is no point of the study

    def on_run_start(self, trainer: Any, run_dir: Path, stages: int, epochs: int) -> None:
        run_dir = Path(run_dir).resolve()  # the labels' keys are absolute; a driver's run_dir is as its root was given
        self.training[id(trainer)] = (self._label(run_dir), stages, epochs)
        self.started[run_dir] = time.monotonic()
        self._show(f"{self._label(run_dir)} starting")
        log.debug("run %s: training (%d stages of %d epochs)", self._label(run_dir), stages, epochs)

    def on_epoch_end(self, trainer: Any, stage: int, epoch: int, metrics: Any) -> None:
        label, stages, epochs = self.training.get(id(trainer), ("run", 0, 0))
        where = f"stage {stage + 1}/{stages}, epoch {epoch + 1}/{epochs}"
        accuracy = "" if math.isnan(metrics.test_acc) else f" · test acc {100 * metrics.test_acc:.1f}%"
        self._show(f"{label} · {where}{accuracy}")
        log.debug("run %s: %s", label, where)

    def on_run_end(self, run_dir: Path) -> None:
        """A run has finished (here, or in a job the executor waits for)."""
        run_dir = Path(run_dir).resolve()
        if run_dir in self.finished:
            return
        self.finished.add(run_dir)
        seconds = time.monotonic() - self.started.pop(run_dir, time.monotonic())
        log.debug("run %s: finished, %.0f s", self._label(run_dir), seconds)
        if self.bar is not None and run_dir in self.labels:
            self.bar.update()

    def _show(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("")
            self.bar.close()


def notify_run_end(callbacks: Iterable[Any], run_dir: Path) -> None:
    """Tell the callbacks that have an `on_run_end` hook that `run_dir` has finished."""
    for callback in callbacks:
        if hasattr(callback, "on_run_end"):
            callback.on_run_end(run_dir)


class _Echo(logging.Handler):
    """Prints a record's message on sys.stdout as it is at the time (a test's capture included)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


@contextlib.contextmanager
def echo_log() -> Iterator[None]:
    """While a `lotterylab` command runs, print lotterylab's INFO records (a sweep's summary line) on stdout: a
    command's output, where a notebook, whose kernel sets no logging up, shows none. The handler and level are
    restored afterwards, so a process that goes on (a test session, a notebook calling cli.main) is left as it was."""
    logger = logging.getLogger("lotterylab")
    if any(isinstance(handler, _Echo) for handler in logger.handlers):  # nested: the outer command echoes already
        yield
        return
    handler, level = _Echo(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
