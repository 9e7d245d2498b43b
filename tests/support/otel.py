"""Send traces with the official OpenTelemetry SDK and OTLP exporters, and keep what was sent."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer


class SeededIds(IdGenerator):
    """Reproducible trace and span ids: a statistical test then sees the same sample every run."""

    def __init__(self, seed: int):
        self.random = random.Random(seed)

    def generate_span_id(self) -> int:
        return self.random.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self.random.getrandbits(128) or 1


def exporter(kind: str, collector: Any) -> Any:
    if kind == "grpc":
        return GrpcExporter(endpoint=collector.grpc_endpoint, insecure=True, timeout=30)
    return HttpExporter(endpoint=collector.http_url, timeout=30)


class Sender:
    """A tracer provider exporting over ``kind`` ("grpc"/"http"), recording every span it ends."""

    def __init__(self, kind: str, collector: Any, service: str = "chat-api", seed: int | None = None,
                 delay_ms: int = 5000, **resource: Any):  # fmt: skip
        ids = SeededIds(seed) if seed is not None else None
        self.provider = TracerProvider(resource=Resource.create({"service.name": service, **resource}), id_generator=ids)
        self.sent = InMemorySpanExporter()
        self.provider.add_span_processor(SimpleSpanProcessor(self.sent))
        self.provider.add_span_processor(
            BatchSpanProcessor(exporter(kind, collector), max_queue_size=200_000, max_export_batch_size=512,
                               schedule_delay_millis=delay_ms)  # fmt: skip
        )
        self.tracer: Tracer = self.provider.get_tracer("tailsift-tests")

    def close(self) -> list[ReadableSpan]:
        assert self.provider.force_flush(60_000), "exporter did not flush"
        self.provider.shutdown()
        return list(self.sent.get_finished_spans())


def error_span(service: str, **resource: Any) -> tuple[ReadableSpan, str]:
    """One finished error span (kept by the default rules) and its trace id, for calling an
    exporter's ``export`` directly (its result says whether the collector took it)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service, **resource}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("tests").start_as_current_span("POST /chat") as span:
        span.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
    (done,) = memory.get_finished_spans()
    return done, format(done.context.trace_id, "032x")


def llm_trace(tracer: Tracer, error_in: str | None = None, extra: Callable[[Any], None] | None = None) -> str:
    """One LLM-app request: root → retrieve → vector.search, then llm.chat. Returns the trace id hex."""
    with tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.route", "/chat")
        with tracer.start_as_current_span("retrieve"):
            with tracer.start_as_current_span("vector.search") as vs:
                vs.set_attribute("db.system", "qdrant")
                if error_in == "vector.search":
                    vs.set_status(Status(StatusCode.ERROR, "vector store timeout"))
        with tracer.start_as_current_span("llm.chat", kind=SpanKind.CLIENT) as llm:
            llm.set_attribute("gen_ai.request.model", "gpt-4o-mini")
            llm.set_attribute("gen_ai.usage.input_tokens", random.randint(100, 2000))
            llm.set_attribute("gen_ai.usage.output_tokens", random.randint(10, 500))
            if error_in == "llm.chat":
                llm.set_status(Status(StatusCode.ERROR, "upstream 429"))
            if extra is not None:
                extra(llm)
        return format(root.get_span_context().trace_id, "032x")
