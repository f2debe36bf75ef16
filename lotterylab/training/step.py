"""The training step and the evaluation loop, one of each for a solo run and for a pack of K runs.

A solo model's logits are (B, C) and its labels (B,); a pack's (lotterylab.training.packing: K models under vmap) are
(K, B, C) and (K, B). Every function here takes either, and per-run quantities come out shaped () or (K,), so a solo
run is the K = 1 case of the same code: forward, loss, backward, optimizer step, mask step, divergence check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from lotterylab.core.config import Config, OptimizerConfig

Batches = Iterable[tuple[Tensor, Tensor]]


def build_optimizer(params: Iterable[Tensor], opt: OptimizerConfig) -> torch.optim.SGD:
    """The one optimizer of every run and pack: SGD as the config's optimizer section says."""
    return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay,
                           nesterov=opt.nesterov)


def channels_last_input(cfg: Config) -> Callable[[Tensor], Tensor]:
    """The one input transform: image batches in channels_last memory order when train.channels_last is set."""
    if not cfg.train.channels_last:
        return lambda x: x
    return lambda x: x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _at_least_fp32(logits: Tensor) -> Tensor:
    """bf16 logits (autocast) in fp32 for the loss; fp32 and fp64 ones as they are."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def per_run_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of each run's batch, in at least fp32: logits (..., B, C), labels (..., B) -> (...)."""
    logits = _at_least_fp32(logits)
    if labels.dim() == 1:  # one run: the fused mean, one kernel (a small model's step is bound by host time)
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits.flatten(0, -2), labels.flatten(), reduction="none").view(labels.shape).mean(-1)


@dataclass
class EpochTally:
    """What an epoch's steps leave on the device for its metrics, reduced once after the last step."""

    losses: list[Tensor] = field(default_factory=list)  # per step: each run's mean loss, () or (K,)
    predictions: list[Tensor] = field(default_factory=list)  # per step: (B,) or (K, B)
    labels: list[Tensor] = field(default_factory=list)

    def sums(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per run: summed loss over examples, correct count, and the first step with a non-finite loss (or the
        number of steps when there is none)."""
        per_step = torch.stack(self.losses)  # (steps,) or (steps, K)
        sizes = torch.tensor([y.shape[-1] for y in self.labels], device=per_step.device, dtype=per_step.dtype)
        loss_sum = (per_step * sizes.view(-1, *[1] * (per_step.dim() - 1))).sum(0)
        correct = (torch.cat(self.predictions, -1) == torch.cat(self.labels, -1)).sum(-1)
        bad = ~torch.isfinite(per_step)
        first_bad = torch.where(bad.any(0), bad.int().argmax(0), len(self.losses))
        return loss_sum, correct, first_bad


def sgd_epoch(forward: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer, mask_step: Callable[[], None],
              batches: Batches, rates: Sequence[float], autocast: Callable[[], contextlib.AbstractContextManager],
              hooks: Sequence[Callable[[int], None]] = (),
              loss_scale: Callable[[int, Tensor], float] | None = None) -> EpochTally:
    """One epoch of steps: the step's LR, forward, per-run loss, backward of the runs' summed losses (each run gets
    exactly its own gradient), optimizer step, mask step; the losses and predictions are kept, not reduced.

    `loss_scale(step, labels)` multiplies the loss that is backpropagated (DDP: a rank's share of the global batch).
    A step does only what the update needs plus one argmax: a small model's step is bound by host time.
    """
    tally, groups = EpochTally(), optimizer.param_groups
    for step, (x, y) in enumerate(batches):
        for group in groups:
            group["lr"] = rates[step]
        with autocast():
            logits = forward(x)
        loss = per_run_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        total = loss if loss.dim() == 0 else loss.sum()
        (total * loss_scale(step, y) if loss_scale is not None else total).backward()
        optimizer.step()
        mask_step()
        tally.losses.append(loss.detach())
        tally.predictions.append(logits.detach().argmax(-1))
        tally.labels.append(y)
        for hook in hooks:
            hook(step)
    return tally


@torch.no_grad()
def evaluate(forward: Callable[[Tensor], Tensor], batches: Batches,
             autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
             ) -> tuple[Tensor, Tensor]:
    """Per run: summed cross-entropy (float64) and correct count over `batches`; the caller sets eval mode."""
    loss_sum: Tensor | float = 0.0
    correct: Tensor | int = 0
    for x, y in batches:
        with autocast():
            logits = _at_least_fp32(forward(x))
        losses = F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none").view(y.shape)
        loss_sum = loss_sum + losses.sum(-1, dtype=torch.float64)
        correct = correct + (logits.argmax(-1) == y).sum(-1)
    return torch.as_tensor(loss_sum), torch.as_tensor(correct)
