"""Atomic file writes, safe checkpoint loading and the latest-valid-checkpoint rule."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from lotterylab import paths


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be loaded; nothing was deleted."""


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; once written, fsync it, rename it over `path` and fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temp
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, path)
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


DIGEST_KEY = "_sha256"
"""Key of the content digest stored in every checkpoint: torch's zip format does not detect flipped bits."""


def _feed(hasher: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"T{value.dtype}{tuple(value.shape)}".encode())
        hasher.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        hasher.update(f"D{len(value)}".encode())
        for key in sorted(value, key=repr):
            hasher.update(repr(key).encode())
            _feed(hasher, value[key])
    elif isinstance(value, (list, tuple)):
        hasher.update(f"L{len(value)}".encode())
        for item in value:
            _feed(hasher, item)
    else:
        hasher.update(f"V{value!r}".encode())


def digest(state: dict[str, Any]) -> str:
    """SHA-256 over every tensor's dtype, shape and bytes and every other value's repr, in a fixed order."""
    hasher = hashlib.sha256()
    _feed(hasher, {key: value for key, value in state.items() if key != DIGEST_KEY})
    return hasher.hexdigest()


def encode(state: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint file: `state` plus its digest, in torch's format."""
    buffer = io.BytesIO()
    torch.save({**state, DIGEST_KEY: digest(state)}, buffer)
    return buffer.getvalue()


def save(state: dict[str, Any], path: Path) -> None:
    atomic_write(path, encode(state))


def load(path: Path) -> dict[str, Any]:
    """Load tensors and plain containers only (`weights_only=True`, never a fallback) and verify the digest."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or DIGEST_KEY not in state:
        raise CheckpointError(f"{path}: not a lotterylab checkpoint (no content digest)")
    if state.pop(DIGEST_KEY) != digest(state):
        raise CheckpointError(f"{path}: content digest mismatch (the file was altered or corrupted)")
    return state


def epoch_checkpoints(run: Path) -> list[tuple[tuple[int, int], Path]]:
    """Per-epoch checkpoints of a run, oldest first."""
    directory = paths.checkpoints(run)
    if not directory.is_dir():
        return []
    found = [(paths.checkpoint_position(path), path) for path in directory.iterdir()]
    return sorted((position, path) for position, path in found if position is not None)


def latest_valid(run: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads; warn naming each one skipped; error if some exist but none load."""
    candidates = epoch_checkpoints(run)
    for _, path in reversed(candidates):
        try:
            return load(path)
        except Exception as error:  # any unreadable file is skipped, whatever the unpickler raised
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(error).__name__}: {error}", stacklevel=2)
    if candidates:
        raise CheckpointError(f"{paths.checkpoints(run)}: no valid checkpoint among {len(candidates)}; nothing deleted")
    return None


def prune_old(run: Path, keep: int) -> None:
    """Delete all but the `keep` newest per-epoch checkpoints (stage-end copies are separate files and stay)."""
    for _, path in epoch_checkpoints(run)[:-keep]:
        path.unlink(missing_ok=True)
