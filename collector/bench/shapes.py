"""Load shapes for ``tailsift bench``: prebuilt OTLP requests that get fresh trace ids cheaply.

A sender must never be the bottleneck, so requests are not built per send. Each shape is
serialized once with a random 16-byte marker in place of every trace id; sending a copy
then only overwrites the markers' byte positions with fresh random ids (one slice
assignment per span), which costs microseconds for a 64 KB request.

Shapes (about 500 spans per request):
- ``llm``: an LLM app request, 4 spans: ``POST /chat`` → ``retrieve`` → ``vector.search``,
  and ``chat gpt-4o-mini`` with GenAI model and token attributes;
- ``fanout``: an API call fanning out to 20 database queries (21 spans);
- ``deep``: a chain of 12 nested calls.

One trace in 50 has an error span, so the ``errors`` rule has work and the stored error
traces can be counted against what was sent.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processors.otlp_values import add_attributes

SHAPES = ("llm", "fanout", "deep")
ERROR_EVERY = 50
_SPANS_PER_REQUEST = 512


def _llm(add: Any) -> None:
    root = add("POST /chat", None, kind=2, attrs={"http.route": "/chat", "http.request.method": "POST"})
    retrieve = add("retrieve", root)
    add("vector.search", retrieve, kind=3, attrs={"db.system": "qdrant"})
    add("chat gpt-4o-mini", root, kind=3, attrs={"gen_ai.request.model": "gpt-4o-mini", "gen_ai.operation.name": "chat",
                                                 "gen_ai.usage.input_tokens": 812, "gen_ai.usage.output_tokens": 95})


def _fanout(add: Any) -> None:
    root = add("GET /api/orders", None, kind=2, attrs={"http.route": "/api/orders"})
    for i in range(20):
        add("SELECT orders", root, kind=3, attrs={"db.system": "postgresql", "db.statement": f"SELECT * FROM orders_{i % 4}"})


def _deep(add: Any) -> None:
    parent = add("GET /checkout", None, kind=2, attrs={"http.route": "/checkout"})
    for depth in range(11):
        parent = add(f"step.{depth}", parent)


_BUILDERS = {"llm": _llm, "fanout": _fanout, "deep": _deep}


@dataclass
class Template:
    """One serialized request and where its trace ids sit."""

    body: bytes
    slots: list[list[int]]
    """Per trace: the byte offsets of its trace id in ``body``."""
    spans: int
    error_traces: int
    errors: list[int] = field(default_factory=list)
    """Indexes (into ``slots``) of the traces that have an error span."""

    def fresh(self) -> bytes:
        """A copy with a new random trace id per trace."""
        return self.fresh_with_ids()[0]

    def fresh_with_ids(self) -> tuple[bytes, bytes]:
        """A copy with a new random trace id per trace, and those ids (16 bytes each, in order)."""
        out = bytearray(self.body)
        ids = os.urandom(16 * len(self.slots))
        for i, offsets in enumerate(self.slots):
            new = ids[16 * i:16 * i + 16]
            for at in offsets:
                out[at:at + 16] = new
        return bytes(out), ids


def build_set(shape: str, count: int = 16) -> list[Template]:
    """``count`` requests whose traces are numbered on from each other, so that one trace in
    ``ERROR_EVERY`` has an error over the set whatever the shape's traces per request."""
    out: list[Template] = []
    for _ in range(count):
        out.append(build(shape, first_trace=sum(len(t.slots) for t in out)))
    return out


def build(shape: str, service: str = "bench-app", first_trace: int = 0) -> Template:
    """A request of ``shape`` traces, about 512 spans; trace numbers start at ``first_trace``."""
    builder = _BUILDERS[shape]
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    rs.resource.attributes.add(key="deployment.environment").value.string_value = "bench"
    spans = rs.scope_spans.add(scope={"name": "tailsift.bench"}).spans
    now = time.time_ns()
    markers: list[bytes] = []
    errors = 0
    error_indexes: list[int] = []
    trace_index = first_trace
    while len(spans) < _SPANS_PER_REQUEST:
        marker = os.urandom(16)
        markers.append(marker)
        first = len(spans)

        def add(name: str, parent: Any, kind: int = 1, attrs: dict[str, Any] | None = None) -> Any:
            offset = (len(spans) - first) * 3_000_000
            span = spans.add(trace_id=marker, span_id=os.urandom(8), name=name, kind=kind,
                             parent_span_id=parent.span_id if parent is not None else b"",
                             start_time_unix_nano=now + offset, end_time_unix_nano=now + offset + 40_000_000)  # fmt: skip
            add_attributes(span.attributes, attrs or {})
            return span

        builder(add)
        trace_index += 1
        if trace_index % ERROR_EVERY == 0:
            spans[len(spans) - 1].status.code = 2  # type: ignore[assignment]  # STATUS_CODE_ERROR
            spans[len(spans) - 1].status.message = "bench: injected error"
            errors += 1
            error_indexes.append(len(markers) - 1)
    body = req.SerializeToString()
    slots = []
    for marker in markers:
        offsets, at = [], body.find(marker)
        while at != -1:
            offsets.append(at)
            at = body.find(marker, at + 16)
        slots.append(offsets)
    return Template(body, slots, len(spans), errors, error_indexes)
