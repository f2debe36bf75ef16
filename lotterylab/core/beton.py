"""ImageNet from FFCV .beton files (data.decode 'ffcv', the `imagenet` extra): ffcv decodes and crops on CPU threads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from lotterylab.core.config import ConfigError, DataConfig
from lotterylab.core.data import IMAGENET_MEAN, IMAGENET_STD, Data, StreamedSplit, no_noise, one_line

IMAGE_FIELD, LABEL_FIELD = "image", "label"
"""Field names written by ffcv-imagenet's writer: an RGBImageField and an IntField."""


@dataclass(eq=False)
class BetonSplit(StreamedSplit):
    """A .beton file (or a subset of its rows) read by ffcv's Loader; normalization happens on the device."""

    path: str
    rows: Tensor  # int64 (N,): the file's rows in this split, ascending
    y: Tensor  # int64 (N,), the labels of those rows, on the CPU
    image_size: int
    workers: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices: Tensor) -> BetonSplit:
        return replace(self, rows=self.rows[indices], y=self.y[indices])

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None, augment: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalized (x float32, y int64) batches on the device, in an order drawn from `generator` (in order if None).

        ffcv's random crops and flips use numba's own unseeded generators: the order follows the seed, they do not.
        With `shard` = (rank, world), every rank draws the same order and keeps rows rank::world of each batch.
        """
        threads = torch.get_num_threads()  # ffcv sets torch's threads to its worker count: import, Loader, epoch
        from ffcv.fields.decoders import CenterCropRGBImageDecoder, IntDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

        rank, world = shard
        if batch_size % world:
            raise ValueError(f"data.batch_size: {batch_size} does not split evenly over {world} ranks with ffcv")
        order = torch.arange(len(self)) if generator is None else torch.randperm(len(self), generator=generator)
        # ffcv batches the given rows in the given order: this rank's rows of each whole batch, batch after batch.
        mine = torch.cat([order[start : start + batch_size][rank::world] for start in range(0, len(self), batch_size)])
        size = (self.image_size, self.image_size)
        if augment:
            image = [RandomResizedCropRGBImageDecoder(size), RandomHorizontalFlip()]
        else:
            image = [CenterCropRGBImageDecoder(size, ratio=224 / 256)]
        to_device = ToDevice(self.device, non_blocking=True)
        loader = Loader(
            self.path, batch_size=batch_size // world, num_workers=max(1, self.workers), order=OrderOption.SEQUENTIAL,
            indices=self.rows[mine].numpy(), drop_last=False,
            pipelines={
                IMAGE_FIELD: [*image, ToTensor(), to_device, ToTorchImage()],  # uint8 (B, 3, S, S), channels_last
                LABEL_FIELD: [IntDecoder(), ToTensor(), Squeeze(1), to_device],
            },
        )
        mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        for x, y in loader:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            yield (x.float() / 255 - mean) / std, y.long()
        torch.set_num_threads(threads)


def _split(path: Path, cfg: DataConfig) -> BetonSplit:
    from ffcv.reader import Reader

    if not path.is_file():
        raise ConfigError(f"data.root: {path} does not exist")
    try:
        reader = Reader(str(path))
    except Exception as error:  # noqa: BLE001 - ffcv raises assertion and value errors alike for a bad header
        raise ConfigError(f"{path}: unreadable .beton file ({one_line(error)})") from None
    names = list(reader.handlers)
    if IMAGE_FIELD not in names or LABEL_FIELD not in names:
        raise ConfigError(f"{path}: needs fields {IMAGE_FIELD!r} and {LABEL_FIELD!r}, has {names}")
    labels = torch.from_numpy(reader.metadata[f"f{names.index(LABEL_FIELD)}"].astype("int64"))
    return BetonSplit(str(path), torch.arange(len(labels)), labels, cfg.image_size, cfg.workers)


def imagenet(cfg: DataConfig) -> Data:
    """data.root/train.beton and val.beton, as ffcv-imagenet's writer makes them."""
    threads = torch.get_num_threads()
    try:
        import ffcv  # noqa: F401
    except ImportError:
        raise ConfigError("data.decode: 'ffcv' needs the ffcv package (pip install 'lotterylab[imagenet]')") from None
    finally:
        torch.set_num_threads(threads)  # importing ffcv sets torch to one thread
    if cfg.label_noise > 0:
        raise ConfigError("data.label_noise: not supported with data.decode 'ffcv' (labels come from the .beton)")
    root = Path(cfg.root)
    train, test = _split(root / "train.beton", cfg), _split(root / "val.beton", cfg)
    num_classes = int(max(train.y.max(), test.y.max())) + 1
    return Data(train, test, num_classes, (3, cfg.image_size, cfg.image_size), no_noise())
