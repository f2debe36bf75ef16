"""Each pruning criterion's own options: one model per criterion that takes options, selected by its `name`.

A config names a criterion in two places: `mask.criterion` (the mask a run starts from) and, for SCULPT,
`method.prune_criterion` (its one-shot step). Either is a name (`snip`) or a mapping with the name and that
criterion's options (`{name: grasp, temperature: 100}`); an option of another criterion is an unknown key. A criterion
without options (random, magnitude, and any a plug-in registers) is the plain `CriterionOptions`. The scoring
functions are in lotterylab.pruning.criteria, keyed by the same names (lotterylab.core.registry.CRITERIA).

Params files and run configs written before criteria owned their options set them as flat `mask` keys
(`mask.score_batches`, `score_batch_size`, `grasp_temperature`, `synflow_rounds`), which applied to whichever
criterion a run used. `prepare` still reads that form: each flat key goes to the run's criteria that take it and is
dropped where none does, and the run hash is computed in the flat form for `mask.criterion` (lotterylab.core.hashing),
so no run already on disk changes its hash.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Discriminator, Field, Tag, field_validator

from lotterylab.core.registry import CRITERIA
from lotterylab.core.sections import Section


def _flat(key: str) -> dict[str, Any]:
    """Field kwargs of an option whose legacy flat name in `mask` (and in the hash) is `key`."""
    return {"json_schema_extra": {"flat_key": key}}


class CriterionOptions(Section):
    """A criterion and its options; on its own, a criterion that takes none."""

    name: str = Field("random", description="criterion registry name", **_flat(""))  # "": the hash's criterion

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return CRITERIA.check(name)

    def options(self) -> dict[str, Any]:
        """The options, as the scoring function's keyword arguments."""
        return self.model_dump(exclude={"name"})


class Snip(CriterionOptions):
    name: Literal["snip"] = Field("snip", **_flat(""))
    batches: int = Field(1, gt=0, description="training batches the scores are summed over", **_flat("score_batches"))
    batch_size: int = Field(512, gt=0, description="size of each scoring batch", **_flat("score_batch_size"))


class Grasp(CriterionOptions):
    name: Literal["grasp"] = Field("grasp", **_flat(""))
    batches: int = Field(1, gt=0, description="training batches the scores are summed over", **_flat("score_batches"))
    batch_size: int = Field(512, gt=0, description="size of each scoring batch", **_flat("score_batch_size"))
    temperature: float = Field(200.0, gt=0.0, le=1e6, description="logits are divided by this (the authors' T)",
                               **_flat("grasp_temperature"))


class Synflow(CriterionOptions):
    name: Literal["synflow"] = Field("synflow", **_flat(""))
    rounds: int = Field(100, gt=0, description="pruning rounds (exponential density schedule)",
                        **_flat("synflow_rounds"))


OPTIONS: dict[str, type[CriterionOptions]] = {"snip": Snip, "grasp": Grasp, "synflow": Synflow}
"""Criterion name -> its options model; a registered criterion not listed here takes no options."""

FLAT_KEYS: dict[str, Any] = {
    field.json_schema_extra["flat_key"]: field.default
    for model in OPTIONS.values() for name, field in model.model_fields.items() if name != "name"
}
"""Legacy flat `mask` key -> its default."""


def _tag(raw: Any) -> str:
    name = raw.get("name", "random") if isinstance(raw, dict) else getattr(raw, "name", None)
    return OPTIONS[name].__name__ if isinstance(name, str) and name in OPTIONS else "CriterionOptions"


MEMBERS = (CriterionOptions, *OPTIONS.values())
AnyCriterion = Annotated[Union[tuple(Annotated[model, Tag(model.__name__)] for model in MEMBERS)],  # noqa: UP007
                         Discriminator(_tag), BeforeValidator(lambda raw: section(raw))]
"""`mask.criterion` and `method.prune_criterion`: one of the models above, chosen by `name` (a bare name is read as
`{name: ...}`)."""

TAGS = tuple(model.__name__ for model in MEMBERS)
"""The union's member tags, which validation errors put in their location (config.error_line drops them)."""


def section(raw: Any) -> Any:
    """A criterion as written, as a mapping: a name becomes `{name: ...}`; anything else is left to validation."""
    return {"name": raw} if isinstance(raw, str) else dict(raw) if isinstance(raw, dict) else raw


def take_flat(criterion: Any, flat: dict[str, Any]) -> Any:
    """`criterion` (as written) with the legacy flat options it takes from `flat`; one also given in the mapping
    itself is an error naming both."""
    criterion = section(criterion)
    if not isinstance(criterion, dict) or not isinstance(criterion.get("name", "random"), str):
        return criterion
    model = OPTIONS.get(criterion.get("name", "random"), CriterionOptions)
    for option, field in model.model_fields.items():
        key = (field.json_schema_extra or {}).get("flat_key") if isinstance(field.json_schema_extra, dict) else None
        if key in flat:
            if option in criterion:
                raise ValueError(f"mask.{key}: given twice, also as the criterion's {option}")
            criterion[option] = flat[key]
    return criterion


def prepare(raw: Any) -> Any:
    """A config as written, with legacy flat criterion options moved into the criteria that take them: the mask's
    criterion, and SCULPT's one-shot criterion (`method.prune_criterion`). Flat keys no criterion of the run takes
    are dropped (they never changed what a run computed)."""
    if not isinstance(raw, dict) or not isinstance(raw.get("mask", {}), dict):
        return raw
    mask = dict(raw.get("mask", {}))
    flat = {key: mask.pop(key) for key in list(mask) if key in FLAT_KEYS}
    if not flat:
        return raw
    out = dict(raw, mask=mask)
    mask["criterion"] = take_flat(mask.get("criterion", "random"), flat)
    method = raw.get("method")
    if isinstance(method, dict) and method.get("name") == "sculpt":
        out["method"] = dict(method, prune_criterion=take_flat(method.get("prune_criterion", "magnitude"), flat))
    return out
