"""Coupled runs: a mask taken from another run's level, and an init chosen from that run or drawn fresh."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lotterylab.core import identity, models, paths
from lotterylab.core.config import Config, ConfigError
from lotterylab.pruning.masks import Mask
from lotterylab.training import checkpoint, results


def finished_source(cfg: Config) -> Path:
    """The source run's directory, which must be finished: building a run reads finished runs only."""
    source = Path(cfg.method.source)
    if source.suffix in (".yaml", ".yml"):
        raise ConfigError(f"method.source: {source} is a config, not a run: plan the coupled run first "
                          f"(runs.plan_coupled; `lotterylab run` and the study runners do)")
    if not results.is_complete(source):
        raise ConfigError(f"method.source: {source} is not a finished run directory (no valid done.json)")
    check_compatible(cfg, identity.read_config(source), source)
    return source


def check_compatible(cfg: Config, source: Config, where: Path) -> None:
    if source.method.name == "dense":
        raise ConfigError(f"method.source: {where} is a dense run and has no mask to couple")
    for section in ("model", "data"):
        ours, theirs = getattr(cfg, section), getattr(source, section)
        if section == "data":  # the mask fits any data with the same inputs; training details may differ
            ours, theirs = (ours.name, ours.shape), (theirs.name, theirs.shape)
        if ours != theirs:
            raise ConfigError(f"method.source: {where} has a different {section} section; masks would not fit")
    if (cfg.mask.prune_first, cfg.mask.prune_last) != (source.mask.prune_first, source.mask.prune_last):
        raise ConfigError(f"method.source: {where} prunes a different set of layers (mask.prune_first/prune_last)")


def _stage_state(source: Path, stage: int) -> dict[str, Any]:
    """The source's stage-end checkpoint of `stage` (-1: its last), addressed by index among the stages its
    completion marker records, and checked to be the source's own file."""
    try:
        stages = results.stage_count(source)
    except ValueError as error:
        raise ConfigError(f"method.source: {error}") from None
    index = stages - 1 if stage == -1 else stage
    if not 0 <= index < stages:
        raise ConfigError(f"method: stage {stage} does not exist in {source}, which has stages 0..{stages - 1}")
    return checkpoint.load(paths.stage_end(source, index), source)


def source_mask(source: Path, level: int) -> Mask:
    """The mask the source trained with at `level` (-1: its last stage)."""
    mask = _stage_state(source, level)["mask"]
    if not mask:
        raise ConfigError(f"method.source_level: stage {level} of {source} trained dense; pick a pruned level")
    return mask


def warmup_weights(source: Path) -> dict[str, Tensor]:
    """The source's warmup point (after `rewind_epoch` dense epochs), or its init where none was kept."""
    snapshots = _stage_state(source, -1)["snapshots"]
    return snapshots.get("warmup", snapshots["init"])


def fresh_weights(cfg: Config, input_shape: tuple[int, ...], num_classes: int, seed: int) -> dict[str, Tensor]:
    """A new draw of the model's init from its own seed stream, so it differs from the source's init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.build(cfg.model, input_shape, num_classes).state_dict()


def with_signs(magnitudes: dict[str, Tensor], signs: dict[str, Tensor], names: list[str]) -> dict[str, Tensor]:
    """`magnitudes` with the prunable weights `names` given the signs of `signs` (zero counts as positive)."""
    out = dict(magnitudes)
    for name in names:
        out[name] = torch.where(signs[name] < 0, -magnitudes[name].abs(), magnitudes[name].abs())
    return out


def flip_signs(
    weights: dict[str, Tensor], mask: Mask, fraction: float, generator: torch.Generator
) -> dict[str, Tensor]:
    """Flip the signs of round(fraction * kept) randomly chosen kept weights in every masked layer."""
    out = dict(weights)
    for name, layer_mask in mask.items():
        kept = layer_mask.flatten().nonzero().squeeze(1)
        chosen = kept[torch.randperm(len(kept), generator=generator)[: round(fraction * len(kept))]]
        factor = torch.ones(layer_mask.numel())
        factor[chosen] = -1.0
        out[name] = weights[name] * factor.view_as(layer_mask).to(weights[name].dtype)
    return out


def initial_weights(
    cfg: Config, source: Path, mask: Mask, fresh: dict[str, Tensor], generator: torch.Generator
) -> dict[str, Tensor]:
    """The state dict a coupled run starts from, for each kind of `method.init`."""
    kind = cfg.method.init
    if kind == "random":
        return fresh
    if kind == "level":
        return _stage_state(source, cfg.method.init_level)["model"]
    warmup = warmup_weights(source)
    if kind == "warmup":
        return warmup
    if kind == "signs":
        return with_signs(fresh, warmup, list(mask))
    return flip_signs(warmup, mask, cfg.method.flip_fraction, generator)  # perturbed_signs
