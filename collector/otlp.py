"""Decoding OTLP requests; cutting them into per-trace fragments is :mod:`processors.wire`.

A *fragment* is the spans of one trace from one request, kept as serialized OTLP
``TracesData`` bytes plus the few facts the sampler needs to decide without parsing them
again (span count, time range, error, root span). Keeping bytes, not objects, is what
keeps buffered memory close to the wire size: a span is only turned into Python objects
and rows once its trace is kept.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.errors import InvalidRequest
from processors.wire import EXPIRED, SplitResult, split_by_trace

__all__ = ["EXPIRED", "SplitResult", "decode_json", "decode_logs_json", "decode_protobuf", "split_by_trace"]


def decode_protobuf(body: bytes) -> ExportTraceServiceRequest:
    """Parse an OTLP/protobuf request body; malformed input is an :class:`InvalidRequest`."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidRequest(f"malformed OTLP protobuf: {exc}") from None
    return request


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_REQUIRED_IDS = ("traceId", "spanId", "trace_id", "span_id")


def _hex_ids_to_base64(obj: dict[str, Any]) -> bool:
    """OTLP/JSON writes ids as hex, protobuf's JSON mapping expects base64: convert.

    Returns False when the trace or span id is missing or not valid hex: such a span is
    rejected before the (slow) protobuf JSON parser ever sees it. An invalid parent or link
    id becomes an 8-byte marker of the wrong length, rejected per span later."""
    valid = True
    for key in _ID_FIELDS:
        value = obj.get(key)
        if isinstance(value, str) and value:
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raw = b"\xff"  # invalid length on purpose: rejected per span later
                valid = valid and key not in _REQUIRED_IDS
            obj[key] = base64.b64encode(raw).decode()
    return valid and any(obj.get(k) for k in ("traceId", "trace_id")) and any(obj.get(k) for k in ("spanId", "span_id"))


def _parse_otlp_json(body: bytes, request: Any, prepare: Callable[[dict[str, Any]], None]) -> None:
    """Parse an OTLP/JSON body into ``request``; ``prepare`` first turns OTLP's hex ids into
    what protobuf's JSON mapping reads. Anything malformed is the client's error (400)."""
    try:
        doc = orjson.loads(body)
        if not isinstance(doc, dict):
            raise InvalidRequest("OTLP/JSON body must be an object")
        prepare(doc)
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except InvalidRequest:
        raise
    except (orjson.JSONDecodeError, json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidRequest(f"malformed OTLP JSON: {exc}") from None


def decode_json(body: bytes) -> tuple[ExportTraceServiceRequest, int]:
    """Parse an OTLP/JSON request body (hex ids, integer enums, camelCase keys). Returns the
    request and how many spans were left out for missing or malformed trace or span ids."""
    dropped = 0

    def prepare(doc: dict[str, Any]) -> None:
        nonlocal dropped
        for rs in _list(doc, "resourceSpans", "resource_spans"):
            for ss in _list(rs, "scopeSpans", "scope_spans"):
                spans = _list(ss, "spans")
                kept = []
                for span in spans:
                    if not isinstance(span, dict):
                        raise InvalidRequest("OTLP/JSON: a span must be an object")
                    if _hex_ids_to_base64(span):
                        kept.append(span)
                    for link in _list(span, "links"):
                        _hex_ids_to_base64(link)
                if len(kept) != len(spans):
                    dropped += len(spans) - len(kept)
                    ss["spans"] = kept

    request = ExportTraceServiceRequest()
    _parse_otlp_json(body, request, prepare)
    return request, dropped


def decode_logs_json(body: bytes) -> ExportLogsServiceRequest:
    """Parse an OTLP/JSON logs body (hex trace and span ids, as for spans; a record whose
    ids are not valid hex keeps none, since a log needs no trace)."""

    def prepare(doc: dict[str, Any]) -> None:
        for rl in _list(doc, "resourceLogs", "resource_logs"):
            for sl in _list(rl, "scopeLogs", "scope_logs"):
                for record in _list(sl, "logRecords", "log_records"):
                    if not isinstance(record, dict):
                        raise InvalidRequest("OTLP/JSON: a log record must be an object")
                    for key in ("traceId", "spanId"):
                        value = record.get(key)
                        if isinstance(value, str) and value:
                            try:
                                record[key] = base64.b64encode(bytes.fromhex(value)).decode()
                            except ValueError:
                                record.pop(key)

    request = ExportLogsServiceRequest()
    _parse_otlp_json(body, request, prepare)
    return request


def _list(obj: Any, *keys: str) -> list[Any]:
    if not isinstance(obj, dict):
        raise InvalidRequest("OTLP/JSON: expected an object")
    for key in keys:
        value = obj.get(key)
        if value is not None:
            if not isinstance(value, list):
                raise InvalidRequest(f"OTLP/JSON: {key} must be a list")
            return value
    return []
