"""One run's results as an xarray Dataset: schema, provenance, atomic write and the completion marker."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lotterylab.core import distributed, files, identity, paths
from lotterylab.core.config import Config
from lotterylab.core.version import __version__
from lotterylab.training import checkpoint

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "density")
"""What every run records each epoch; callbacks may record more by name (`Trainer.record`)."""
RESULTS_SCHEMA = 3
"""results.nc's layout, in its `results_schema` attribute. 1 (no attribute): the METRICS alone. 2: also every
quantity recorded by name, as a (stage, epoch) variable. 3: also `collapsed`, (stage, layer), true where a layer's mask
keeps less than the `collapse_threshold` attribute of its weights."""


def append_epoch(history: dict[str, list[float]], values: dict[str, float]) -> None:
    """Append one epoch's values by name: a name first seen now is NaN in the epochs before, a name not given now is
    NaN in this one (so a run resumed from a checkpoint of an older version lacks nothing)."""
    epochs = max((len(column) for column in history.values()), default=0)
    for name in values:
        history.setdefault(name, [math.nan] * epochs)
    for name, column in history.items():
        column.extend([math.nan] * (epochs - len(column)))
        column.append(float(values.get(name, math.nan)))


def git_revision() -> str:
    """Commit of the lotterylab source tree, or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(cfg: Config, device: torch.device) -> dict[str, Any]:
    return {
        "config": cfg.to_yaml(),
        "run_hash": cfg.run_hash(),
        "lotterylab_version": __version__,
        "git_revision": git_revision(),
        "seed": cfg.seed,
        "torch_version": str(torch.__version__),  # TorchVersion is a str subclass h5py cannot store
        "device": device_name(device),
        "world_size": distributed.world_size(),  # processes (GPUs) of a torchrun run; 1 otherwise
        "deterministic": int(cfg.train.deterministic),
        "results_schema": RESULTS_SCHEMA,
    }


def run_dataset(
    history: dict[str, list[float]],
    stages: int,
    epochs: int,
    layer_density: list[list[float]],
    layers: list[str],
    noisy_indices: torch.Tensor,
    attrs: dict[str, Any],
    per_stage: dict[str, list[Any]] | None = None,
    collapse_threshold: float = 0.01,
):
    """Dims `stage` and `epoch` for the metrics, `stage` x `layer` for the mask and its collapse flags, `stage` alone
    for `per_stage` values (kind, epochs, FLOPs), `noisy` for label-noise indices."""
    import xarray as xr

    coords = {"stage": np.arange(stages), "epoch": np.arange(1, epochs + 1)}
    names = [*METRICS, *sorted(history.keys() - set(METRICS))]
    data_vars: dict[str, Any] = {
        name: (("stage", "epoch"), np.asarray(history[name], dtype=np.float64).reshape(stages, epochs))  # (S, E)
        for name in names
    }
    if layers:
        data_vars["layer_density"] = (("stage", "layer"), np.asarray(layer_density, dtype=np.float64))
        data_vars["collapsed"] = (("stage", "layer"), collapsed(np.asarray(layer_density), collapse_threshold))
        attrs = {**attrs, "collapse_threshold": collapse_threshold}
        coords["layer"] = np.asarray(layers, dtype=object)
    for name, values in (per_stage or {}).items():
        data_vars[name] = (("stage",), np.asarray(values, dtype=object if isinstance(values[0], str) else None))
    data_vars["noisy_index"] = (("noisy",), noisy_indices.cpu().numpy().astype(np.int64))
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def collapsed(layer_density, threshold: float):
    """Where a layer keeps less than `threshold` of its weights (layer collapse): a boolean array like the input."""
    return np.asarray(layer_density, dtype=np.float64) < threshold


def collapse_warning(run_name: str, stage: int, layers: list[str], density: list[float], threshold: float) -> str:
    """The one warning line for a stage whose mask leaves layers collapsed, naming each with its kept fraction."""
    named = ", ".join(f"{name} keeps {100 * value:.2g}%" for name, value in zip(layers, density) if value < threshold)
    return f"lotterylab: warning: run {run_name} stage {stage}: layer collapse (below {100 * threshold:g}% of " \
           f"its weights): {named}"


MARKER_SCHEMA = 2
"""done.json's layout. 1: the results' checksum alone. 2: also the run hash, the stage count and the checksum of
every artifact a finished run needs (config, init weights, every stage-end checkpoint)."""
_HASHED: dict[tuple[str, int, int, int], str] = {}  # checksums by (path, inode, size, mtime): each file read once


def _sha256(path: Path) -> str:
    status = path.stat()
    key = (str(path.resolve()), status.st_ino, status.st_size, status.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _HASHED[key]


def artifacts(run: Path, stages: int) -> list[Path]:
    """What a finished run of `stages` stages holds besides its results: config, init weights, every stage's end."""
    return [paths.config(run), paths.init_weights(run), *(paths.stage_end(run, stage) for stage in range(stages))]


def write(run: Path, dataset) -> None:
    """Write results.nc atomically, then the completion marker holding the checksum of every artifact (always last).

    Refuses (CheckpointError) while an artifact is missing: a run is never marked complete without all of them."""
    stages = dataset.sizes["stage"]
    for path in artifacts(run, stages):
        if not path.is_file():
            raise checkpoint.CheckpointError(f"{path}: missing, so {run} cannot be marked complete; "
                                             f"rerun to rebuild it")
    with files.atomic_path(paths.results(run)) as temp:
        dataset.to_netcdf(temp, engine="h5netcdf")
    marker = {"schema": MARKER_SCHEMA, "run_hash": identity.run_hash(run), "stages": stages,
              "results_sha256": _sha256(paths.results(run)),
              "artifacts": {str(path.relative_to(run)): _sha256(path) for path in artifacts(run, stages)},
              "lotterylab_version": __version__}
    files.atomic_write(paths.done_marker(run), json.dumps(marker, indent=1).encode())


def _marker(run: Path) -> dict[str, Any] | None:
    """The completion marker's content if it is of the current schema and names this run; None otherwise."""
    try:
        marker = json.loads(paths.done_marker(run).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("schema") != MARKER_SCHEMA \
            or marker.get("run_hash") != identity.run_hash(run):
        return None
    return marker


def is_complete(run: Path) -> bool:
    """Finished means: the marker names this run, and results.nc, config.yaml, init.pt and every stage-end checkpoint
    exist inside the run directory with the checksums it recorded."""
    marker = _marker(run)
    if marker is None:
        return False
    try:
        expected = {paths.results(run): marker["results_sha256"],
                    **{path: marker["artifacts"][str(path.relative_to(run))]
                       for path in artifacts(run, int(marker["stages"]))}}
        return all(path.is_file() and identity.inside(run, path) and _sha256(path) == checksum
                   for path, checksum in expected.items())
    except (KeyError, TypeError, ValueError, OSError):  # IdentityError is a ValueError: a foreign file
        return False


def stage_count(run: Path) -> int:
    """How many stages a finished run has, as its completion marker records (stage-end files are addressed by
    index, never counted)."""
    marker = _marker(run)
    if marker is None or not is_complete(run):
        raise identity.IdentityError(f"{paths.done_marker(run)}: {run} is not a finished run")
    return int(marker["stages"])


def read(run: Path):
    """Load a finished run's results into memory; an IdentityError if the file lies outside `run` or names another
    run."""
    import xarray as xr

    path = identity.inside(run, paths.results(run))
    with xr.open_dataset(path, engine="h5netcdf") as dataset:
        loaded = dataset.load()
    identity.check_hash(paths.results(run), loaded.attrs.get("run_hash"), run)
    return loaded
