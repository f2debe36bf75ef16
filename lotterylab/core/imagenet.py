"""ImageNet-style image folders: workers read file bytes; JPEGs are decoded and cropped on the device, per batch."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lotterylab.core import beton
from lotterylab.core.config import ConfigError, DataConfig
from lotterylab.core.data import IMAGENET_MEAN, IMAGENET_STD, Data, DataError, StreamedSplit, no_noise, one_line
from lotterylab.core.registry import DATASETS

SCALE = (0.08, 1.0)
"""Random-resized-crop area range, as a fraction of the image (torchvision's default)."""
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))
"""Random-resized-crop aspect-ratio range, log-uniform (torchvision's default)."""
ATTEMPTS = 10
"""Crop draws per image before falling back to the whole image clamped to the ratio range, as torchvision does."""


@dataclass(eq=False)
class FolderSplit(StreamedSplit):
    """Image files streamed through a DataLoader; decoded on the device ('device') or by PIL in the workers ('pil')."""

    paths: list[str]
    y: Tensor  # int64 (N,), on the CPU
    image_size: int
    workers: int
    decode: str = "device"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Tensor) -> FolderSplit:
        return replace(self, paths=[self.paths[i] for i in indices.tolist()], y=self.y[indices])

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, augment: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalized (x float32, y int64) batches on the device; shuffled and cropped by `generator`, in order if None.

        Training crops are random-resized with a flip, evaluation crops a resize and centre crop.
        With `shard` = (rank, world), every rank draws the same order and keeps rows rank::world of each batch.
        """
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        crops = self._pil_batches if self.decode == "pil" else self._device_batches
        for x, y in crops(batch_size, generator, augment, shard):  # x: uint8 (B, 3, S, S) on the device
            yield (x.float() / 255 - mean) / std, y.to(self.device, non_blocking=True)

    def _loader(self, dataset: torch.utils.data.Dataset, batch_size: int, generator: torch.Generator | None,
                shard: tuple[int, int], collate: Callable | None = None) -> torch.utils.data.DataLoader:
        loader_generator = None
        if generator is not None:
            # The loader's own generator sets the order and, with workers, their seeds: both follow `generator`.
            loader_generator = torch.Generator().manual_seed(int(torch.randint(2**62, (), generator=generator)))
        sampling: dict[str, Any] = {"batch_size": batch_size, "shuffle": generator is not None}
        rank, world = shard
        if world > 1:
            shuffled = loader_generator is not None
            order = torch.randperm(len(self), generator=loader_generator) if shuffled else torch.arange(len(self))
            starts = range(0, len(self), batch_size)
            sampling = {"batch_sampler": [order[start : start + batch_size][rank::world].tolist() for start in starts]}
            if shuffled:  # worker seeds come from the loader's generator: give each rank its own crops and flips
                rank_seed = int(torch.randint(2**62, (), generator=loader_generator)) + rank
                loader_generator = torch.Generator().manual_seed(rank_seed)
        return torch.utils.data.DataLoader(
            dataset, **sampling, generator=loader_generator, num_workers=self.workers,
            pin_memory=self.device.type == "cuda", collate_fn=collate,
        )

    def _pil_batches(self, batch_size: int, generator: torch.Generator | None, augment: bool,
                     shard: tuple[int, int]) -> Iterator[tuple[Tensor, Tensor]]:
        from torchvision import transforms
        from torchvision.datasets.folder import default_loader

        if augment:
            crop = [transforms.RandomResizedCrop(self.image_size), transforms.RandomHorizontalFlip()]
        else:
            crop = [transforms.Resize(resize_size(self.image_size)), transforms.CenterCrop(self.image_size)]
        # Workers ship uint8 tensors; the float conversion happens on the device, as for tensor splits.
        transform = transforms.Compose([*crop, transforms.PILToTensor()])
        dataset = _ImageFiles(self.paths, self.y.tolist(), transform, default_loader)
        for x, y in self._loader(dataset, batch_size, generator, shard):
            yield x.to(self.device, non_blocking=True), y

    def _device_batches(self, batch_size: int, generator: torch.Generator | None, augment: bool,
                        shard: tuple[int, int]) -> Iterator[tuple[Tensor, Tensor]]:
        if augment and generator is None:
            raise ValueError("augmentation needs a generator")
        rank, world = shard
        loader = self._loader(_FileBytes(self.paths), batch_size, generator, shard, _collate_bytes)
        for start, (encoded, index) in zip(range(0, len(self), batch_size), loader):
            images = decode_images(encoded, [self.paths[i] for i in index.tolist()], self.device)
            if augment:
                # Drawn for the whole batch, as in one process, so every rank's generator stays in step.
                draws = crop_draws(min(batch_size, len(self) - start), generator)[rank::world]
                x = random_resized_crops(images, self.image_size, draws)
            else:
                x = center_crops(images, self.image_size)
            yield x, self.y[index]


class _ImageFiles(torch.utils.data.Dataset):
    """(image, label) pairs read from paths; a module-level class so DataLoader workers can unpickle it."""

    def __init__(self, paths: list[str], labels: list[int], transform: Callable, loader: Callable) -> None:
        self.paths, self.labels, self.transform, self.loader = paths, labels, transform, loader

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        try:
            image = self.loader(self.paths[index])
        except (OSError, ValueError, SyntaxError) as error:  # PIL raises all three for broken files
            raise DataError(f"{self.paths[index]}: unreadable image ({one_line(error)})") from None
        return self.transform(image), self.labels[index]


class _FileBytes(torch.utils.data.Dataset):
    """(encoded bytes as uint8 (L,), index) per file: all a worker does; decoding happens on the device."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        try:
            encoded = Path(self.paths[index]).read_bytes()
        except OSError:  # named by the main process when decoding fails: raised here it would arrive as a traceback
            encoded = b""
        if not encoded:  # frombuffer refuses an empty buffer
            return torch.empty(0, dtype=torch.uint8), index
        return torch.frombuffer(bytearray(encoded), dtype=torch.uint8), index


def _collate_bytes(items: list[tuple[Tensor, int]]) -> tuple[list[Tensor], Tensor]:
    """Keep the variable-length byte tensors as a list (decode_jpeg takes a list) and stack the indices."""
    return [encoded for encoded, _ in items], torch.tensor([index for _, index in items])


def _decoder_message(error: RuntimeError) -> str:
    """torchvision's decoder errors start with 'function, source.cpp:line, '; keep only what went wrong."""
    return re.sub(r"^\w+, \S+:\d+, ", "", one_line(error).removeprefix("RuntimeError: "))


def decode_images(encoded: list[Tensor], paths: list[str], device: torch.device) -> list[Tensor]:
    """Decode a batch of encoded files to RGB uint8 (3, H, W) tensors on `device`: JPEGs in one batched call.

    A batch the JPEG decoder refuses is decoded file by file (which also reads PNGs saved as .JPEG, as ImageNet has),
    and a file nothing can decode raises a DataError naming it.
    """
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    if all(len(data) for data in encoded):
        try:
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass
    images = []
    for data, path in zip(encoded, paths):
        if not len(data):
            raise DataError(f"{path}: unreadable image (empty or unreadable file)")
        try:
            images.append(decode_image(data, mode=ImageReadMode.RGB).to(device))
        except RuntimeError as error:
            raise DataError(f"{path}: unreadable image ({_decoder_message(error)})") from None
    return images


def crop_draws(batch: int, generator: torch.Generator) -> Tensor:
    """Uniform [0, 1) draws for a batch's random-resized crops and flips, (B, 2 * ATTEMPTS + 3), from `generator`."""
    return torch.rand(batch, 2 * ATTEMPTS + 3, dtype=torch.float64, generator=generator)


def crop_boxes(sizes: Tensor, draws: Tensor) -> Tensor:
    """Random-resized-crop boxes (top, left, height, width), int64 (B, 4), for images of (height, width) `sizes` (B, 2).

    torchvision's sampling (uniform area, log-uniform ratio, the first of ten that fits, else the whole image narrowed
    to the ratio range and centred), computed from `draws` (see crop_draws), so it does not depend on the device.
    """
    height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()  # (B, 1)
    area = height * width * (SCALE[0] + (SCALE[1] - SCALE[0]) * draws[:, :ATTEMPTS])  # (B, ATTEMPTS)
    ratio = (LOG_RATIO[0] + (LOG_RATIO[1] - LOG_RATIO[0]) * draws[:, ATTEMPTS : 2 * ATTEMPTS]).exp()
    offsets = draws[:, 2 * ATTEMPTS : 2 * ATTEMPTS + 2]  # (B, 2)
    crop_w, crop_h = (area * ratio).sqrt().round(), (area / ratio).sqrt().round()
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = fits.int().argmax(1, keepdim=True)  # the first attempt that fits
    crop_w, crop_h = crop_w.gather(1, first), crop_h.gather(1, first)  # (B, 1)
    aspect = width / height
    low, high = math.exp(LOG_RATIO[0]), math.exp(LOG_RATIO[1])
    whole_w = torch.where(aspect > high, (height * high).round(), width)
    whole_h = torch.where(aspect < low, (width / low).round(), height)
    found = fits.any(1, keepdim=True)
    crop_w, crop_h = torch.where(found, crop_w, whole_w), torch.where(found, crop_h, whole_h)
    top = torch.where(found, (offsets[:, 0:1] * (height - crop_h + 1)).floor(), ((height - crop_h) / 2).floor())
    left = torch.where(found, (offsets[:, 1:2] * (width - crop_w + 1)).floor(), ((width - crop_w) / 2).floor())
    return torch.cat([top, left, crop_h, crop_w], 1).long()


def random_resized_crops(images: list[Tensor], size: int, draws: Tensor) -> Tensor:
    """Random-resized crops to (size, size), each flipped when its last draw is below 1/2: uint8 (B, 3, size, size)."""
    import torchvision.transforms.v2.functional as TF

    boxes = crop_boxes(torch.tensor([image.shape[1:] for image in images]), draws).tolist()
    flips = (draws[:, -1] < 0.5).tolist()
    crops = []
    for image, (top, left, height, width), flip in zip(images, boxes, flips):
        crop = TF.resized_crop(image, top, left, height, width, [size, size], antialias=True)
        crops.append(TF.horizontal_flip(crop) if flip else crop)
    return torch.stack(crops)


def resize_size(size: int) -> int:
    """Evaluation resizes the shorter side to size * 256 / 224 before the centre crop (the standard recipe)."""
    return size * 256 // 224


def center_crops(images: list[Tensor], size: int) -> Tensor:
    """Shorter side resized to size * 256 / 224, then the central (size, size): uint8 (B, 3, size, size)."""
    import torchvision.transforms.v2.functional as TF

    resize = resize_size(size)
    return torch.stack([TF.center_crop(TF.resize(image, [resize], antialias=True), [size, size]) for image in images])


@DATASETS.register("imagenet")
def imagenet(cfg: DataConfig) -> Data:
    """ImageNet from data.root: train/ and val/ class folders, or train.beton and val.beton with data.decode 'ffcv'."""
    if cfg.root is None:
        raise ConfigError("data.root: required for imagenet")
    root = Path(cfg.root)
    if cfg.decode == "ffcv":
        return beton.imagenet(cfg)
    train_classes, train = _image_folder(root / "train", cfg)
    test_classes, test = _image_folder(root / "val", cfg)
    if test_classes != train_classes:
        raise ConfigError(f"{root / 'val'}: class folders differ from those in {root / 'train'}")
    return Data(train, test, len(train_classes), (3, cfg.image_size, cfg.image_size), no_noise())


def _image_folder(directory: Path, cfg: DataConfig) -> tuple[list[str], FolderSplit]:
    import torchvision

    if not directory.is_dir():
        raise ConfigError(f"data.root: {directory} does not exist")
    try:
        folder = torchvision.datasets.ImageFolder(str(directory))
    except FileNotFoundError as error:
        raise ConfigError(f"{directory}: {one_line(error)}") from None
    paths = [path for path, _ in folder.samples]
    labels = torch.tensor(folder.targets, dtype=torch.int64)
    return folder.classes, FolderSplit(paths, labels, cfg.image_size, cfg.workers, cfg.decode)
