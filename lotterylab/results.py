"""One run's results as an xarray Dataset: schema, provenance, atomic write and the completion marker."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lotterylab import __version__, checkpoint, distributed, paths
from lotterylab.config import Config

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "lr", "density")


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
):
    """Dims `stage` and `epoch` for the metrics, `stage` x `layer` for the mask, `stage` alone for `per_stage`
    values (kind, epochs, FLOPs), `noisy` for label-noise indices."""
    import xarray as xr

    coords = {"stage": np.arange(stages), "epoch": np.arange(1, epochs + 1)}
    data_vars: dict[str, Any] = {
        name: (("stage", "epoch"), np.asarray(history[name], dtype=np.float64).reshape(stages, epochs))  # (S, E)
        for name in METRICS
    }
    if layers:
        data_vars["layer_density"] = (("stage", "layer"), np.asarray(layer_density, dtype=np.float64))
        coords["layer"] = np.asarray(layers, dtype=object)
    for name, values in (per_stage or {}).items():
        data_vars[name] = (("stage",), np.asarray(values, dtype=object if isinstance(values[0], str) else None))
    data_vars["noisy_index"] = (("noisy",), noisy_indices.cpu().numpy().astype(np.int64))
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(run: Path, dataset) -> None:
    """Write results.nc atomically, then the completion marker holding its checksum (always last)."""
    with checkpoint.atomic_path(paths.results(run)) as temp:
        dataset.to_netcdf(temp, engine="h5netcdf")
    marker = {"results_sha256": _sha256(paths.results(run)), "lotterylab_version": __version__}
    checkpoint.atomic_write(paths.done_marker(run), json.dumps(marker, indent=1).encode())


def is_complete(run: Path) -> bool:
    """Finished means: marker and results both present and the results match the marker's checksum."""
    marker, results = paths.done_marker(run), paths.results(run)
    if not (marker.is_file() and results.is_file()):
        return False
    try:
        expected = json.loads(marker.read_text())["results_sha256"]
    except (ValueError, KeyError, TypeError):
        return False
    return expected == _sha256(results)


def read(run: Path):
    """Load a finished run's results into memory."""
    import xarray as xr

    with xr.open_dataset(paths.results(run), engine="h5netcdf") as dataset:
        return dataset.load()
