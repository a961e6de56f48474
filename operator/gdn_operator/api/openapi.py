"""Small builders for OpenAPI v3 structural schemas, and the defaulting the API server applies.

The CRD's schema is written with these (see `crd.py`) so it reads like the typed markers of a
kubebuilder project: each field carries its type, description, default and validation in one
place. `apply_defaults` fills defaults the way the API server does, so code that reads a spec
(tests, the benchmark, a server without defaulting) sees the same values as code that reads an
object from the cluster, and the defaults have a single source.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

Schema = dict[str, Any]

# The Kubernetes resource.Quantity pattern (what `kubectl explain` shows for int-or-string
# quantities such as memory "24Gi" or cpu "500m"), narrowed to positive values: no minus sign, and
# a mantissa with a non-zero digit. Every quantity in this CRD is a size, and zero or a negative
# one is nonsense the API server should refuse.
_NONZERO_MANTISSA = r"([0-9]*[1-9][0-9]*(\.[0-9]*)?|[0-9]*\.[0-9]*[1-9][0-9]*)"
QUANTITY_PATTERN = (
    r"^\+?" + _NONZERO_MANTISSA + r"(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def _with(schema: Schema, **extra: Any) -> Schema:
    schema.update({k: v for k, v in extra.items() if v is not None})
    return schema


def string(
    description: str,
    *,
    enum: Iterable[str] | None = None,
    default: str | None = None,
    pattern: str | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    fmt: str | None = None,
) -> Schema:
    return _with(
        {"type": "string", "description": description},
        enum=list(enum) if enum is not None else None,
        default=default,
        pattern=pattern,
        minLength=min_length,
        maxLength=max_length,
        format=fmt,
    )


def integer(
    description: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    default: int | None = None,
    fmt: str = "int32",
) -> Schema:
    return _with(
        {"type": "integer", "format": fmt, "description": description},
        minimum=minimum,
        maximum=maximum,
        default=default,
    )


def number(
    description: str,
    *,
    minimum: float | None = None,
    exclusive_minimum: bool | None = None,
    maximum: float | None = None,
) -> Schema:
    return _with(
        {"type": "number", "description": description},
        minimum=minimum,
        exclusiveMinimum=exclusive_minimum,
        maximum=maximum,
    )


def boolean(description: str, *, default: bool | None = None) -> Schema:
    return _with({"type": "boolean", "description": description}, default=default)


def quantity(description: str, *, default: str | None = None) -> Schema:
    """A positive resource quantity (`24Gi`, `500m`, `4`), at most 32 characters. Integers are
    held to `minimum`; what the pattern cannot say (an exponent that makes it huge, or rounds it
    below one byte) the spec parser refuses."""
    return _with(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
            "pattern": QUANTITY_PATTERN,
            "maxLength": 32,
            "minimum": 1,
            "description": description,
        },
        default=default,
    )


def rule(expr: str, message: str) -> dict[str, str]:
    """A CEL validation rule (x-kubernetes-validations entry)."""
    return {"rule": expr, "message": message}


def obj(
    description: str,
    properties: Mapping[str, Schema],
    *,
    required: Iterable[str] = (),
    rules: Iterable[dict[str, str]] = (),
    default: Mapping[str, Any] | None = None,
) -> Schema:
    schema: Schema = {"type": "object", "description": description, "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if rules:
        schema["x-kubernetes-validations"] = list(rules)
    if default is not None:
        schema["default"] = dict(default)
    return schema


def free_form(
    description: str,
    properties: Mapping[str, Schema] | None = None,
    *,
    rules: Iterable[dict[str, str]] = (),
) -> Schema:
    """An object whose other fields the schema does not know (kept, not pruned); the
    `properties` it does know are typed and validated like any other field."""
    schema: Schema = {
        "type": "object",
        "description": description,
        "x-kubernetes-preserve-unknown-fields": True,
    }
    if properties:
        schema["properties"] = dict(properties)
    if rules:
        schema["x-kubernetes-validations"] = list(rules)
    return schema


def string_map(description: str, *, max_properties: int) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string"},
        "maxProperties": max_properties,
    }


def array(
    description: str,
    items: Schema,
    *,
    max_items: int,
    map_keys: Iterable[str] | None = None,
) -> Schema:
    """A list; with map_keys, a list-map (entries unique by those keys, merged per entry)."""
    schema: Schema = {
        "type": "array",
        "description": description,
        "items": items,
        "maxItems": max_items,
    }
    if map_keys is not None:
        schema["x-kubernetes-list-type"] = "map"
        schema["x-kubernetes-list-map-keys"] = list(map_keys)
    return schema


def apply_defaults(schema: Schema, value: Any) -> Any:
    """Return a copy of `value` with the schema's defaults filled in, recursively.

    Same order as the API server's structural defaulting: an absent field with a default gets the
    default, and defaulting then descends into it, so a defaulted object gets its own fields'
    defaults too.
    """
    value = copy.deepcopy(value)
    _default_in_place(schema, value)
    return value


def _default_in_place(schema: Schema, value: Any) -> None:
    if isinstance(value, dict):
        for name, prop in schema.get("properties", {}).items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                _default_in_place(prop, value[name])
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _default_in_place(schema["items"], item)
