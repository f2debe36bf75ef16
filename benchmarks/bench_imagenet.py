"""ResNet-18 ImageNet-shaped training throughput: device-resident synthetic data (upper bound) against JPEG folders.

All sides run lotterylab's Trainer.train_epoch on `resnet18_imagenet` (1000 classes), batch --batch-size, random crops
and flips on. Images per second over one timed epoch after a warm-up epoch:

- `synthetic`: uint8 (N, 3, S, S) resident on the device: the model's own ceiling.
- `folder device-decode` / `folder pil`: an ImageFolder of real JPEGs this script writes to a temp directory
  (--images files of about 500 x 375, ImageNet's typical size, smooth content so they compress like photos), read by
  --workers worker processes and decoded on the training device (data.decode 'device') or by PIL in the workers.
- `loader only ...`: the same folder loaders with no training step: the decode ceiling.

One JSON line per measurement, with the device, the ratio to `synthetic` measured in this process and the peak CUDA
memory of the measurement (`peak_gpu_mem_mib`, torch.cuda.max_memory_allocated; null on CPU).

    python benchmarks/bench_imagenet.py [--device auto] [--images 4096] [--batch-size 256] [--workers 8] [--bf16]
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gpu_memory import peak_mib, reset_peak
from PIL import Image

from lotterylab.core import config, data, imagenet, models
from lotterylab.training.train import Trainer, resolve_device

CLASSES = 10  # folders; the model still has 1000 outputs


def write_jpegs(root: Path, count: int, seed: int = 0) -> None:
    """train/ and val/ ImageFolders of smooth random 500 x 375 JPEGs (coarse noise upsampled, then fine noise)."""
    rng = np.random.default_rng(seed)
    for split, number in (("train", count), ("val", CLASSES)):
        for index in range(number):
            folder = root / split / f"n{index % CLASSES:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            coarse = torch.from_numpy(rng.integers(0, 256, (1, 3, 12, 16), dtype=np.uint8)).float()
            image = F.interpolate(coarse, size=(375, 500), mode="bicubic", align_corners=False)[0]
            image = image + torch.from_numpy(rng.normal(0, 6, image.shape).astype(np.float32))
            pixels = image.clamp(0, 255).byte().permute(1, 2, 0).numpy()  # (C, H, W) -> (H, W, C)
            Image.fromarray(pixels).save(folder / f"{index}.JPEG", quality=90)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work, device: torch.device) -> float:
    """Seconds of one call of `work` after a warm-up call."""
    work()
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def trainer_for(dataset: data.Data, raw: dict, device: torch.device) -> Trainer:
    cfg = config.from_dict(raw)
    torch.manual_seed(0)
    return Trainer(cfg, models.build(cfg.model, dataset.input_shape, 1000), dataset, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--images", type=int, help="JPEGs written and trained on per epoch; default 4096 CUDA, 32 CPU")
    parser.add_argument("--batch-size", type=int, help="default 256 on CUDA, 16 on CPU")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, default=8, help="DataLoader worker processes reading the files")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast and channels_last for every side")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    images, batch = args.images or (4096 if cuda else 32), args.batch_size or (256 if cuda else 16)
    size = args.image_size
    raw = {
        "data": {"name": "synthetic", "shape": [3, size, size], "num_classes": 1000, "train_size": images,
                 "test_size": batch, "batch_size": batch},
        "model": {"name": "resnet18_imagenet"},
        "schedule": {"epochs": 90},
        "train": {"progress": False, "device": str(device), "bf16": args.bf16, "channels_last": args.bf16},
    }
    common = {"bench": "imagenet", "device": device_name(device), "torch": torch.__version__, "model": "resnet18",
              "image_size": size, "batch_size": batch, "images": images, "workers": args.workers, "bf16": args.bf16}

    def report(side: str, seconds: float, base: float | None) -> float:
        rate = images / seconds
        ratio = {} if base is None else {"ratio_to_synthetic": round(rate / base, 3)}
        print(json.dumps({**common, "side": side, "images_per_s": round(rate, 1), **ratio,
                          "peak_gpu_mem_mib": peak_mib(device)}), flush=True)
        return rate

    reset_peak(device)
    synthetic = data.load(config.from_dict(raw).data, 0, device)
    trainer = trainer_for(synthetic, raw, device)
    base = report("synthetic", timed(functools.partial(trainer.train_epoch, 0, 0), device), None)
    del trainer, synthetic
    with tempfile.TemporaryDirectory() as scratch:
        write_jpegs(Path(scratch), images)
        for decode in ("device", "pil"):
            folder_raw = {**raw, "data": {"name": "imagenet", "root": scratch, "image_size": size, "batch_size": batch,
                                          "workers": args.workers, "decode": decode}}
            folder = imagenet.imagenet(config.from_dict(folder_raw).data)
            folder = data.Data(folder.train.to(device), folder.test.to(device), 1000, folder.input_shape,
                               folder.noisy_indices)
            generator = torch.Generator().manual_seed(0)

            def load_only() -> None:
                for x, _ in folder.train.batches(batch, generator, augment=True):
                    pass

            name = "device-decode" if decode == "device" else "pil"
            reset_peak(device)
            report(f"loader only {name}", timed(load_only, device), base)
            reset_peak(device)
            trainer = trainer_for(folder, folder_raw, device)
            report(f"folder {name}", timed(functools.partial(trainer.train_epoch, 0, 0), device), base)
            del trainer


if __name__ == "__main__":
    main()
