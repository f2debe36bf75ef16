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
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from lotterylab.core import models, paths
from lotterylab.core.config import Config
from lotterylab.pruning import masks
from lotterylab.training import locks, results, runs, step, train
from lotterylab.training.train import DivergenceError, Trainer, resolve_device

MAX_PACK = 8
"""Runs trained together at most on a GPU; more pending runs form further packs."""


def default_max_pack(cfg: Config) -> int:
    """MAX_PACK on CUDA; 1 (no packing) on CPU, where packing measured 1.0-1.4x (benchmarks/README.md) and would
    trade lotterylab's bitwise CPU reproducibility for fp32-rounding equality."""
    return MAX_PACK if resolve_device(cfg.train.device).type == "cuda" else 1

UNPACKED_DATASETS = ("imagenet",)
"""Streamed from files by a DataLoader per run: nothing to gain from packing."""


def pack_key(cfg: Config) -> str | None:
    """Runs with equal keys can share steps; None when this run must train alone (compiled, streamed data, or a model
    registered as unpackable)."""
    if cfg.train.compile or cfg.data.name in UNPACKED_DATASETS or cfg.model.name in models.UNPACKABLE:
        return None
    shared = {name: getattr(cfg, name).model_dump() for name in ("model", "data", "optimizer", "schedule", "train")}
    shared["prunable"] = [cfg.mask.prune_first, cfg.mask.prune_last]
    return json.dumps(shared, sort_keys=True, default=str)


def _stacked(streams: Sequence[Iterator[tuple[Tensor, Tensor]]]) -> Iterator[tuple[Tensor, Tensor]]:
    """The K runs' batches, step by step, as one: x (K, B, ...) and y (K, B)."""
    for pairs in zip(*streams):
        yield torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])


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
        self.optimizer = step.build_optimizer(list(self.params.values()), self.cfg.optimizer)
        for name, stacked in self.params.items():
            momenta = [t.optimizer.state.get(n[name], {}).get("momentum_buffer") for t, n in zip(self.trainers, named)]
            if any(m is not None for m in momenta):  # a missing buffer acts as zero: SGD's first step sets it to grad
                self.optimizer.state[stacked]["momentum_buffer"] = torch.stack(
                    [torch.zeros_like(stacked[0]) if m is None else m for m in momenta])
        masked = sorted({name for t in self.trainers for name in t.mask})
        self.mask = {name: torch.stack([t.mask.get(name, torch.ones_like(self.params[name][0])).to(self.device)
                                        for t in self.trainers]) for name in masked}
        self.mask_step = masks.MaskStep(self.params, self.mask, self.optimizer)
        self.input = first.input  # every run shares train settings and the device
        self.autocast = first.autocast
        self.forward = vmap(self._forward, in_dims=(0, 0, 0), randomness="different")

    def _forward(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.base, (params, buffers), (self.input(x),))

    def _stacked_forward(self, x: Tensor) -> Tensor:
        return self.forward(self.params, self.buffers, x)  # (K, B, ...) -> (K, B, C)

    def train_epoch(self, stages: Sequence[int], epoch: int, callbacks: Sequence[Sequence]) -> list:
        """One epoch for all K runs (`step.sgd_epoch`); per run (mean loss, accuracy, last LR), or its DivergenceError.

        on_step hooks are called with each run's own trainer after its weights and momentum are written back, so
        they see the step's result, as in a solo run."""
        cfg, data = self.cfg, self.trainers[0].data
        self.base.train()
        rates = train.epoch_rates(cfg, epoch, data.train.num_batches(cfg.data.batch_size))
        streams = [t.data.train.batches(cfg.data.batch_size, t.generator, cfg.data.augment) for t in self.trainers]
        batches = _stacked(streams)
        hooked = [(trainer, stage, hook) for trainer, stage, hooks in zip(self.trainers, stages, callbacks)
                  for hook in hooks if hasattr(hook, "on_step")]
        reads_weights = any(getattr(hook, "reads_weights", True) for _, _, hook in hooked)

        def call_hooks(index: int) -> None:
            if reads_weights:
                self.write_back()
            for trainer, stage, hook in hooked:
                hook.on_step(trainer, stage, epoch, index)

        tally = step.sgd_epoch(self._stacked_forward, self.optimizer, self.mask_step, batches, rates, self.autocast,
                               [call_hooks] if hooked else [])
        if not tally.losses:
            return [(math.nan, math.nan, cfg.optimizer.lr)] * len(stages)
        size, lr = len(data.train), rates[-1]
        loss_sum, correct, first_bad = (values.tolist() for values in tally.sums())  # one sync per epoch
        outcomes = zip(stages, first_bad, loss_sum, correct)
        return [DivergenceError(f"loss is not finite at stage {stage}, epoch {epoch}, step {bad}") if bad < len(rates)
                else (loss / size, right / size, lr) for stage, bad, loss, right in outcomes]

    def evaluate(self) -> list[tuple[float, float]]:
        """Mean test cross-entropy and accuracy of each run, in eval mode, over its own test split."""
        self.base.eval()
        size = len(self.trainers[0].data.test)
        streams = [t.data.test.batches(self.cfg.data.test_batch_size) for t in self.trainers]
        batches = _stacked(streams)
        loss_sum, correct = step.evaluate(self._stacked_forward, batches, self.autocast)
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


def train_packed(cfgs: Sequence[Config], out: str | Path, callbacks: Sequence[train.Callback] = ()) -> None:
    """Train these runs (same `pack_key`) together, holding each one's lock; runs locked elsewhere are left to it.
    `callbacks` are every run's, besides its lock (a study's progress)."""
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
                drivers.append(runs.RunDriver(cfg, out, run_dir, [lock, *callbacks]))
        _drive(drivers)
    finally:
        for driver in drivers:
            driver.close()
        for lock in held:
            lock.release()


def run_many(cfgs: Sequence[Config], out: str | Path, max_pack: int | None = None,
             callbacks: Sequence[train.Callback] = ()) -> list[Path]:
    """Train every config (finished runs are reused), packing pending runs that share a `pack_key` in groups of at
    most `max_pack` (None: `default_max_pack`, by device), each run with `callbacks`; returns the run directories in
    the order given."""
    out = Path(out)
    cfgs = [runs.plan_coupled(cfg, out) for cfg in cfgs]  # sources train first, never inside a pack's build
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
                    train_packed(chunk, out, callbacks)
    for cfg in cfgs:  # singles, runs another process held, and anything a pack left unfinished
        runs.run(cfg, out, callbacks)
    return run_dirs
