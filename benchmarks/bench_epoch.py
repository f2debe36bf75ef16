"""Epoch time of lotterylab's Trainer against a bare PyTorch loop doing the same steps, in one process.

Both train the MNIST-1D `mlp` (256 x 2) with SGD (momentum 0.9, weight decay 5e-4), batch 128, the same per-step LR,
on the same tensors. Measured after one warm-up epoch, median over `--epochs` epochs, each side alternating so load
changes hit both. Sides: `bare` (the baseline), `lotterylab dense`, `lotterylab 90% mask` (adds the fused mask step
on weights and momentum). One JSON line per measurement, with the device and the ratio to `bare`.

    python benchmarks/bench_epoch.py [--epochs 15] [--device cpu] [--tiny]

`--tiny` swaps in an MLP of 8 hidden units and batch 32, so small that compute is negligible: what is left is the
host time of each step, the cost that bounds small models on a GPU. Its lines add the median time per step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from lotterylab.core import config, data, models
from lotterylab.core.schedules import lr_at
from lotterylab.training import results
from lotterylab.training.train import Trainer, resolve_device

RAW = {"data": {"name": "mnist1d", "batch_size": 128}, "model": {"name": "mlp", "width": 256, "depth": 2},
       "train": {"progress": False}}


TINY = {"data": {"name": "mnist1d", "batch_size": 32}, "model": {"name": "mlp", "width": 8, "depth": 1}}


def make_trainer(device: torch.device, sparsity: float, raw: dict) -> Trainer:
    cfg = config.from_dict({**raw, "train": {**raw["train"], "device": str(device)}})
    dataset = data.load(cfg.data, cfg.seed, device)
    torch.manual_seed(0)
    trainer = Trainer(cfg, models.build(cfg.model, dataset.input_shape, dataset.num_classes), dataset, device)
    if sparsity:
        generator = torch.Generator().manual_seed(0)
        trainer.set_mask({name: (torch.rand(p.shape, generator=generator) >= sparsity).float()
                          for name, p in trainer.params.items()})
    return trainer


def bare_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               generator: torch.Generator, cfg: config.Config, epoch: int) -> float:
    """The textbook loop: shuffle, slice, forward, backward, step; loss read once at the end."""
    model.train()
    batch = cfg.data.batch_size
    steps = -(-len(x) // batch)
    order = torch.randperm(len(x), generator=generator).to(x.device)
    total = torch.zeros((), device=x.device)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(cfg.schedule, cfg.optimizer.lr, epoch, step, steps)
        index = order[step * batch:(step + 1) * batch]
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach()
    return float(total) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tiny", action="store_true", help="a model so small that compute is negligible")
    args = parser.parse_args()
    device = resolve_device(args.device)
    raw = {**RAW, **TINY} if args.tiny else RAW
    dense, sparse = make_trainer(device, 0.0, raw), make_trainer(device, 0.9, raw)
    cfg = dense.cfg
    torch.manual_seed(0)
    model = models.build(cfg.model, dense.data.input_shape, dense.data.num_classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr, momentum=cfg.optimizer.momentum,
                                weight_decay=cfg.optimizer.weight_decay)
    generator = torch.Generator().manual_seed(0)
    x, y = dense.data.train.x, dense.data.train.y
    sides = {
        "bare": lambda epoch: bare_epoch(model, optimizer, x, y, generator, cfg, epoch),
        "lotterylab dense": lambda epoch: dense.train_epoch(0, epoch),
        "lotterylab 90% mask": lambda epoch: sparse.train_epoch(0, epoch),
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    for epoch in range(args.epochs + 1):
        for name, side in sides.items():
            start = time.perf_counter()
            side(epoch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if epoch:  # epoch 0 warms up
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["bare"])
    steps = dense.data.train.num_batches(cfg.data.batch_size)
    for name, samples in times.items():
        median = statistics.median(samples)
        print(json.dumps({"bench": "epoch", "model": f"mlp {cfg.model.width}x{cfg.model.depth}", "data": "mnist1d",
                          "batch": cfg.data.batch_size, "device": results.device_name(device), "side": name,
                          "epochs": args.epochs, "median_epoch_s": round(median, 4),
                          "median_step_us": round(median / steps * 1e6, 1), "ratio_to_bare": round(median / base, 3)}))


if __name__ == "__main__":
    main()
