"""Aggregate training throughput of K runs in one process: packed (vmap) against K runs one after another.

Each measurement trains K runs (own seeds and 90% random masks) for `--epochs` epochs after one warm-up epoch, in
this process, on one device, and prints one JSON line: mode, K, seconds, examples/s summed over the K runs, the
ratio to one solo run measured in the same process, and the peak CUDA memory of that measurement (`peak_gpu_mem_mib`,
torch.cuda.max_memory_allocated; null on CPU). Modes:
- `solo`: one run alone (the baseline, K = 1);
- `sequential`: K trainers in turn, each a whole epoch (what a study does without packing);
- `vmap`: lotterylab.training.packing.Pack, the K runs as one vmapped model;
- `streams` (CUDA only): K trainers interleaved step by step, each on its own CUDA stream.

    python benchmarks/bench_packing.py --model mlp                      # MNIST-1D, CPU-sized
    python benchmarks/bench_packing.py --model resnet20 --device cuda   # CIFAR-shaped synthetic, batch 512
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from gpu_memory import peak_mib, reset_peak

from lotterylab.core import config, data, models
from lotterylab.training import packing, results
from lotterylab.training.train import Trainer, resolve_device

PRESETS = {
    "mlp": {"data": {"name": "mnist1d", "batch_size": 128}, "model": {"name": "mlp", "width": 256, "depth": 2}},
    "resnet20": {"data": {"name": "synthetic", "shape": [3, 32, 32], "num_classes": 10, "train_size": 50_000,
                          "test_size": 1000, "batch_size": 512}, "model": {"name": "resnet20"}},
}


def make_trainers(preset: str, count: int, device: torch.device, train_size: int | None) -> list[Trainer]:
    trainers = []
    for seed in range(count):
        raw = {**PRESETS[preset], "seed": seed, "train": {"device": str(device), "progress": False}}
        if train_size:
            raw["data"] = {**raw["data"], "train_size": train_size}
        cfg = config.from_dict(raw)
        dataset = data.load(cfg.data, seed, device)
        torch.manual_seed(seed)
        trainer = Trainer(cfg, models.build(cfg.model, dataset.input_shape, dataset.num_classes), dataset, device)
        generator = torch.Generator().manual_seed(seed)
        trainer.set_mask({name: (torch.rand(p.shape, generator=generator) > 0.9).float()
                          for name, p in trainer.params.items()})
        trainers.append(trainer)
    return trainers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epochs_sequential(trainers: list[Trainer], epochs: int) -> None:
    for epoch in range(epochs):
        for trainer in trainers:
            trainer.train_epoch(0, epoch)


def epochs_vmap(trainers: list[Trainer], epochs: int) -> None:
    for epoch in range(epochs):
        pack = packing.Pack(trainers)
        pack.train_epoch([0] * len(trainers), epoch, [[] for _ in trainers])
        pack.write_back()


def epochs_streams(trainers: list[Trainer], epochs: int) -> None:
    """Each trainer's epoch as a generator of steps, advanced round-robin on its own stream."""
    streams = [torch.cuda.Stream() for _ in trainers]
    for epoch in range(epochs):
        pending = [_steps(t, epoch) for t in trainers]
        while pending:
            for stream, steps in list(zip(streams, pending)):
                with torch.cuda.stream(stream):
                    if next(steps, None) is None:
                        pending.remove(steps)
        torch.cuda.synchronize()


def _steps(trainer: Trainer, epoch: int):
    import torch.nn.functional as F

    trainer.model.train()
    for x, y in trainer.data.train.batches(trainer.cfg.data.batch_size, trainer.generator, trainer.cfg.data.augment):
        loss = F.cross_entropy(trainer.forward(trainer.input(x)), y)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        trainer.mask_step()
        yield


MODES = {"sequential": epochs_sequential, "vmap": epochs_vmap, "streams": epochs_streams}


def measure(mode: str, trainers: list[Trainer], epochs: int, device: torch.device) -> float:
    train = MODES["sequential" if mode == "solo" else mode]
    reset_peak(device)
    train(trainers, 1)  # warm-up: allocator, kernels, vmap tracing
    sync(device)
    start = time.perf_counter()
    train(trainers, epochs)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(PRESETS), default="mlp")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ks", default="2,4,8", help="pack sizes, comma-separated")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=None, help="override the preset's training-set size")
    parser.add_argument("--modes", default="sequential,vmap,streams")
    args = parser.parse_args()
    device = resolve_device(args.device)
    where = results.device_name(device)
    solo = make_trainers(args.model, 1, device, args.train_size)
    size = len(solo[0].data.train)
    base = measure("solo", solo, args.epochs, device)
    base_rate = size * args.epochs / base
    line = {"bench": "packing", "model": args.model, "device": where, "threads": torch.get_num_threads()}
    print(json.dumps({**line, "mode": "solo", "k": 1, "seconds": round(base, 3), "examples_per_s": round(base_rate, 1),
                      "ratio_to_solo": 1.0, "peak_gpu_mem_mib": peak_mib(device)}), flush=True)
    for k in [int(k) for k in args.ks.split(",")]:
        trainers = make_trainers(args.model, k, device, args.train_size)
        for mode in args.modes.split(","):
            if mode == "streams" and device.type != "cuda":
                continue
            seconds = measure(mode, trainers, args.epochs, device)
            rate = k * size * args.epochs / seconds
            print(json.dumps({**line, "mode": mode, "k": k, "seconds": round(seconds, 3),
                              "examples_per_s": round(rate, 1), "ratio_to_solo": round(rate / base_rate, 2),
                              "peak_gpu_mem_mib": peak_mib(device)}), flush=True)
        del trainers


if __name__ == "__main__":
    main()
