"""Planning a study's grid: run configs built from a base dict and named axes, each validated before anything runs,
and where each point's run lives."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lotterylab.core import config, paths
from lotterylab.core.config import Config

Axis = dict[Any, dict[str, Any]]  # coordinate value -> overrides, as dotted config paths ("mask.sparsity": 0.9)


@dataclass(frozen=True)
class Point:
    """One run of a study: where it sits in the study's dims, and its validated config."""

    coords: dict[str, Any]
    config: Config


def values(path: str, items: Iterable[Any]) -> Axis:
    """An axis that sets one config field; each value is also its coordinate."""
    return {item: {path: item} for item in items}


def sparsities(levels: Iterable[float], method: str = "pai") -> Axis:
    """A `sparsity` axis: 0 is the dense method, every other level `method` at that sparsity."""
    return {
        float(level): {"method.name": method, "mask.sparsity": float(level)} if level else
        {"method.name": "dense", "mask.sparsity": 0.0}
        for level in levels
    }


def _set(raw: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise config.ConfigError(f"{path}: {part} is not a section")
    node[leaf] = copy.deepcopy(value)


def grid(base: dict[str, Any], axes: dict[str, Axis], source: str = "study") -> list[Point]:
    """Every combination of the axes applied to `base` (later axes win), validated before anything runs."""
    points = []
    for combination in itertools.product(*(axis.items() for axis in axes.values())):
        raw = copy.deepcopy(base)
        coords = {}
        for dim, (coordinate, overrides) in zip(axes, combination):
            coords[dim] = coordinate
            for path, value in overrides.items():
                _set(raw, path, value)
        where = ", ".join(f"{dim}={value}" for dim, value in coords.items())
        points.append(Point(coords, config.from_dict(raw, f"{source} [{where}]")))
    return points


def run_dir(point: Point, runs_root: str | Path) -> Path:
    """A point's run directory, absolute: a coupled run names its source by it, and must not hash a relative path."""
    return paths.run_dir(Path(runs_root), point.config.run_hash()).resolve()
