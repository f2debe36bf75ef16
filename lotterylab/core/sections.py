"""The base of every config section, its one-line error, and the field helpers all sections share."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator


class ConfigError(ValueError):
    """A config that cannot be run; the message is one line and names the field or file."""


def unhashed(description: str) -> dict[str, Any]:
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


def check_registered(kind: str, name: str, valid: list[str]) -> str:
    """`name` if it is one of `valid`; a ValueError listing the valid names otherwise."""
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
    return name
