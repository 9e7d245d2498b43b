"""The trace API returns attribute values with their OTLP types, and a span's scope, kind,
trace state and links: 502 is a number, "502" stays a string, a list is a JSON array."""

from __future__ import annotations

from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from tests.support.collector import Collector
from tests.support.otel import exporter


def test_values_come_back_typed_with_scope_and_links(tmp_path: Path) -> None:
    with Collector(tmp_path / "collector").start() as c:
        provider = TracerProvider(resource=Resource.create({"service.name": "typed", "deployment.replicas": 3}))
        provider.add_span_processor(SimpleSpanProcessor(exporter("http", c)))
        tracer = provider.get_tracer("typed-tests", "2.1.0")
        linked = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(1),
                             trace_state=TraceState([("vendor", "x")]))  # fmt: skip
        with tracer.start_as_current_span("GET /orders", kind=SpanKind.CLIENT, links=[Link(linked, {"why": "retry"})]) as span:
            span.set_attributes({"http.response.status_code": 502, "http.status_text": "502", "retry": True,
                                 "latency.ratio": 0.25, "tags": ["a", "b"], "codes": [1, 2]})  # fmt: skip
            span.add_event("retrying", {"attempt": 2})
            span.set_status(Status(StatusCode.ERROR))
            trace_id = format(span.get_span_context().trace_id, "032x")
        provider.shutdown()
        c.wait_for(lambda: c.get(f"/api/traces/{trace_id}").status_code == 200, what="the trace")
        (got,) = c.get(f"/api/traces/{trace_id}").json()["spans"]
    attributes = got["attributes"]
    assert attributes["http.response.status_code"] == 502 and attributes["http.status_text"] == "502"
    assert attributes["retry"] is True and attributes["latency.ratio"] == 0.25
    assert attributes["tags"] == ["a", "b"] and attributes["codes"] == [1, 2]
    assert got["resource_attributes"]["deployment.replicas"] == 3
    assert got["events"][0]["attributes"] == {"attempt": 2}
    assert got["kind"] == "Client" and got["scope"] == {"name": "typed-tests", "version": "2.1.0"}
    (link,) = got["links"]  # (the Python SDK's encoder leaves a link's trace_state out)
    assert (link["trace_id"], link["span_id"], link["attributes"]) == (format(0xABC, "032x"), format(0xDEF, "016x"),
                                                                       {"why": "retry"})  # fmt: skip
    assert "trace_state" in link


def test_typed_attributes_read_once_keep_the_last_value_and_the_last_non_string_type() -> None:
    """Rows read each attribute list once for its values and types; a repeated key keeps the
    last value (as a dict would) and the last type that is not a string."""
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    from processors.otlp_values import attributes_map, typed_attributes

    kvs = [KeyValue(key="code"), KeyValue(key="code"), KeyValue(key="ratio"), KeyValue(key="ok"), KeyValue(key="tags"),
           KeyValue(key="raw"), KeyValue(key="empty"), KeyValue(key="text")]  # fmt: skip
    kvs[0].value.int_value = 502
    kvs[1].value.string_value = "bad gateway"
    kvs[2].value.double_value = 1e16
    kvs[3].value.bool_value = False
    kvs[4].value.array_value.values.add().string_value = "a"
    kvs[5].value.bytes_value = b"\x01\xff"
    kvs[7].value.string_value = "x"
    values, types = typed_attributes(kvs)
    assert values == attributes_map(kvs) == {"code": "bad gateway", "ratio": "1e+16", "ok": "false", "tags": '["a"]',
                                             "raw": '"01ff"', "empty": "", "text": "x"}  # fmt: skip
    assert types == {"code": "int", "ratio": "double", "ok": "bool", "tags": "array", "raw": "bytes"}
