"""Tests of lotterylab.core.imagenet: ImageFolder JPEGs decoded on the device (or by PIL), crops, seeding and bad
files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lotterylab.core import data, imagenet
from lotterylab.core.config import DataConfig

CLASSES = {"n01": 0, "n02": 2}  # folder -> the channel at 255 in its images
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _colour(channel: int, index: int) -> tuple[int, int, int]:
    """A solid colour that identifies the image: its class channel at 255 and the green channel coding its index."""
    rgb = [0, 40 * index + 20, 0]
    rgb[channel] = 255
    return tuple(rgb)


def write_folders(root: Path, per_split: dict[str, int]) -> None:
    """ImageFolder layout, train/<class>/*.JPEG and val/<class>/*.JPEG, images of differing sizes and aspect ratios."""
    for split, count in per_split.items():
        for folder, channel in CLASSES.items():
            (root / split / folder).mkdir(parents=True)
            for index in range(count):
                image = Image.new("RGB", (48 + 16 * index, 40 + 4 * index), _colour(channel, index))
                image.save(root / split / folder / f"{folder}_{index}.JPEG", quality=95)


def _loaded(root: Path, decode: str = "device", workers: int = 0) -> data.Data:
    return data.load(DataConfig(name="imagenet", root=str(root), image_size=32, workers=workers, decode=decode), seed=0)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean RGB in [0, 255] of a normalized batch."""
    mean = torch.tensor(imagenet.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(imagenet.IMAGENET_STD).view(1, 3, 1, 1)
    return ((x.cpu() * std + mean) * 255).mean((2, 3))


@pytest.mark.parametrize("decode", ["device", "pil"])
def test_eval_batches_are_normalized_centre_crops_in_folder_order(tmp_path: Path, decode: str) -> None:
    write_folders(tmp_path, {"train": 3, "val": 2})
    loaded = _loaded(tmp_path, decode)
    assert isinstance(loaded.test, imagenet.FolderSplit) and loaded.test.decode == decode
    assert (loaded.num_classes, loaded.input_shape, len(loaded.train), len(loaded.test)) == (2, (3, 32, 32), 6, 4)
    batches = list(loaded.test.batches(3))
    assert [len(y) for _, y in batches] == [3, 1]
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    assert y.tolist() == [0, 0, 1, 1]
    expected = torch.tensor([_colour(channel, i) for channel in CLASSES.values() for i in range(2)]).float()
    torch.testing.assert_close(_rgb(x), expected, atol=4.0, rtol=0)  # a solid-colour JPEG decodes near exact


def _epoch(split: imagenet.FolderSplit, seed: int, shard: tuple[int, int] = (0, 1)) -> list[tuple[torch.Tensor, ...]]:
    return [(x, y) for x, y in split.batches(4, torch.Generator().manual_seed(seed), augment=True, shard=shard)]


def test_training_batches_follow_the_generator(tmp_path: Path) -> None:
    write_folders(tmp_path, {"train": 4, "val": 1})
    train = _loaded(tmp_path).train
    first, again, other = _epoch(train, 0), _epoch(train, 0), _epoch(train, 1)
    assert [x.shape for x, _ in first] == [(4, 3, 32, 32), (4, 3, 32, 32)]
    for (x, y), (x_again, y_again) in zip(first, again):
        assert torch.equal(x, x_again) and torch.equal(y, y_again)
    assert any(not torch.equal(x, x_other) for (x, _), (x_other, _) in zip(first, other))
    labels = torch.cat([y for _, y in first])
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4
    # Every crop keeps the solid colour of the image it came from, so crops never mix images or classes.
    identity = torch.cat([_rgb(x) for x, _ in first])
    assert torch.all((identity[:, 0] > 250) == (labels == 0)) and torch.all((identity[:, 2] > 250) == (labels == 1))


def _identities(x: torch.Tensor, y: torch.Tensor) -> list[tuple[int, int]]:
    """(label, image index decoded from the green channel) of each example in a batch."""
    return [(label, round((green - 20) / 40)) for label, green in zip(y.tolist(), _rgb(x)[:, 1].tolist())]


def test_sharded_ranks_split_every_batch_between_them(tmp_path: Path) -> None:
    write_folders(tmp_path, {"train": 3, "val": 1})
    train = _loaded(tmp_path).train
    ranks = [_epoch(train, 5, (rank, 2)) for rank in range(2)]
    assert [len(y) for _, y in ranks[0]] == [2, 1] and [len(y) for _, y in ranks[1]] == [2, 1]  # batches of 4, 2
    seen = [example for epoch in ranks for x, y in epoch for example in _identities(x, y)]
    assert sorted(seen) == [(label, index) for label in range(2) for index in range(3)]


def test_workers_give_the_same_batches(tmp_path: Path) -> None:
    write_folders(tmp_path, {"train": 2, "val": 1})
    inline, workers = _epoch(_loaded(tmp_path).train, 3), _epoch(_loaded(tmp_path, workers=2).train, 3)
    for (x, y), (x_workers, y_workers) in zip(inline, workers, strict=True):
        assert torch.equal(x, x_workers) and torch.equal(y, y_workers)


def test_crop_boxes_by_hand() -> None:
    sizes = torch.tensor([[100, 100], [10, 1000], [100, 100]])
    draws = torch.zeros(3, 2 * imagenet.ATTEMPTS + 3, dtype=torch.float64)
    draws[2, : imagenet.ATTEMPTS] = 1.0  # the whole area ...
    draws[2, imagenet.ATTEMPTS : 2 * imagenet.ATTEMPTS] = 0.5  # ... at ratio 1
    boxes = imagenet.crop_boxes(sizes, draws)
    # 100x100 at area 0.08 and ratio 3/4: w = round(sqrt(800 * 0.75)) = 24, h = round(sqrt(800 / 0.75)) = 33, top-left.
    # 10x1000 never fits a crop of area >= 800 with height <= 10: the whole height, width 10 * 4/3, centred.
    assert boxes.tolist() == [[0, 0, 33, 24], [0, 493, 10, 13], [0, 0, 100, 100]]


def test_random_resized_crop_draws_stay_inside_the_image() -> None:
    generator = torch.Generator().manual_seed(0)
    sizes = torch.randint(8, 400, (500, 2), generator=generator)
    top, left, height, width = imagenet.crop_boxes(sizes, imagenet.crop_draws(500, generator)).T
    assert torch.all((top >= 0) & (left >= 0) & (height > 0) & (width > 0))
    assert torch.all((top + height <= sizes[:, 0]) & (left + width <= sizes[:, 1]))


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("content", [b"\xff\xd8\xff\xe0 not a jpeg at all", b""])
def test_a_bad_jpeg_is_one_line_naming_the_file(tmp_path: Path, workers: int, content: bytes) -> None:
    write_folders(tmp_path, {"train": 2, "val": 1})
    broken = tmp_path / "train" / "n02" / "n02_1.JPEG"
    broken.write_bytes(content)
    with pytest.raises(data.DataError) as error:
        for _ in _loaded(tmp_path, workers=workers).train.batches(4, torch.Generator().manual_seed(0), augment=True):
            pass
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{broken}: unreadable image (")


def test_a_png_named_jpeg_is_still_read(tmp_path: Path) -> None:
    write_folders(tmp_path, {"train": 1, "val": 1})
    disguised = tmp_path / "val" / "n01" / "n01_0.JPEG"
    Image.new("L", (50, 40), 128).save(disguised, format="PNG")  # greyscale PNG: ImageNet has such files
    x, y = next(_loaded(tmp_path).test.batches(2))
    torch.testing.assert_close(_rgb(x)[0], torch.full((3,), 128.0), atol=1.0, rtol=0)


@gpu
def test_cuda_decode_matches_cpu_decode(tmp_path: Path) -> None:
    write_folders(tmp_path, {"train": 2, "val": 2})
    cpu = _loaded(tmp_path).test
    x_cpu, y_cpu = next(cpu.batches(4))
    x_gpu, y_gpu = next(cpu.to("cuda").batches(4))
    assert x_gpu.is_cuda and torch.equal(y_gpu.cpu(), y_cpu)
    torch.testing.assert_close(_rgb(x_gpu), _rgb(x_cpu), atol=3.0, rtol=0)  # nvjpeg and libjpeg round differently
