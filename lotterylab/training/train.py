"""Train one cycle on a fixed mask, evaluate, and hold the state a checkpoint must capture."""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lotterylab.core import distributed
from lotterylab.core.config import Config
from lotterylab.core.data import Data, TensorSplit
from lotterylab.core.imagenet import FolderSplit
from lotterylab.core.schedules import lr_at
from lotterylab.pruning import masks
from lotterylab.training import step


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class EpochMetrics:
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    lr: float


class Callback(Protocol):
    """Hooks called by the loop; implement only what is needed (missing methods are skipped).

    on_step sees the weights after the step, solo or packed. A packed run writes its weights back into its trainer
    before each on_step call, unless every hook sets `reads_weights = False` (a lock's heartbeat does)."""

    def on_step(self, trainer: Trainer, stage: int, epoch: int, step: int) -> None: ...

    def on_epoch_end(self, trainer: Trainer, stage: int, epoch: int, metrics: EpochMetrics) -> None: ...


def epoch_rates(cfg: Config, epoch: int, steps: int) -> list[float]:
    """The LR of each step of `epoch` in the cycle."""
    return [lr_at(cfg.schedule, cfg.optimizer.lr, epoch, index, steps) for index in range(steps)]


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when available; under torchrun an unnumbered 'cuda' is this process's GPU (LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and distributed.launched():
        return torch.device("cuda", distributed.local_rank())
    return device


class Trainer:
    """Model, optimizer, mask and data-order generator of one run; `train_epoch` is the whole inner loop."""

    def __init__(self, cfg: Config, model: nn.Module, data: Data, device: torch.device):
        self.cfg, self.data, self.device = cfg, data, device
        memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
        self.model = model.to(device=device, memory_format=memory_format)
        # `forward` is the model wrapped for training: DDP under torchrun, then compiled if asked.
        self.forward = distributed.wrap(self.model, device, cfg.train.sync_batchnorm)
        if cfg.train.compile:
            self.forward = torch.compile(self.forward)
        self.input = step.channels_last_input(cfg)
        self.params = masks.prunable(self.model, cfg.mask.prune_first, cfg.mask.prune_last)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # data order and augmentation
        self.optimizer = self._new_optimizer()
        self.mask: masks.Mask = {}
        self.mask_step = masks.MaskStep(self.params, self.mask, self.optimizer)
        self.snapshots: dict[str, dict[str, Tensor]] = {}
        self.saved_masks: dict[str, masks.Mask] = {}
        self.recorded: dict[str, float] = {}  # this epoch's quantities recorded by name (callbacks' own metrics)
        self.snapshot("init")

    def record(self, name: str, value: float) -> None:
        """Record a quantity for the current epoch by name; results.nc holds it as a (stage, epoch) variable, NaN in
        the epochs where it was not recorded. A callback calls this from on_step or on_epoch_end."""
        self.recorded[name] = float(value)

    def _new_optimizer(self) -> torch.optim.SGD:
        return step.build_optimizer(self.model.parameters(), self.cfg.optimizer)

    def restart(self) -> None:
        """Start a new cycle: fresh optimizer state (momentum zero), so each cycle is a full training run."""
        self.optimizer = self._new_optimizer()
        self.set_mask(self.mask)

    def set_mask(self, mask: masks.Mask) -> None:
        """Fix the mask for the following training and zero the pruned weights now."""
        self.mask = {name: m.to(self.device) for name, m in mask.items()}
        self.mask_step = masks.MaskStep(self.params, self.mask, self.optimizer)
        self.mask_step()

    def broadcast_from_main(self) -> None:
        """Give every rank rank 0's weights, buffers and mask, so a stage's pruning step agrees exactly everywhere."""
        if not distributed.is_distributed():
            return
        distributed.check_same(list(self.mask), "mask layers")
        distributed.broadcast_tensors([*self.model.state_dict().values(), *self.mask.values()])
        self.set_mask(self.mask)

    def snapshot(self, name: str, with_mask: bool = False) -> None:
        """Keep a CPU copy of all weights and buffers (init, warmup point), and the mask if asked; checkpointed."""
        self.snapshots[name] = {key: value.detach().cpu().clone() for key, value in self.model.state_dict().items()}
        if with_mask:
            self.saved_masks[name] = {key: m.cpu().clone() for key, m in self.mask.items()}

    def restore(self, name: str) -> None:
        """Return to a snapshot taken `with_mask`: its mask first, then its weights."""
        self.set_mask(self.saved_masks[name])
        self.rewind(name)

    def rewind(self, name: str) -> None:
        """Load a snapshot's weights and buffers; the current mask is re-applied so pruned weights stay zero."""
        self.model.load_state_dict(self.snapshots[name])
        self.mask_step()

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when train.bf16 is set, else a no-op context (cheaper than a disabled autocast)."""
        if not self.cfg.train.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def train_epoch(self, stage: int, epoch: int, callbacks: Sequence[Callback] = ()) -> tuple[float, float, float]:
        """One epoch of SGD with the per-step LR of the cycle (`step.sgd_epoch`); mean loss, accuracy and last LR.

        Under torchrun each rank trains on its rows of every global batch of data.batch_size; metrics are summed
        over ranks, so every rank returns the global values.
        """
        self.model.train()
        split, cfg = self.data.train, self.cfg
        batch_size, world = cfg.data.batch_size, distributed.world_size()
        rates = epoch_rates(cfg, epoch, split.num_batches(batch_size))
        hooks = [functools.partial(callback.on_step, self, stage, epoch) for callback in callbacks
                 if hasattr(callback, "on_step")]

        def share(index: int, labels: Tensor) -> float:
            # DDP averages the ranks' gradients; weighting each rank's mean by its share of the global batch makes
            # that average the global batch's mean gradient, also when the last batch splits unevenly.
            return len(labels) * world / min(batch_size, len(split) - index * batch_size)

        batches = split.batches(batch_size, self.generator, cfg.data.augment, (distributed.rank(), world))
        tally = step.sgd_epoch(lambda x: self.forward(self.input(x)), self.optimizer, self.mask_step, batches, rates,
                               self.autocast, hooks, share if world > 1 else None)
        if not tally.losses:
            return math.nan, math.nan, cfg.optimizer.lr
        loss_sum, correct, first_bad = tally.sums()
        loss_sum, correct = distributed.sum_over_ranks(loss_sum), distributed.sum_over_ranks(correct)
        bad_step = int(distributed.min_over_ranks(first_bad))
        if bad_step < len(rates):  # every rank raises together, at the first bad step of any rank
            raise DivergenceError(f"loss is not finite at stage {stage}, epoch {epoch}, step {bad_step}")
        return float(loss_sum) / len(split), float(correct) / len(split), rates[-1]

    def evaluate(self, split: TensorSplit | FolderSplit) -> tuple[float, float]:
        """Mean cross-entropy and accuracy over a whole split, in eval mode; sharded over ranks under torchrun."""
        self.model.eval()
        batches = split.batches(self.cfg.data.test_batch_size, shard=(distributed.rank(), distributed.world_size()))
        loss_sum, correct = step.evaluate(lambda x: self.forward(self.input(x)), batches, self.autocast)
        loss_sum, correct = distributed.sum_over_ranks(loss_sum), distributed.sum_over_ranks(correct)
        return float(loss_sum) / len(split), float(correct) / len(split)

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "mask": {name: m.cpu() for name, m in self.mask.items()},
            "rng": rng,
            "snapshots": self.snapshots,
            "saved_masks": self.saved_masks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer = self._new_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.mask = {name: m.to(self.device) for name, m in state["mask"].items()}
        self.mask_step = masks.MaskStep(self.params, self.mask, self.optimizer)
        self.snapshots = state["snapshots"]
        self.saved_masks = state["saved_masks"]
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
