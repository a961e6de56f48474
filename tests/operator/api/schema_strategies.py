"""Hypothesis strategies that draw values from an OpenAPI v3 structural schema (the CRD's own).

Every keyword the CRD uses is honoured: types, enums, patterns, lengths, minimum/maximum
(exclusive too), maxItems, list-map keys (unique entries), required fields, string maps, and
`x-kubernetes-preserve-unknown-fields` (declared fields typed, other keys with any JSON value).
CEL rules (`x-kubernetes-validations`) are not evaluated (there is no CEL runtime in the dev
stack): the values drawn are a superset of what the API server admits, which makes a property
that holds for all of them stronger, not weaker.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

INT_BOUNDS = {"int32": 2**31 - 1, "int64": 2**63 - 1}
# Lists and maps stay short: the cost of a case grows with them, what they exercise does not.
MAX_ITEMS = 3

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def from_schema(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    if schema.get("x-kubernetes-int-or-string"):
        return _int_or_string(schema)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        return _object(schema)
    if kind == "array":
        return _array(schema)
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        bound = INT_BOUNDS[schema.get("format", "int64")]
        return st.integers(schema.get("minimum", -bound), schema.get("maximum", bound))
    if kind == "number":
        return st.floats(
            schema.get("minimum"),
            schema.get("maximum"),
            exclude_min=bool(schema.get("exclusiveMinimum")),
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    raise AssertionError(f"schema keyword set not handled: {sorted(schema)}")


def _int_or_string(schema: Mapping[str, Any]) -> st.SearchStrategy[Any]:
    minimum = schema.get("minimum", -(2**63))
    strings = _string({**schema, "type": "string"})
    return st.integers(minimum, 2**63 - 1) | strings


def _string(schema: Mapping[str, Any]) -> st.SearchStrategy[str]:
    low, high = schema.get("minLength", 0), schema.get("maxLength", 64)
    if "pattern" in schema:
        return _matching(schema["pattern"]).filter(lambda s: low <= len(s) <= high)
    return st.text(min_size=low, max_size=min(high, 24))


@functools.cache
def _matching(pattern: str) -> st.SearchStrategy[str]:
    return st.from_regex(pattern, fullmatch=True)


def _array(schema: Mapping[str, Any]) -> st.SearchStrategy[list[Any]]:
    keys = schema.get("x-kubernetes-list-map-keys")
    return st.lists(
        from_schema(schema["items"]),
        max_size=min(schema["maxItems"], MAX_ITEMS),
        unique_by=(lambda item: tuple(item.get(k) for k in keys)) if keys else None,
    )


def _object(schema: Mapping[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    props: Mapping[str, Any] = schema.get("properties", {})
    if "additionalProperties" in schema:
        return st.dictionaries(
            st.text(min_size=1, max_size=12),
            from_schema(schema["additionalProperties"]),
            max_size=min(schema.get("maxProperties", MAX_ITEMS), MAX_ITEMS),
        )
    required = set(schema.get("required", ()))
    declared = st.fixed_dictionaries(
        {k: from_schema(v) for k, v in props.items() if k in required},
        optional={k: from_schema(v) for k, v in props.items() if k not in required},
    )
    if not schema.get("x-kubernetes-preserve-unknown-fields"):
        return declared
    unknown = st.dictionaries(
        st.text(max_size=12).filter(lambda k: k not in props), json_values, max_size=2
    )
    return st.builds(lambda known, extra: {**extra, **known}, declared, unknown)
