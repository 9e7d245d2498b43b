"""Traces for the web UI tests and its screenshots, sent with the OpenTelemetry SDK: a
checkout that fails in its database call, an LLM call with messages and tokens, a span that
links to an earlier trace, and ordinary traces under two prompt versions."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

import requests
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer

from tests.support.otel import exporter

HOSTILE_NAME = '<img src=x onerror="window.__pwned=1">'


@dataclass
class DemoTraces:
    checkout: str  # the error trace: checkout → cart → db.query (error), and an LLM call
    linked: str  # the trace checkout's "retry" span links to
    hostile: str  # a span named HOSTILE_NAME, attributes full of markup
    ordinary: list[str]


def _id(span: Any) -> str:
    return format(span.get_span_context().trace_id, "032x")


def _llm_call(tracer: Tracer, prompt_key: str, error: bool = False) -> None:
    with tracer.start_as_current_span("chat gpt-4o", kind=SpanKind.CLIENT) as llm:
        llm.set_attributes({
            "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 812, "gen_ai.usage.output_tokens": 96, "prompt_key": prompt_key,
            "gen_ai.input.messages": json.dumps([
                {"role": "system", "parts": [{"type": "text", "content": "You are a checkout assistant."}]},
                {"role": "user", "parts": [{"type": "text", "content": "Why was my order refused?"}]}]),
            "gen_ai.output.messages": json.dumps([
                {"role": "assistant", "parts": [{"type": "text", "content": "The payment service timed out."}]}]),
        })  # fmt: skip
        llm.add_event("gen_ai.content.first_token")
        time.sleep(0.004)
        if error:
            llm.set_status(Status(StatusCode.ERROR, "rate limited"))


def _logs(c: Any, resource: Resource) -> LoggerProvider:
    """Log records out over OTLP/HTTP; one emitted inside a span carries its ids."""
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=c.http_url.replace("/v1/traces", "/v1/logs"))))
    return provider


def send(c: Any) -> DemoTraces:
    resource = Resource.create({"service.name": "shop-frontend", "deployment.environment": "test"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(exporter("http", c)))
    tracer = provider.get_tracer("tailsift-ui-tests", "1.0")
    logs = _logs(c, resource)
    with tracer.start_as_current_span("GET /orders", kind=SpanKind.SERVER) as first:
        first.set_status(Status(StatusCode.ERROR, "upstream 503"))
        linked = _id(first)
        earlier = first.get_span_context()
    with tracer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.route", "/checkout")
        with tracer.start_as_current_span("cart.load") as cart:
            cart.set_attribute("cart.items", 3)
            with tracer.start_as_current_span("db.query", kind=SpanKind.CLIENT) as db:
                db.set_attributes({"db.system": "postgresql", "db.statement": "SELECT * FROM carts WHERE id = $1"})
                db.add_event("exception", {"exception.type": "TimeoutError", "exception.message": "statement timeout"})
                db.set_status(Status(StatusCode.ERROR, "statement timeout after 2s"))
                logs.get_logger("shop").emit(severity_number=SeverityNumber.ERROR, severity_text="ERROR",
                                             body="cart 7 could not be read: statement timeout")  # fmt: skip
                time.sleep(0.003)
        _llm_call(tracer, "refusal-v1")
        with tracer.start_as_current_span("payment.retry", links=[Link(earlier, {"reason": "retry of order 41"})]):
            time.sleep(0.002)
        checkout = _id(root)
    with tracer.start_as_current_span(HOSTILE_NAME) as hostile_span:
        hostile_span.set_attributes({"note": "<script>window.__pwned=2</script>", "<b>key</b>": "x"})
        hostile_span.set_status(Status(StatusCode.ERROR, "<i>boom</i>"))
        hostile = _id(hostile_span)
    ordinary = []
    for i in range(12):
        with tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER) as span:
            _llm_call(tracer, f"refusal-v{1 + i % 2}", error=i % 4 == 0)
            ordinary.append(_id(span))
    provider.shutdown()
    logs.shutdown()
    return DemoTraces(checkout=checkout, linked=linked, hostile=hostile, ordinary=ordinary)


def post_spans(c: Any, spans: list[Any], service: str = "agent-runner") -> None:
    """OTLP/HTTP protobuf, as any exporter would post it."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=AnyValue(string_value=service))
    rs.scope_spans.add().spans.extend(spans)
    answer = requests.post(c.http_url, data=request.SerializeToString(),
                           headers={"Content-Type": "application/x-protobuf"}, timeout=60)  # fmt: skip
    answer.raise_for_status()


def tangled_trace(c: Any) -> str:
    """Spans whose parents form a cycle (a ↔ b), one whose parent never arrived, one deeper
    than the indentation goes (a chain of 60), and an error so that it is kept."""
    trace_id, now = bytes(range(1, 17)), time.time_ns()
    sid = [bytes([0xEE, i, 0, 0, 0, 0, 0, 1]) for i in range(64)]
    spans = [trace_pb2.Span(trace_id=trace_id, span_id=sid[0], parent_span_id=sid[1], name="cycle-a"),
             trace_pb2.Span(trace_id=trace_id, span_id=sid[1], parent_span_id=sid[0], name="cycle-b"),
             trace_pb2.Span(trace_id=trace_id, span_id=sid[2], parent_span_id=b"\x99" * 8, name="orphan"),
             *(trace_pb2.Span(trace_id=trace_id, span_id=sid[3 + i], parent_span_id=sid[2 + i] if i else b"", name=f"chain-{i}")
               for i in range(60))]  # fmt: skip
    for i, span in enumerate(spans):
        span.start_time_unix_nano, span.end_time_unix_nano = now + i * 1000, now + 10**6
    spans[-1].status.code = trace_pb2.Status.STATUS_CODE_ERROR
    post_spans(c, spans)
    return trace_id.hex()


def big_trace(c: Any, spans: int, seed: int = 7) -> str:
    """One trace of ``spans`` spans (a root; 100 branches; chains and fans under them), posted
    as OTLP/HTTP protobuf in batches; returns its id. The shape of a long agent run."""
    rng = random.Random(seed)
    trace_id = rng.randbytes(16)
    start = time.time_ns() - 120 * 10**9
    ids = [rng.randbytes(8) for _ in range(spans)]
    parents: list[int] = [-1] + [0 if i <= 100 else rng.randrange(max(1, i - 150), i) for i in range(1, spans)]
    parents[-1] = 0  # the last span is the root's last child: the waterfall's last row
    out = []
    for i in range(spans):
        begin = start + (i * 7_000_000 if i else 0)
        end = start + spans * 7_000_000 + 1_000_000 if i == 0 else begin + rng.randrange(1, 50) * 1_000_000
        span = trace_pb2.Span(trace_id=trace_id, span_id=ids[i], parent_span_id=ids[parents[i]] if i else b"", name=f"step-{i % 40}",
                    start_time_unix_nano=begin, end_time_unix_nano=end,
                    attributes=[KeyValue(key="step.index", value=AnyValue(int_value=i))])  # fmt: skip
        if i == spans - 1:
            span.status.code = trace_pb2.Status.STATUS_CODE_ERROR  # an error trace: kept by the default rules
            span.name = "last-step"
        out.append(span)
    for first in range(0, spans, 2000):
        post_spans(c, out[first:first + 2000])
    return trace_id.hex()
