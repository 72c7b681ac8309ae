"""Check a raw object against its structural OpenAPI schema (the one the CRDs carry), offline.

The API server (1.20) checks types, enums and ranges but silently *prunes* unknown fields, and `egressgw validate`
has no API server at all; this walker reports both, with the field path (`spec.ippools.ipv4[1]`). It understands
the subset of OpenAPI our schemas use: type, properties (no others allowed unless additionalProperties),
additionalProperties, items, enum, required, minimum, maximum. Formats are left to `appliance.api.manifests`, which
parses addresses with better messages. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Issue = tuple[str, str]  # (field path, message)

_TYPE_NAMES = {"object": "an object", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false"}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def type_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    if value is None:
        return "null"
    return type(value).__name__


def check(value: Any, schema: Mapping[str, Any], path: str = "") -> list[Issue]:
    """Every schema violation in `value`, in document order. A null value counts as absent (as in the API)."""
    issues: list[Issue] = []
    _check(value, schema, path, issues)
    return issues


def _check(value: Any, schema: Mapping[str, Any], path: str, issues: list[Issue]) -> None:
    expected = schema.get("type")
    actual = type_of(value)
    if expected is not None and actual != expected and not (expected == "number" and actual == "integer"):
        issues.append((path, f"must be {_TYPE_NAMES.get(expected, expected)}, not {_describe(value)}"))
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(v) if v == "" else str(v) for v in schema["enum"])
        issues.append((path, f"unknown value {value!r} (allowed: {allowed})"))
    if actual in ("integer", "number"):
        if "minimum" in schema and value < schema["minimum"]:
            issues.append((path, f"{value} is below the minimum {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            issues.append((path, f"{value} is above the maximum {schema['maximum']}"))
    if actual == "object":
        _check_object(value, schema, path, issues)
    elif actual == "array" and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]", issues)


def _check_object(value: Mapping[str, Any], schema: Mapping[str, Any], path: str, issues: list[Issue]) -> None:
    properties: Mapping[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key in schema.get("required", ()):
        if value.get(key) is None:
            issues.append((_join(path, key), "required"))
    for key, item in value.items():
        if not isinstance(key, str):
            issues.append((path, f"keys must be strings, not {_describe(key)}"))
            continue
        sub = f"{path}[{key!r}]" if extra is not None and key not in properties else _join(path, key)
        if item is None:
            continue
        if key in properties:
            _check(item, properties[key], sub, issues)
        elif isinstance(extra, Mapping):
            _check(item, extra, sub, issues)
        elif "properties" in schema:
            issues.append((_join(path, key), "unknown field"))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{_TYPE_NAMES.get(type_of(value), type_of(value))} {text}" if value is not None else "null"
