"""Every artifact path of a run, as one-line functions; no path literals live anywhere else."""

from __future__ import annotations

import re
from pathlib import Path


def run_dir(root: Path, run_hash: str) -> Path:
    return Path(root) / run_hash


def config(run: Path) -> Path:
    return run / "config.yaml"


def results(run: Path) -> Path:
    return run / "results.nc"


def done_marker(run: Path) -> Path:
    return run / "done.json"


def lock(run: Path) -> Path:
    return run / "lock"


def checkpoints(run: Path) -> Path:
    return run / "checkpoints"


def checkpoint(run: Path, stage: int, epoch: int) -> Path:
    return checkpoints(run) / f"stage{stage:03d}-epoch{epoch:04d}.pt"


def stage_end(run: Path, stage: int) -> Path:
    return checkpoints(run) / f"stage{stage:03d}-end.pt"


def stage_ends(run: Path) -> list[Path]:
    return sorted(checkpoints(run).glob("stage[0-9][0-9][0-9]-end.pt"))


def analysis(run: Path, name: str) -> Path:
    return Path(run) / "analysis" / f"{name}.nc"


def init_weights(run: Path) -> Path:
    return run / "init.pt"


_CHECKPOINT_NAME = re.compile(r"stage(\d{3})-epoch(\d{4})\.pt")


def checkpoint_position(path: Path) -> tuple[int, int] | None:
    """(stage, epoch) of a per-epoch checkpoint file name, or None for any other file."""
    match = _CHECKPOINT_NAME.fullmatch(path.name)
    return None if match is None else (int(match[1]), int(match[2]))
