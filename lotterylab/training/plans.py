"""A study's plan: the runs its notebook hands `grids.run_all`, recorded before they train, so that `lotterylab status`
lists them as finished, running or pending without executing the notebook.

A study's runs exist only once its notebook has built them (and some, such as coupled runs, only once earlier runs
have finished), so the plan is written as the notebook goes: `grids.run_all(..., plan=output_dir)` adds its points to
`<report dir>/plan.json`, `lotterylab study` starts each execution with no plan and marks it complete at the end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lotterylab.core import files, paths
from lotterylab.training import locks, results

SCHEMA = 1
STATES = ("finished", "running", "pending")


def plan_file(report_dir: str | Path) -> Path:
    return Path(report_dir) / "plan.json"


@dataclass(frozen=True)
class PlannedRun:
    """One run and, per dim, the coordinates of the points it serves (one SCULPT run serves every target)."""

    run_hash: str
    coords: dict[str, list[Any]]

    def where(self) -> str:
        return " ".join(f"{dim}={','.join(str(value) for value in values)}" for dim, values in self.coords.items())


@dataclass(frozen=True)
class Plan:
    runs_root: Path
    runs: list[PlannedRun]
    complete: bool  # the study's notebook finished: no later stage will plan more runs


def _load(path: Path) -> dict[str, Any] | None:
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: unreadable plan ({type(error).__name__}); rerun the study to rewrite it") from None
    if not isinstance(plan, dict) or plan.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a plan of schema {SCHEMA}; rerun the study to rewrite it")
    return plan


def _jsonable(value: Any) -> Any:
    """A numpy scalar (an axis built from an array) as a Python number."""
    return value.item() if hasattr(value, "item") else str(value)


def _write(path: Path, plan: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write(path, (json.dumps(plan, indent=1) + "\n").encode())


def record(points: Sequence[Any], runs_root: str | Path, report_dir: str | Path) -> Path:
    """Add the points (`grids.Point`s) to the report directory's plan, after those of earlier calls."""
    path = plan_file(report_dir)
    root = str(Path(runs_root).resolve())
    try:
        plan = _load(path)
    except ValueError:  # derived data: rewritten rather than refused
        plan = None
    if plan is None or plan.get("runs_root") != root:
        plan = {"schema": SCHEMA, "runs_root": root, "complete": False, "points": []}
    seen = {json.dumps(entry, sort_keys=True) for entry in plan["points"]}
    for point in points:
        entry = json.loads(json.dumps({"run_hash": point.config.run_hash(), "coords": point.coords}, default=_jsonable))
        key = json.dumps(entry, sort_keys=True)
        if key not in seen:
            seen.add(key)
            plan["points"].append(entry)
    plan["complete"] = False
    _write(path, plan)
    return path


def finish(report_dir: str | Path) -> None:
    """Mark the plan complete (the study's notebook ran to its end); no plan, nothing to mark."""
    path = plan_file(report_dir)
    plan = _load(path)
    if plan is not None:
        _write(path, {**plan, "complete": True})


def read(report_dir: str | Path) -> Plan | None:
    """The report directory's plan, each run once in the order first planned; None if there is none."""
    plan = _load(plan_file(report_dir))
    if plan is None:
        return None
    coords: dict[str, dict[str, list[Any]]] = {}
    for entry in plan["points"]:
        dims = coords.setdefault(entry["run_hash"], {})
        for dim, value in entry["coords"].items():
            if value not in dims.setdefault(dim, []):
                dims[dim].append(value)
    return Plan(Path(plan["runs_root"]), [PlannedRun(run_hash, dims) for run_hash, dims in coords.items()],
                bool(plan["complete"]))


def state(run_dir: Path) -> str:
    """finished (verified complete), running (a live process holds its lock) or pending (queued or not started)."""
    if results.is_complete(run_dir):
        return "finished"
    return "running" if locks.run_is_held(run_dir) else "pending"


def summary(title: str, plan: Plan, runs_root: str | Path | None = None) -> str:
    """A count per state, then one line per run: its state, hash and coordinates."""
    root = plan.runs_root if runs_root is None else Path(runs_root)
    states = [state(paths.run_dir(root, run.run_hash)) for run in plan.runs]
    counts = ", ".join(f"{states.count(name)} {name}" for name in STATES)
    scope = "the complete plan" if plan.complete else "the plan so far: the study has not finished and may plan more"
    lines = [f"{title}: {len(plan.runs)} runs: {counts} ({scope})"]
    lines += [f"{run_state:<9} {run.run_hash}  {run.where()}" for run, run_state in zip(plan.runs, states)]
    return "\n".join(lines)
