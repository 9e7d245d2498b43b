"""The ingress stage both receivers share: validate → redact → normalise → split → queue → count.

Receivers only speak their protocol (read bodies, map errors to codes); everything that
must be identical for gRPC and HTTP happens here, once. Redaction runs first, so a secret
never reaches the queue (and so never Kafka, disk or logs); span names are normalised next
(:mod:`processors.cardinality`), so what is queued, stored and counted agrees. Span metrics
count a request only once the queue accepted it, so a client's retry after a 429 is not
counted twice.

A protobuf body is validated by the extension (:class:`processors.wire.WireRequest`), not
decoded: most requests need no change, and the rest of the hot path reads bytes. It is
decoded (by upb, into objects) only when a processor must change it or read it as objects.

No request may stall the others (or /healthz). A body of :data:`LARGE_BODY` bytes or more
is decoded on a worker thread (decoding is a pure function, so nothing is shared), and a
request of more than :data:`SLICE_ABOVE` spans is processed in slices with the event loop
free between them. The whole request is still published at once: it is accepted or
refused as a whole.

Memory: while a request is decoded and processed it holds :data:`DECODED_FACTOR` times its
wire size, which is reserved with the memory limiter first (refused with 429 if it would
pass the limit) and released when the request is answered.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.auth import TENANT_KEY
from collector.errors import InvalidRequest, PipelineError
from collector.memory import DECODED_FACTOR, MemoryLimiter
from collector.otlp import decode_json, decode_logs_json, decode_protobuf, split_by_trace
from collector.receivers.signals import DroppedSignals, Signal
from collector.rows import log_rows
from collector.queue import Queue
from processors.cardinality import CardinalityProcessor
from processors.contract import RequestProcessor
from processors.fragment import Fragment
from processors.redaction import Redactor
from processors.spanmetrics import LATENCY_BUCKETS, Histogram, SpanMetrics
from processors.wire import FALLBACKS, MetricGroup, WireRequest

T = TypeVar("T")
LogSink = Callable[[list[list[Any]]], Awaitable[None]]
"""Stores ``otel_logs`` rows (the storage writer's ``write_logs``)."""
Counted = tuple[list[MetricGroup] | None, list[str], bytes | None]
"""A processed request's span-metric sums from split's walk (None if not made), the service
of each slot, and its bytes (for the processor's own walk when there are no sums)."""
LARGE_BODY = 1 << 20
"""Bodies from this size are decoded on a worker thread."""
SLICE_ABOVE = 4096
"""Requests with more spans than this are processed in slices (an ordinary export of a few
hundred spans is not: slicing copies every span)."""
SLICE_SPANS = 512
"""Spans per slice, with the event loop free in between."""
DAY_NS = 86_400 * 10**9


@dataclass(slots=True)
class Accepted:
    """What the receiver reports back through OTLP ``partial_success``."""

    rejected_spans: int
    error_message: str


def span_count(request: Any) -> int:
    if isinstance(request, WireRequest):
        return request.span_count
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def read_protobuf(body: bytes) -> Any:
    """A protobuf trace request: validated and surveyed by the extension, to be decoded only
    if something must read it as objects; decoded now if it is large (this runs on a worker
    thread then, and a later decode would not) or if the survey leaves it to upb (a group, an
    odd encoding: :class:`InvalidRequest` if upb refuses it too)."""
    if len(body) >= LARGE_BODY:
        return decode_protobuf(body)
    try:
        return WireRequest(body, decode_protobuf)
    except ValueError:
        request = decode_protobuf(body)
        FALLBACKS["survey"] += 1  # on the event loop (small bodies): a valid body the survey left to upb
        return request


def slices(request: ExportTraceServiceRequest, size: int) -> Iterator[ExportTraceServiceRequest]:
    """The request cut into requests of at most ``size`` spans, each span keeping its
    resource and scope (the pieces are copies; the request is left as it was)."""
    piece, count = ExportTraceServiceRequest(), 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            spans, start = ss.spans, 0
            while start < len(spans):
                take = spans[start : start + size - count]
                out_rs = piece.resource_spans.add(resource=rs.resource, schema_url=rs.schema_url)
                out_rs.scope_spans.add(scope=ss.scope, schema_url=ss.schema_url).spans.extend(take)
                count += len(take)
                start += len(take)
                if count >= size:
                    yield piece
                    piece, count = ExportTraceServiceRequest(), 0
    if piece.resource_spans:
        yield piece


async def _off_loop(size: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, on a worker thread for a body of :data:`LARGE_BODY` bytes or more, so a
    huge request does not stall the others. Only for pure functions (nothing shared)."""
    return await asyncio.to_thread(fn, *args) if size >= LARGE_BODY else fn(*args)


def decode_logs_protobuf(body: bytes) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise InvalidRequest(f"malformed OTLP logs request: {exc}") from None
    return request


def stamp_tenant(groups: Iterable[Any], tenant: str) -> bool:
    """Set ``tailsift.tenant`` on the resource of every group (``resource_spans`` or
    ``resource_logs``) to ``tenant`` (remove it for ""), replacing whatever the client sent,
    so no one writes as another tenant. True if anything changed."""
    changed = False
    for rs in groups:
        attributes = rs.resource.attributes
        found = [i for i, kv in enumerate(attributes) if kv.key == TENANT_KEY]
        if len(found) == 1 and tenant and attributes[found[0]].value.string_value == tenant:
            continue
        for i in reversed(found):
            del attributes[i]
        if tenant:
            attributes.add(key=TENANT_KEY).value.string_value = tenant
        changed = changed or bool(found) or bool(tenant)
    return changed


def run_processor(processor: RequestProcessor, request: Any, raw: bytes | None, counts: Counter[str]) -> bytes | None:
    """Every request processor runs this one way: what it did is added to ``counts``, and
    once a mutating one has changed the request, the caller's bytes no longer match it and
    are not passed on (None is returned)."""
    did = processor(request, raw)
    counts.update(did)
    return None if processor.mutates and did else raw


class Ingest:
    """Counts in ``stats`` (read by /metrics): spans accepted, rejected, refused; and in
    ``processed``, what each processor did, by processor name and kind."""

    def __init__(self, queue: Queue, redactor: Redactor | None, cardinality: CardinalityProcessor | None = None,
                 metrics: SpanMetrics | None = None, memory: MemoryLimiter | None = None,
                 retention_days: int = 0, store_logs: LogSink | None = None):  # fmt: skip
        self.queue = queue
        self.store_logs = store_logs
        self.signals = DroppedSignals()
        self.redactor = redactor
        self.cardinality = cardinality
        self.metrics = metrics
        self.memory = memory
        self.retention_ns = retention_days * DAY_NS
        self.stats: Counter[str] = Counter()
        self.processed: dict[str, Counter[str]] = {p.name: Counter() for p in (redactor, cardinality, metrics) if p}
        self.export_latency = Histogram.with_bounds(LATENCY_BUCKETS)
        """Each trace export, from its whole body to the answer, refusals included: the
        collector's own share of a client's ack latency (the rest is the network, the
        client, and the wait for the event loop to read the request). Event loop only."""

    def set_redactor(self, redactor: Redactor | None) -> None:
        """New redaction rules (a configuration reload); requests from now on use them."""
        self.redactor = redactor
        if redactor is not None:
            self.processed.setdefault(redactor.name, Counter())

    @property
    def redactions(self) -> Counter[str]:
        """Values redacted, by rule."""
        return self.processed.get("redaction", Counter())

    async def export_body(self, body: bytes, as_json: bool, tenant: str | None = None) -> Accepted:
        """Decode a protobuf or JSON request body and take it; see :meth:`export`."""
        started = time.perf_counter()
        try:
            with self._reserving(len(body) * DECODED_FACTOR):
                dropped = 0
                if as_json:
                    request, dropped = await _off_loop(len(body), decode_json, body)
                else:
                    request = await _off_loop(len(body), read_protobuf, body)
                return await self.export(request, None if as_json else body, dropped, tenant)
        finally:
            self.export_latency.observe(time.perf_counter() - started)

    @contextmanager
    def _reserving(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes against the memory limit while a request is worked on (429 if
        they would pass it)."""
        if self.memory is not None:
            self.memory.reserve(size)
        try:
            yield
        finally:
            if self.memory is not None:
                self.memory.release(size)

    async def export_signal(self, signal: Signal, body: bytes, as_json: bool, tenant: str | None) -> None:
        """Metrics or logs: logs stored when there is storage for them, else counted and dropped."""
        if signal == "logs" and self.store_logs is not None:
            await self.export_logs(body, as_json, tenant)
        else:
            self.signals(signal, body, as_json)

    async def export_logs(self, body: bytes, as_json: bool, tenant: str | None = None) -> None:
        """An OTLP logs request: decoded, tenant-stamped, redacted like spans, stored (the
        client is answered once it is; see :meth:`StorageWriter.write_logs`)."""
        assert self.store_logs is not None
        with self._reserving(len(body) * DECODED_FACTOR):
            raw = None if as_json else body
            request = await _off_loop(len(body), decode_logs_json if as_json else decode_logs_protobuf, body)
            if tenant is not None and stamp_tenant(request.resource_logs, tenant):
                raw = None
            if self.redactor is not None:
                self.processed[self.redactor.name].update(self.redactor.logs(request, raw))
            rows = await _off_loop(len(body), log_rows, request)  # pure: safe on a worker thread
            if rows:
                await self.store_logs(rows)
            self.stats["log_records_stored"] += len(rows)

    def _process(self, request: Any, raw: bytes | None, now: int, tenant: str | None) -> tuple[
            list[Fragment], int, str, Counted]:  # fmt: skip
        """Redact, normalise, stamp the tenant and split; the span metrics' sums come from
        split's own walk, to be counted once the queue took the request."""
        for processor in (self.redactor, self.cardinality):
            if processor is not None:
                raw = run_processor(processor, request, raw, self.processed[processor.name])
        if tenant is not None and stamp_tenant(request.resource_spans, tenant):
            raw = None
        oldest = now - self.retention_ns if self.retention_ns else 0
        spec, services = self.metrics.walk_spec(request, raw) if self.metrics is not None else (None, [])
        split = split_by_trace(request, now, oldest, raw, spec)
        self.stats["spans_rejected_expired"] += split.expired_spans
        return split.fragments, split.rejected_spans, split.error_message, (split.groups, services, raw)

    def _count(self, request: Any, counted: Counted) -> None:
        """Span metrics for an accepted request: the sums split made on its way, or (if the
        extension refused the body) the processor's own walk."""
        assert self.metrics is not None
        groups, services, raw = counted
        done = self.processed[self.metrics.name]
        if groups is not None:
            done.update(self.metrics.count(groups, services))
        else:
            run_processor(self.metrics, request, raw, done)

    async def export(self, request: Any, raw: bytes | None, dropped: int = 0,
                     tenant: str | None = None) -> Accepted:  # fmt: skip
        """Take one request, decoded or a :class:`WireRequest`. Raises :class:`PipelineError`
        (mapped by the receiver).

        ``raw`` is the request as the client sent it (protobuf), if at hand: processors scan
        it to skip requests they have nothing to do in. ``dropped`` spans were left out by the decoder (no valid
        ids) and are reported as rejected. ``tenant``: None when the receiver has no auth (a
        ``tailsift.tenant`` the client sent is kept); else the caller's tenant, stamped on
        every resource ("" for an operator's token: any client-sent value is removed)."""
        now = time.time_ns()
        large = span_count(request) > SLICE_ABOVE
        pieces: list[ExportTraceServiceRequest] = []
        fragments: list[Fragment] = []
        counts: list[Counted] = []
        rejected, message = dropped, f"{dropped} spans rejected: trace_id and span_id must be valid hex" if dropped else ""
        for piece in slices(request, SLICE_SPANS) if large else [request]:
            pieces.append(piece)
            # A slice's own bytes, for the processors' scans: rescanning the whole body for
            # every slice would cost (slices x body) bytes.
            piece_raw = piece.SerializeToString() if large and raw is not None else raw
            got, piece_rejected, piece_message, counted = self._process(piece, piece_raw, now, tenant)
            fragments.extend(got)
            counts.append(counted)
            rejected += piece_rejected
            message = message or piece_message
            if large:
                await asyncio.sleep(0)
        accepted = sum(f.span_count for f in fragments)
        try:
            if fragments:
                await self.queue.publish(fragments)
        except PipelineError:
            self.stats["spans_refused"] += accepted
            self.stats["requests_refused"] += 1
            raise
        if self.metrics is not None:
            for piece, counted in zip(pieces, counts, strict=True):
                self._count(piece, counted)
                if large:
                    await asyncio.sleep(0)
        self.stats["spans_accepted"] += accepted
        self.stats["spans_rejected"] += rejected
        self.stats["requests_accepted"] += 1
        if large and rejected:
            message = f"{rejected} spans rejected: " + message.split(": ", 1)[-1]
        return Accepted(rejected, message)
