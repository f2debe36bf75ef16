"""Run identity: a run directory's config hashes to its name, and every file read from it lies inside it.

A run directory is `<root>/<config hash>`. Before anything is resumed, analysed, collected or coupled from it:
- `config.yaml` parses and hashes to the directory's name (a truncated or edited one does not);
- the file read lies inside the directory once symlinks are resolved (a `checkpoints` link into another run does not);
- a checkpoint's recorded run hash (`checkpoint.RUN_KEY`) and results.nc's `run_hash` attribute equal that name.
Each failure is an IdentityError: one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

from lotterylab.core import paths
from lotterylab.core.config import Config, ConfigError


class IdentityError(ValueError):
    """A file does not belong to the run directory it was read from; the message is one line naming it."""


def run_hash(run: Path) -> str:
    """The hash a run directory stands for: its name."""
    return Path(run).absolute().name


def inside(run: Path, path: Path) -> Path:
    """`path` with symlinks resolved; an IdentityError unless it lies inside `run` (resolved too)."""
    resolved, home = Path(path).resolve(), Path(run).resolve()
    if resolved != home and home not in resolved.parents:
        raise IdentityError(f"{path}: resolves to {resolved}, outside its run directory {home}; "
                            f"a run reads only its own files")
    return resolved


def check_hash(path: Path, recorded: str | None, run: Path) -> None:
    """An IdentityError unless the run hash recorded in `path` is `run`'s (files written before hashes were recorded
    carry none, and are judged by where they lie alone)."""
    if recorded is not None and recorded != run_hash(run):
        raise IdentityError(f"{path}: belongs to run {recorded}, not to {run_hash(run)}; "
                            f"a run reads only its own files")


def read_config(run: Path) -> Config:
    """The run's config; an IdentityError if config.yaml is missing, unreadable or hashes to another name."""
    from lotterylab.core import config

    path = paths.config(Path(run))
    if not path.is_file():
        raise IdentityError(f"{path}: no such file (not a run directory?)")
    inside(run, path)
    try:
        cfg = config.load(path)
    except ConfigError as error:
        raise IdentityError(f"{path}: unreadable run config ({error})") from None
    if cfg.run_hash() != run_hash(run):
        raise IdentityError(f"{path}: hashes to {cfg.run_hash()}, not to its directory's name {run_hash(run)} "
                            f"(truncated or edited)")
    return cfg


def config_matches(run: Path, cfg: Config) -> bool:
    """Whether `run`'s config.yaml holds `cfg`'s canonical YAML, byte for byte."""
    path = paths.config(Path(run))
    try:
        return path.read_bytes() == cfg.to_yaml().encode()
    except OSError:
        return False
