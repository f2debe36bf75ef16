"""`lotterylab sweep PARAMS.yaml`: a base run config × grid axes, handed to the executor the file names.

The file holds three sections:
- `base`: one run's config (as in params/runs/*.yaml);
- `axes`: dim name -> either a list of values for the config field of that dotted name (`seed: [0, 1, 2]`,
  `mask.sparsity: [0.5, 0.9]`), or a mapping of coordinate -> overrides (`method: {lrr: {method.name: lrr}}`);
- `executor` (optional): `{name: local}` (the default) or `{name: slurm, partition: gpu, gpus_per_node: 1, ...}`,
  see `executors.SlurmParams`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lotterylab.core.config import ConfigError, read_yaml
from lotterylab.studies import grids
from lotterylab.training import executors

SECTIONS = ("base", "axes", "executor")


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file: its points and the executor it names (built, ready to call)."""

    points: list[grids.Point]
    executor: executors.Executor


def _axis(source: str, dim: str, spec: Any) -> grids.Axis:
    if isinstance(spec, list) and spec:
        return grids.values(dim, spec)
    if isinstance(spec, dict) and spec and all(isinstance(overrides, dict) for overrides in spec.values()):
        return spec
    raise ConfigError(f"{source}: axes.{dim}: expected a non-empty list of values or a mapping of coordinate -> "
                      f"overrides")


def load(path: str | Path, executor: str | None = None) -> Sweep:
    """Read and validate a sweep file; `executor` (a name or an executor YAML file) replaces its executor section."""
    path = Path(path)
    raw = read_yaml(path, "sweep")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {', '.join(SECTIONS)}")
    unknown = [key for key in raw if key not in SECTIONS]
    if unknown:
        raise ConfigError(f"{path}: {unknown[0]}: unknown section; valid: {', '.join(SECTIONS)}")
    for section in ("base", "axes"):
        if not isinstance(raw.get(section), dict):
            raise ConfigError(f"{path}: {section}: missing or not a mapping")
    axes = {str(dim): _axis(str(path), str(dim), spec) for dim, spec in raw["axes"].items()}
    points = grids.grid(raw["base"], axes, str(path))
    if executor:
        return Sweep(points, executors.from_params(executors.section(executor), executor))
    return Sweep(points, executors.from_params(raw.get("executor"), f"{path}: executor"))
