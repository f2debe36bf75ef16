"""Tests of lotterylab.core.data: loaders on tiny on-disk datasets, subsets, label noise, batching and augmentation."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lotterylab.core import data, imagenet
from lotterylab.core.config import ConfigError, DataConfig

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def data_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every cache a test writes goes to its own tmp directory, never the user's home."""
    home = tmp_path / "cache"
    monkeypatch.setenv("LOTTERYLAB_DATA", str(home))
    return home


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _one_line_error(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# --- CIFAR, written in the real on-disk layout ---------------------------------------------------------------------

# The real files are Python 2 pickles whose keys load as str under encoding="latin1"; protocol-2 str keys load the same.
CIFAR_LAYOUTS = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": 3}),
        "label_keys": ("labels",),
        "classes": 10,
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", {"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": ["c"] * 20}),
        "label_keys": ("fine_labels", "coarse_labels"),
        "classes": 100,
    },
}


def _write_pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar(root: Path, name: str, per_file: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny CIFAR tree under root; returns the (N, 3, 32, 32) pixels and labels written for each split."""
    layout = CIFAR_LAYOUTS[name]
    folder = root / layout["folder"]
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for split in ("train", "test"):
        pixels, labels = [], []
        for file_name in layout[split]:
            rows = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)  # each row: 1024 R, 1024 G, 1024 B
            file_labels = rng.integers(0, layout["classes"], per_file).tolist()
            entry = {"batch_label": file_name, "data": rows, "filenames": [f"{i}.png" for i in range(per_file)]}
            entry.update({key: file_labels for key in layout["label_keys"]})
            _write_pickle(folder / file_name, entry)
            pixels.append(rows.reshape(per_file, 3, 32, 32))
            labels.extend(file_labels)
        written[split] = (np.concatenate(pixels), np.array(labels))
    meta_name, meta = layout["meta"]
    _write_pickle(folder / meta_name, meta)
    return written


def cifar_config(name: str, root: Path, **overrides) -> DataConfig:
    return DataConfig(name=name, root=str(root), download=False, verify=False, **overrides)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_round_trips_pixels_and_labels(tmp_path: Path, name: str) -> None:
    written = write_cifar(tmp_path, name)
    loaded = data.load(cifar_config(name, tmp_path), seed=0)
    for split, (pixels, labels) in zip((loaded.train, loaded.test), (written["train"], written["test"])):
        assert split.x.dtype == torch.uint8 and split.y.dtype == torch.int64
        assert torch.equal(split.x, torch.from_numpy(pixels))
        assert torch.equal(split.y, torch.from_numpy(labels))
    assert loaded.num_classes == CIFAR_LAYOUTS[name]["classes"]
    assert loaded.input_shape == (3, 32, 32)
    assert len(loaded.noisy_indices) == 0
    train_pixels = torch.from_numpy(written["train"][0]).double() / 255
    torch.testing.assert_close(loaded.train.mean, train_pixels.mean((0, 2, 3)).float())
    torch.testing.assert_close(loaded.train.std, train_pixels.std((0, 2, 3), unbiased=False).float())
    assert loaded.test.mean is loaded.train.mean  # test is normalized with the train statistics


def test_cifar_statistics_come_from_the_subset(tmp_path: Path) -> None:
    write_cifar(tmp_path, "cifar10")
    full = data.load(cifar_config("cifar10", tmp_path), seed=0)
    part = data.load(cifar_config("cifar10", tmp_path, train_size=5, test_size=2), seed=0)
    assert len(part.train) == 5 and len(part.test) == 2
    pixels = part.train.x.double() / 255
    torch.testing.assert_close(part.train.mean, pixels.mean((0, 2, 3)).float())
    assert not torch.allclose(part.train.mean, full.train.mean)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_cifar_corrupt_file_is_named(tmp_path: Path, damage: str) -> None:
    write_cifar(tmp_path, "cifar10")
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2] if damage == "truncated" else b"not a pickle at all" * 10)
    with pytest.raises(ConfigError) as error:
        data.load(cifar_config("cifar10", tmp_path), seed=0)
    message = _one_line_error(error)
    assert message.startswith(str(path)) and "corrupt CIFAR file" in message


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_verify_names_a_file_with_a_wrong_md5(tmp_path: Path, name: str) -> None:
    write_cifar(tmp_path, name)
    folder = tmp_path / CIFAR_LAYOUTS[name]["folder"]
    with pytest.raises(ConfigError) as error:
        data.load(cifar_config(name, tmp_path).model_copy(update={"verify": True}), seed=0)
    message = _one_line_error(error)
    assert any(message.startswith(str(path)) for path in folder.iterdir()) and "MD5" in message


def test_cifar_missing_directory_without_download(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        data.load(cifar_config("cifar10", tmp_path / "absent"), seed=0)
    assert str(tmp_path / "absent" / "cifar-10-batches-py") in _one_line_error(error)


# --- ImageFolder (imagenet layout) ---------------------------------------------------------------------------------

IMAGE_CLASSES = {"a_red": 0, "b_blue": 2}  # class folder -> the colour channel at full intensity


def _colour(channel: int, index: int) -> tuple[int, int, int]:
    """A solid colour that identifies the image: its class channel at 255 and the green channel coding its index."""
    rgb = [0, 40 * index + 20, 0]
    rgb[channel] = 255
    return tuple(rgb)


def write_image_folder(root: Path, per_class: dict[str, int]) -> None:
    for split, count in per_class.items():
        for folder, channel in IMAGE_CLASSES.items():
            (root / split / folder).mkdir(parents=True)
            for index in range(count):
                image = Image.new("RGB", (48 + 8 * index, 40), _colour(channel, index))
                image.save(root / split / folder / f"{index}.jpg", quality=95)


def _decode(x: torch.Tensor) -> torch.Tensor:
    """Per-image mean RGB in [0, 255] of a normalized batch."""
    mean = torch.tensor(imagenet.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(imagenet.IMAGENET_STD).view(1, 3, 1, 1)
    return ((x * std + mean) * 255).mean((2, 3))


def test_image_folder_batches(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"train": 3, "val": 2})
    cfg = DataConfig(name="imagenet", root=str(tmp_path), image_size=32, workers=0)
    loaded = data.load(cfg, seed=0)
    assert (loaded.num_classes, loaded.input_shape) == (2, (3, 32, 32))
    assert (len(loaded.train), len(loaded.test)) == (6, 4)
    assert loaded.train.is_image and loaded.train.num_batches(4) == 2

    batches = list(loaded.test.batches(3))
    assert [len(y) for _, y in batches] == [3, 1]
    x = torch.cat([x for x, _ in batches])
    y = torch.cat([y for _, y in batches])
    assert x.dtype == torch.float32 and x.shape == (4, 3, 32, 32) and y.dtype == torch.int64
    colours = _decode(x)
    expected = torch.tensor([_colour(channel, i) for channel in IMAGE_CLASSES.values() for i in range(2)]).float()
    torch.testing.assert_close(colours, expected, atol=4.0, rtol=0)  # JPEG of a solid colour is near exact
    assert y.tolist() == [0, 0, 1, 1]  # folder classes in sorted order


def _epoch_identities(split: imagenet.FolderSplit, seed: int) -> list[tuple[int, int]]:
    """(label, image index decoded from the green channel) of each example, in the order one epoch yields them."""
    seen = []
    for x, y in split.batches(4, _seeded(seed), augment=True):
        assert x.shape[1:] == (3, 32, 32)
        green = _decode(x)[:, 1]
        seen += [(label, round((g - 20) / 40)) for label, g in zip(y.tolist(), green.tolist())]
    return seen


def test_image_folder_shuffle_is_a_seeded_permutation(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"train": 3, "val": 1})
    loaded = data.load(DataConfig(name="imagenet", root=str(tmp_path), image_size=32, workers=0), seed=0)
    orders = {seed: _epoch_identities(loaded.train, seed) for seed in (0, 0, 1, 2, 3)}
    assert all(sorted(order) == [(c, i) for c in range(2) for i in range(3)] for order in orders.values())
    assert orders[0] == _epoch_identities(loaded.train, 0)
    assert len({tuple(order) for order in orders.values()}) > 1


def test_imagenet_root_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^data.root: required for imagenet$"):
        data.load(DataConfig(name="imagenet"), seed=0)
    with pytest.raises(ConfigError) as error:
        data.load(DataConfig(name="imagenet", root=str(tmp_path / "absent")), seed=0)
    assert str(tmp_path / "absent" / "train") in _one_line_error(error)


# --- Fashion-MNIST -------------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Reference IDX reader: big-endian header (magic, then one count per dimension), then uint8 data."""
    raw = gzip.decompress(path.read_bytes())
    dims = raw[3]
    shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def write_fashion(root: Path, train: int, test: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(root / f"{name}.gz", array)
    return arrays


def assert_fashion_matches(loaded: data.Data, root: Path) -> None:
    for split, prefix in ((loaded.train, "train"), (loaded.test, "t10k")):
        images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
        assert split.x.dtype == torch.uint8 and split.x.shape == (len(images), 1, 28, 28)
        assert torch.equal(split.x[:, 0], torch.from_numpy(images.copy()))
        assert torch.equal(split.y, torch.from_numpy(labels.astype(np.int64)))


@pytest.mark.skipif(not FASHION_ROOT.is_dir(), reason=f"{FASHION_ROOT} absent (Debian package dataset-fashion-mnist)")
def test_fashion_mnist_from_the_debian_files() -> None:
    loaded = data.load(DataConfig(name="fashion_mnist"), seed=0)
    assert (len(loaded.train), len(loaded.test)) == (60000, 10000)
    assert (loaded.input_shape, loaded.num_classes) == ((1, 28, 28), 10)
    assert_fashion_matches(loaded, FASHION_ROOT)


def test_fashion_mnist_unpacks_tiny_idx_files(tmp_path: Path, data_home: Path) -> None:
    root = tmp_path / "idx"
    write_fashion(root, train=7, test=4, seed=0)
    loaded = data.load(DataConfig(name="fashion_mnist", root=str(root)), seed=0)
    assert_fashion_matches(loaded, root)
    assert len(list(data_home.glob("**/FashionMNIST/raw/train-images-idx3-ubyte"))) == 1
    # New files at the same root must be read, not the copy unpacked from the old ones.
    write_fashion(root, train=5, test=3, seed=1)
    assert_fashion_matches(data.load(DataConfig(name="fashion_mnist", root=str(root)), seed=0), root)


def test_fashion_mnist_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        data.load(DataConfig(name="fashion_mnist", root=str(tmp_path / "absent")), seed=0)
    assert _one_line_error(error) == f"data.root: {tmp_path / 'absent'} does not exist"
    write_fashion(tmp_path, train=2, test=2, seed=0)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ConfigError) as error:
        data.load(DataConfig(name="fashion_mnist", root=str(tmp_path)), seed=0)
    assert _one_line_error(error).startswith(str(tmp_path / "t10k-labels-idx1-ubyte.gz"))


# --- MNIST-1D ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist1d_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, data.Data, float, float]:
    """Generate MNIST-1D once into a module cache; also return a numpy draw after loading and the one expected."""
    root = tmp_path_factory.mktemp("mnist1d")
    np.random.seed(1234)
    expected = np.random.random()
    np.random.seed(1234)
    loaded = data.load(DataConfig(name="mnist1d", root=str(root)), seed=0)
    return root, loaded, np.random.random(), expected


def test_mnist1d_shapes_and_global_rng_untouched(mnist1d_root) -> None:
    root, loaded, draw, expected = mnist1d_root
    assert loaded.train.x.shape == (4000, 1, 40) and loaded.test.x.shape == (1000, 1, 40)
    assert loaded.train.x.dtype == torch.float32 and loaded.train.y.dtype == torch.int64
    assert (loaded.num_classes, loaded.input_shape) == (10, (1, 40))
    assert not loaded.train.is_image and loaded.train.mean is None
    assert set(loaded.train.y.tolist()) == set(range(10))
    assert draw == expected  # mnist1d reseeds numpy's global generator; the loader must undo that


def test_mnist1d_second_load_reads_the_npz_cache(mnist1d_root, monkeypatch: pytest.MonkeyPatch) -> None:
    import mnist1d.data

    root, first, _, _ = mnist1d_root
    cache = root / "mnist1d" / "mnist1d.npz"
    with np.load(cache) as arrays:  # a plain npz: loads without pickle
        assert torch.equal(torch.from_numpy(arrays["x"]).float().unsqueeze(1), first.train.x)

    def refuse(*args, **kwargs):
        raise AssertionError("regenerated although the cache exists")

    monkeypatch.setattr(mnist1d.data, "make_dataset", refuse)
    second = data.load(DataConfig(name="mnist1d", root=str(root)), seed=0)
    for a, b in ((first.train, second.train), (first.test, second.test)):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_subsets_are_seeded_sorted_and_checked(mnist1d_root) -> None:
    root, full, _, _ = mnist1d_root
    cfg = DataConfig(name="mnist1d", root=str(root), train_size=100, test_size=50)
    part = data.load(cfg, seed=1)
    assert (len(part.train), len(part.test)) == (100, 50)
    # Locate each subset row in the full split: rows are distinct real-valued signals.
    rows = full.train.x.flatten(1)
    indices = torch.tensor([int((rows == row).all(1).nonzero()[0, 0]) for row in part.train.x.flatten(1)])
    assert torch.all(indices[1:] > indices[:-1])
    assert torch.equal(part.train.y, full.train.y[indices])
    assert torch.equal(data.load(cfg, seed=1).train.x, part.train.x)
    assert not torch.equal(data.load(cfg, seed=2).train.x, part.train.x)
    with pytest.raises(ConfigError, match="^data.train_size: "):
        data.load(cfg.model_copy(update={"train_size": 4001}), seed=0)


# --- label noise ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_label_noise_is_balanced_and_confined(fraction: float) -> None:
    labels = torch.randint(0, 10, (503,), generator=_seeded(5))
    original = labels.clone()
    noisy, indices = data.label_noise(labels, fraction, _seeded(0))
    assert torch.equal(labels, original)
    assert len(indices) == round(fraction * len(labels))
    assert indices.dtype == torch.int64 and torch.all(indices[1:] > indices[:-1])
    assert torch.equal(torch.bincount(noisy, minlength=10), torch.bincount(labels, minlength=10))
    clean = torch.ones(len(labels), dtype=torch.bool)
    clean[indices] = False
    assert torch.equal(noisy[clean], labels[clean])
    if len(indices) >= 50:
        assert (noisy[indices] != labels[indices]).float().mean() > 0.5  # ten classes: most permuted labels change
    again, again_indices = data.label_noise(labels, fraction, _seeded(0))
    assert torch.equal(again, noisy) and torch.equal(again_indices, indices)


def test_label_noise_through_load() -> None:
    cfg = DataConfig(name="synthetic", shape=[3, 4, 4], train_size=1000, test_size=200, label_noise=0.2)
    noisy = data.load(cfg, seed=3)
    clean = data.load(cfg.model_copy(update={"label_noise": 0.0}), seed=3)
    assert len(noisy.noisy_indices) == 200 and len(clean.noisy_indices) == 0
    changed = (noisy.train.y != clean.train.y).nonzero()[:, 0]
    assert set(changed.tolist()) <= set(noisy.noisy_indices.tolist()) and len(changed) > 100
    assert torch.equal(torch.bincount(noisy.train.y), torch.bincount(clean.train.y))
    assert torch.equal(noisy.test.y, clean.test.y) and torch.equal(noisy.train.x, clean.train.x)
    assert torch.equal(data.load(cfg, seed=3).noisy_indices, noisy.noisy_indices)
    assert not torch.equal(data.load(cfg, seed=4).noisy_indices, noisy.noisy_indices)


# --- augmentation and batching -------------------------------------------------------------------------------------


def shifted(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Reference: out[:, r, c] = image[:, r + dy, c + dx], zero where that falls outside the image."""
    _, height, width = image.shape
    out = torch.zeros_like(image)
    out[:, max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)] = image[
        :, max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)
    ]
    return out


def _matching_moves(image: torch.Tensor, result: torch.Tensor) -> list[tuple[int, int, bool]]:
    moves = []
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            for flip in (False, True):
                candidate = shifted(image, dy, dx)
                if torch.equal(candidate.flip(-1) if flip else candidate, result):
                    moves.append((dy, dx, flip))
    return moves


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_augment_is_a_shift_and_flip_of_each_image(dtype: torch.dtype) -> None:
    x = torch.randint(1, 256, (48, 3, 8, 6), generator=_seeded(1)).to(dtype)
    out = data.augment(x, _seeded(0))
    assert out.shape == x.shape and out.dtype == dtype
    moves = [_matching_moves(image, result) for image, result in zip(x, out)]
    assert all(len(m) == 1 for m in moves)  # random non-zero pixels: exactly one (shift, flip) explains each
    used = {m[0] for m in moves}
    assert len(used) > 20 and {flip for _, _, flip in used} == {False, True}
    assert torch.equal(data.augment(x, _seeded(0)), out)
    assert not torch.equal(data.augment(x, _seeded(1)), out)


@gpu
def test_augment_does_not_depend_on_the_device() -> None:
    x = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=_seeded(1))
    assert torch.equal(data.augment(x.cuda(), _seeded(0)).cpu(), data.augment(x, _seeded(0)))


def _numbered_split(count: int) -> data.TensorSplit:
    """Image i holds the pixel value i % 256 everywhere and the label i, so a batch shows whether x and y align."""
    x = (torch.arange(count) % 256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    return data.TensorSplit(x, torch.arange(count), mean=torch.full((3,), 0.5), std=torch.full((3,), 0.25))


def _collect(split: data.TensorSplit, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*split.batches(10, **kwargs))
    return torch.cat(xs), torch.cat(ys)


def test_batches_sequential_covers_every_example_once() -> None:
    split = _numbered_split(103)
    assert split.num_batches(10) == 11
    assert [len(y) for _, y in split.batches(10)] == [10] * 10 + [3]
    x, y = _collect(split)
    assert torch.equal(y, torch.arange(103))
    torch.testing.assert_close(x, ((split.x.float() / 255 - 0.5) / 0.25))


def test_batches_shuffled_is_a_seeded_permutation() -> None:
    split = _numbered_split(103)
    x, y = _collect(split, generator=_seeded(0))
    assert torch.equal(y.sort().values, torch.arange(103)) and not torch.equal(y, torch.arange(103))
    pixel = (x[:, 0, 0, 0] * 0.25 + 0.5) * 255
    torch.testing.assert_close(pixel, (y % 256).float(), atol=1e-3, rtol=0)
    assert torch.equal(_collect(split, generator=_seeded(0))[1], y)
    assert not torch.equal(_collect(split, generator=_seeded(1))[1], y)


def test_batches_augment_images_but_not_signals() -> None:
    images = _numbered_split(30)
    x, _ = _collect(images, generator=_seeded(0), augment=True)
    zero = (0 - 0.5) / 0.25
    assert x.shape == (30, 3, 4, 4) and (x == zero).any()  # 4-pixel shifts of 4x4 images bring in zero padding
    signals = data.TensorSplit(torch.randn(30, 1, 40), torch.arange(30))
    x, y = _collect(signals, generator=_seeded(0), augment=True)
    assert torch.equal(x, signals.x[y])


@gpu
def test_batches_on_the_device_match_the_cpu() -> None:
    split = _numbered_split(50)
    on_cpu = _collect(split, generator=_seeded(0), augment=True)
    on_gpu = _collect(split.to("cuda"), generator=_seeded(0), augment=True)
    assert on_gpu[0].device.type == "cuda"
    torch.testing.assert_close(on_gpu[0].cpu(), on_cpu[0])
    assert torch.equal(on_gpu[1].cpu(), on_cpu[1])


# --- registry and synthetic ----------------------------------------------------------------------------------------


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(ValueError) as error:
        data.load(DataConfig.model_construct(name="nope"), seed=0)
    assert all(name in str(error.value) for name in data.DATASETS) and "'nope'" in str(error.value)
    with pytest.raises(ValueError, match="fashion_mnist"):
        DataConfig(name="nope")


@pytest.mark.parametrize("shape", [[3, 8, 8], [1, 5, 7], [20], [2, 16]])
def test_synthetic_shapes(shape: list[int]) -> None:
    cfg = DataConfig(name="synthetic", shape=shape, num_classes=5, train_size=300, test_size=100)
    loaded = data.load(cfg, seed=0)
    image = len(shape) == 3
    assert loaded.input_shape == tuple(shape) and loaded.num_classes == 5
    assert loaded.train.x.shape == (300, *shape) and loaded.test.x.shape == (100, *shape)
    assert loaded.train.x.dtype == (torch.uint8 if image else torch.float32)
    assert loaded.train.is_image == image and (loaded.train.mean is not None) == image
    assert set(loaded.train.y.tolist()) == set(range(5))
    assert torch.equal(data.load(cfg, seed=7).train.x, loaded.train.x)  # the data itself ignores the run seed
    x, y = next(loaded.train.batches(64, _seeded(0), augment=True))
    assert x.shape == (64, *shape) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_synthetic_default_sizes() -> None:
    loaded = data.load(DataConfig(name="synthetic", shape=[4]), seed=0)
    assert (len(loaded.train), len(loaded.test)) == (50000, 10000)


def test_default_root_follows_the_environment(data_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data.default_root() == data_home
    monkeypatch.delenv("LOTTERYLAB_DATA")
    assert data.default_root() == Path.home() / ".cache" / "lotterylab"


def test_truncated_idx_file_is_named(tmp_path: Path, data_home: Path) -> None:
    write_fashion(tmp_path, train=6, test=2, seed=0)
    images = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[: len(raw) - 100]))  # a valid gzip whose IDX payload is cut short
    with pytest.raises(ConfigError) as error:
        data.load(DataConfig(name="fashion_mnist", root=str(tmp_path)), seed=0)
    assert "train-images-idx3-ubyte" in _one_line_error(error)
    images.write_bytes(images.read_bytes()[:40])  # and a gzip stream cut short
    with pytest.raises(ConfigError) as error:
        data.load(DataConfig(name="fashion_mnist", root=str(tmp_path)), seed=0)
    assert "train-images-idx3-ubyte" in _one_line_error(error)


def test_unreadable_jpeg_in_an_image_folder_is_named(tmp_path: Path) -> None:
    write_image_folder(tmp_path, {"train": 2, "val": 1})
    broken = sorted((tmp_path / "train").glob("*/1.jpg"))[0]
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")
    loaded = data.load(DataConfig(name="imagenet", root=str(tmp_path), image_size=32, workers=0), seed=0)
    with pytest.raises(data.DataError) as error:
        for _ in loaded.train.batches(4, _seeded(0), augment=True):
            pass
    assert _one_line_error(error).startswith(f"{broken}: unreadable image")
