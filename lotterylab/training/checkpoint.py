"""Safe checkpoint loading and the latest-valid-checkpoint rule; writes go through lotterylab.core.files."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from lotterylab.core import identity, paths
from lotterylab.core.files import atomic_write


class CheckpointError(RuntimeError):
    """No checkpoint of a run can be loaded; nothing was deleted."""


DIGEST_KEY = "_sha256"
"""Key of the content digest stored in every checkpoint: torch's zip format does not detect flipped bits."""
RUN_KEY = "_run_hash"
"""Key of the hash of the run a checkpoint belongs to (lotterylab.core.identity), covered by the digest."""


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


def _unshared(value: Any) -> Any:
    """`value` with every container and string rebuilt as a new object. Pickle writes an object seen before as a
    back-reference, so which objects happen to be shared (a key interned by Python in one process, read from a file
    in a resumed one) would change the bytes of equal states; unshared, equal states give equal files."""
    if isinstance(value, dict):
        return {_unshared(key): _unshared(item) for key, item in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_unshared(item) for item in value)
    if type(value) is str:
        return value.encode().decode()  # a new object (CPython keeps one-character and empty strings unique anyway)
    return value


def encode(state: dict[str, Any], run_hash: str | None = None) -> bytes:
    """The bytes of a checkpoint file: `state`, the run it belongs to, and their digest, in torch's format; the
    same bytes for equal states, whatever process wrote them."""
    state = {**state, **({RUN_KEY: run_hash} if run_hash is not None else {})}
    buffer = io.BytesIO()
    torch.save(_unshared({**state, DIGEST_KEY: digest(state)}), buffer)
    return buffer.getvalue()


def save(state: dict[str, Any], path: Path, run_hash: str | None = None) -> None:
    atomic_write(path, encode(state, run_hash))


def load(path: Path, run: Path | None = None) -> dict[str, Any]:
    """Load tensors and plain containers only (`weights_only=True`, never a fallback) and verify the digest; with
    `run`, also that the file lies inside that run directory and belongs to it (an IdentityError otherwise)."""
    if run is not None:
        identity.inside(run, path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or DIGEST_KEY not in state:
        raise CheckpointError(f"{path}: not a lotterylab checkpoint (no content digest)")
    if state.pop(DIGEST_KEY) != digest(state):
        raise CheckpointError(f"{path}: content digest mismatch (the file was altered or corrupted)")
    recorded = state.pop(RUN_KEY, None)
    if run is not None:
        identity.check_hash(path, recorded, run)
    return state


def is_valid(path: Path, run: Path) -> bool:
    """Whether `path` loads, verifies and belongs to `run`."""
    try:
        load(path, run)
    except identity.IdentityError:
        raise
    except Exception:  # whatever the unpickler raised, the file is unusable
        return False
    return True


def epoch_checkpoints(run: Path) -> list[tuple[tuple[int, int], Path]]:
    """Per-epoch checkpoints of a run, oldest first."""
    directory = paths.checkpoints(run)
    if not directory.is_dir():
        return []
    found = [(paths.checkpoint_position(path), path) for path in directory.iterdir()]
    return sorted((position, path) for position, path in found if position is not None)


def latest_valid(run: Path) -> Path | None:
    """The newest per-epoch checkpoint that loads and is the run's own; warn naming each one skipped; error if some
    exist but none load, and an IdentityError for a file that is not the run's own (never skipped: it means the
    directory was tampered with)."""
    identity.inside(run, paths.checkpoints(run))
    candidates = epoch_checkpoints(run)
    for _, path in reversed(candidates):
        try:
            load(path, run)
            return path
        except identity.IdentityError:
            raise
        except Exception as error:  # any unreadable file is skipped, whatever the unpickler raised
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(error).__name__}: {error}", stacklevel=2)
    if candidates:
        raise CheckpointError(f"{paths.checkpoints(run)}: no valid checkpoint among {len(candidates)}; nothing deleted")
    return None


def prune_old(run: Path, keep: int) -> None:
    """Delete all but the `keep` newest per-epoch checkpoints (stage-end copies are separate files and stay)."""
    for _, path in epoch_checkpoints(run)[:-keep]:
        path.unlink(missing_ok=True)
