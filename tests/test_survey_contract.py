"""The extension's validation of a request (``_wire.survey``) against upb's parse.

The receiver no longer decodes a protobuf body that needs no change: ``survey`` stands in
for upb's validation. So a body it accepts must be one upb accepts, with the same span
count, span names and services as the decoded request. (It may refuse more than upb: the
receiver then decodes with upb, as before.) Checked on generated, odd, damaged and
bit-flipped bodies, on invalid UTF-8 in every string field of the schema (found by walking
the installed proto's descriptors, so a field added upstream is not missed), and at upb's
nesting limit; then end to end through :class:`collector.ingest.Ingest`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.bench.shapes import SHAPES, build
from collector.config import load_config
from collector.ingest import Ingest, read_protobuf
from collector.queue import MemoryQueue
from collector.otlp import decode_protobuf
from processors import _wire, reference
from processors.cardinality import CardinalityProcessor
from processors.otlp_values import service_name
from processors.redaction import Redactor
from processors.wire import FALLBACKS, WireRequest
from tests.test_wire_contract import ODD, _ld, _varint, requests


def _upb(body: bytes) -> ExportTraceServiceRequest | None:
    try:
        return ExportTraceServiceRequest.FromString(body)
    except (DecodeError, RuntimeError, ValueError):
        return None


def assert_survey_holds(body: bytes) -> bool:
    """If the survey accepts ``body``, upb does, and they say the same; True if accepted."""
    try:
        count, names, services, text = _wire.survey(body)
    except ValueError:
        return False
    request = _upb(body)
    assert request is not None, "the survey accepted a body upb refuses"
    assert count == sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    assert names == reference.span_names(request)
    surveyed = WireRequest(body, decode_protobuf).services
    assert surveyed == [service_name(rs.resource.attributes) for rs in request.resource_spans]
    assert len(services) == len(request.resource_spans)
    missing = [t for t in _texts(request) if t not in text]
    assert not missing, f"the redactor's prefilter would not scan {missing[:3]}"
    # each field takes a tag and a length in the body, one newline in the text: the text is
    # held within the memory the receiver reserves for the body
    assert len(text) <= len(body)
    return True


def _texts(message: Any) -> Iterator[bytes]:
    """Every string field of a decoded message, and every ``AnyValue.bytes_value``: where a
    secret can be, which the survey's text must hold, each in one piece."""
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        for v in values:
            if field.type == FieldDescriptor.TYPE_STRING:
                yield v.encode()
            elif field.type == FieldDescriptor.TYPE_BYTES and field.containing_type.name == "AnyValue":
                yield v
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                yield from _texts(v)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=requests())
def test_generated_requests_are_accepted_and_agree(body: bytes) -> None:
    assert assert_survey_holds(body)


@pytest.mark.parametrize("shape", SHAPES)
def test_bench_shapes_are_accepted_and_agree(shape: str) -> None:
    assert assert_survey_holds(build(shape).fresh())


@pytest.mark.parametrize("case", ODD)
def test_odd_encodings_agree_or_are_left_to_upb(case: str) -> None:
    accepted = assert_survey_holds(ODD[case]())
    assert accepted == ("group" not in case), "only a group is left to upb among these"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=requests(), cut=st.integers(0, 10_000), junk=st.binary(max_size=6), flips=st.lists(st.integers(0, 10**6), max_size=3))
def test_damaged_bodies_are_never_accepted_unless_upb_accepts(seed: bytes, cut: int, junk: bytes, flips: list[int]) -> None:
    at = cut % (len(seed) + 1)
    body = bytearray(seed[:at] + junk + seed[at + len(junk):])
    for flip in flips:
        if body:
            body[flip % len(body)] ^= 1 << (flip % 8)
    assert_survey_holds(bytes(body))


def _string_paths(d: Descriptor, path: tuple[FieldDescriptor, ...] = (), depth: int = 0) -> Iterator[tuple[FieldDescriptor, ...]]:
    """Every path from the request to a string field (recursive types entered twice)."""
    for f in d.fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            yield (*path, f)
        elif f.type == FieldDescriptor.TYPE_MESSAGE and sum(p.message_type is f.message_type for p in path) < 2:
            yield from _string_paths(f.message_type, (*path, f), depth + 1)


STRING_PATHS = {".".join(f.name for f in p): p for p in _string_paths(ExportTraceServiceRequest.DESCRIPTOR)}


def _nested(path: tuple[FieldDescriptor, ...], text: bytes) -> bytes:
    body = _ld(path[-1].number, text)
    for f in reversed(path[:-1]):
        body = _ld(f.number, body)
    return body


def test_the_schema_walk_finds_every_string_field() -> None:
    names = {p[-1].containing_type.name + "." + p[-1].name for p in STRING_PATHS.values()}
    assert {"Span.name", "KeyValue.key", "AnyValue.string_value", "Status.message", "Event.name", "EntityRef.id_keys",
            "InstrumentationScope.version", "Link.trace_state", "ResourceSpans.schema_url"} <= names  # fmt: skip


@pytest.mark.parametrize("path", STRING_PATHS)
def test_invalid_utf8_in_any_string_field_is_refused(path: str) -> None:
    fields = STRING_PATHS[path]
    good, bad = _nested(fields, "ok é".encode()), _nested(fields, b"ok \xc3(")
    assert _upb(good) is not None and assert_survey_holds(good)
    assert _upb(bad) is None
    with pytest.raises(ValueError):
        _wire.survey(bad)


def _deep(levels: int) -> bytes:
    """An attribute value of ``levels`` nested arrays: the innermost message at 4 + 2 x levels."""
    value = _ld(1, b"x")
    for _ in range(levels):
        value = _ld(5, _ld(1, value))
    return _ld(1, _ld(1, _ld(1, _ld(1, b"k") + _ld(2, value))))


@pytest.mark.parametrize("levels", [47, 48, 49, 50, 200])
def test_nesting_is_refused_where_upb_refuses_it(levels: int) -> None:
    accepted = _upb(_deep(levels)) is not None
    assert accepted == (levels <= 48)
    assert assert_survey_holds(_deep(levels)) == accepted


@pytest.mark.parametrize("body", [
    bytes([0x88, 0x80, 0x80, 0x80, 0x80, 0x00, 0x01]),  # a tag in six bytes
    bytes([0x0A] + [0x80] * 9 + [0x00]),  # a length in ten bytes
    bytes([0x0C]), bytes([0x0E]), b"\x0a\x05abc",  # an end group, wire type 6, a cut length
])  # fmt: skip
def test_encodings_upb_refuses_are_refused(body: bytes) -> None:
    assert _upb(body) is None
    with pytest.raises(ValueError):
        _wire.survey(body)


def test_a_service_name_that_is_not_a_string_reads_as_upb_reads_it() -> None:
    resource = _ld(1, _ld(1, b"service.name") + _ld(2, _varint(3 << 3) + _varint(42)))
    body = _ld(1, _ld(1, resource) + _ld(1, _ld(1, _ld(1, b"service.name") + _ld(2, _ld(1, b"later")))))
    assert WireRequest(body, decode_protobuf).services == ["42"]
    assert assert_survey_holds(body)


def _with_secret(path: str | None, secret: bytes) -> bytes:
    """A request with ``secret`` at ``path`` (a key of STRING_PATHS; None: a ``bytes_value``),
    in a span with valid ids, so that what the redactor missed would be queued."""
    if path is None:
        req = ExportTraceServiceRequest()
        req.resource_spans.add().scope_spans.add().spans.add().attributes.add(key="b").value.bytes_value = secret
    else:
        req = ExportTraceServiceRequest.FromString(_nested(STRING_PATHS[path], secret))
    rs = req.resource_spans[0]
    ss = rs.scope_spans[0] if rs.scope_spans else rs.scope_spans.add()
    span = ss.spans[0] if ss.spans else ss.spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, span.name or "ok"
    return req.SerializeToString()


@pytest.mark.parametrize("path", [*STRING_PATHS, None])
def test_a_secret_in_any_field_is_seen_by_the_prefilter_and_never_queued(path: str | None) -> None:
    """The redactor's prefilter scans the survey's text, not the body: a field missing from
    the text would let a secret through unredacted."""
    body = _with_secret(path, b"mail bob@example.com")
    request = read_protobuf(body)
    assert isinstance(request, WireRequest)
    ingest, queue = _ingest()
    queued = _queued(ingest, queue, request, body)
    assert queued and b"bob@example.com" not in queued
    assert ingest.redactions


# --- end to end: a request with nothing to change is never decoded


def _ingest() -> tuple[Ingest, MemoryQueue]:
    settings = load_config(None)
    queue = MemoryQueue(1 << 30, 1.0, None)
    return Ingest(queue, Redactor(settings.redaction), CardinalityProcessor(settings.cardinality)), queue


def _queued(ingest: Ingest, queue: MemoryQueue, request: Any, raw: bytes) -> bytes:
    """The payloads the request left on the queue."""
    async def go() -> list[Any] | None:
        await ingest.export(request, raw)
        return await queue.consume(1 << 20, 0.0)

    return b"".join(f.payload for f in asyncio.run(go()) or [])


def test_a_request_with_nothing_to_change_is_not_decoded() -> None:
    body = build("llm").fresh()
    request = read_protobuf(body)
    assert isinstance(request, WireRequest)
    ingest, queue = _ingest()
    queued = _queued(ingest, queue, request, body)
    assert request._message is None, "decoded though nothing had to change"
    assert ingest.stats["spans_accepted"] == request.span_count == 512 and b"chat gpt-4o-mini" in queued


def test_a_request_with_a_secret_is_decoded_and_redacted() -> None:
    req = ExportTraceServiceRequest.FromString(build("llm").fresh())
    req.resource_spans[0].scope_spans[0].spans[1].attributes.add(key="note").value.string_value = "mail bob@example.com"
    req.resource_spans[0].scope_spans[0].spans[2].name = "GET /users/12345"
    body = req.SerializeToString()
    request = read_protobuf(body)
    ingest, queue = _ingest()
    queued = _queued(ingest, queue, request, body)
    assert isinstance(request, WireRequest) and request._message is not None
    assert b"bob@example.com" not in queued and b"GET /users/12345" not in queued and b"GET /users/" in queued
    assert ingest.redactions and ingest.processed["cardinality"]["span_names_normalized"] == 1


def test_a_body_the_survey_leaves_to_upb_is_decoded_and_taken() -> None:
    """A group (legal protobuf, refused by the survey) takes the old path: decoded by upb."""
    body = ODD["unknown fields and a group"]()
    before = FALLBACKS["survey"]
    request = read_protobuf(body)
    assert isinstance(request, ExportTraceServiceRequest) and FALLBACKS["survey"] == before + 1
    ingest, queue = _ingest()
    assert _queued(ingest, queue, request, body) and ingest.stats["spans_accepted"] == 1
