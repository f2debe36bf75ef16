"""Dataset registry, in-memory tensor splits, seeded subsets, label noise and on-device augmentation."""

from __future__ import annotations

import io
import os
import random
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lotterylab.core import files
from lotterylab.core.config import ConfigError, DataConfig
from lotterylab.core.registry import DATASETS

if TYPE_CHECKING:  # both build on this module
    from lotterylab.core.beton import BetonSplit
    from lotterylab.core.imagenet import FolderSplit

# torchvision (several seconds to import) and mnist1d (pulls in matplotlib) are imported inside the loaders that need
# them: every import of lotterylab imports this module to register its datasets, and must stay fast.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet channel statistics, used by both ImageNet readers (imagenet.py, beton.py)."""

PAD = 4
"""Zero padding of the random crop, in pixels."""


def default_root() -> Path:
    """Dataset cache directory: $LOTTERYLAB_DATA, else ~/.cache/lotterylab."""
    return Path(os.environ.get("LOTTERYLAB_DATA") or Path.home() / ".cache" / "lotterylab").expanduser()


def augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """Random crop with 4-pixel zero padding and random horizontal flip of (B, C, H, W) images, on x's device.

    The draws come from the CPU `generator` and are then moved, so the result does not depend on the device.
    """
    return crop_and_flip(x, *augmentation_draws(len(x), generator))


def augmentation_draws(batch: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Crop offsets (2, B) and flip flags (B,) for a batch, from the CPU `generator`; a rank keeps its rows."""
    shifts = torch.randint(0, 2 * PAD + 1, (2, batch), generator=generator)
    flips = torch.randint(0, 2, (batch,), generator=generator).to(torch.bool)
    return shifts, flips


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """Copy a small CPU tensor to `device`; to CUDA through pinned memory without blocking: no step waits on the GPU."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def crop_and_flip(x: Tensor, shifts: Tensor, flips: Tensor) -> Tensor:
    """Apply drawn crop offsets and flips to (B, C, H, W) images on x's device."""
    batch, channels, height, width = x.shape
    shifts, flips = to_device(shifts, x.device), to_device(flips, x.device)
    padded = F.pad(x, (PAD, PAD, PAD, PAD))  # (B, C, H + 2P, W + 2P)
    rows = shifts[0, :, None] + torch.arange(height, device=x.device)  # (B, H)
    cols = torch.arange(width, device=x.device)
    cols = torch.where(flips[:, None], width - 1 - cols, cols) + shifts[1, :, None]  # (B, W)
    cropped = padded.gather(2, rows[:, None, :, None].expand(-1, channels, -1, width + 2 * PAD))  # (B, C, H, W + 2P)
    return cropped.gather(3, cols[:, None, None, :].expand(-1, channels, height, -1))  # (B, C, H, W)


def label_noise(labels: Tensor, fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Permute the labels among round(fraction * N) randomly chosen examples; return (labels, sorted chosen indices).

    Permuting (rather than drawing new labels) keeps the class histogram balanced, as in the seed paper.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"label noise fraction must be in [0, 1), got {fraction}")
    count = round(fraction * len(labels))
    chosen = torch.randperm(len(labels), generator=generator)[:count]
    donors = chosen[torch.randperm(count, generator=generator)]
    noisy = labels.clone()
    noisy[chosen] = labels[donors]
    return noisy, chosen.sort().values


class Split:
    """What every split shares: `len(split)` examples, served in batches by `batches(...)`."""

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


class StreamedSplit(Split):
    """A split read from files every epoch (ImageFolder, .beton): always images, moved by its `device` field."""

    @property
    def is_image(self) -> bool:
        return True

    def to(self, device: torch.device | str):
        return replace(self, device=torch.device(device))


@dataclass(eq=False)
class TensorSplit(Split):
    """A whole split held as tensors; batches are gathered (and images augmented) on the split's device."""

    x: Tensor  # images: uint8 (N, C, H, W); signals: float32 (N, C, L)
    y: Tensor  # int64 (N,)
    mean: Tensor | None = None  # float32 (C,) of x / 255 over the train split; images only
    std: Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def is_image(self) -> bool:
        return self.x.dtype == torch.uint8 and self.x.dim() == 4

    def to(self, device: torch.device | str) -> TensorSplit:
        mean, std = (None, None) if self.mean is None else (self.mean.to(device), self.std.to(device))
        return TensorSplit(self.x.to(device), self.y.to(device), mean, std)

    def subset(self, indices: Tensor) -> TensorSplit:
        return TensorSplit(self.x[indices], self.y[indices], self.mean, self.std)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, augment: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """(x float32, y int64) batches on the split's device; shuffled by `generator`, sequential when it is None.

        Images go uint8 -> float / 255 on the device, are augmented if asked, then normalized when mean/std are set.
        With `shard` = (rank, world), each batch of `batch_size` is drawn as in one process (order and augmentation
        from the same generator) and this rank keeps rows rank::world, so the ranks together see exactly that batch.
        """
        rank, world = shard
        if augment and generator is None and self.is_image:
            raise ValueError("augmentation needs a generator")
        device = self.x.device
        if generator is None:
            order = torch.arange(len(self), device=device)
        else:
            order = torch.randperm(len(self), generator=generator).to(device)
        image = self.is_image
        normalize = image and self.mean is not None
        if normalize:
            mean = self.mean.to(device).view(1, -1, 1, 1)
            std = self.std.to(device).view(1, -1, 1, 1)
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            if augment and image:
                shifts, flips = augmentation_draws(len(index), generator)
            if world > 1:
                index = index[rank::world]
            x, y = self.x[index], self.y[index]
            if image:
                if augment:
                    x = crop_and_flip(x, shifts[:, rank::world], flips[rank::world])  # uint8: less memory traffic
                x = x.float() / 255
                if normalize:
                    x = (x - mean) / std
            yield x, y


class DataError(ValueError):
    """A data file that cannot be read; the message is one line naming the file."""


@dataclass(eq=False)
class Data:
    """A dataset ready for training: splits on the device plus what the model needs to know."""

    train: TensorSplit | FolderSplit | BetonSplit
    test: TensorSplit | FolderSplit | BetonSplit
    num_classes: int
    input_shape: tuple[int, ...]  # per-example shape given to the model
    noisy_indices: Tensor  # int64 indices into train whose labels were permuted, on the CPU; empty without noise


def no_noise() -> Tensor:
    return torch.empty(0, dtype=torch.int64)


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _mnist1d(cfg: DataConfig) -> Data:
    cache = Path(cfg.root or default_root()) / "mnist1d" / "mnist1d.npz"
    try:
        with np.load(cache) as arrays:
            arrays = {key: arrays[key] for key in ("x", "y", "x_test", "y_test")}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # absent or damaged cache: regenerate it
        arrays = _generate_mnist1d()
        packed = io.BytesIO()
        np.savez(packed, **arrays)
        files.atomic_write(cache, packed.getvalue())
    # (N, L) -> (N, 1, L): one channel, as the 1-D convolutional models expect
    train, test = (
        TensorSplit(torch.from_numpy(arrays[x]).float().unsqueeze(1), torch.from_numpy(arrays[y]).long())
        for x, y in (("x", "y"), ("x_test", "y_test"))
    )
    return Data(train, test, 10, tuple(train.x.shape[1:]), no_noise())


def _generate_mnist1d() -> dict[str, np.ndarray]:
    """The standard MNIST-1D split, generated offline (never mnist1d's URL download)."""
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds the global numpy and random generators; restore them so it has no effect elsewhere.
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        dataset = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
    return {key: np.asarray(dataset[key]) for key in ("x", "y", "x_test", "y_test")}


def _synthetic(cfg: DataConfig) -> Data:
    shape = tuple(cfg.shape)
    # Fixed seeds, one per split: the data never depends on the run seed, and the test set not on train_size.
    splits = [
        _random_split(size, shape, cfg.num_classes, torch.Generator().manual_seed(seed))
        for seed, size in ((0, cfg.train_size or 50_000), (1, cfg.test_size or 10_000))
    ]
    return Data(splits[0], splits[1], cfg.num_classes, shape, no_noise())


def _random_split(size: int, shape: tuple[int, ...], num_classes: int, generator: torch.Generator) -> TensorSplit:
    if len(shape) == 3:
        x = torch.randint(0, 256, (size, *shape), dtype=torch.uint8, generator=generator)
    else:
        x = torch.randn((size, *shape), generator=generator)
    return TensorSplit(x, torch.randint(0, num_classes, (size,), generator=generator))


DATASETS.update(mnist1d=_mnist1d, synthetic=_synthetic)  # the rest: archives.py, imagenet.py


def _generator(seed: int, purpose: int) -> torch.Generator:
    """An independent CPU stream per purpose, so e.g. changing test_size never changes which labels are noisy."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0]))


def _subset(split: Any, size: int | None, name: str, generator: torch.Generator) -> Any:
    if size is None or size == len(split):
        return split
    if size > len(split):
        raise ConfigError(f"{name}: {size} is more than the {len(split)} examples available")
    return split.subset(torch.randperm(len(split), generator=generator)[:size].sort().values)


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std of uint8 images / 255, exact, from 256-bin histograms (no float copy of the data)."""
    values = torch.arange(256, dtype=torch.float64) / 255
    counts = torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256) for c in range(x.shape[1])]).double()
    total = counts.sum(1)
    mean = (counts * values).sum(1) / total
    var = (counts * values**2).sum(1) / total - mean**2
    return mean.float(), var.clamp_min(0).sqrt().float()


def load(cfg: DataConfig, seed: int, device: torch.device | str = "cpu") -> Data:
    """Load cfg.name, take the seeded train/test subsets, apply seeded label noise, and move the splits to device."""
    data = DATASETS.get_checked(cfg.name)(cfg)
    train = _subset(data.train, cfg.train_size, "data.train_size", _generator(seed, 0))
    test = _subset(data.test, cfg.test_size, "data.test_size", _generator(seed, 1))
    noisy_indices = no_noise()
    if cfg.label_noise > 0:
        labels, noisy_indices = label_noise(train.y, cfg.label_noise, _generator(seed, 2))
        train = replace(train, y=labels)
    if isinstance(train, TensorSplit) and train.is_image:
        mean, std = _channel_stats(train.x)
        train, test = replace(train, mean=mean, std=std), replace(test, mean=mean, std=std)
    return Data(train.to(device), test.to(device), data.num_classes, data.input_shape, noisy_indices)
