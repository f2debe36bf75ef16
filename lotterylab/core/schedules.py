"""Learning-rate schedules within one cycle, as multipliers of the peak LR."""

from __future__ import annotations

import math

from lotterylab.core.config import ScheduleConfig
from lotterylab.core.registry import SCHEDULES


def _warmup(cfg: ScheduleConfig, position: float, quantum: float) -> float:
    """Multiplier during the warmup: a linear ramp that reaches 1 exactly at warmup_epochs (`quantum` keeps the first
    step's LR above zero), or warmup_factor held until warmup_epochs (ImageNet in the seed paper's harness)."""
    if cfg.warmup_epochs <= 0 or position >= cfg.warmup_epochs:
        return 1.0
    if cfg.warmup == "constant":
        return cfg.warmup_factor
    return min(1.0, (position + quantum) / cfg.warmup_epochs)


def _decay_progress(cfg: ScheduleConfig, position: float) -> float:
    """Fraction of the post-warmup part of the cycle already done, in [0, 1]."""
    span = cfg.epochs - cfg.warmup_epochs
    return 1.0 if span <= 0 else min(1.0, max(0.0, (position - cfg.warmup_epochs) / span))


def step_warmup(cfg: ScheduleConfig, position: float) -> float:
    drops = sum(position >= milestone * cfg.epochs for milestone in cfg.milestones)
    return cfg.gamma**drops


def one_cycle(cfg: ScheduleConfig, position: float) -> float:
    return 1.0 - (1.0 - cfg.final_lr) * _decay_progress(cfg, position)


def cosine(cfg: ScheduleConfig, position: float) -> float:
    return cfg.final_lr + (1.0 - cfg.final_lr) * 0.5 * (1.0 + math.cos(math.pi * _decay_progress(cfg, position)))


def constant(cfg: ScheduleConfig, position: float) -> float:
    return 1.0


SCHEDULES.update({
    "step_warmup": step_warmup,
    "one_cycle": one_cycle,
    "cosine": cosine,
    "constant": constant,
})


def lr_at(cfg: ScheduleConfig, peak_lr: float, epoch: int, step: int, steps_per_epoch: int) -> float:
    """LR for `step` of `epoch` within a cycle; with `step: epoch` the LR is constant over each epoch."""
    if cfg.step == "epoch":
        position, quantum = float(epoch), 1.0
    else:
        position, quantum = epoch + step / steps_per_epoch, 1.0 / steps_per_epoch
    return peak_lr * _warmup(cfg, position, quantum) * SCHEDULES[cfg.name](cfg, position)
