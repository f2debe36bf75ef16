"""Methods as pipelines of stages: each stage prepares (mask, rewind, ...) and then trains one LR cycle."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lotterylab.core.config import Config
from lotterylab.pruning import criteria, masks
from lotterylab.training import coupling
from lotterylab.training.train import Trainer

Prepare = Callable[[Trainer, Config, int], None]
Builder = Callable[[Config, Path], list["Stage"]]
"""(config, root directory of runs) -> the run's stages; the root lets a coupled run find or train its source."""


@dataclass(frozen=True)
class Stage:
    """One cycle or level: `prepare(trainer, cfg, stage)` runs once before the stage's first epoch, and
    `after_epoch(trainer, cfg, epochs_done)`, if given, after each of its epochs (e.g. to keep the warmup point).
    `kind` is recorded per stage: cycle, level or target (a SCULPT retraining cycle)."""

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
    scores = criteria.score(cfg.mask.criterion, trainer.model, trainer.params, trainer.data, generator, density)
    trainer.set_mask(masks.from_scores(scores, density, cfg.mask.resolved_allocation()))


def dense(cfg: Config, root: Path) -> list[Stage]:
    """No mask; `cycles` repetitions of the LR cycle."""
    return [Stage("cycle", keep_mask) for _ in range(cfg.method.cycles)]


def pai(cfg: Config, root: Path) -> list[Stage]:
    """Prune at init with any criterion, then train `cycles` LR cycles on the fixed mask (1 = standard training)."""
    return [Stage("cycle", mask_at_init)] + [Stage("cycle", keep_mask) for _ in range(cfg.method.cycles - 1)]


def level_densities(cfg: Config) -> list[float]:
    """Density after each pruning level: (1 - prune_fraction)^k, the last level landing exactly on the target."""
    target, density, densities = 1.0 - cfg.mask.sparsity, 1.0, []
    while density > target + 1e-9:
        density = max(target, density * (1.0 - cfg.method.prune_fraction))
        densities.append(density)
    return densities


def prune_survivors(trainer: Trainer, scores: dict[str, torch.Tensor], density: float) -> None:
    """Keep the best-scored surviving weights under one global threshold; pruned weights never come back."""
    if trainer.mask:
        scores = {name: torch.where(trainer.mask[name].cpu() > 0, s, -torch.inf) for name, s in scores.items()}
    trainer.set_mask(masks.global_allocation(scores, density))


def prune_global_magnitude(trainer: Trainer, density: float) -> None:
    """Prune the smallest surviving weights across all layers."""
    prune_survivors(trainer, {name: w.detach().abs().cpu() for name, w in trainer.params.items()}, density)


def keep_warmup_point(trainer: Trainer, cfg: Config, epochs_done: int) -> None:
    if epochs_done == cfg.method.rewind_epoch:
        trainer.snapshot("warmup")


def _iterative(rewind_to: str | None) -> Builder:
    """Level 0 trains dense; each later level prunes by global magnitude, rewinds (or not) and retrains a cycle."""

    def stages(cfg: Config, root: Path) -> list[Stage]:
        densities = level_densities(cfg)

        def prune(trainer: Trainer, cfg: Config, stage: int) -> None:
            prune_global_magnitude(trainer, densities[stage - 1])
            if rewind_to is not None:
                trainer.rewind(rewind_to)

        record = keep_warmup_point if cfg.method.rewind_epoch > 0 else None
        return [Stage("level", keep_mask, record, cfg)] + [Stage("level", prune) for _ in densities]

    return stages


def sculpt(cfg: Config, root: Path) -> list[Stage]:
    """SCULPT-ing: `cycles` cycles on a PaI mask at the start sparsity, then per target a one-shot prune of the
    cycled weights (`prune_criterion`, global threshold) and one retraining cycle. The cycles are shared by all
    targets: each target starts again from the cycled weights and mask."""
    cycles = cfg.method.cycles

    def one_shot(trainer: Trainer, cfg: Config, stage: int) -> None:
        if stage == cycles:
            trainer.snapshot("cycled", with_mask=True)
        else:
            trainer.restore("cycled")
        density = 1.0 - cfg.method.targets[stage - cycles]
        generator = stage_generator(cfg.seed, "one-shot", stage)
        scores = criteria.score(cfg.method.prune_criterion, trainer.model, trainer.params, trainer.data, generator,
                                density)
        prune_survivors(trainer, scores, density)

    return pai(cfg, root) + [Stage("target", one_shot) for _ in cfg.method.targets]


def coupled(cfg: Config, root: Path) -> list[Stage]:
    """A mask from another run's level with an init from `method.init`, then `cycles` cycles on that mask."""
    source = coupling.finished_source(cfg)
    mask = coupling.source_mask(source, cfg.method.source_level)

    def couple(trainer: Trainer, cfg: Config, stage: int) -> None:
        seed = int(torch.randint(2**62, (), generator=stage_generator(cfg.seed, "coupled-init", stage)))
        fresh = coupling.fresh_weights(cfg, trainer.data.input_shape, trainer.data.num_classes, seed)
        flips = stage_generator(cfg.seed, "sign-flips", stage)
        trainer.model.load_state_dict(coupling.initial_weights(cfg, source, mask, fresh, flips))
        trainer.set_mask(mask)
        trainer.snapshot("init")  # the init this run really started from (written to init.pt)

    return [Stage("cycle", couple)] + [Stage("cycle", keep_mask) for _ in range(cfg.method.cycles - 1)]


METHODS: dict[str, Builder] = {
    "dense": dense,
    "pai": pai,
    "imp": _iterative("init"),  # rewind to the weights at initialization
    "wr": _iterative("warmup"),  # rewind to the dense weights after `rewind_epoch` epochs
    "lrr": _iterative(None),  # keep the learned weights; only the LR schedule restarts
    "sculpt": sculpt,
    "coupled": coupled,
}
