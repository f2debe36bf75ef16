"""Rebuild a finished run for analysis: config, model, data and stage-end weights and masks; analysis file paths."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lotterylab.core import data, files, identity, models, paths
from lotterylab.core.config import Config, ConfigError
from lotterylab.pruning import masks
from lotterylab.training import checkpoint, results
from lotterylab.training.train import resolve_device


class AnalysisError(ValueError):
    """An analysis cannot run on this input; the message is one line and names the file or argument."""



@dataclass(eq=False)
class LoadedRun:
    """A run's config, its model (weights as built, to be overwritten from a checkpoint) and its data on `device`."""

    run: Path
    cfg: Config
    model: nn.Module
    data: data.Data
    device: torch.device
    stages: int  # cycles or levels, as recorded in the run's results

    def prunable_names(self) -> list[str]:
        """Every conv/linear weight, in module order (a superset of the mask keys when a layer is kept dense)."""
        return list(masks.prunable(self.model))

    def stage_index(self, stage: int) -> int:
        """Resolve a stage number, negative ones counting from the last stage; out of range is an error."""
        if not -self.stages <= stage < self.stages:
            raise AnalysisError(f"stage {stage}: the run {self.run} has stages 0..{self.stages - 1}")
        return stage % self.stages

    def stage_pairs(self, pairs: Sequence[tuple[int, int]] | None, analysis: str) -> list[tuple[int, int]]:
        """Stage pairs as indices (negative stages count from the last); every consecutive pair when None."""
        if pairs is None:
            pairs = [(stage, stage + 1) for stage in range(self.stages - 1)]
        if not pairs:
            raise AnalysisError(f"{self.run}: {analysis} between stages needs a run with at least two stages")
        return [(self.stage_index(a), self.stage_index(b)) for a, b in pairs]

    def stack_pairs(self, per_pair: list[Any], pairs: list[tuple[int, int]]) -> Any:
        """One Dataset per pair, stacked along `pair` with its `stage_a`, `stage_b` and the run's provenance."""
        import xarray as xr

        dataset = xr.concat(per_pair, dim="pair", combine_attrs="override")
        dataset = dataset.assign_coords(pair=np.arange(len(pairs)), stage_a=("pair", [a for a, _ in pairs]),
                                        stage_b=("pair", [b for _, b in pairs]))
        dataset.attrs.update(self.attrs())
        return dataset

    def state(self, stage: int) -> dict[str, Any]:
        """The stage-end checkpoint of `stage` (model state dict and mask) on the CPU."""
        path = paths.stage_end(self.run, self.stage_index(stage))
        if not path.is_file():
            raise AnalysisError(f"{path}: no stage-end checkpoint (is the run finished?)")
        try:
            return checkpoint.load(path, self.run)
        except ValueError:  # IdentityError: already one line naming the file
            raise
        except Exception as error:  # whatever the unpickler raised, the file is unusable
            raise AnalysisError(f"{path}: unreadable checkpoint ({type(error).__name__})") from None

    def attrs(self) -> dict[str, Any]:
        """Provenance of the run plus the directory analysed."""
        return {**results.provenance(self.cfg, self.device), "run_dir": str(self.run)}


def read_config(run: Path) -> Config:
    """The run's config, checked to hash to its directory's name (an IdentityError otherwise)."""
    return identity.read_config(Path(run))


def load_run(run: str | Path, device: str | None = None) -> LoadedRun:
    """Rebuild the model and data of the run in `run` exactly as it trained (same subsets and label noise)."""
    run = Path(run)
    cfg = read_config(run)
    if not results.is_complete(run):
        raise AnalysisError(f"{paths.results(run)}: missing or unfinished (finish the run with `lotterylab run`)")
    stages = results.stage_count(run)
    target = resolve_device(device or cfg.train.device)
    try:
        dataset = data.load(cfg.data, cfg.seed, target)
    except ConfigError as error:
        raise AnalysisError(f"{paths.config(run)}: {error}") from None
    model = models.build(cfg.model, dataset.input_shape, dataset.num_classes).to(target)
    return LoadedRun(run, cfg, model, dataset, target, stages)


def full_mask(names: list[str], mask: masks.Mask, state: dict[str, Tensor]) -> masks.Mask:
    """`mask` extended to every name in `names`, a layer without a mask entry being dense (all ones)."""
    return {name: mask[name] if name in mask else torch.ones_like(state[name]) for name in names}


def write(dataset: Any, path: Path) -> Path:
    """Write an analysis Dataset atomically as netCDF and return its path."""
    with files.atomic_path(path) as temp:
        dataset.to_netcdf(temp, engine="h5netcdf")
    return path
