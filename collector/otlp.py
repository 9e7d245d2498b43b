"""Decoding OTLP requests and cutting them into per-trace fragments.

A *fragment* is the spans of one trace from one request, kept as serialized OTLP
``TracesData`` bytes plus the few facts the sampler needs to decide without parsing them
again (span count, time range, error, root span). Keeping bytes, not objects, is what
keeps buffered memory close to the wire size: a span is only turned into Python objects
and rows once its trace is kept.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.errors import InvalidRequest
from processors.fragment import Fragment, RootInfo
from processors.otlp_values import service_name

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
STATUS_ERROR = 2


@dataclass(slots=True)
class SplitResult:
    fragments: list[Fragment]
    rejected_spans: int
    error_message: str
    expired_spans: int = 0


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


def _invalid_id_reason(span: Any) -> str | None:
    if len(span.trace_id) != 16 or span.trace_id == _ZERO_TRACE:
        return "trace_id must be 16 bytes and not all zero"
    if len(span.span_id) != 8 or span.span_id == _ZERO_SPAN:
        return "span_id must be 8 bytes and not all zero"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return "parent_span_id must be empty or 8 bytes"
    return None


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [_varint(n) for n in range(1 << 14)]  # lengths up to 16 KiB take one table lookup


def _length(n: int) -> bytes:
    return _SMALL[n] if n < 16384 else _varint(n)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _SMALL[number << 3 | 2] + _length(len(payload)) + payload


def _framing(rs: Any, ss: Any) -> tuple[bytes, bytes, bytes, bytes]:
    """The bytes around the spans of one (resource, scope): resource, its schema url, scope, its schema url."""
    resource = _field(1, rs.resource.SerializeToString())
    scope = _field(1, ss.scope.SerializeToString())
    rs_schema = _field(3, rs.schema_url.encode()) if rs.schema_url else b""
    ss_schema = _field(3, ss.schema_url.encode()) if ss.schema_url else b""
    return resource, rs_schema, scope, ss_schema


EXPIRED = "start time is older than the storage retention (storage.clickhouse.ttl_days), so it would be deleted on arrival"


def split_by_trace(request: ExportTraceServiceRequest, received_ns: int | None = None,
                   oldest_ns: int = 0) -> SplitResult:  # fmt: skip
    """Validate ids and group spans by trace id into fragments.

    Spans with invalid ids, and spans that start before ``oldest_ns`` (storage would delete
    them at once, by its TTL), are rejected and counted, so that the rest of the request is
    accepted (OTLP ``partial_success``): nothing is acknowledged and then silently deleted.

    This runs on every span that arrives, so it reads each span once and builds each
    fragment's ``TracesData`` from serialized pieces: every span is serialized on its own
    (one C call) and the resource, scope and framing bytes are written once per request.
    Building protobuf objects per trace instead cost twice as much.
    """
    now = received_ns or time.time_ns()
    # trace id -> [span count, start, end, error, root, {(ri, si): [serialized spans]}]
    groups: dict[bytes, list[Any]] = {}
    framing: dict[tuple[int, int], tuple[bytes, bytes, bytes, bytes]] = {}
    rejected, expired, reason = 0, 0, ""
    for ri, rs in enumerate(request.resource_spans):
        service = ""
        for si, ss in enumerate(rs.scope_spans):
            if ss.spans:
                framing[(ri, si)] = _framing(rs, ss)
            for span in ss.spans:
                trace_id, span_id, parent = span.trace_id, span.span_id, span.parent_span_id
                if (len(trace_id) != 16 or len(span_id) != 8 or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN
                        or (parent and len(parent) != 8)):  # fmt: skip
                    rejected += 1
                    reason = reason or str(_invalid_id_reason(span))
                    continue
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                if start < oldest_ns:
                    rejected += 1
                    expired += 1
                    continue
                group = groups.get(trace_id)
                if group is None:
                    group = groups[trace_id] = [0, start, end, False, None, {}]
                group[0] += 1
                if start < group[1]:
                    group[1] = start
                if end > group[2]:
                    group[2] = end
                if span.status.code == STATUS_ERROR:
                    group[3] = True
                if not parent:
                    service = service or service_name(rs.resource.attributes)
                    group[4] = RootInfo(service, span.name, start, end)
                chunks = group[5]
                chunk = chunks.get((ri, si))
                if chunk is None:
                    chunk = chunks[(ri, si)] = []
                chunk.append(span.SerializeToString())
    fragments = []
    for trace_id, (count, start, end, error, root, chunks) in groups.items():
        parts = []
        for key, spans in chunks.items():
            resource, rs_schema, scope, ss_schema = framing[key]
            scope_spans = scope + b"".join([b"\x12" + _length(len(s)) + s for s in spans]) + ss_schema
            parts.append(_field(1, resource + _field(2, scope_spans) + rs_schema))
        fragments.append(Fragment(trace_id, b"".join(parts), count, start, end, error, root, now))
    reasons = ([f"{rejected - expired} with invalid ids ({reason})"] if rejected > expired else []) + (
        [f"{expired} whose {EXPIRED}"] if expired else [])
    message = f"{rejected} spans rejected: " + "; ".join(reasons) if rejected else ""
    return SplitResult(fragments, rejected, message, expired)
