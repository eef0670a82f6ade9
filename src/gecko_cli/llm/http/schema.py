"""Structured output: the `response_format` a server is asked for, and the check every answer
gets here anyway (the subset of JSON Schema a generation prompt uses: type, required, properties)."""

from __future__ import annotations

import json
from typing import Any

_TYPES = {"object": dict, "string": str, "array": list, "boolean": bool, "integer": int, "number": (int, float)}


def schema_problem(text: str, schema: dict) -> str | None:
    """Why `text` is not a JSON value matching `schema` (type, required, properties), or None.

    >>> schema_problem('{"query": "why"}', {"type": "object", "required": ["query"], "properties": {"query": {"type": "string"}}})
    >>> schema_problem('Sure! {"q": 1}', {"type": "object"})
    'not JSON: Expecting value (column 1)'
    """
    try:
        value = json.loads(text, strict=False)  # a raw newline inside a string is still usable
    except ValueError as exc:
        return f"not JSON: {getattr(exc, 'msg', exc)} (column {getattr(exc, 'colno', '?')})"
    return _value_problem(value, schema, "")


def _value_problem(value: Any, schema: dict, where: str) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, str) and kind in _TYPES and not isinstance(value, _TYPES[kind]):
        return f"{where or 'the answer'} should be a JSON {kind}"
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"missing field \"{key}\""
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and isinstance(sub, dict):
                problem = _value_problem(value[key], sub, f"\"{key}\"")
                if problem:
                    return problem
    return None


def response_format(schema: dict, form: str = "json_schema") -> dict:
    """The request's `response_format`: OpenAI's `json_schema` form, or llama-cpp-python's
    `json_object` + schema (grammar-constrained to the schema).

    >>> response_format({"type": "object"}, "json_object")
    {'type': 'json_object', 'schema': {'type': 'object'}}
    """
    if form == "json_object":
        return {"type": "json_object", "schema": schema}
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
