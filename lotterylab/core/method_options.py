"""Each method's own options: one model per method, selected by `method.name`, each with its own validation.

`method` in a config is one of these models. A method's options are only its own: `targets` on a `pai` run is an
unknown key, not a silently ignored one. Checks that need the rest of the config (the mask, the schedule) live in
each model's `check`, which `Config` calls. The builders of the stages are in lotterylab.training.methods, keyed by
the same names (tests/test_methods.py checks that the two registries agree).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from lotterylab.core import criterion_options, hashing
from lotterylab.core.sections import Section, check_registered

if TYPE_CHECKING:
    from lotterylab.core.config import Config

SCULPT_CRITERIA = ("magnitude", "random", "snip", "synflow")


class MethodOptions(Section):
    """What every method has: its name and the LR cycles it trains on a fixed mask."""

    name: str
    cycles: int = Field(1, gt=0, le=10_000, description="LR cycles trained on the fixed mask; 1 is standard training")

    def check(self, cfg: Config) -> None:
        """Raise ValueError('<field>: <why>') when the options do not fit the rest of `cfg`."""


class Dense(MethodOptions):
    name: Literal["dense"] = "dense"

    def check(self, cfg: Config) -> None:
        if cfg.mask.sparsity > 0:
            raise ValueError("mask.sparsity: method 'dense' trains no mask; use method 'pai' for a sparse run")


class Pai(MethodOptions):
    name: Literal["pai"] = "pai"


class Iterative(MethodOptions):
    name: Literal["imp", "wr", "lrr"]
    prune_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="share of remaining weights pruned per level")
    rewind_epoch: int = Field(
        0, ge=0, le=100_000, description="the dense weights after this many epochs are kept as the warmup point (wr "
        "rewinds to it; coupled runs can start from it); 0 keeps the init")

    def check(self, cfg: Config) -> None:
        if self.name == "wr" and not 0 < self.rewind_epoch <= cfg.schedule.epochs:
            raise ValueError("method.rewind_epoch: wr needs a rewind epoch in [1, schedule.epochs]")
        if self.rewind_epoch > cfg.schedule.epochs:
            raise ValueError("method.rewind_epoch: must not exceed schedule.epochs")


class Sculpt(MethodOptions):
    name: Literal["sculpt"] = "sculpt"
    targets: list[float] = Field([], description="target sparsities, each retrained for one cycle")
    prune_criterion: criterion_options.AnyCriterion = Field(
        criterion_options.CriterionOptions.model_construct(name="magnitude"),
        description="one-shot criterion from the cycled weights: a name, or {name: ..., options} "
        "(lotterylab.core.criterion_options)")

    @field_validator("prune_criterion")
    @classmethod
    def _one_shot(cls, criterion: criterion_options.CriterionOptions) -> criterion_options.CriterionOptions:
        check_registered("one-shot criterion", criterion.name, list(SCULPT_CRITERIA))
        return criterion

    def check(self, cfg: Config) -> None:
        if not self.targets:
            raise ValueError("method.targets: sculpt needs at least one target sparsity")
        if any(not cfg.mask.sparsity < target < 1 for target in self.targets):
            raise ValueError("method.targets: each target must lie between mask.sparsity (the start) and 1")


class Coupled(MethodOptions):
    name: Literal["coupled"] = "coupled"
    source: str | None = Field(
        None, description="run supplying the mask: a run directory, or a YAML config run first under --out",
        json_schema_extra={"hashed_as": "run"},  # hashed as the source's run hash: a moved runs folder keeps it
    )
    source_level: int = Field(-1, ge=-1, description="stage of the source whose mask is used; -1 is the last")
    init: Literal["random", "warmup", "level", "signs", "perturbed_signs"] = Field(
        "random", description="fresh random init, the source's warmup point, its end weights at init_level, warmup "
        "signs with fresh magnitudes, or warmup weights with flip_fraction of the signs flipped")
    init_level: int = Field(0, ge=0, description="init 'level': stage of the source whose end weights are used")
    flip_fraction: float = Field(0.2, ge=0.0, le=1.0, description="init 'perturbed_signs': share of signs flipped")

    def check(self, cfg: Config) -> None:
        if self.source is None:
            raise ValueError("method.source: coupled needs the run (directory or YAML config) giving its mask")
        if cfg.mask.sparsity > 0:
            raise ValueError("mask.sparsity: coupled takes its mask, and so its sparsity, from method.source")


OPTIONS: dict[str, type[MethodOptions]] = {
    "dense": Dense, "pai": Pai, "imp": Iterative, "wr": Iterative, "lrr": Iterative, "sculpt": Sculpt,
    "coupled": Coupled,
}
"""Method name -> its options model."""


def _tag(raw: Any) -> str | None:
    """Which options model validates `raw`: by its name (an unknown name fails in `prepare`)."""
    name = raw.get("name", "dense") if isinstance(raw, dict) else getattr(raw, "name", None)
    return OPTIONS[name].__name__ if name in OPTIONS else None


AnyMethod = Annotated[
    Annotated[Dense, Tag("Dense")] | Annotated[Pai, Tag("Pai")] | Annotated[Iterative, Tag("Iterative")]
    | Annotated[Sculpt, Tag("Sculpt")] | Annotated[Coupled, Tag("Coupled")],
    Discriminator(_tag),
]
"""The `method` section: one of the models above, chosen by `name` (default `dense`)."""


def prepare(raw: Any) -> Any:
    """A method section as given, ready for validation: the name checked against the registry, and keys of other
    methods dropped where they hold their default (run configs written before each method owned its options list
    every method's fields)."""
    if isinstance(raw, MethodOptions):
        return raw
    if not isinstance(raw, dict):
        raise ValueError(f"method: expected a mapping with a name, got {type(raw).__name__}")
    name = raw.get("name", "dense")
    if not isinstance(name, str):
        raise ValueError(f"method.name: expected a method name, got {type(name).__name__}")
    try:
        check_registered("method", name, list(OPTIONS))
    except ValueError as error:
        raise ValueError(f"method.name: {error}") from None
    own = OPTIONS[name].model_fields
    return {key: value for key, value in raw.items()
            if key in own or value != hashing.PINNED_DEFAULTS.get(f"method.{key}", object())}
