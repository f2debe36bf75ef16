"""Train several runs in one process as one vmapped model: K seeds or masks share every step on one device.

Runs pack when their model, data, optimizer, schedule and train settings are equal (`pack_key`); seeds, masks and
methods may differ. Each run keeps its own Trainer, data order, augmentation draws, checkpoints and results, so a
packed run resumes alone and is interchangeable with a solo one. Per epoch the K models' weights, buffers and
momentum are stacked (torch.func.stack_module_state layout), trained with `vmap(functional_call)` — whose conv
batching rule lowers K convolutions to one grouped convolution, BatchNorm statistics staying per run — and written
back. The sum of the K mean losses gives each run exactly its own gradient, so a diverging run cannot touch the others.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, vmap

from lotterylab import locks, masks, paths, results, runs
from lotterylab.config import Config
from lotterylab.schedules import lr_at
from lotterylab.train import DivergenceError, Trainer, mark_first_bad, resolve_device

MAX_PACK = 8
"""Runs trained together at most on a GPU; more pending runs form further packs."""


def default_max_pack(cfg: Config) -> int:
    """MAX_PACK on CUDA; 1 (no packing) on CPU, where packing measured 1.0-1.4x (benchmarks/README.md) and would
    trade lotterylab's bitwise CPU reproducibility for fp32-rounding equality."""
    return MAX_PACK if resolve_device(cfg.train.device).type == "cuda" else 1

UNPACKED_DATASETS = ("imagenet",)
"""Streamed from files by a DataLoader per run: nothing to gain from packing."""


def pack_key(cfg: Config) -> str | None:
    """Runs with equal keys can share steps; None when this run must train alone (compiled or streamed data)."""
    if cfg.train.compile or cfg.data.name in UNPACKED_DATASETS:
        return None
    shared = {name: getattr(cfg, name).model_dump() for name in ("model", "data", "optimizer", "schedule", "train")}
    shared["prunable"] = [cfg.mask.prune_first, cfg.mask.prune_last]
    return json.dumps(shared, sort_keys=True, default=str)


class Pack:
    """The stacked weights, buffers, momentum and masks of K trainers at the same position of their cycles."""

    def __init__(self, trainers: Sequence[Trainer]):
        self.trainers = list(trainers)
        first = self.trainers[0]
        self.cfg, self.device = first.cfg, first.device
        self.base = copy.deepcopy(first.model).to("meta")
        named = [dict(t.model.named_parameters()) for t in self.trainers]
        self.params = {name: torch.stack([n[name].detach() for n in named]).requires_grad_() for name in named[0]}
        buffers = [dict(t.model.named_buffers()) for t in self.trainers]
        self.buffers = {name: torch.stack([b[name] for b in buffers]) for name in buffers[0]}
        opt = self.cfg.optimizer
        self.optimizer = torch.optim.SGD(list(self.params.values()), lr=opt.lr, momentum=opt.momentum,
                                         weight_decay=opt.weight_decay, nesterov=opt.nesterov)
        for name, stacked in self.params.items():
            momenta = [t.optimizer.state.get(n[name], {}).get("momentum_buffer") for t, n in zip(self.trainers, named)]
            if any(m is not None for m in momenta):  # a missing buffer acts as zero: SGD's first step sets it to grad
                self.optimizer.state[stacked]["momentum_buffer"] = torch.stack(
                    [torch.zeros_like(stacked[0]) if m is None else m for m in momenta])
        masked = sorted({name for t in self.trainers for name in t.mask})
        self.mask = {name: torch.stack([t.mask.get(name, torch.ones_like(self.params[name][0])).to(self.device)
                                        for t in self.trainers]) for name in masked}
        self.mask_step = masks.MaskStep(self.params, self.mask, self.optimizer)
        self.forward = vmap(self._forward)
        self.autocast = first.autocast  # every run shares train.bf16 and the device

    def _forward(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def train_epoch(self, stages: Sequence[int], epoch: int, callbacks: Sequence[Sequence]) -> list:
        """One epoch for all K runs; per run (mean loss, accuracy, last LR), or its DivergenceError."""
        cfg, count = self.cfg, len(self.trainers)
        self.base.train()
        steps = self.trainers[0].data.train.num_batches(cfg.data.batch_size)
        streams = [t.data.train.batches(cfg.data.batch_size, t.generator, cfg.data.augment) for t in self.trainers]
        loss_sum = torch.zeros(count, device=self.device)
        correct = torch.zeros(count, device=self.device, dtype=torch.long)
        first_bad = torch.full((count,), -1, device=self.device, dtype=torch.long)
        lr = cfg.optimizer.lr
        for step, pairs in enumerate(zip(*streams)):
            x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
            lr = lr_at(cfg.schedule, cfg.optimizer.lr, epoch, step, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            with self.autocast():
                logits = self.forward(self.params, self.buffers, x)
            losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").view(count, -1)
            losses = losses.mean(1)
            self.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            self.optimizer.step()
            self.mask_step()
            detached = losses.detach()
            first_bad = mark_first_bad(first_bad, detached, step)
            loss_sum += detached * y.shape[1]
            correct += (logits.argmax(-1) == y).sum(1)
            for trainer, stage, hooks in zip(self.trainers, stages, callbacks):
                for hook in hooks:
                    if hasattr(hook, "on_step"):
                        hook.on_step(trainer, stage, epoch, step)
        size = len(self.trainers[0].data.train)
        bad, loss_sum, correct = first_bad.tolist(), loss_sum.tolist(), correct.tolist()  # one sync per epoch
        return [DivergenceError(f"loss is not finite at stage {stage}, epoch {epoch}, step {b}") if b >= 0
                else (loss / size, right / size, lr) for stage, b, loss, right in zip(stages, bad, loss_sum, correct)]

    @torch.no_grad()
    def evaluate(self) -> list[tuple[float, float]]:
        """Mean test cross-entropy and accuracy of each run, in eval mode, over its own test split."""
        self.base.eval()
        count, size = len(self.trainers), len(self.trainers[0].data.test)
        loss_sum = torch.zeros(count, device=self.device)
        correct = torch.zeros(count, device=self.device, dtype=torch.long)
        streams = [t.data.test.batches(self.cfg.data.test_batch_size) for t in self.trainers]
        for pairs in zip(*streams):
            x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
            with self.autocast():
                logits = self.forward(self.params, self.buffers, x).float()
            loss_sum += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(count, -1).sum(1)
            correct += (logits.argmax(-1) == y).sum(1)
        return [(loss / size, right / size) for loss, right in zip(loss_sum.tolist(), correct.tolist())]

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy each run's slice of weights, buffers and momentum back into its own trainer."""
        lr = self.optimizer.param_groups[0]["lr"]
        for k, trainer in enumerate(self.trainers):
            for name, param in trainer.model.named_parameters():
                param.copy_(self.params[name][k])
                stacked = self.optimizer.state.get(self.params[name], {}).get("momentum_buffer")
                if stacked is not None:
                    own = trainer.optimizer.state[param].get("momentum_buffer")
                    if own is None:
                        trainer.optimizer.state[param]["momentum_buffer"] = stacked[k].clone()
                        trainer.mask_step.reset()
                    else:
                        own.copy_(stacked[k])
            for name, buffer in trainer.model.named_buffers():
                buffer.copy_(self.buffers[name][k])
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr


def _drive(drivers: list[runs.RunDriver]) -> None:
    """Advance all drivers to the end; runs at the same epoch of their cycle train as one pack."""
    active, errors = list(drivers), []
    while active:
        by_epoch: dict[int, list[runs.RunDriver]] = defaultdict(list)
        for driver in active:
            by_epoch[driver.epoch].append(driver)
        for epoch, group in sorted(by_epoch.items()):
            ready = []
            for driver in group:
                try:
                    driver.begin_epoch()
                    ready.append(driver)
                except Exception as error:  # noqa: BLE001 - one run's failure must not stop the others
                    errors.append(error)
                    active.remove(driver)
            if not ready:
                continue
            pack = Pack([d.trainer for d in ready])
            outcomes = pack.train_epoch([d.stage for d in ready], epoch, [d.callbacks for d in ready])
            tests = pack.evaluate() if ready[0].evaluate_now else [(float("nan"),) * 2] * len(ready)
            pack.write_back()
            for driver, outcome, test in zip(ready, outcomes, tests):
                if isinstance(outcome, Exception):
                    errors.append(outcome)
                    active.remove(driver)
                    continue
                driver.end_epoch(*outcome, test=test)
                if driver.done:
                    driver.finish()
                    active.remove(driver)
    if errors:
        raise errors[0]


def train_packed(cfgs: Sequence[Config], out: str | Path) -> None:
    """Train these runs (same `pack_key`) together, holding each one's lock; runs locked elsewhere are left to it."""
    out = Path(out)
    held, drivers = [], []
    try:
        for cfg in cfgs:
            run_dir = paths.run_dir(out, cfg.run_hash())
            lock = locks.RunLock(paths.lock(run_dir))
            if not lock.try_acquire():
                continue
            held.append(lock)
            if not results.is_complete(run_dir):
                drivers.append(runs.RunDriver(cfg, out, run_dir, [lock]))
        _drive(drivers)
    finally:
        for driver in drivers:
            driver.close()
        for lock in held:
            lock.release()


def run_many(cfgs: Sequence[Config], out: str | Path, max_pack: int | None = None) -> list[Path]:
    """Train every config (finished runs are reused), packing pending runs that share a `pack_key` in groups of at
    most `max_pack` (None: `default_max_pack`, by device); returns the run directories in the order given."""
    out = Path(out)
    run_dirs = [paths.run_dir(out, cfg.run_hash()) for cfg in cfgs]
    groups: dict[str | None, dict[str, Config]] = defaultdict(dict)
    for cfg, run_dir in zip(cfgs, run_dirs):
        if not results.is_complete(run_dir):
            groups[pack_key(cfg)][run_dir.name] = cfg
    for key, pending in groups.items():
        members = list(pending.values())
        size = max_pack or default_max_pack(members[0])
        if key is not None and size > 1:
            for start in range(0, len(members), size):
                chunk = members[start:start + size]
                if len(chunk) > 1:
                    train_packed(chunk, out)
    for cfg in cfgs:  # singles, runs another process held, and anything a pack left unfinished
        runs.run(cfg, out)
    return run_dirs
