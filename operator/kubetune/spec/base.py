"""The base of every spec block (camelCase in YAML, strict JSON types, unknown fields refused).

Its own module so that spec blocks kept in modules of their own (`kubetune.spec.adapters`) and `models`, which
refers to them, both import it from below.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from pydantic.alias_generators import to_camel

# Integers the API server can store (int64): a larger one is refused there, so it is refused here too.
INT64_MAX = 2**63 - 1


class SpecModel(BaseModel):
    """Base for every spec block: camelCase in YAML, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
        # JSON types, as the API server checks them: no "3" for 3, no 0 for false (enum fields, which
        # take their values as strings, opt out of strictness one by one).
        strict=True,
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_unset(cls, data: Any) -> Any:
        """An explicit null on a field that cannot be null means "unset", as on the API server (which prunes
        such nulls before defaulting): `torchCompile: null` is the default, a required field set to null is
        missing."""
        if not isinstance(data, dict):
            return data
        fields = _field_keys(cls)
        keep = {k: v for k, v in data.items() if v is not None or k not in fields or k in _nullable_keys(cls)}
        return keep if len(keep) != len(data) else data

    @field_validator("*", mode="after")
    @classmethod
    def _fits_int64(cls, value: Any) -> Any:
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and not -INT64_MAX - 1 <= value <= INT64_MAX
        ):
            raise ValueError(
                f"{value} does not fit in 64 bits (the API server's integers): use a smaller number"
            )
        return value


def _field_keys(model: type[BaseModel]) -> frozenset[str]:
    """Names and aliases of `model`'s fields (a null on any other key is an unknown field, refused)."""
    return frozenset(k for name, f in model.model_fields.items() for k in (name, f.alias or name))


def _nullable_keys(model: type[BaseModel]) -> frozenset[str]:
    """Names and aliases of `model`'s fields that accept None."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        args = getattr(field.annotation, "__args__", ()) or ()
        if field.annotation is None or type(None) in args or field.annotation is Any:
            keys.update({name, field.alias or name})
    return frozenset(keys)
