"""Run hashes: a config's canonical form, and the defaults it is pinned against.

A field is left out of the canonical form when its value equals its *pinned* default: the default it had when
hashes were pinned (2026-11-30), or when the field was added. So adding a field with a default keeps every hash,
while changing a field's default changes the hash of every config that relied on it: its value no longer equals
the pinned one. A field added later gets a line here (tests/test_hashing.py checks that every hashed field has one).
A field marked `{"hashed": False}` never enters the hash; one marked `{"hashed_as": "run"}` names a run (a run
directory or a YAML config) and enters the hash as that run's hash, so moving a runs folder changes nothing.
A criterion section (lotterylab.core.criterion_options) enters as its name, with its options beside it under their
flat keys (`mask.criterion: snip`, `mask.score_batches: 4`): the form configs had before criteria owned their options,
so their hashes stand.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lotterylab.core import criterion_options

PINNED_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data.name": "mnist1d", "data.batch_size": 128, "data.augment": True, "data.label_noise": 0.0,
    "data.train_size": None, "data.test_size": None, "data.shape": [3, 32, 32], "data.num_classes": 10,
    "data.image_size": 224, "data.decode": "device",
    "model.name": "mlp", "model.width": None, "model.depth": None, "model.width_mult": 1.0,
    "model.init": "kaiming_normal",
    "optimizer.lr": 0.1, "optimizer.momentum": 0.9, "optimizer.weight_decay": 0.0001, "optimizer.nesterov": False,
    "schedule.name": "step_warmup", "schedule.epochs": 150, "schedule.warmup_epochs": 0.0,
    "schedule.milestones": [70 / 150, 130 / 150], "schedule.gamma": 0.1, "schedule.final_lr": 0.0,
    "schedule.step": "iteration", "schedule.warmup": "linear", "schedule.warmup_factor": 0.1,
    "mask.sparsity": 0.0, "mask.criterion": "random", "mask.allocation": "auto", "mask.prune_first": True,
    "mask.prune_last": True, "mask.score_batches": 1, "mask.score_batch_size": 512, "mask.grasp_temperature": 200.0,
    "mask.synflow_rounds": 100,
    "method.name": "dense", "method.cycles": 1, "method.prune_fraction": 0.2, "method.rewind_epoch": 0,
    "method.targets": [], "method.prune_criterion": "magnitude", "method.source": None, "method.source_level": -1,
    "method.init": "random", "method.init_level": 0, "method.flip_fraction": 0.2,
    "method.score_batches": 1, "method.score_batch_size": 512, "method.grasp_temperature": 200.0,  # SCULPT's one-shot
    "method.synflow_rounds": 100,  # criterion's options, added 2026-11-30 (before, it read the mask's flat keys)
    "train.bf16": False, "train.channels_last": False, "train.compile": False, "train.deterministic": False,
    "train.sync_batchnorm": False,
}


def _extra(field: Any) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def section_models(annotation: Any) -> list[type[BaseModel]]:
    """The section models a field's annotation holds: itself, or each member of a union (the method section)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in section_models(arg)]


def leaf_fields(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo]]:
    """Every leaf field of a config model as (`section.field`, its FieldInfo); a field that several method models
    share comes once per model."""
    for name, field in model.model_fields.items():
        members = section_models(field.annotation)
        if not members:
            yield f"{prefix}{name}", field
        for member in members:
            yield from leaf_fields(member, f"{prefix}{name}.")


def hash_path(path: str, field: FieldInfo) -> str:
    """The name a leaf field has in the hash: its path, but a criterion's name as the criterion field itself and its
    options under their flat keys beside it (`mask.criterion.name` -> `mask.criterion`, `mask.criterion.batches` ->
    `mask.score_batches`)."""
    key = criterion_options.flat_key(field)
    if key is None:
        return path
    criterion = path.rsplit(".", 1)[0]
    return criterion if key == "" else f"{criterion.rsplit('.', 1)[0]}.{key}"


def hashed_paths(model: type[BaseModel]) -> dict[str, Any]:
    """Every hashed field of a config model, as its hash path -> its current default (the first model's)."""
    out: dict[str, Any] = {}
    for path, field in leaf_fields(model):
        if _extra(field).get("hashed", True):
            out.setdefault(hash_path(path, field), field.default)
    return out


def _criterion(section: BaseModel, field: str, prefix: str, default_name: str) -> dict[str, Any]:
    """A criterion's canonical entries: its name under `field`, its options under their flat keys."""
    out: dict[str, Any] = {}
    if section.name != PINNED_DEFAULTS.get(f"{prefix}{field}", default_name):
        out[field] = section.name
    for name, info in type(section).model_fields.items():
        key, value = criterion_options.flat_key(info), getattr(section, name)
        if key and value != PINNED_DEFAULTS.get(f"{prefix}{key}", info.default):
            out[key] = value
    return out


def run_directory_identity(run: str) -> str:
    """The hash of the run a field names, when the field names a run directory: its name."""
    return Path(run).name


def canonical(section: BaseModel, prefix: str = "", run_identity: Callable[[str], str] = run_directory_identity,
              ) -> dict[str, Any]:
    """The settings that define a run: hashed fields whose value differs from the pinned default. A field hashed as
    a run enters as `run_identity(value)` (lotterylab.core.config also resolves a YAML config to its run hash)."""
    out: dict[str, Any] = {}
    for name, field in type(section).model_fields.items():
        value, path = getattr(section, name), f"{prefix}{name}"
        if isinstance(value, criterion_options.CriterionOptions):
            out.update(_criterion(value, name, prefix, field.default.name))
            continue
        if isinstance(value, BaseModel):
            nested = canonical(value, f"{path}.", run_identity)
            if nested:
                out[name] = nested
            continue
        extra = _extra(field)
        if not extra.get("hashed", True) or value == PINNED_DEFAULTS.get(path, field.default):
            continue
        out[name] = run_identity(value) if extra.get("hashed_as") == "run" and value is not None else value
    return out


def digest(section: BaseModel, run_identity: Callable[[str], str] = run_directory_identity) -> str:
    """A stable 16-hex-digit digest of the canonical form."""
    text = json.dumps(canonical(section, run_identity=run_identity), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
