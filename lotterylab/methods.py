"""Methods as pipelines of stages: each stage prepares (mask, rewind, ...) and then trains one LR cycle."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lotterylab import masks
from lotterylab.config import Config
from lotterylab.criteria import CRITERIA
from lotterylab.train import Trainer

Prepare = Callable[[Trainer, Config, int], None]


@dataclass(frozen=True)
class Stage:
    """One cycle or level: `prepare(trainer, cfg, stage_index)` runs once before the stage's first epoch."""

    kind: str
    prepare: Prepare


def stage_generator(seed: int, purpose: str, stage: int) -> torch.Generator:
    """A CPU generator for one purpose at one stage, independent of every other stream of the run."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(purpose.encode()) + stage)


def keep_mask(trainer: Trainer, cfg: Config, stage: int) -> None:
    """Train the next cycle on the mask as it is."""


def mask_at_init(trainer: Trainer, cfg: Config, stage: int) -> None:
    """Score the weights with the configured criterion and fix the mask at the target sparsity."""
    criterion = CRITERIA[cfg.mask.criterion]
    scores = criterion(trainer.model, trainer.params, trainer.data, stage_generator(cfg.seed, "mask", stage))
    trainer.set_mask(masks.from_scores(scores, 1.0 - cfg.mask.sparsity, cfg.mask.allocation))


def dense(cfg: Config) -> list[Stage]:
    """No mask; `cycles` repetitions of the LR cycle."""
    return [Stage("cycle", keep_mask) for _ in range(cfg.method.cycles)]


def pai(cfg: Config) -> list[Stage]:
    """Prune at init with any criterion, then train `cycles` LR cycles on the fixed mask (1 = standard training)."""
    return [Stage("cycle", mask_at_init)] + [Stage("cycle", keep_mask) for _ in range(cfg.method.cycles - 1)]


METHODS: dict[str, Callable[[Config], list[Stage]]] = {
    "dense": dense,
    "pai": pai,
}
