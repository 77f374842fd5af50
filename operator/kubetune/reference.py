"""The FineTuneJob reference (docs/reference.md), generated from the pydantic models' field descriptions.

`kubetune docs` prints or writes it; a test fails when the committed file differs from a fresh rendering,
so the reference cannot drift from the models that validate jobs and generate the CRD.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from kubetune.spec.models import (
    API_GROUP,
    API_VERSION,
    KIND,
    PLURAL,
    SHORT_NAMES,
    FineTuneJobSpec,
    ObjectMeta,
)
from kubetune.spec.status import FineTuneJobStatus

REFERENCE_FILE = "docs/reference.md"

_BOUNDS = (
    ("minimum", "≥ {}"),
    ("exclusiveMinimum", "> {}"),
    ("maximum", "≤ {}"),
    ("exclusiveMaximum", "< {}"),
    ("minLength", "at least {} characters"),  # minLength 1 reads "non-empty" (see _bounds)
    ("maxLength", "at most {} characters"),
    ("minItems", "at least {} items"),
    ("maxItems", "at most {} items"),
    ("pattern", "matches `{}`"),
)


@dataclass(frozen=True)
class Section:
    """One block of the resource: its YAML path (e.g. spec.training) and the model describing it."""

    path: str
    model: type[BaseModel]
    description: str = ""

    @property
    def shows_defaults(self) -> bool:
        """Status fields are written by the operator: a default means nothing to the reader."""
        return not self.path.startswith("status")

    @property
    def anchor(self) -> str:
        return self.path.replace(".", "").replace("[]", "").lower()


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside an annotation such as `X`, `X | None` or `list[X]`, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _nested_model(argument)
        if found is not None:
            return found
    return None


def _is_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list


def sections(path: str, model: type[BaseModel], description: str = "") -> Iterator[Section]:
    """Yields the section of `model` at `path`, then those of its nested models, depth first, in field order."""
    yield Section(path, model, description)
    for name, field in model.model_fields.items():
        nested = _nested_model(field.annotation)
        if nested is not None:
            suffix = "[]" if _is_list(field.annotation) else ""
            yield from sections(f"{path}.{field.alias or name}{suffix}", nested, field.description or "")


def _schema_type(prop: dict[str, Any], defs: dict[str, Any], links: dict[str, str]) -> tuple[str, bool]:
    """A readable type for a JSON-schema property, and whether null is allowed."""
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        target = defs[name]
        if "enum" in target:
            return "one of " + ", ".join(f"`{v}`" for v in target["enum"]), False
        return f"[object](#{links[name]})" if name in links else "object", False
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = len(options) < len(prop["anyOf"])
        rendered = " or ".join(_schema_type(p, defs, links)[0] for p in options)
        return rendered, nullable
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"]), False
    kind = prop.get("type", "any")
    if kind == "array":
        item, _ = _schema_type(prop.get("items", {}), defs, links)
        return f"list of {item}", False
    if kind == "object":
        values = prop.get("additionalProperties")
        if isinstance(values, dict) and values.get("type"):
            return f"map of {values['type']}", False
        return "object", False
    bounds = [
        "non-empty" if (key, prop[key]) == ("minLength", 1) else text.format(prop[key])
        for key, text in _BOUNDS
        if key in prop
    ]
    return kind + (f" ({', '.join(bounds)})" if bounds else ""), False


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, Enum):
        value = value.value
    if value is None:
        return "unset"
    return f"`{value if isinstance(value, str) and value else json.dumps(value)}`"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (no pipes, newlines or HTML-looking <words>)."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def render_section(section: Section, links: dict[str, str]) -> str:
    """The Markdown of one section: a heading, its description and a table of its fields."""
    schema = section.model.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    defs[section.model.__name__] = schema
    lines = [f"### `{section.path}`", ""]
    if section.description:
        lines += [section.description, ""]
    if section.shows_defaults:
        lines += ["| Field | Type | Default | Description |", "| --- | --- | --- | --- |"]
    else:
        lines += ["| Field | Type | Description |", "| --- | --- | --- |"]
    for name, field in section.model.model_fields.items():
        key = field.alias or name
        prop = schema["properties"][key]
        nested = _nested_model(field.annotation)
        if nested is not None:
            anchor = links[f"{section.path}.{key}{'[]' if _is_list(field.annotation) else ''}"]
            kind = f"[{'list of ' if _is_list(field.annotation) else ''}object](#{anchor})"
            nullable = "null" in json.dumps(prop.get("anyOf", []))
        else:
            kind, nullable = _schema_type(prop, defs, {})
        if nullable:
            kind += " or null"
        cells = [f"`{key}`", _cell(kind)]
        if section.shows_defaults:
            cells.append(_cell(_default(field)))
        cells.append(_cell(field.description or ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_reference() -> str:
    """Returns the whole reference as Markdown."""
    all_sections = [
        *sections("metadata", ObjectMeta, "The parts of metadata kubetune reads; other fields are kept."),
        *sections("spec", FineTuneJobSpec, "What to fine-tune, on what, how and where."),
        *sections("status", FineTuneJobStatus, "Written by the operator (and rank 0's progress reports)."),
    ]
    links = {s.path: s.anchor for s in all_sections}
    header = f"""# FineTuneJob reference

<!-- Generated by `kubetune docs -o {REFERENCE_FILE}` from the pydantic models: do not edit. -->

`apiVersion: {API_GROUP}/{API_VERSION}`, `kind: {KIND}` (plural `{PLURAL}`, short name
`{", ".join(SHORT_NAMES)}`). YAML keys are camelCase; unknown keys are refused with a suggestion.
`kubetune validate FILE` checks a file against exactly these rules, and so does the API server (the CRD is
generated from the same models), plus the cross-field rules the models enforce (e.g. ZeRO offload needs a
ZeRO stage).

Contents: {", ".join(f"[`{s.path}`](#{s.anchor})" for s in all_sections)}

"""
    return header + "\n".join(render_section(s, links) for s in all_sections)
