"""Typed, strict run configuration: one section per concern, canonical YAML and the run hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from lotterylab.core import criterion_options, hashing, method_options
from lotterylab.core.registry import ALLOCATIONS, DATASETS, MODELS, SCHEDULES
from lotterylab.core.sections import INT64, ConfigError, Section, check_registered, unhashed  # noqa: F401 (re-exported)


class DataConfig(Section):
    name: str = Field("mnist1d", description="dataset registry name")
    root: str | None = Field(None, **unhashed("dataset directory; None picks the dataset's default location"))
    download: bool = Field(True, **unhashed("download CIFAR if absent (torchvision)"))
    verify: bool = Field(True, **unhashed("check CIFAR file checksums against torchvision's published MD5s"))
    batch_size: int = Field(128, gt=0, description="training batch size")
    test_batch_size: int = Field(1000, gt=0, **unhashed("evaluation batch size"))
    augment: bool = Field(True, description="random crop (pad 4) and horizontal flip; applies to images only")
    label_noise: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of training labels permuted among themselves")
    train_size: int | None = Field(None, gt=0, description="use a seeded random subset of this many training examples")
    test_size: int | None = Field(None, gt=0, description="use a seeded random subset of this many test examples")
    shape: list[int] = Field([3, 32, 32], description="synthetic only: per-example shape")
    num_classes: int = Field(10, gt=1, description="synthetic only: number of classes")
    image_size: int = Field(224, gt=0, description="imagenet only: crop size")
    workers: int = Field(4, ge=0, **unhashed("imagenet only: DataLoader worker processes"))
    decode: Literal["device", "pil", "ffcv"] = Field(
        "device", description="imagenet only: JPEGs decoded and cropped on the training device (workers read bytes), "
        "decoded and cropped by PIL in the workers, or train.beton/val.beton read by ffcv"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return DATASETS.check(name)


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
        return MODELS.check(name)


class OptimizerConfig(Section):
    lr: float = Field(0.1, gt=0.0, le=1e3, description="peak learning rate of a cycle")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0, description="SGD weight decay")
    nesterov: bool = Field(False, description="Nesterov momentum")


class ScheduleConfig(Section):
    name: str = Field("step_warmup", description="LR schedule within one cycle")
    epochs: int = Field(150, gt=0, le=100_000, description="epochs per cycle")
    warmup_epochs: float = Field(0.0, ge=0.0, description="warmup length in epochs")
    warmup: Literal["linear", "constant"] = Field(
        "linear", description="linear: the LR ramps up to lr over the warmup; constant: it holds warmup_factor x lr"
    )
    warmup_factor: float = Field(0.1, gt=0.0, le=1.0, description="constant warmup: the LR as a fraction of lr")
    milestones: list[float] = Field([70 / 150, 130 / 150], description="step_warmup: drop points, fractions of a cycle")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="step_warmup: factor applied at each milestone")
    final_lr: float = Field(0.0, ge=0.0, le=1.0, description="one_cycle and cosine: final LR as a fraction of lr")
    step: Literal["iteration", "epoch"] = Field("iteration", description="update the LR every iteration or every epoch")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return SCHEDULES.check(name)

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, milestones: list[float]) -> list[float]:
        if any(not 0.0 < m < 1.0 for m in milestones) or milestones != sorted(milestones):
            raise ValueError("milestones must be increasing fractions of a cycle in (0, 1)")
        return milestones


class MaskConfig(Section):
    sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of prunable weights removed")
    criterion: criterion_options.AnyCriterion = Field(
        criterion_options.CriterionOptions(), description="score used to choose the surviving weights: a name, or "
        "{name: ..., options} (lotterylab.core.criterion_options)")
    allocation: str = Field(
        "auto", description="layerwise sparsity allocation; 'auto' is balanced for random scores, else global"
    )
    prune_first: bool = Field(True, description="the first conv/linear layer is prunable")
    prune_last: bool = Field(True, description="the last conv/linear layer is prunable")

    @model_validator(mode="before")
    @classmethod
    def _flat_criterion_options(cls, raw: Any) -> Any:
        return criterion_options.prepare_mask(raw)  # a mask section written before criteria owned their options

    @field_validator("allocation")
    @classmethod
    def _known_allocation(cls, name: str) -> str:
        return ALLOCATIONS.check(name, "auto")

    def resolved_allocation(self) -> str:
        """The allocation actually used: random masks get balanced layerwise ratios, scored masks a global threshold."""
        if self.allocation != "auto":
            return self.allocation
        return "balanced" if self.criterion.name == "random" else "global"


SCULPT_CRITERIA = method_options.SCULPT_CRITERIA


class TrainConfig(Section):
    eval_every: int = Field(1, gt=0, **unhashed("evaluate train and test metrics every this many epochs"))
    keep_checkpoints: int = Field(2, gt=0, **unhashed("per-epoch checkpoints kept; stage-end ones are always kept"))
    bf16: bool = Field(False, description="bf16 autocast with fp32 master weights")
    channels_last: bool = Field(False, description="channels_last memory format for image models")
    compile: bool = Field(False, description="torch.compile the model")
    deterministic: bool = Field(False, description="torch deterministic algorithms and a fixed cuBLAS workspace")
    sync_batchnorm: bool = Field(
        False, description="under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm, CUDA only) "
        "rather than per rank; no effect in one process"
    )
    device: str = Field("auto", **unhashed("'auto', 'cpu' or 'cuda[:N]'"))
    progress: bool = Field(True, **unhashed("show a progress bar"))
    collapse_threshold: float = Field(
        0.01, ge=0.0, lt=1.0, **unhashed("a prunable layer whose mask keeps less than this fraction of its weights is "
                                         "flagged as collapsed in results.nc, with one warning line")
    )


class Config(Section):
    # Below 2**32, numpy's seed range: methods.stage_generator scales the seed by 1_000_003 into torch's 64 bits.
    seed: int = Field(0, ge=0, lt=2**32, description="seed of init, mask, data order, augmentation and label noise")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    mask: MaskConfig = MaskConfig()
    method: method_options.AnyMethod = method_options.Dense()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="before")
    @classmethod
    def _flat_criterion_options(cls, raw: Any) -> Any:
        return criterion_options.prepare(raw)  # SCULPT's one-shot criterion reads the mask's flat options too

    @field_validator("method", mode="before")
    @classmethod
    def _method_named(cls, raw: Any) -> Any:
        return method_options.prepare(raw)

    @model_validator(mode="after")
    def _method_fits(self) -> Config:
        self.method.check(self)  # each method checks its own options against the rest of the config
        return self

    def canonical(self) -> dict[str, Any]:
        """Settings that define the run: unhashed fields and fields at their pinned default are left out
        (lotterylab.core.hashing)."""
        return hashing.canonical(self, run_identity=run_identity)

    def run_hash(self) -> str:
        """Identity of the run: a stable digest of the canonical config."""
        return hashing.digest(self, run_identity)

    def to_yaml(self) -> str:
        """The full config, every field, as YAML (stored with the run and in results)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True)


def run_identity(run: str) -> str:
    """The hash of the run a field names (a coupled run's source): a YAML config's run hash, or a run directory's
    name."""
    if run.endswith((".yaml", ".yml")):
        return load(run).run_hash()
    return hashing.run_directory_identity(run)


def error_line(error: ValidationError, source: str) -> str:
    """One line naming the source and the field of a validation error's first problem."""
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    tags = {*(options.__name__ for options in method_options.OPTIONS.values()), *criterion_options.TAGS}  # a union's
    # member, not a field
    where = ".".join(str(part) for part in first["loc"] if part not in tags)
    if not where or message.startswith((f"{where}.", f"{where}:")):  # a check that names its own field first
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
        raise ConfigError(error_line(error, source)) from None


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
