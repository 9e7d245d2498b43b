"""No secret survives in any field (issue 11): a secret is planted in every string and bytes
field of the OTLP trace and logs protos, found by reflection, so a field added to a proto
later is planted too. The redactor is checked on each alone (fast), then a real collector
on the Kafka queue takes every planted request over gRPC, HTTP protobuf and HTTP JSON, and
the secret must be in none of ClickHouse (otel_logs included), Kafka, the API, the CLI,
/metrics or the log."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
import requests
from aiokafka import AIOKafkaConsumer
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.kafka.envelope import decode
from processors.redaction import Redactor
from processors.redaction.prefilter import BACKENDS
from processors.redaction.settings import RedactionSettings
from tests.support.collector import Collector
from tests.support.kafka import kafka_queue
from tests.support.storage import dump_tables

SECRET = "AKIAZ7Q2M4N6P8R0T2V4"  # an AWS access key id: the built-in aws_access_key rule
TICKET = "TICKET-123456"  # whole-value match of an anchored custom rule
REDACTION = {"patterns": [{"name": "ticket", "regex": r"^TICKET-\d{6}$"}]}
IDS = {"Span.trace_id", "Span.span_id", "Span.parent_span_id", "Span.Link.trace_id", "Span.Link.span_id",
       "LogRecord.trace_id", "LogRecord.span_id"}
"""Fixed-size identifiers (16 or 8 bytes, validated as such): not free text, never planted."""
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
EXPORT_LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
Path_ = tuple[FieldDescriptor, ...]


def leaf_paths(descriptor: Descriptor, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every string and bytes field reachable from ``descriptor``; a message that contains
    itself (AnyValue in arrays and key-value lists) is followed one level deep."""
    for field in descriptor.fields:
        path = prefix + (field,)
        if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            yield path
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if sum(f.message_type is field.message_type for f in prefix if f.message_type) < 2:
                yield from leaf_paths(field.message_type, path)


def field_name(field: FieldDescriptor) -> str:
    return field.full_name.removeprefix("opentelemetry.proto.").split(".", 2)[-1]


def skeleton(n: int) -> ExportTraceServiceRequest:
    """A valid request: one error span (kept by the default rules), its own trace id."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "planted"
    span = rs.scope_spans.add().spans.add(name=f"span-{n}", trace_id=(10**6 + n).to_bytes(16, "big"),
                                          span_id=(n + 1).to_bytes(8, "big"))  # fmt: skip
    now = time.time_ns()
    span.start_time_unix_nano, span.end_time_unix_nano = now - 1_000_000, now
    span.status.code = 2
    return request


def log_skeleton(n: int) -> ExportLogsServiceRequest:
    """A valid logs request: one record, linked to the trace of the same number."""
    request = ExportLogsServiceRequest()
    rl = request.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "planted"
    record = rl.scope_logs.add().log_records.add(trace_id=(10**6 + n).to_bytes(16, "big"),
                                                 span_id=(n + 1).to_bytes(8, "big"))  # fmt: skip
    record.time_unix_nano = time.time_ns()
    record.severity_number = 17
    return request


def plant(path: Path_, value: Any, n: int, logs: bool = False) -> Any:
    request: Any = log_skeleton(n) if logs else skeleton(n)
    message: Any = request
    for field in path[:-1]:
        if field.is_repeated:
            container = getattr(message, field.name)
            message = container[0] if len(container) and field.name != "attributes" else container.add()
            if field.message_type.name == "KeyValue" and logs and message.key == "service.name":
                message = container.add()
            if field.message_type.name == "KeyValue":
                message.key = "planted.key"
        else:
            message = getattr(message, field.name)
    leaf = path[-1]
    if leaf.is_repeated:
        getattr(message, leaf.name).append(value)
    else:
        setattr(message, leaf.name, value)
    return request


def planted_requests(logs: bool = False) -> list[tuple[str, Any]]:
    """(field and variant, request) for every plantable field of the trace (or logs)
    request, each with its own trace id."""
    out: list[tuple[str, Any]] = []
    root = ExportLogsServiceRequest if logs else ExportTraceServiceRequest
    for path in leaf_paths(root.DESCRIPTOR):
        leaf = path[-1]
        if field_name(leaf) in IDS:
            continue
        where = ".".join(f.name for f in path)
        if leaf.type == FieldDescriptor.TYPE_STRING:
            variants = {"inside text": f"see {SECRET} here", "anchored rule": TICKET}
        else:
            variants = {"utf-8": f"see {SECRET} here".encode(), "binary": b"\xff\x00 " + SECRET.encode() + b" \xfe"}
        for variant, value in variants.items():
            out.append((f"{where} ({variant})", plant(path, value, len(out), logs)))
    return out


def forms(secret: str) -> list[bytes]:
    """How a secret could show up: as is, hex (bytes values are stored as hex), base64."""
    raw = secret.encode()
    out = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for shift in range(3):  # base64 of the secret at any alignment inside a longer payload
        out.append(base64.b64encode(b"\x00" * shift + raw)[4 if shift else 0:-4])
    return out


def leaks(data: bytes) -> list[str]:
    return [s for s in (SECRET, TICKET) if any(form in data for form in forms(s))]


def test_every_field_is_planted() -> None:
    """The reflection walk finds the fields we know about, and skips only the ids."""
    names = {field_name(p[-1]) for root in (ExportTraceServiceRequest, ExportLogsServiceRequest)
             for p in leaf_paths(root.DESCRIPTOR)}  # fmt: skip
    assert IDS <= names
    for expected in ("Span.trace_state", "InstrumentationScope.name", "InstrumentationScope.version",
                     "ScopeSpans.schema_url", "ResourceSpans.schema_url", "KeyValue.key", "AnyValue.bytes_value",
                     "Span.Link.trace_state", "Span.Event.name", "Status.message", "LogRecord.severity_text",
                     "LogRecord.event_name", "ScopeLogs.schema_url", "ResourceLogs.schema_url"):  # fmt: skip
        assert expected in names
    assert len(planted_requests()) >= 70


@pytest.mark.parametrize("signal", ["traces", "logs"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_redactor_clears_every_field(backend: str, signal: str) -> None:
    redactor = Redactor(RedactionSettings.model_validate(REDACTION), backend)
    redact = redactor.logs if signal == "logs" else redactor
    missed = []
    planted = planted_requests(logs=signal == "logs")
    assert len(planted) >= 40
    for where, request in planted:
        assert leaks(request.SerializeToString()), where  # the plant is really there
        redact(request)
        if leaks(request.SerializeToString()) or leaks(json_format.MessageToJson(request).encode()):
            missed.append(where)
    assert not missed, f"secrets left in: {missed}"


def otlp_json(request: Any) -> bytes:
    """OTLP/JSON: like protobuf JSON, but trace and span ids in hex (spans, links, logs)."""
    doc = json_format.MessageToDict(request)
    items = [item for rs in doc.get("resourceSpans", []) for ss in rs.get("scopeSpans", [])
             for span in ss.get("spans", []) for item in [span, *span.get("links", [])]]
    items += [record for rl in doc.get("resourceLogs", []) for sl in rl.get("scopeLogs", [])
              for record in sl.get("logRecords", [])]  # fmt: skip
    for item in items:
        for key in ("traceId", "spanId", "parentSpanId"):
            if item.get(key):
                item[key] = base64.b64decode(item[key]).hex()
    return orjson.dumps(doc)


async def _topic_values(bootstrap: str, topics: list[str]) -> bytes:
    """Every record in ``topics`` (decoded from tailsift's envelope when it is one)."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)  # fmt: skip
    await consumer.start()
    out = []
    try:
        while batch := await consumer.getmany(timeout_ms=3000):
            for records in batch.values():
                for record in records:
                    out.append(record.value or b"")
                    try:
                        out.extend(f.payload for f in decode(record.value))
                    except Exception:  # noqa: BLE001 - a dead letter is raw bytes
                        pass
    finally:
        await consumer.stop()
    return b"\n".join(out)


@pytest.mark.e2e
def test_no_planted_secret_reaches_any_output(tmp_path: Path, kafka: str) -> None:
    queue = kafka_queue(kafka)
    config = {**queue, "redaction": REDACTION}
    planted = planted_requests()
    planted_logs = planted_requests(logs=True)  # linked to the planted traces' ids
    sent: list[str] = []
    collector = Collector(tmp_path / "collector", config).start()
    try:
        with grpc.insecure_channel(collector.grpc_endpoint) as channel:
            calls = {path: channel.unary_unary(path, request_serializer=None, response_deserializer=None)
                     for path in (EXPORT, EXPORT_LOGS)}  # fmt: skip
            for i, (where, request) in enumerate([*planted, *planted_logs]):
                logs = isinstance(request, ExportLogsServiceRequest)
                protocol = ("grpc", "protobuf", "json")[i % 3]
                if protocol == "grpc":
                    calls[EXPORT_LOGS if logs else EXPORT](request.SerializeToString(), timeout=10)
                else:
                    body = otlp_json(request) if protocol == "json" else request.SerializeToString()
                    kind = "application/json" if protocol == "json" else "application/x-protobuf"
                    url = collector.http_url.replace("/v1/traces", "/v1/logs") if logs else collector.http_url
                    response = requests.post(url, data=body, headers={"Content-Type": kind}, timeout=10)
                    assert response.status_code == 200, (where, response.text)
                if not logs:
                    sent.append(request.resource_spans[0].scope_spans[0].spans[0].trace_id.hex())

        def all_stored() -> bool:
            listed = collector.get("/api/traces", limit="1000").json()["traces"]
            return len(listed) >= len(sent)

        collector.wait_for(all_stored, timeout=60, what="every planted trace stored")
        api = [collector.get(f"/api/traces/{t}").content for t in sent]
        api += [collector.get("/api/traces", limit="1000").content,
                collector.get("/api/stats", group_by="span_name").content,
                collector.get("/api/stats", group_by="planted.key").content]  # fmt: skip
        cli = [sys.executable, "-m", "collector.cli"]
        printed = [subprocess.run([*cli, *args, "--api", collector.api], capture_output=True, timeout=60).stdout
                   for args in (["traces", "--limit", "1000"], ["stats", "--group-by", "span_name"],
                                *(["trace", t] for t in sent[:12]))]  # fmt: skip
        metrics = collector.get("/metrics").content
    finally:
        collector.stop()
    kafka_data = asyncio.run(_topic_values(kafka, [queue["queue"]["kafka"]["topic"],
                                                   queue["queue"]["kafka"]["topic"] + "-dlq"]))  # fmt: skip
    stored = dump_tables(collector.dsn)
    assert b"span-0" in stored and len(kafka_data) > 0  # the outputs really hold the planted spans
    assert stored.count(b"planted") >= len(planted_logs)  # ... and logs (service.name of every record)
    assert b'"logs":[{' in b"".join(api)  # the trace answers carry their logs
    places = {"ClickHouse": stored, "Kafka": kafka_data, "API": b"".join(api), "CLI": b"".join(printed),
              "/metrics": metrics, "log": collector.log().encode()}  # fmt: skip
    found = {place: leaks(data) for place, data in places.items() if leaks(data)}
    assert not found, f"planted secrets found in {found}"
    assert os.path.getsize(collector.log_path) > 0
