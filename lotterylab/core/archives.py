"""Fashion-MNIST and CIFAR read from their published files (gzipped IDX, pickled batches), bad files named."""

from __future__ import annotations

import gzip
import hashlib
import math
import pickle
import zlib
from pathlib import Path

import torch

from lotterylab.core import files
from lotterylab.core.config import ConfigError, DataConfig
from lotterylab.core.data import Data, TensorSplit, default_root, no_noise, one_line
from lotterylab.core.registry import DATASETS

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's dataset-fashion-mnist package installs the original IDX files."""

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: DataConfig) -> Data:
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
            raise ConfigError(f"{root}: unreadable Fashion-MNIST files ({one_line(error)})") from None
        splits.append(TensorSplit(dataset.data.unsqueeze(1), dataset.targets.long()))  # (N, 28, 28) -> (N, 1, 28, 28)
    return Data(splits[0], splits[1], len(dataset.classes), (1, 28, 28), no_noise())


def _gunzip(source: Path, target: Path) -> None:
    try:
        unpacked = gzip.decompress(source.read_bytes())
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise ConfigError(f"{source}: corrupt gzip file ({one_line(error)})") from None
    files.atomic_write(target, unpacked)


def _check_idx(path: Path, source: Path) -> None:
    """An IDX file holds exactly the uint8 payload its header announces (magic 0x0800 + ndim, then the sizes)."""
    with open(path, "rb") as file:
        head = file.read(4)
        ndim = head[3] if len(head) == 4 and head[:3] == b"\x00\x00\x08" else 0
        dims = file.read(4 * ndim)
    if ndim == 0 or len(dims) != 4 * ndim:
        raise ConfigError(f"{source}: not an IDX uint8 file (bad header)")
    expected = 4 + 4 * ndim + math.prod(int.from_bytes(dims[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
    size = path.stat().st_size
    if size != expected:
        raise ConfigError(f"{source}: truncated or padded IDX file ({size} bytes, header says {expected})")


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
    lacks = f"data.root: {folder} lacks {', '.join(missing)}"
    if missing and not cfg.download:
        raise ConfigError(f"{lacks}; data.download: true fetches them (needs network)")
    splits = []
    for train in (True, False):
        try:
            dataset = cifar(str(root), train, cfg.download, cfg.verify)
        except ConfigError:
            raise
        except OSError as error:  # urllib's URLError and socket errors are OSErrors
            if not missing:
                raise
            fetch = f"data.download needs network and could not fetch them ({one_line(error)})"
            raise ConfigError(f"{lacks}; {fetch}") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, KeyError, IndexError, TypeError, ValueError) as error:
            raise _corrupt_cifar(folder, [name for name, _ in cifar.files()], error) from None
        x = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
        splits.append(TensorSplit(x, torch.tensor(dataset.targets, dtype=torch.int64)))
    return Data(splits[0], splits[1], len(dataset.classes), (3, 32, 32), no_noise())


def _corrupt_cifar(folder: Path, names: list[str], error: Exception) -> ConfigError:
    """Name the first file that does not unpickle to a dict; torchvision's loading loop does not say which failed."""
    for name in names:
        try:
            with open(folder / name, "rb") as file:
                entry = pickle.load(file, encoding="latin1")
        except Exception as file_error:  # noqa: BLE001 - any failure to unpickle means the file is corrupt
            return ConfigError(f"{folder / name}: corrupt CIFAR file ({one_line(file_error)})")
        if not isinstance(entry, dict):
            return ConfigError(f"{folder / name}: corrupt CIFAR file (holds a {type(entry).__name__}, not a dict)")
    return ConfigError(f"{folder}: unreadable CIFAR files ({one_line(error)})")


@DATASETS.register("cifar10")
def cifar10(cfg: DataConfig) -> Data:
    return _cifar(cfg, "CIFAR10")


@DATASETS.register("cifar100")
def cifar100(cfg: DataConfig) -> Data:
    return _cifar(cfg, "CIFAR100")
