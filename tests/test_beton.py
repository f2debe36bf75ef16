"""Tests of lotterylab.core.beton on tiny .beton files written by ffcv's own DatasetWriter (the real on-disk format)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from lotterylab.core import data, imagenet
from lotterylab.core.config import ConfigError, DataConfig

_threads = torch.get_num_threads()
ffcv = pytest.importorskip("ffcv", reason="ffcv is not installed (the `imagenet` extra)")
torch.set_num_threads(_threads)  # importing ffcv sets torch to one thread, which would change every later test
pytestmark = pytest.mark.slow  # every ffcv Loader compiles its pipeline with numba: about ten seconds each here


def _colour(label: int, index: int) -> tuple[int, int, int]:
    """Solid colour: red or blue at 255 by label, green coding the index, so each image is recognisable after a crop."""
    return (255, 20 + 20 * index, 0) if label == 0 else (0, 20 + 20 * index, 255)


class _Images:
    """An indexed dataset of (PIL image, label), the input ffcv-imagenet's writer takes."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return Image.new("RGB", (48 + 8 * index, 40), _colour(index % 2, index)), index % 2


def write_betons(root: Path, train: int, val: int) -> None:
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    for name, count in (("train", train), ("val", val)):
        fields = {"image": RGBImageField(write_mode="jpg", max_resolution=64, jpeg_quality=95), "label": IntField()}
        DatasetWriter(str(root / f"{name}.beton"), fields, num_workers=1).from_indexed_dataset(_Images(count))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("betons")
    write_betons(root, train=6, val=4)
    return root


def _load(root: Path, **fields) -> data.Data:
    return data.load(DataConfig(name="imagenet", root=str(root), decode="ffcv", image_size=32, workers=1, **fields), 0)


def _rgb(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(imagenet.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(imagenet.IMAGENET_STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).mean((2, 3))


def test_eval_batches_are_normalized_centre_crops_in_file_order(root: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # not ffcv's worker count (1), so a change would show
    try:
        loaded = _load(root)
        list(loaded.test.batches(3))
        assert torch.get_num_threads() == 3, "ffcv's thread setting leaked into torch"
    finally:
        torch.set_num_threads(threads)
    assert (loaded.num_classes, loaded.input_shape, len(loaded.train), len(loaded.test)) == (2, (3, 32, 32), 6, 4)
    assert loaded.train.y.tolist() == [0, 1, 0, 1, 0, 1]
    batches = list(loaded.test.batches(3))
    assert [len(y) for _, y in batches] == [3, 1]  # the last partial batch is kept
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    assert y.tolist() == [0, 1, 0, 1]
    expected = torch.tensor([_colour(i % 2, i) for i in range(4)]).float()
    torch.testing.assert_close(_rgb(x), expected, atol=4.0, rtol=0)


def _order(split, seed: int, shard: tuple[int, int] = (0, 1)) -> list[int]:
    """Image indices (decoded from green) in the order one augmented epoch yields them."""
    seen = []
    for x, y in split.batches(2, torch.Generator().manual_seed(seed), augment=True, shard=shard):
        assert x.shape == (len(y), 3, 32, 32)
        seen += [round((g - 20) / 20) for g in _rgb(x)[:, 1].tolist()]
    return seen


def test_training_order_follows_the_generator(root: Path) -> None:
    train = _load(root).train
    orders = [_order(train, seed) for seed in (0, 0, 1, 2)]
    assert all(sorted(order) == list(range(6)) for order in orders)
    assert orders[0] == orders[1] and len({tuple(order) for order in orders}) > 1
    ranks = [_order(train, 0, (rank, 2)) for rank in range(2)]
    assert ranks[0] == orders[0][0::2] and ranks[1] == orders[0][1::2]


def test_subsets_take_the_seeded_rows(root: Path) -> None:
    loaded = _load(root, train_size=3)
    assert len(loaded.train) == 3 and loaded.train.y.tolist() == [i % 2 for i in loaded.train.rows.tolist()]
    assert sorted(_order(loaded.train, 0)) == loaded.train.rows.tolist()


def test_bad_configs_are_one_line_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^data.label_noise: "):
        _load(root, label_noise=0.2)
    with pytest.raises(ConfigError, match=f"^data.root: {tmp_path / 'train.beton'} does not exist$"):
        _load(tmp_path)
    (tmp_path / "train.beton").write_bytes(b"not a beton file")
    (tmp_path / "val.beton").write_bytes((root / "val.beton").read_bytes())
    with pytest.raises(ConfigError) as error:
        _load(tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'train.beton'}: unreadable .beton file (") and "\n" not in message
