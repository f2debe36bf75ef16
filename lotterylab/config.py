"""Typed, strict run configuration: one section per concern, canonical YAML and the run hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lotterylab import hashing


class ConfigError(ValueError):
    """A config that cannot be run; the message is one line and names the field or file."""


def _unhashed(description: str) -> dict[str, Any]:
    """Field kwargs for a setting that changes how a run executes, never what it computes."""
    return {"description": description, "json_schema_extra": {"hashed": False}}


INT64 = 2**63
"""Integer fields lie in [-INT64, INT64): torch and numpy fail on larger seeds and sizes deep inside, in a traceback."""


class Section(BaseModel):
    """Base for config sections: unknown keys, wrong types, non-finite floats and integers beyond int64 are errors;
    values are immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _fits_int64(cls, value: Any) -> Any:
        for number in value if isinstance(value, list) else [value]:
            if type(number) is int and not -INT64 <= number < INT64:  # type(): a bool is an int too
                raise ValueError("out of range: must fit int64, in [-2**63, 2**63)")
        return value


def _check_registered(kind: str, name: str, valid: list[str]) -> str:
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
    return name


class DataConfig(Section):
    name: str = Field("mnist1d", description="dataset registry name")
    root: str | None = Field(None, **_unhashed("dataset directory; None picks the dataset's default location"))
    download: bool = Field(True, **_unhashed("download CIFAR if absent (torchvision)"))
    verify: bool = Field(True, **_unhashed("check CIFAR file checksums against torchvision's published MD5s"))
    batch_size: int = Field(128, gt=0, description="training batch size")
    test_batch_size: int = Field(1000, gt=0, **_unhashed("evaluation batch size"))
    augment: bool = Field(True, description="random crop (pad 4) and horizontal flip; applies to images only")
    label_noise: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of training labels permuted among themselves")
    train_size: int | None = Field(None, gt=0, description="use a seeded random subset of this many training examples")
    test_size: int | None = Field(None, gt=0, description="use a seeded random subset of this many test examples")
    shape: list[int] = Field([3, 32, 32], description="synthetic only: per-example shape")
    num_classes: int = Field(10, gt=1, description="synthetic only: number of classes")
    image_size: int = Field(224, gt=0, description="imagenet only: crop size")
    workers: int = Field(4, ge=0, **_unhashed("imagenet only: DataLoader worker processes"))
    decode: Literal["device", "pil", "ffcv"] = Field(
        "device", description="imagenet only: JPEGs decoded and cropped on the training device (workers read bytes), "
        "decoded and cropped by PIL in the workers, or train.beton/val.beton read by ffcv"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from lotterylab.data import DATASETS

        return _check_registered("dataset", name, list(DATASETS))


class ModelConfig(Section):
    name: str = Field("mlp", description="model registry name")
    width: int | None = Field(
        None, gt=0, le=2**20, description="mlp hidden units / cnn1d channels; None is the model default"
    )
    depth: int | None = Field(None, gt=0, le=1024, description="mlp hidden layers; None is the model default")
    width_mult: float = Field(
        1.0, gt=0.0, le=64.0, description="channel multiplier for resnet20, resnet18 (CIFAR) and vgg16"
    )
    init: Literal["kaiming_normal", "pytorch"] = Field("kaiming_normal", description="weight initialisation")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from lotterylab.models import MODELS

        return _check_registered("model", name, list(MODELS))


class OptimizerConfig(Section):
    lr: float = Field(0.1, gt=0.0, le=1e3, description="peak learning rate of a cycle")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="SGD weight decay")
    nesterov: bool = Field(False, description="Nesterov momentum")


class ScheduleConfig(Section):
    name: str = Field("step_warmup", description="LR schedule within one cycle")
    epochs: int = Field(150, gt=0, le=100_000, description="epochs per cycle")
    warmup_epochs: float = Field(0.0, ge=0.0, description="linear warmup length in epochs")
    milestones: list[float] = Field([70 / 150, 130 / 150], description="step_warmup: drop points, fractions of a cycle")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step_warmup: factor applied at each milestone")
    final_lr: float = Field(0.0, ge=0.0, le=1.0, description="one_cycle and cosine: final LR as a fraction of lr")
    step: Literal["iteration", "epoch"] = Field("iteration", description="update the LR every iteration or every epoch")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from lotterylab.schedules import SCHEDULES

        return _check_registered("schedule", name, list(SCHEDULES))

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, milestones: list[float]) -> list[float]:
        if any(not 0.0 < m < 1.0 for m in milestones) or milestones != sorted(milestones):
            raise ValueError("milestones must be increasing fractions of a cycle in (0, 1)")
        return milestones


class MaskConfig(Section):
    sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of prunable weights removed")
    criterion: str = Field("random", description="score used to choose the surviving weights")
    allocation: str = Field(
        "auto", description="layerwise sparsity allocation; 'auto' is balanced for random scores, else global"
    )
    prune_first: bool = Field(True, description="the first conv/linear layer is prunable")
    prune_last: bool = Field(True, description="the last conv/linear layer is prunable")
    score_batches: int = Field(1, gt=0, description="snip, grasp: training batches the scores are summed over")
    score_batch_size: int = Field(512, gt=0, description="snip, grasp: size of each scoring batch")
    grasp_temperature: float = Field(
        200.0, gt=0.0, le=1e6, description="grasp: logits are divided by this (the authors' T)"
    )
    synflow_rounds: int = Field(100, gt=0, description="synflow: pruning rounds (exponential density schedule)")

    @field_validator("criterion")
    @classmethod
    def _known_criterion(cls, name: str) -> str:
        from lotterylab.criteria import CRITERIA

        return _check_registered("criterion", name, list(CRITERIA))

    @field_validator("allocation")
    @classmethod
    def _known_allocation(cls, name: str) -> str:
        from lotterylab.masks import ALLOCATIONS

        return _check_registered("allocation", name, [*ALLOCATIONS, "auto"])

    def resolved_allocation(self) -> str:
        """The allocation actually used: random masks get balanced layerwise ratios, scored masks a global threshold."""
        if self.allocation != "auto":
            return self.allocation
        return "balanced" if self.criterion == "random" else "global"


SCULPT_CRITERIA = ("magnitude", "random", "snip", "synflow")
COUPLED_INITS = ("random", "warmup", "level", "signs", "perturbed_signs")


class MethodConfig(Section):
    name: str = Field("dense", description="method registry name: the pipeline of stages")
    cycles: int = Field(1, gt=0, le=10_000, description="LR cycles trained on the fixed mask; 1 is standard training")
    prune_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="imp, wr, lrr: share of remaining weights pruned per level"
    )
    rewind_epoch: int = Field(
        0, ge=0, description="imp, wr, lrr: the dense weights after this many epochs are kept as the warmup point "
        "(wr rewinds to it; coupled runs can start from it); 0 keeps the init"
    )
    targets: list[float] = Field([], description="sculpt: target sparsities, each retrained for one cycle")
    prune_criterion: str = Field("magnitude", description="sculpt: one-shot criterion from the cycled weights")
    source: str | None = Field(
        None, description="coupled: run supplying the mask: a run directory, or a YAML config run first under --out",
        json_schema_extra={"hashed_as": "run"},  # hashed as the source's run hash: a moved runs folder keeps it
    )
    source_level: int = Field(-1, ge=-1, description="coupled: stage of the source whose mask is used; -1 is the last")
    init: Literal["random", "warmup", "level", "signs", "perturbed_signs"] = Field(
        "random", description="coupled: fresh random init, the source's warmup point, its end weights at init_level, "
        "warmup signs with fresh magnitudes, or warmup weights with flip_fraction of the signs flipped"
    )
    init_level: int = Field(0, ge=0, description="coupled init 'level': stage of the source whose end weights are used")
    flip_fraction: float = Field(0.2, ge=0.0, le=1.0, description="coupled init 'perturbed_signs': share flipped")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from lotterylab.methods import METHODS

        return _check_registered("method", name, list(METHODS))

    @field_validator("prune_criterion")
    @classmethod
    def _one_shot(cls, name: str) -> str:
        return _check_registered("one-shot criterion", name, list(SCULPT_CRITERIA))


class TrainConfig(Section):
    eval_every: int = Field(1, gt=0, **_unhashed("evaluate train and test metrics every this many epochs"))
    keep_checkpoints: int = Field(2, gt=0, **_unhashed("per-epoch checkpoints kept; stage-end ones are always kept"))
    bf16: bool = Field(False, description="bf16 autocast with fp32 master weights")
    channels_last: bool = Field(False, description="channels_last memory format for image models")
    compile: bool = Field(False, description="torch.compile the model")
    deterministic: bool = Field(False, description="torch deterministic algorithms and a fixed cuBLAS workspace")
    sync_batchnorm: bool = Field(
        False, description="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only) "
        "rather than per rank; no effect in one process"
    )
    device: str = Field("auto", **_unhashed("'auto', 'cpu' or 'cuda[:N]'"))
    progress: bool = Field(True, **_unhashed("show a progress bar"))


class Config(Section):
    # Below 2**32, numpy's seed range: methods.stage_generator scales the seed by 1_000_003 into torch's 64 bits.
    seed: int = Field(0, ge=0, lt=2**32, description="seed of init, mask, data order, augmentation and label noise")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    mask: MaskConfig = MaskConfig()
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _method_fits(self) -> Config:
        method = self.method
        if method.name == "dense" and self.mask.sparsity > 0:
            raise ValueError("mask.sparsity: method 'dense' trains no mask; use method 'pai' for a sparse run")
        if method.name == "wr" and not 0 < method.rewind_epoch <= self.schedule.epochs:
            raise ValueError("method.rewind_epoch: wr needs a rewind epoch in [1, schedule.epochs]")
        if method.rewind_epoch > self.schedule.epochs:
            raise ValueError("method.rewind_epoch: must not exceed schedule.epochs")
        if method.name == "sculpt":
            if not method.targets:
                raise ValueError("method.targets: sculpt needs at least one target sparsity")
            if any(not self.mask.sparsity < t < 1 for t in method.targets):
                raise ValueError("method.targets: each target must lie between mask.sparsity (the start) and 1")
        elif method.targets:
            raise ValueError(f"method.targets: only sculpt prunes to targets, not {method.name!r}")
        if method.name == "coupled":
            if method.source is None:
                raise ValueError("method.source: coupled needs the run (directory or YAML config) giving its mask")
            if self.mask.sparsity > 0:
                raise ValueError("mask.sparsity: coupled takes its mask, and so its sparsity, from method.source")
        elif method.source is not None:
            raise ValueError(f"method.source: only coupled takes a source run, not {method.name!r}")
        return self

    def canonical(self) -> dict[str, Any]:
        """Settings that define the run: unhashed fields and fields at their pinned default are left out
        (lotterylab.hashing)."""
        return hashing.canonical(self)

    def run_hash(self) -> str:
        """Identity of the run: a stable digest of the canonical config."""
        return hashing.digest(self)

    def to_yaml(self) -> str:
        """The full config, every field, as YAML (stored with the run and in results)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)


def _error_line(error: ValidationError, source: str) -> str:
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    where = ".".join(str(part) for part in first["loc"])
    if not where:  # a cross-field check names its own field at the start of the message
        where, _, message = message.partition(": ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{source}: {where}: {message}"


def from_dict(raw: Any, source: str = "config") -> Config:
    """Validate a plain dict; raise ConfigError with one line naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_error_line(error, source)) from None


def set_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b=value` override in place; the value is parsed as YAML."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
    node[leaf] = yaml.safe_load(text)


def read_yaml(path: Path, kind: str, error: type[Exception] = ConfigError) -> Any:
    """A YAML file's content; a missing or malformed file raises `error` in one line naming it (`kind`: config, ...)."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise error(f"{path}: no such {kind} file") from None
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not a text file (byte {problem.start} is not UTF-8)") from None
    except OSError as problem:  # a directory, no permission
        raise error(f"{path}: cannot read the {kind} file ({problem.strerror or type(problem).__name__})") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise error(f"{path}: nested too deeply to be a {kind} file") from None
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML ({str(problem).splitlines()[0]})") from None


def load(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config file, apply `--set` overrides, validate."""
    path = Path(path)
    raw = read_yaml(path, "config")
    if raw is None:  # more likely a mistake than a request for every default, which `{}` spells out
        raise ConfigError(f"{path}: empty config file; write {{}} for the all-default config")
    if isinstance(raw, dict):
        for assignment in overrides:
            set_override(raw, assignment)
    return from_dict(raw, str(path))
