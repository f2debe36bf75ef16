"""Datasets as in-memory tensor splits (or an image-folder stream), seeded subsets, label noise and GPU augmentation."""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import random
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lotterylab.config import ConfigError, DataConfig

# torchvision (several seconds to import) and mnist1d (pulls in matplotlib) are imported inside the loaders that need
# them: config validation imports this module for DATASETS and must stay fast.

PAD = 4
"""Zero padding of the random crop, in pixels."""

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's dataset-fashion-mnist package installs the original IDX files."""

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def crop_and_flip(x: Tensor, shifts: Tensor, flips: Tensor) -> Tensor:
    """Apply drawn crop offsets and flips to (B, C, H, W) images on x's device."""
    batch, channels, height, width = x.shape
    shifts, flips = shifts.to(x.device), flips.to(x.device)
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


@dataclass(eq=False)
class TensorSplit:
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

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

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
        normalize = self.is_image and self.mean is not None
        if normalize:
            mean = self.mean.to(device).view(1, -1, 1, 1)
            std = self.std.to(device).view(1, -1, 1, 1)
        for start in range(0, len(self), batch_size):
            index = order[start : start + batch_size]
            if augment and self.is_image:
                shifts, flips = augmentation_draws(len(index), generator)
            index = index[rank::world]
            x, y = self.x[index], self.y[index]
            if self.is_image:
                if augment:
                    x = crop_and_flip(x, shifts[:, rank::world], flips[rank::world])  # uint8: less memory traffic
                x = x.float() / 255
                if normalize:
                    x = (x - mean) / std
            yield x, y


@dataclass(eq=False)
class FolderSplit:
    """Image files streamed through a DataLoader: decoding and crops on CPU workers, normalization on the device."""

    paths: list[str]
    y: Tensor  # int64 (N,), on the CPU
    image_size: int
    workers: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def is_image(self) -> bool:
        return True

    def to(self, device: torch.device | str) -> FolderSplit:
        return replace(self, device=torch.device(device))

    def subset(self, indices: Tensor) -> FolderSplit:
        return replace(self, paths=[self.paths[i] for i in indices.tolist()], y=self.y[indices])

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, augment: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalized (x float32, y int64) batches; shuffled by a seed drawn from `generator`, sequential if None.

        With `shard` = (rank, world), every rank draws the same order and keeps rows rank::world of each batch.
        """
        from torchvision import transforms
        from torchvision.datasets.folder import default_loader

        if augment:
            crop = [transforms.RandomResizedCrop(self.image_size), transforms.RandomHorizontalFlip()]
        else:
            crop = [transforms.Resize(int(self.image_size * 256 / 224)), transforms.CenterCrop(self.image_size)]
        # Workers ship uint8 tensors; the float conversion happens on the device, as for tensor splits.
        transform = transforms.Compose([*crop, transforms.PILToTensor()])
        dataset = _ImageFiles(self.paths, self.y.tolist(), transform, default_loader)
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
        loader = torch.utils.data.DataLoader(
            dataset,
            **sampling,
            generator=loader_generator,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
        )
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        for x, y in loader:
            x = x.to(self.device, non_blocking=True).float() / 255
            yield (x - mean) / std, y.to(self.device, non_blocking=True)


class DataError(ValueError):
    """A data file that cannot be read; the message is one line naming the file."""


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
            raise DataError(f"{self.paths[index]}: unreadable image ({_one_line(error)})") from None
        return self.transform(image), self.labels[index]


@dataclass(eq=False)
class Data:
    """A dataset ready for training: splits on the device plus what the model needs to know."""

    train: TensorSplit | FolderSplit
    test: TensorSplit | FolderSplit
    num_classes: int
    input_shape: tuple[int, ...]  # per-example shape given to the model
    noisy_indices: Tensor  # int64 indices into train whose labels were permuted, on the CPU; empty without noise


def _no_noise() -> Tensor:
    return torch.empty(0, dtype=torch.int64)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write through a temp file in the same directory, so an interrupted run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _mnist1d(cfg: DataConfig) -> Data:
    cache = Path(cfg.root or default_root()) / "mnist1d" / "mnist1d.npz"
    try:
        with np.load(cache) as arrays:
            arrays = {key: arrays[key] for key in ("x", "y", "x_test", "y_test")}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # absent or damaged cache: regenerate it
        arrays = _generate_mnist1d()
        _atomic_write(cache, lambda file: np.savez(file, **arrays))
    # (N, L) -> (N, 1, L): one channel, as the 1-D convolutional models expect
    train, test = (
        TensorSplit(torch.from_numpy(arrays[x]).float().unsqueeze(1), torch.from_numpy(arrays[y]).long())
        for x, y in (("x", "y"), ("x_test", "y_test"))
    )
    return Data(train, test, 10, tuple(train.x.shape[1:]), _no_noise())


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


def _fashion_mnist(cfg: DataConfig) -> Data:
    import torchvision

    root = Path(cfg.root) if cfg.root else FASHION_MNIST_ROOT
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} does not exist")
    sources = [root / name for name in FASHION_MNIST_FILES]
    for source in sources:
        if not source.is_file():
            raise ConfigError(f"{source}: missing Fashion-MNIST file")
    # torchvision wants the files unpacked under ROOT/FashionMNIST/raw. The cache is keyed on the sources' paths, sizes
    # and times, so pointing data.root elsewhere (or replacing the files) never reads a stale copy.
    stamp = "|".join(f"{s.resolve()}:{s.stat().st_size}:{s.stat().st_mtime_ns}" for s in sources)
    cache = default_root() / "fashion_mnist" / hashlib.sha256(stamp.encode()).hexdigest()[:16]
    for source in sources:
        target = cache / "FashionMNIST" / "raw" / source.name.removesuffix(".gz")
        if not target.is_file():
            _gunzip(source, target)
        _check_idx(target, source)
    splits = []
    for train in (True, False):
        try:
            dataset = torchvision.datasets.FashionMNIST(str(cache), train=train, download=False)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise ConfigError(f"{root}: unreadable Fashion-MNIST files ({_one_line(error)})") from None
        splits.append(TensorSplit(dataset.data.unsqueeze(1), dataset.targets.long()))  # (N, 28, 28) -> (N, 1, 28, 28)
    return Data(splits[0], splits[1], len(dataset.classes), (1, 28, 28), _no_noise())


def _gunzip(source: Path, target: Path) -> None:
    def write(file: BinaryIO) -> None:
        with gzip.open(source, "rb") as packed:
            shutil.copyfileobj(packed, file)

    try:
        _atomic_write(target, write)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ConfigError(f"{source}: corrupt gzip file ({_one_line(error)})") from None


def _check_idx(path: Path, source: Path) -> None:
    """An IDX file holds exactly the uint8 payload its header announces (magic 0x0800 + ndim, then the sizes)."""
    with open(path, "rb") as file:
        head = file.read(4)
        ndim = head[3] if len(head) == 4 and head[:3] == b"\x00\x00\x08" else 0
        dims = file.read(4 * ndim)
    if ndim == 0 or len(dims) != 4 * ndim:
        raise ConfigError(f"{source}: not an IDX uint8 file (bad header)")
    expected = 4 + 4 * ndim + math.prod(int.from_bytes(dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
    if path.stat().st_size != expected:
        raise ConfigError(f"{source}: truncated or padded IDX file ({path.stat().st_size} bytes, header says {expected})")


class _CheckedCIFAR:
    """Mixin over torchvision's CIFAR10/CIFAR100: MD5s only when asked, and errors that name the offending file."""

    checked = False  # set on the per-load subclass, so the MD5s are read once, not once per torchvision call

    def __init__(self, root: str, train: bool, download: bool, verify: bool) -> None:
        self.verify = verify
        super().__init__(root, train=train, download=download)

    @classmethod
    def files(cls) -> list[tuple[str, str]]:
        """(file name, torchvision's MD5) of every file in the dataset folder."""
        return [*map(tuple, cls.train_list), *map(tuple, cls.test_list), (cls.meta["filename"], cls.meta["md5"])]

    def _check_integrity(self) -> bool:
        # False (absent) lets download=True fetch the files; a wrong MD5 is an error rather than a silent overwrite.
        if type(self).checked:
            return True
        folder = Path(self.root) / self.base_folder
        for name, md5 in self.files():
            path = folder / name
            if not path.is_file():
                return False
            if self.verify:
                with open(path, "rb") as file:
                    actual = hashlib.file_digest(file, "md5").hexdigest()
                if actual != md5:
                    raise ConfigError(f"{path}: MD5 {actual} is not torchvision's {md5} (data.verify: false skips it)")
        type(self).checked = True
        return True

    def _load_meta(self) -> None:
        # torchvision's version checks the MD5 unconditionally; _check_integrity has already done what was asked.
        with open(Path(self.root) / self.base_folder / self.meta["filename"], "rb") as file:
            self.classes = pickle.load(file, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}


def _cifar(cfg: DataConfig, base_name: str) -> Data:
    import torchvision

    cifar = type(base_name, (_CheckedCIFAR, getattr(torchvision.datasets, base_name)), {})
    root = Path(cfg.root) if cfg.root else default_root() / "cifar"
    folder = root / cifar.base_folder
    missing = [name for name, _ in cifar.files() if not (folder / name).is_file()]
    if missing and not cfg.download:
        raise ConfigError(f"data.root: {folder} lacks {missing[0]} (data.download: true fetches CIFAR)")
    splits = []
    for train in (True, False):
        try:
            dataset = cifar(str(root), train, cfg.download, cfg.verify)
        except ConfigError:
            raise
        except (pickle.UnpicklingError, EOFError, AttributeError, KeyError, IndexError, TypeError, ValueError) as error:
            raise _corrupt_cifar(folder, [name for name, _ in cifar.files()], error) from None
        x = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        splits.append(TensorSplit(x, torch.tensor(dataset.targets, dtype=torch.int64)))
    return Data(splits[0], splits[1], len(dataset.classes), (3, 32, 32), _no_noise())


def _corrupt_cifar(folder: Path, names: list[str], error: Exception) -> ConfigError:
    """Name the first file that does not unpickle to a dict; torchvision's loading loop does not say which failed."""
    for name in names:
        try:
            with open(folder / name, "rb") as file:
                entry = pickle.load(file, encoding="latin1")
        except Exception as file_error:  # noqa: BLE001 - any failure to unpickle means the file is corrupt
            return ConfigError(f"{folder / name}: corrupt CIFAR file ({_one_line(file_error)})")
        if not isinstance(entry, dict):
            return ConfigError(f"{folder / name}: corrupt CIFAR file (holds a {type(entry).__name__}, not a dict)")
    return ConfigError(f"{folder}: unreadable CIFAR files ({_one_line(error)})")


def _imagenet(cfg: DataConfig) -> Data:
    if cfg.root is None:
        raise ConfigError("data.root: required for imagenet")
    root = Path(cfg.root)
    train_classes, train = _image_folder(root / "train", cfg)
    test_classes, test = _image_folder(root / "val", cfg)
    if test_classes != train_classes:
        raise ConfigError(f"{root / 'val'}: class folders differ from those in {root / 'train'}")
    return Data(train, test, len(train_classes), (3, cfg.image_size, cfg.image_size), _no_noise())


def _image_folder(directory: Path, cfg: DataConfig) -> tuple[list[str], FolderSplit]:
    import torchvision

    if not directory.is_dir():
        raise ConfigError(f"data.root: {directory} does not exist")
    try:
        folder = torchvision.datasets.ImageFolder(str(directory))
    except FileNotFoundError as error:
        raise ConfigError(f"{directory}: {_one_line(error)}") from None
    paths = [path for path, _ in folder.samples]
    labels = torch.tensor(folder.targets, dtype=torch.int64)
    return folder.classes, FolderSplit(paths, labels, cfg.image_size, cfg.workers)


def _synthetic(cfg: DataConfig) -> Data:
    shape = tuple(cfg.shape)
    # Fixed seeds, one per split: the data never depends on the run seed, and the test set not on train_size.
    splits = [
        _random_split(size, shape, cfg.num_classes, torch.Generator().manual_seed(seed))
        for seed, size in ((0, cfg.train_size or 50_000), (1, cfg.test_size or 10_000))
    ]
    return Data(splits[0], splits[1], cfg.num_classes, shape, _no_noise())


def _random_split(size: int, shape: tuple[int, ...], num_classes: int, generator: torch.Generator) -> TensorSplit:
    if len(shape) == 3:
        x = torch.randint(0, 256, (size, *shape), dtype=torch.uint8, generator=generator)
    else:
        x = torch.randn((size, *shape), generator=generator)
    return TensorSplit(x, torch.randint(0, num_classes, (size,), generator=generator))


DATASETS: dict[str, Callable[[DataConfig], Data]] = {
    "mnist1d": _mnist1d,
    "fashion_mnist": _fashion_mnist,
    "cifar10": lambda cfg: _cifar(cfg, "CIFAR10"),
    "cifar100": lambda cfg: _cifar(cfg, "CIFAR100"),
    "imagenet": _imagenet,
    "synthetic": _synthetic,
}


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
    if cfg.name not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.name!r}; valid: {', '.join(sorted(DATASETS))}")
    data = DATASETS[cfg.name](cfg)
    train = _subset(data.train, cfg.train_size, "data.train_size", _generator(seed, 0))
    test = _subset(data.test, cfg.test_size, "data.test_size", _generator(seed, 1))
    noisy_indices = _no_noise()
    if cfg.label_noise > 0:
        labels, noisy_indices = label_noise(train.y, cfg.label_noise, _generator(seed, 2))
        train = replace(train, y=labels)
    if isinstance(train, TensorSplit) and train.is_image:
        mean, std = _channel_stats(train.x)
        train, test = replace(train, mean=mean, std=std), replace(test, mean=mean, std=std)
    return Data(train.to(device), test.to(device), data.num_classes, data.input_shape, noisy_indices)
