"""Kept traces → ClickHouse rows: the one place spans become Python objects after ingress.

It runs only for traces that are kept, on the storage thread. :class:`NativeRowBuilder`
(the one storage uses) builds span rows in compiled code (``native/src/rows.rs``) as
ClickHouse ``RowBinary`` bytes, from the fragments' OTLP bytes, and Python only prices LLM
calls and tells ``on_span`` per span; :class:`RowBuilder` builds the same rows as Python
values and is its reference: ``tests/test_rows_contract.py`` encodes those with
:func:`encode_span_row` and requires the same bytes. Every value a client sent is
made storable here, so that one absurd span can never make a whole insert fail: timestamps
past 2100 are clamped (the TTL goes through ``DateTime``, which ends in 2106), token counts
that are not finite, negative or absurd count as 0 or are capped (``parse_count``), and a
cost is always a finite number. Each such repair is counted in ``RowBuilder.clamped``.

Rows are built per trace (:class:`TraceRows`), so the writer can split a batch that
ClickHouse refuses down to the trace and the span that caused it (see
:mod:`collector.writer`) and put only those in the dead-letter table.

Thread safety: a ``RowBuilder`` is used by the storage thread only; ``clamped`` is a
Counter that the event loop reads for /metrics (reading an int is atomic under the GIL).
"""

from __future__ import annotations

import math
import struct
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, TracesData

from collector.auth import TENANT_KEY
from processors import _wire
from processors.genai import MAX_TOKENS, USAGE_KEYS, PriceTable, Usage, parse_count
from processors.otlp_values import (KIND_NAMES, STATUS_NAMES, attributes_map, service_name, service_text,
                                    typed_attributes, value_as_string)
from processors.sampling import otep235
from processors.sampling.sampler import Decision

# OTLP allows any uint64 timestamp. The TTL goes through DateTime, which ends in 2106: past
# it, ``toDateTime(Timestamp) + ttl`` wraps to 1970 and the row is deleted at once. Clamping
# to 2100-01-01 leaves room for the longest TTL the config accepts (5 years).
MAX_TIMESTAMP_NS = 4_102_444_800 * 1_000_000_000

KeptSpanHook = Callable[[str, str, str, str, Mapping[str, str], int], None]
"""Told of every stored span: (trace id, service, name, status, attributes, duration ns).
From :class:`NativeRowBuilder` the attributes are only those named in its ``span_keys``
and the GenAI usage keys."""


def _ts(ns: int) -> int:
    return ns if ns <= MAX_TIMESTAMP_NS else MAX_TIMESTAMP_NS


@dataclass(slots=True)
class TraceRows:
    """The rows of one kept trace (or of a part of it, once the writer has split it)."""

    decision: Decision
    spans: list[Any]
    traces: list[bytes]
    """The ``tailsift_traces`` row, as ``RowBinary`` (:func:`encode_trace_row`), or none."""
    keys: str | None = None
    """The spans' deduplication keys (:func:`span_keys`), made with the rows so that an insert
    does not make them all at once; None: made at insert."""

    def halves(self) -> tuple[TraceRows, TraceRows]:
        """Two parts with half the span rows each; the summary row goes with the second."""
        middle = len(self.spans) // 2
        return (TraceRows(self.decision, self.spans[:middle], []),
                TraceRows(self.decision, self.spans[middle:], self.traces))  # fmt: skip


def span_keys(spans: list[Any]) -> str:
    """``"<trace id>:<span id>;"`` per span row, joined: what an insert's deduplication token
    is made of (``collector.storage.block_token``)."""
    return "".join([f"{r[1]}:{r[2]};" for r in spans])


@dataclass(slots=True)
class Rejected:
    """A row ClickHouse refused even alone: it goes to the dead-letter table with its span."""

    trace_id: str
    span_id: str
    reason: str
    payload: bytes = field(repr=False)
    """The span as OTLP ``TracesData`` protobuf (with its resource and scope), redacted."""
    spans: int = 1
    """Spans it stands for: 1, or a whole trace's when its rows could not even be built."""


_NO_EVENTS: tuple[list[Any], ...] = ([], [], [], [])  # read-only: most spans have no events
_NO_LINKS: tuple[list[Any], ...] = ([], [], [], [])


def _event_columns(events: Any) -> tuple[list[Any], ...]:
    typed = [typed_attributes(e.attributes) for e in events]
    return ([_ts(e.time_unix_nano) for e in events], [e.name for e in events],
            [values for values, _ in typed], [types for _, types in typed])  # fmt: skip


def _link_columns(links: Any) -> tuple[list[Any], ...]:
    return ([lk.trace_id.hex() for lk in links], [lk.span_id.hex() for lk in links],
            [lk.trace_state for lk in links], [attributes_map(lk.attributes) for lk in links])  # fmt: skip


class RowBuilder:
    """Settings in ``__init__``; ``__call__`` turns one kept decision into its rows."""

    def __init__(self, prices: PriceTable | None = None, on_span: KeptSpanHook | None = None):
        self.prices = prices
        self.on_span = on_span
        self.inconsistent: frozenset[str] = frozenset()
        """Rules (rate limits) whose kept spans get no OTEP 235 ``th``; swapped whole on reload."""
        self.clamped: Counter[str] = Counter()

    def _count(self, value: Any) -> int:
        """``parse_count``, counting the values it had to repair."""
        count = parse_count(value)
        if count == 0 or count == MAX_TOKENS:
            try:
                number = float(value)
                if not math.isfinite(number) or number < 0 or number > MAX_TOKENS:
                    self.clamped["token_count"] += 1
            except (TypeError, ValueError):
                pass
        return count

    def cost(self, attributes: Mapping[str, str]) -> float:
        """What a stored span cost, from the price table (0 when not an LLM call or unpriced)."""
        prices = self.prices  # read once: a reload may swap the table (never changes one)
        if prices is None or not prices.priced:
            return 0.0
        usage = Usage.from_attributes(attributes, self._count)
        cost = (prices.cost(usage) or 0.0) if usage is not None else 0.0
        return cost if math.isfinite(cost) else 0.0

    def __call__(self, d: Decision, decided_ns: int | None = None) -> TraceRows:
        spans: list[list[Any]] = []
        trace_hex = d.summary.trace_id.hex()
        on_span = self.on_span
        tenant: str | None = None  # the first span's, replaced by the root span's
        th = self.threshold(d)
        states: dict[str, str] = {}
        for fragment in d.fragments:
            for rs in TracesData.FromString(fragment.payload).resource_spans:
                service = service_name(rs.resource.attributes)
                resource, resource_types = typed_attributes(rs.resource.attributes)
                resource_tenant = resource.get(TENANT_KEY, "")
                if tenant is None:
                    tenant = resource_tenant
                for ss in rs.scope_spans:
                    scope_name, scope_version = ss.scope.name, ss.scope.version
                    for s in ss.spans:
                        if not s.parent_span_id:
                            tenant = resource_tenant
                        attrs, attr_types = typed_attributes(s.attributes)
                        name, status = s.name, s.status
                        status_code = STATUS_NAMES.get(status.code, "Unset")
                        start, end = s.start_time_unix_nano, s.end_time_unix_nano
                        if start > MAX_TIMESTAMP_NS:
                            self.clamped["timestamp"] += 1
                        duration = max(0, end - start)
                        if on_span is not None:
                            on_span(trace_hex, service, name, status_code, attrs, duration)
                        events, links = s.events, s.links
                        state = states.get(s.trace_state)
                        if state is None:  # the spans of a trace mostly share one TraceState
                            state = states[s.trace_state] = otep235.with_threshold(s.trace_state, th)
                        spans.append([
                            _ts(start), trace_hex, s.span_id.hex(), s.parent_span_id.hex(),
                            state, name, KIND_NAMES.get(s.kind, "Unspecified"), service, resource,
                            scope_name, scope_version, attrs, duration, status_code, status.message,
                            *(_event_columns(events) if events else _NO_EVENTS),
                            *(_link_columns(links) if links else _NO_LINKS),
                            d.sample_rate, d.rule, self.cost(attrs), attr_types, resource_types,
                        ])  # fmt: skip
        return TraceRows(d, spans, [encode_trace_row(self._trace_row(d, tenant or "", decided_ns))])

    @staticmethod
    def _trace_row(d: Decision, tenant: str, decided_ns: int | None) -> list[Any]:
        """The ``tailsift_traces`` row of a kept trace."""
        summary, root = d.summary, d.summary.root
        return [
            summary.trace_id.hex(), _ts(summary.start_ns), _ts(summary.end_ns), summary.duration_ns,
            root.service if root else "", root.name if root else "",
            _ts(root.start_ns) if root else 0, _ts(root.end_ns) if root else 0,
            summary.span_count, int(summary.has_error), d.sample_rate, d.rule, tenant,
            summary.source_partition, summary.source_offset, decided_ns or time.time_ns(), summary.span_count,
            int(d.would_keep),
        ]  # fmt: skip

    def threshold(self, d: Decision) -> int | None:
        """OTEP 235: each span's TraceState says at what probability it was kept (th), unless
        a rate limit kept it (no consistent threshold: th is removed)."""
        if d.sample_rate >= 1.0 and d.rule not in self.inconsistent:
            return otep235.threshold(1.0 / d.sample_rate)
        return None


_F64 = struct.Struct("<d")
_NO_ATTRIBUTES: Mapping[str, str] = {}  # read-only


def _render(raw: bytes) -> str:
    """A composite attribute value (array, kvlist, bytes) as the reference stores it."""
    return value_as_string(AnyValue.FromString(raw))


class NativeRowBuilder(RowBuilder):
    """:class:`RowBuilder`'s rows, with span rows as ``(RowBinary bytes, trace id hex, span id
    hex)`` built by the extension. ``span_keys``: attributes ``on_span`` reads besides the
    GenAI usage keys (the span metrics' label keys)."""

    def __init__(self, prices: PriceTable | None = None, on_span: KeptSpanHook | None = None,
                 span_keys: tuple[str, ...] = ()):  # fmt: skip
        super().__init__(prices, on_span)
        self._wanted = [k.encode() for k in sorted(USAGE_KEYS | frozenset(span_keys))]

    def __call__(self, d: Decision, decided_ns: int | None = None) -> TraceRows:
        trace_hex = d.summary.trace_id.hex()
        th = self.threshold(d)
        built, tenant, clamped = _wire.span_rows(
            [f.payload for f in d.fragments], trace_hex, d.sample_rate, d.rule, TENANT_KEY.encode(), self._wanted,
            lambda state: otep235.with_threshold(state, th), _render, service_text)  # fmt: skip
        if clamped:
            self.clamped["timestamp"] += clamped
        on_span = self.on_span
        spans: list[Any] = []
        for row, span_hex, service, name, status, duration, attrs, cost_at in built:
            if attrs is not None:  # it has GenAI usage or label attributes: maybe an LLM call to price
                cost = self.cost(attrs)
                if cost:
                    row = row[:cost_at] + _F64.pack(cost) + row[cost_at + 8 :]
            if on_span is not None:
                on_span(trace_hex, service, name, status, attrs or _NO_ATTRIBUTES, duration)
            spans.append((row, trace_hex, span_hex))
        return TraceRows(d, spans, [encode_trace_row(self._trace_row(d, tenant, decided_ns))], span_keys(spans))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _string(value: str) -> bytes:
    data = value.encode()
    return _varint(len(data)) + data


def _map(values: Mapping[str, str]) -> bytes:
    return _varint(len(values)) + b"".join(_string(k) + _string(v) for k, v in values.items())


def _array(encode: Callable[[Any], bytes]) -> Callable[[list[Any]], bytes]:
    return lambda values: _varint(len(values)) + b"".join(encode(v) for v in values)


_I64, _U64 = struct.Struct("<q").pack, struct.Struct("<Q").pack
SPAN_ENCODERS: tuple[Callable[[Any], bytes], ...] = (
    _I64, _string, _string, _string, _string, _string, _string, _string, _map, _string, _string, _map, _U64,
    _string, _string, _array(_I64), _array(_string), _array(_map), _array(_map), _array(_string), _array(_string),
    _array(_string), _array(_map), _F64.pack, _string, _F64.pack, _map, _map,
)  # fmt: skip
"""One per column of ``sql.SPAN_COLUMNS``, in order: its ClickHouse ``RowBinary`` encoding."""


def encode_span_row(row: list[Any]) -> bytes:
    """A span row of Python values (:class:`RowBuilder`'s) as ``RowBinary``."""
    return b"".join(encode(value) for encode, value in zip(SPAN_ENCODERS, row, strict=True))


_TRACE_SPAN = struct.Struct("<qqQ")  # Start, End, DurationNs
_TRACE_ROOT = struct.Struct("<qqIBd")  # RootStart, RootEnd, SpanCount, HasError, SampleRate
_TRACE_SOURCE = struct.Struct("<iqqQB")  # SourcePartition, SourceOffset, Decided, Version, WouldKeep


def encode_trace_row(row: list[Any]) -> bytes:
    """A ``tailsift_traces`` row (``sql.TRACE_COLUMNS``, as ``RowBuilder._trace_row`` makes it) as
    ``RowBinary``, made when the trace's rows are built: at insert the engine reads it without
    the GIL, where clickhouse-connect's encoding of ~15,000 rows held it 45-80 ms."""
    (trace, start, end, duration, service, name, root_start, root_end, span_count, error, rate, rule, tenant,
     partition, offset, decided, version, would_keep) = row  # fmt: skip
    return b"".join((_string(trace), _TRACE_SPAN.pack(start, end, duration), _string(service), _string(name),
                     _TRACE_ROOT.pack(root_start, root_end, span_count, error, rate), _string(rule), _string(tenant),
                     _TRACE_SOURCE.pack(partition, offset, decided, version, would_keep)))  # fmt: skip


def raw_span(decision: Decision, span_id_hex: str) -> bytes:
    """The span with this id from a decision's fragments, as a one-span ``TracesData`` (with
    its resource and scope), for the dead-letter table; the whole trace if not found."""
    wanted = bytes.fromhex(span_id_hex) if span_id_hex else b""
    for fragment in decision.fragments:
        for rs in TracesData.FromString(fragment.payload).resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    if span.span_id == wanted:
                        scope = ScopeSpans(scope=ss.scope, schema_url=ss.schema_url, spans=[span])
                        out = ResourceSpans(resource=rs.resource, schema_url=rs.schema_url, scope_spans=[scope])
                        return TracesData(resource_spans=[out]).SerializeToString()
    return b"".join(f.payload for f in decision.fragments)


def log_rows(request: Any) -> list[list[Any]]:
    """``otel_logs`` rows of an ``ExportLogsServiceRequest`` (already redacted): one per log
    record, in the exporter's format; a record without a time takes its observed time."""
    rows: list[list[Any]] = []
    for rl in request.resource_logs:
        resource = attributes_map(rl.resource.attributes)
        service = service_name(rl.resource.attributes)
        for sl in rl.scope_logs:
            scope = sl.scope
            scope_attrs = attributes_map(scope.attributes)
            for r in sl.log_records:
                rows.append([
                    _ts(r.time_unix_nano or r.observed_time_unix_nano or time.time_ns()), r.trace_id.hex(),
                    r.span_id.hex(), r.flags & 0xFF, r.severity_text, min(r.severity_number, 255), service,
                    value_as_string(r.body), rl.schema_url, resource, sl.schema_url, scope.name, scope.version,
                    scope_attrs, attributes_map(r.attributes),
                ])  # fmt: skip
    return rows
