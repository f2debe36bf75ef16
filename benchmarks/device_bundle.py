"""Fill .device/ for a GPU machine without a package index: pinned wheels, Fashion-MNIST and the MNIST-1D cache.

    python benchmarks/device_bundle.py [--out .device] [--fashion-mnist-train 20000]     (make device-bundle)

.device/
  wheels/            benchmarks/device_requirements.txt for CPython 3.11-3.13, manylinux x86_64 (pure wheels once)
  requirements.txt   that list, which benchmarks/gpu_check.py installs with --no-index --no-deps
  fashion-mnist/     Fashion-MNIST's IDX .gz files (Debian's dataset-fashion-mnist): the test split as published, the
                     train split's first --fashion-mnist-train examples (60000: as published)
  data/mnist1d/      the generated MNIST-1D split: generating it needs scipy and matplotlib, which are not bundled
  manifest.json      every file's size, what was cut or slimmed, and the totals

Why cut anything: the device tool sends at most 64 MiB, the working tree (18 MiB, mostly reports/) and this folder
together. All of Fashion-MNIST (29 MiB) and the wheels (27 MiB) would not fit beside the tree. So the train split
stops at 20,000 images (8 MiB) and three wheels drop files the studies' static reports never load: panel's 26 MB of
bundled JS/CSS for its server templates, holoviews' examples, bokeh's TypeScript compiler for custom extensions,
tests and source maps. RECORD loses their lines; nothing else changes. A study run in a venv holding only these
wheels (`PYTHON=<that venv's python> benchmarks/gpu_check.sh --dry-run`) shows what remains suffices.
"""

from __future__ import annotations

import argparse
import fnmatch
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "benchmarks" / "device_requirements.txt"
PYTHONS = ("3.11.5", "3.12", "3.13")  # lotterylab needs 3.11, soupsieve 3.11.5; the H200 machine had 3.12.3
PLATFORMS = ("manylinux2014_x86_64", "manylinux1_x86_64", "manylinux2010_x86_64",
             *(f"manylinux_2_{minor}_x86_64" for minor in (5, 12, 17, 24, 26, 27, 28)))
SLIM = {  # wheel name prefix -> members dropped
    "panel-": ("panel/dist/bundled/*", "panel/tests/*", "*.map"),
    "holoviews-": ("holoviews/examples/*", "holoviews/tests/*"),
    "bokeh-": ("bokeh/server/static/js/compiler.js", "bokeh/server/static/lib/*", "*.map"),
}
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_TRAIN = 20_000  # of 60,000: what fits (module docstring)
BUNDLE_LIMIT_MIB = 60
TRAVEL_LIMIT_MIB = 64  # the device tool's cap on the working tree it sends, carried folders included
MIB = 2**20


def download(wheels: Path) -> None:
    """Every pinned wheel for every Python in PYTHONS; a pure wheel is downloaded once and reused."""
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    for version in PYTHONS:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--implementation", "cp", "--python-version", version, *platforms,
                        "--dest", str(wheels), "--requirement", str(REQUIREMENTS)], check=True)


def slim(wheel: Path, drop: tuple[str, ...]) -> int:
    """Rewrite `wheel` without the members matching `drop` and without their RECORD lines; returns the bytes saved."""
    def dropped(name: str) -> bool:
        return any(fnmatch.fnmatch(name, pattern) for pattern in drop)

    before, temp = wheel.stat().st_size, wheel.with_suffix(".partial")
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(temp, "w", zipfile.ZIP_DEFLATED) as target:
        for item in source.infolist():
            if dropped(item.filename):
                continue
            content = source.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = content.decode().splitlines(keepends=True)
                content = "".join(line for line in lines if not dropped(line.split(",")[0])).encode()
            target.writestr(item, content)
    os.replace(temp, wheel)
    return before - wheel.stat().st_size


def copy_fashion_mnist(source: Path, target: Path, train_examples: int) -> None:
    """The four IDX .gz files; the train pair (images and labels) cut to its first `train_examples` examples."""
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*-ubyte.gz")):
        if not path.name.startswith("train-") or train_examples >= 60_000:
            shutil.copyfile(path, target / path.name)
            continue
        with gzip.open(path) as file:
            raw = file.read()
        ndim = raw[3]  # header: 0, 0, 0x08 (uint8), ndim, then ndim big-endian uint32 sizes
        sizes = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
        start, per_example = 4 + 4 * ndim, math.prod(sizes[1:])
        header = raw[:4] + train_examples.to_bytes(4, "big") + raw[8:start]
        with gzip.GzipFile(target / path.name, "wb", mtime=0) as file:  # mtime 0: the same bytes on every rebuild
            file.write(header + raw[start : start + train_examples * per_example])


def mnist1d_cache(data_root: Path) -> None:
    """Generate (or reuse) the MNIST-1D split where lotterylab's loader looks for it under data.root."""
    from lotterylab.core import config, data

    data.load(config.DataConfig(name="mnist1d", root=str(data_root)), seed=0)


def tree_bytes() -> int | None:
    """Bytes of what the device tool sends besides carried folders: tracked and untracked, not ignored, files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True)
    if listed.returncode != 0:  # not a git checkout: the tree's size is unknown
        return None
    names = listed.stdout.decode().split("\0")
    return sum((ROOT / name).stat().st_size for name in names if name and (ROOT / name).is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / ".device")
    parser.add_argument("--fashion-mnist", type=Path, default=FASHION_MNIST, help="folder of the four IDX .gz files")
    parser.add_argument("--fashion-mnist-train", type=int, default=FASHION_MNIST_TRAIN,
                        help=f"train examples bundled (default {FASHION_MNIST_TRAIN:,}; 60000: all, as published)")
    args = parser.parse_args()
    sources = sorted(args.fashion_mnist.glob("*-ubyte.gz"))
    if len(sources) != 4:
        sys.exit(f"device_bundle: {args.fashion_mnist} lacks the four Fashion-MNIST .gz files "
                 "(apt-get install dataset-fashion-mnist, or --fashion-mnist DIR)")
    wheels = args.out / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)  # no stale version beside a pinned one
    wheels.mkdir(parents=True)
    download(wheels)
    slimmed = {wheel.name: slim(wheel, drop) for wheel in sorted(wheels.glob("*.whl"))
               for prefix, drop in SLIM.items() if wheel.name.startswith(prefix)}
    shutil.copyfile(REQUIREMENTS, args.out / "requirements.txt")
    copy_fashion_mnist(args.fashion_mnist, args.out / "fashion-mnist", args.fashion_mnist_train)
    mnist1d_cache(args.out / "data")

    files = {str(path.relative_to(args.out)): path.stat().st_size
             for path in sorted(args.out.rglob("*")) if path.is_file() and path.name != "manifest.json"}
    bundle, tree = sum(files.values()), tree_bytes()
    manifest = {"pythons": list(PYTHONS), "bundle_mib": round(bundle / MIB, 2),
                "tree_mib": None if tree is None else round(tree / MIB, 2),
                "fashion_mnist_train_examples": min(args.fashion_mnist_train, 60_000),
                "slimmed_bytes_saved": slimmed, "files": files}
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"{args.out}: {bundle / MIB:.1f} MiB ({len(list(wheels.glob('*.whl')))} wheels, Fashion-MNIST, MNIST-1D)")
    if tree is not None:
        print(f"with the {tree / MIB:.1f} MiB working tree: {(bundle + tree) / MIB:.1f} MiB of the "
              f"{TRAVEL_LIMIT_MIB} MiB the device tool sends")
    if bundle > BUNDLE_LIMIT_MIB * MIB:
        sys.exit(f"device_bundle: {bundle / MIB:.1f} MiB is over the {BUNDLE_LIMIT_MIB} MiB limit")
    if tree is not None and bundle + tree > TRAVEL_LIMIT_MIB * MIB:
        print(f"device_bundle: warning: tree and bundle exceed the {TRAVEL_LIMIT_MIB} MiB the device tool sends",
              file=sys.stderr)


if __name__ == "__main__":
    main()
