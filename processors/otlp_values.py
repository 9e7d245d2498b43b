"""Small helpers to read OTLP protobuf values as plain Python.

Both the sampling rules (compare an attribute to 4000) and storage (the ClickHouse
``Map(String, String)`` columns) need an attribute's value; this is the one place that
knows the ``AnyValue`` oneof.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

STATUS_NAMES = {0: "Unset", 1: "Ok", 2: "Error"}
KIND_NAMES = {0: "Unspecified", 1: "Internal", 2: "Server", 3: "Client", 4: "Producer", 5: "Consumer"}


def any_value(value: Any) -> Any:
    """Convert an OTLP ``AnyValue`` to a Python scalar, list or dict."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def value_as_string(value: Any) -> str:
    """Render an ``AnyValue`` the way the OTel ClickHouse exporter does (JSON for composites)."""
    return _as_string(value, value.WhichOneof("value"))


def _as_string(value: Any, kind: str | None) -> str:
    if kind == "string_value":
        return str(value.string_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind in ("int_value", "double_value"):
        return str(getattr(value, kind))
    if kind is None:
        return ""
    return orjson.dumps(any_value(value)).decode()


def attributes_map(attributes: Iterable[Any]) -> dict[str, str]:
    """``KeyValue`` list → ``{key: string}`` for a ClickHouse Map column."""
    return {kv.key: value_as_string(kv.value) for kv in attributes}


_TYPE_NAMES = {"int_value": "int", "double_value": "double", "bool_value": "bool", "array_value": "array",
               "kvlist_value": "kvlist", "bytes_value": "bytes"}


def typed_attributes(attributes: Iterable[Any]) -> tuple[dict[str, str], dict[str, str]]:
    """``KeyValue`` list → (``{key: string}``, ``{key: type}``) in one pass: the values as
    :func:`attributes_map` gives them, and the types of those that are not strings (most
    are, so the second is small), stored beside the first so that readers get 502, not
    "502", back. A repeated key: the last value wins, and the last non-string type."""
    values: dict[str, str] = {}
    types: dict[str, str] = {}
    for kv in attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "string_value":
            values[kv.key] = value.string_value
            continue
        values[kv.key] = _as_string(value, kind)
        if kind is not None:
            types[kv.key] = _TYPE_NAMES[kind]
    return values, types


def typed(value: str, kind: str | None) -> Any:
    """A stored attribute string back as its type (see :func:`typed_attributes`)."""
    try:
        if kind == "int":
            return int(value)
        if kind == "double":
            return float(value)
        if kind == "bool":
            return value == "true"
        if kind in ("array", "kvlist"):
            return orjson.loads(value)
    except ValueError:
        pass
    return value


def find_attribute(attributes: Iterable[Any], key: str) -> tuple[bool, Any]:
    """Return ``(found, python_value)`` for one key of a ``KeyValue`` list."""
    for kv in attributes:
        if kv.key == key:
            return True, any_value(kv.value)
    return False, None


def service_name(resource_attributes: Iterable[Any]) -> str:
    """A resource's ``service.name``, or the SDKs' own fallback ``unknown_service``."""
    found, value = find_attribute(resource_attributes, "service.name")
    return str(value) if found else "unknown_service"


def service_text(raw: bytes) -> str:
    """A ``service.name`` that is not a string, from its ``AnyValue`` bytes (the compiled
    walks hand those over), as :func:`service_name` reads it."""
    return str(any_value(AnyValue.FromString(raw)))


def add_attributes(attributes: Any, values: dict[str, Any]) -> None:
    """Append ``{key: value}`` to a ``KeyValue`` list: ints, floats, bools and strings."""
    for key, value in values.items():
        target = attributes.add(key=key).value
        if isinstance(value, bool):
            target.bool_value = value
        elif isinstance(value, int):
            target.int_value = value
        elif isinstance(value, float):
            target.double_value = value
        else:
            target.string_value = str(value)
