"""Running a study's points: every run through an executor, with a progress bar and one summary line; the status of
the points' runs while they train elsewhere."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lotterylab.studies.grids.planning import Point, run_dir
from lotterylab.training import executors, plans, progress, results

log = logging.getLogger("lotterylab.studies.grids")  # the summary line's logger, whichever module writes it


def run_all(points: Sequence[Point], runs_root: str | Path,
            executor: executors.Executor | dict[str, Any] | None = None, plan: str | Path | None = None,
            show_progress: bool | None = None) -> list[Path]:
    """Train every point through `executor` (an executor, a params section such as `{name: slurm, ...}`, or None
    for `local`): finished runs are reused, interrupted ones resume. `plan`, a study's report directory, records the
    points in its plan.json before any trains, for `lotterylab status` (`plans`).

    While they train, a progress bar shows runs done of the total and the run training now, at its stage and epoch,
    where `show_progress` (None: `progress.watched()`, true in JupyterLab and on a terminal, false under papermill).
    At the end one summary line (run directories trained, reused and pending; points sharing a run count once) goes
    to the log, not to the output: a report shows no bookkeeping (`lotterylab` commands print INFO records)."""
    if plan is not None:
        plans.record(points, runs_root, plan)
    start = time.time()
    labels = progress.run_labels((run_dir(point, runs_root), point.coords) for point in points)
    reused = [directory for directory in labels if results.is_complete(directory)]
    tracker = progress.StudyProgress(labels, reused, progress.watched() if show_progress is None else show_progress)
    try:
        run_dirs = executors.resolve(executor)([point.config for point in points], runs_root, callbacks=[tracker])
        finished = [directory for directory in labels if results.is_complete(directory)]
        for directory in finished:  # also those another process finished while this one waited on its lock
            tracker.on_run_end(directory)
    finally:
        tracker.close()
    pending = len(labels) - len(finished)
    log.info("%d runs%s: %d trained, %d reused%s, %.0f s", len(labels),
             f" for {len(points)} points" if len(points) != len(labels) else "", len(finished) - len(reused),
             len(reused), f", {pending} pending" if pending else "", time.time() - start)
    return run_dirs


@dataclass(frozen=True)
class Status:
    """Which points of a study have finished runs and which are still pending (queued, running or not started)."""

    finished: list[Point]
    pending: list[Point]

    def __str__(self) -> str:
        return f"{len(self.finished)} of {len(self.finished) + len(self.pending)} runs finished, " \
               f"{len(self.pending)} pending"


def status(points: Sequence[Point], runs_root: str | Path) -> Status:
    """Split the points by whether their run has finished: `collect(status(...).finished, ...)` reads what is done."""
    done = [results.is_complete(run_dir(point, runs_root)) for point in points]
    return Status([p for p, ok in zip(points, done) if ok], [p for p, ok in zip(points, done) if not ok])


def wait(points: Sequence[Point], runs_root: str | Path, poll: float = 30.0, timeout: float | None = None) -> Status:
    """Poll until every point's run has finished or `timeout` seconds have passed; print each change of count and
    return the last status (runs may still be pending after a timeout)."""
    start, shown = time.monotonic(), None
    while True:
        now = status(points, runs_root)
        if str(now) != shown:
            print(f"{now}, {time.monotonic() - start:.0f} s", flush=True)
            shown = str(now)
        if not now.pending or (timeout is not None and time.monotonic() - start >= timeout):
            return now
        time.sleep(poll)
