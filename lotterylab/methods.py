"""Methods as pipelines of stages: each stage prepares (mask, rewind, ...) and then trains one LR cycle."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lotterylab import criteria, masks
from lotterylab.config import Config
from lotterylab.train import Trainer

Prepare = Callable[[Trainer, Config, int], None]


@dataclass(frozen=True)
class Stage:
    """One cycle or level: `prepare(trainer, cfg, stage)` runs once before the stage's first epoch, and
    `after_epoch(trainer, cfg, epochs_done)`, if given, after each of its epochs (e.g. to keep a rewind point)."""

    kind: str
    prepare: Prepare
    after_epoch: Callable[[Trainer, Config, int], None] | None = None
    cfg: Config | None = None

    def on_epoch_end(self, trainer: Trainer, stage: int, epoch: int, metrics: object) -> None:
        if self.after_epoch is not None:
            self.after_epoch(trainer, self.cfg, epoch + 1)


def stage_generator(seed: int, purpose: str, stage: int) -> torch.Generator:
    """A CPU generator for one purpose at one stage, independent of every other stream of the run."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(purpose.encode()) + stage)


def keep_mask(trainer: Trainer, cfg: Config, stage: int) -> None:
    """Train the next cycle on the mask as it is."""


def mask_at_init(trainer: Trainer, cfg: Config, stage: int) -> None:
    """Score the weights with the configured criterion and fix the mask at the target sparsity."""
    density = 1.0 - cfg.mask.sparsity
    generator = stage_generator(cfg.seed, "mask", stage)
    scores = criteria.score(cfg.mask.criterion, cfg.mask, trainer.model, trainer.params, trainer.data, generator, density)
    trainer.set_mask(masks.from_scores(scores, density, cfg.mask.resolved_allocation()))


def dense(cfg: Config) -> list[Stage]:
    """No mask; `cycles` repetitions of the LR cycle."""
    return [Stage("cycle", keep_mask) for _ in range(cfg.method.cycles)]


def pai(cfg: Config) -> list[Stage]:
    """Prune at init with any criterion, then train `cycles` LR cycles on the fixed mask (1 = standard training)."""
    return [Stage("cycle", mask_at_init)] + [Stage("cycle", keep_mask) for _ in range(cfg.method.cycles - 1)]


def level_densities(cfg: Config) -> list[float]:
    """Density after each pruning level: (1 - prune_fraction)^k, the last level landing exactly on the target."""
    target, density, densities = 1.0 - cfg.mask.sparsity, 1.0, []
    while density > target + 1e-9:
        density = max(target, density * (1.0 - cfg.method.prune_fraction))
        densities.append(density)
    return densities


def prune_global_magnitude(trainer: Trainer, density: float) -> None:
    """Prune the smallest surviving weights across all layers; pruned weights never come back."""
    scores = {}
    for name, weight in trainer.params.items():
        magnitude = weight.detach().abs().cpu()
        scores[name] = torch.where(trainer.mask[name].cpu() > 0, magnitude, -1.0) if trainer.mask else magnitude
    trainer.set_mask(masks.global_allocation(scores, density))


def keep_rewind_point(trainer: Trainer, cfg: Config, epochs_done: int) -> None:
    if epochs_done == cfg.method.rewind_epoch:
        trainer.snapshot("rewind")


def _iterative(rewind_to: str | None) -> Callable[[Config], list[Stage]]:
    """Level 0 trains dense; each later level prunes by global magnitude, rewinds (or not) and retrains a cycle."""

    def stages(cfg: Config) -> list[Stage]:
        densities = level_densities(cfg)

        def prune(trainer: Trainer, cfg: Config, stage: int) -> None:
            prune_global_magnitude(trainer, densities[stage - 1])
            if rewind_to is not None:
                trainer.rewind(rewind_to)

        first = Stage("level", keep_mask, keep_rewind_point if rewind_to == "rewind" else None, cfg)
        return [first] + [Stage("level", prune) for _ in densities]

    return stages


METHODS: dict[str, Callable[[Config], list[Stage]]] = {
    "dense": dense,
    "pai": pai,
    "imp": _iterative("init"),  # rewind to the weights at initialization
    "wr": _iterative("rewind"),  # rewind to the dense weights after `rewind_epoch` epochs
    "lrr": _iterative(None),  # keep the learned weights; only the LR schedule restarts
}
