"""Seconds per epoch of one CIFAR-shaped ResNet20 run: the usual PyTorch recipe against lotterylab's options, one run.

Data: lotterylab's `synthetic` dataset, uint8 (N, 3, 32, 32), 10 classes (CIFAR-10-shaped). Batch 512, SGD momentum 0.9,
weight decay 1e-4. Sides, each after one warm-up epoch (which also compiles), median over --epochs timed epochs:

- `baseline`: a torchvision VisionDataset over the same uint8 images held as (N, 32, 32, 3) numpy (as CIFAR10 holds
  them), PIL per image, CPU transforms RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, a
  DataLoader (--workers workers, pinned memory on CUDA, shuffled), fp32 eager, `loss.item()` every step (the usual
  recipe's running loss).
- `lotterylab fp32`: Trainer.train_epoch with the data resident on the device, augmented there, fp32 eager.
- `lotterylab bf16+channels_last`: the same with bf16 autocast and channels_last.
- `lotterylab bf16+channels_last+compile`: the same with torch.compile.

One JSON line per side, with the device, the speedup over `baseline` measured in this process and the side's peak
CUDA memory (`peak_gpu_mem_mib`, torch.cuda.max_memory_allocated; null on CPU). `--model` swaps ResNet20 for another
registry model of the same input (the GPU check's dry run uses a small one to keep compilation short on CPU).

    python benchmarks/bench_single_run.py [--epochs 3] [--train-size 50000] [--device auto] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from gpu_memory import peak_mib, reset_peak

from lotterylab.core import config, data, models
from lotterylab.training.train import Trainer, resolve_device

BATCH = 512
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SIDES = {
    "lotterylab fp32": {},
    "lotterylab bf16+channels_last": {"bf16": True, "channels_last": True},
    "lotterylab bf16+channels_last+compile": {"bf16": True, "channels_last": True, "compile": True},
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cfg(train_size: int, device: torch.device, model: str, **train) -> config.Config:
    return config.from_dict({
        "data": {"name": "synthetic", "shape": [3, 32, 32], "train_size": train_size, "test_size": 1000,
                 "batch_size": BATCH},
        "model": {"name": model},
        "schedule": {"epochs": 150},
        "train": {"progress": False, "device": str(device), **train},
    })


def baseline_epoch(images: np.ndarray, labels: list[int], device: torch.device, workers: int,
                   model_name: str) -> Callable[[], None]:
    """The usual recipe: a torchvision dataset, CPU transforms in DataLoader workers, fp32 eager."""
    from PIL import Image
    from torchvision import transforms
    from torchvision.datasets import VisionDataset

    class CIFARShaped(VisionDataset):
        """CIFAR10's __getitem__ over in-memory (N, 32, 32, 3) uint8 images."""

        def __init__(self, transform: Callable) -> None:
            super().__init__(root="", transform=transform)

        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            return self.transform(Image.fromarray(images[index])), labels[index]

    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    loader = torch.utils.data.DataLoader(CIFARShaped(transform), BATCH, shuffle=True, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    torch.manual_seed(0)
    model = models.build(config.ModelConfig(name=model_name), (3, 32, 32), 10).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def epoch() -> None:
        model.train()
        running = 0.0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()

    return epoch


def lotterylab_epoch(train_size: int, device: torch.device, model: str, train: dict) -> Callable[[], None]:
    cfg = _cfg(train_size, device, model, **train)
    dataset = data.load(cfg.data, cfg.seed, device)
    torch.manual_seed(0)
    trainer = Trainer(cfg, models.build(cfg.model, dataset.input_shape, dataset.num_classes), dataset, device)
    epochs = iter(range(10**9))
    return lambda: trainer.train_epoch(0, next(epochs) % cfg.schedule.epochs)


def seconds_per_epoch(epoch: Callable[[], None], device: torch.device, epochs: int) -> float:
    epoch()  # warm-up: worker start, cuDNN autotuning, compilation
    times = []
    for _ in range(epochs):
        synchronize(device)
        start = time.perf_counter()
        epoch()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per side, after one warm-up epoch")
    parser.add_argument("--train-size", type=int, help="training examples; default 50000 on CUDA, 1024 on CPU")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=4, help="baseline DataLoader workers")
    parser.add_argument("--sides", nargs="*", choices=list(SIDES), default=list(SIDES), help="lotterylab sides to run")
    parser.add_argument("--model", default="resnet20", help="model registry name (default resnet20)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    train_size = args.train_size or (50_000 if device.type == "cuda" else 1024)
    common = {"bench": "single_run", "device": device_name(device), "torch": torch.__version__, "model": args.model,
              "batch_size": BATCH, "train_size": train_size, "timed_epochs": args.epochs}

    split = data.load(_cfg(train_size, device, args.model).data, 0).train
    images = split.x.permute(0, 2, 3, 1).contiguous().numpy()  # (N, C, H, W) -> (N, H, W, C), as CIFAR10 holds them
    reset_peak(device)
    baseline = baseline_epoch(images, split.y.tolist(), device, args.workers, args.model)
    base = seconds_per_epoch(baseline, device, args.epochs)
    print(json.dumps({**common, "side": "baseline", "workers": args.workers, "s_per_epoch": round(base, 4),
                      "speedup_vs_baseline": 1.0, "peak_gpu_mem_mib": peak_mib(device)}), flush=True)
    del baseline
    for side in args.sides:
        reset_peak(device)
        seconds = seconds_per_epoch(lotterylab_epoch(train_size, device, args.model, SIDES[side]), device, args.epochs)
        print(json.dumps({**common, "side": side, "s_per_epoch": round(seconds, 4),
                          "speedup_vs_baseline": round(base / seconds, 3), "peak_gpu_mem_mib": peak_mib(device)}),
              flush=True)


if __name__ == "__main__":
    main()
