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
from pydantic.fields import FieldInfo

from lotterylab.core.registry import CRITERIA
from lotterylab.core.sections import Section


def _flat(key: str) -> dict[str, Any]:
    """Field kwargs of an option whose legacy flat name in `mask` (and in the hash) is `key`."""
    return {"json_schema_extra": {"flat_key": key}}


def flat_key(field: FieldInfo) -> str | None:
    """A criterion field's flat name: '' for the criterion's name, the legacy `mask` key for an option, None for a
    field of no criterion."""
    extra = field.json_schema_extra
    return extra.get("flat_key") if isinstance(extra, dict) else None


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


class _Batched(CriterionOptions):
    """The options of a criterion scored on training batches (SNIP, GraSP)."""

    batches: int = Field(1, gt=0, description="training batches the scores are summed over", **_flat("score_batches"))
    batch_size: int = Field(512, gt=0, description="size of each scoring batch", **_flat("score_batch_size"))


class Snip(_Batched):
    name: Literal["snip"] = Field("snip", **_flat(""))


class Grasp(_Batched):
    name: Literal["grasp"] = Field("grasp", **_flat(""))
    temperature: float = Field(200.0, gt=0.0, le=1e6, description="logits are divided by this (the authors' T)",
                               **_flat("grasp_temperature"))


class Synflow(CriterionOptions):
    name: Literal["synflow"] = Field("synflow", **_flat(""))
    rounds: int = Field(100, gt=0, description="pruning rounds (exponential density schedule)",
                        **_flat("synflow_rounds"))


OPTIONS: dict[str, type[CriterionOptions]] = {"snip": Snip, "grasp": Grasp, "synflow": Synflow}
"""Criterion name -> its options model; a registered criterion not listed here takes no options."""

FLAT_KEYS: dict[str, Any] = {
    flat_key(field): field.default for model in OPTIONS.values() for field in model.model_fields.values()
    if flat_key(field)
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
        key = flat_key(field)
        if key in flat:
            if option in criterion:
                raise ValueError(f"mask.{key}: given twice, also as the criterion's {option}")
            criterion[option] = flat[key]
    return criterion


def prepare_mask(mask: Any) -> Any:
    """A mask section as written, with legacy flat criterion options moved into its criterion where it takes them and
    dropped where it does not (they never changed what a run computed)."""
    flat = {key: mask[key] for key in FLAT_KEYS.keys() & mask.keys()} if isinstance(mask, dict) else {}
    if not flat:
        return mask
    out = {key: value for key, value in mask.items() if key not in flat}
    out["criterion"] = take_flat(mask.get("criterion", "random"), flat)
    return out


def prepare(raw: Any) -> Any:
    """A config as written, with the mask's legacy flat criterion options also given to SCULPT's one-shot criterion
    (`method.prune_criterion`) where it takes them; the mask section's own validation (`prepare_mask`) does the rest."""
    mask, method = (raw.get("mask"), raw.get("method")) if isinstance(raw, dict) else (None, None)
    if not isinstance(mask, dict) or not isinstance(method, dict) or method.get("name") != "sculpt":
        return raw
    flat = {key: mask[key] for key in FLAT_KEYS.keys() & mask.keys()}
    if not flat:
        return raw
    return dict(raw, method=dict(method, prune_criterion=take_flat(method.get("prune_criterion", "magnitude"), flat)))
