"""The ingress stage both receivers share: redact → normalise → validate and split → queue → count.

Receivers only speak their protocol (decode bodies, map errors to codes); everything that
must be identical for gRPC and HTTP happens here, once. Redaction runs first, so a secret
never reaches the queue (and so never Kafka, disk or logs); span names are normalised next
(:mod:`processors.cardinality`), so what is queued, stored and counted agrees. Span metrics
count a request only once the queue accepted it, so a client's retry after a 429 is not
counted twice.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.errors import PipelineError
from collector.otlp import split_by_trace
from collector.queue import Queue
from processors.cardinality import CardinalityProcessor
from processors.redaction import Redactor
from processors.spanmetrics import SpanMetrics


@dataclass(slots=True)
class Accepted:
    """What the receiver reports back through OTLP ``partial_success``."""

    rejected_spans: int
    error_message: str


class Ingest:
    """Counts in ``stats`` (read by /metrics): spans accepted, rejected, refused; redactions by kind."""

    def __init__(self, queue: Queue, redactor: Redactor | None, cardinality: CardinalityProcessor | None = None,
                 metrics: SpanMetrics | None = None):  # fmt: skip
        self.queue = queue
        self.redactor = redactor
        self.cardinality = cardinality
        self.metrics = metrics
        self.stats: Counter[str] = Counter()
        self.redactions: Counter[str] = Counter()

    async def export(self, request: ExportTraceServiceRequest, raw: bytes | None) -> Accepted:
        """Take one decoded request. Raises :class:`PipelineError` (mapped by the receiver)."""
        if self.redactor is not None:
            result = self.redactor(request, raw)
            self.redactions.update(result.counts)
            if result.counts:
                raw = None  # the bytes no longer match the request
        if self.cardinality is not None:
            changed = self.cardinality(request, raw)
            if changed:
                self.stats.update(changed)
                raw = None
        split = split_by_trace(request, time.time_ns())
        accepted = sum(f.span_count for f in split.fragments)
        try:
            if split.fragments:
                await self.queue.publish(split.fragments)
        except PipelineError:
            self.stats["spans_refused"] += accepted
            self.stats["requests_refused"] += 1
            raise
        if self.metrics is not None:
            self.metrics(request, raw)
        self.stats["spans_accepted"] += accepted
        self.stats["spans_rejected"] += split.rejected_spans
        self.stats["requests_accepted"] += 1
        return Accepted(split.rejected_spans, split.error_message)
