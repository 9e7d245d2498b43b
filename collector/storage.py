"""ClickHouse storage through clickhouse-connect: one code path for both transports.

``chdb://PATH`` opens the real ClickHouse engine in-process (the embedded default);
``http(s)://user:pass@host:8123/db`` talks to a server. Both give the same client API, and
every statement comes from :mod:`collector.sql`, so nothing here branches on transport.

This class is synchronous and not thread-safe; :class:`collector.writer.StorageWriter`
runs it on one dedicated thread so the event loop never blocks on the database.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from collector import sql
from collector.config import ClickHouseSettings
from collector.otlp import RootInfo
from processors.genai import PriceTable, Usage
from processors.otlp_values import KIND_NAMES, STATUS_NAMES, attributes_map, service_name
from processors.sampling.sampler import Decision, TraceSummary


# OTLP allows any uint64 timestamp. The TTL goes through DateTime, which ends in 2106: past
# it, ``toDateTime(Timestamp) + ttl`` wraps to 1970 and the row is deleted at once. Clamping
# to 2100-01-01 leaves room for the longest TTL the config accepts (5 years).
MAX_TIMESTAMP_NS = 4_102_444_800 * 1_000_000_000


def _ts(ns: int) -> int:
    """Clamp a client-supplied timestamp into what ClickHouse can store, so one absurd span
    cannot make its whole insert batch fail."""
    return ns if ns <= MAX_TIMESTAMP_NS else MAX_TIMESTAMP_NS


def normalize_dsn(dsn: str) -> str:
    """Make ``chdb://./data`` and ``chdb://data`` mean a path relative to the working
    directory (clickhouse-connect would read ``.`` as a host), as ``chdb:///abs/path``."""
    if not dsn.startswith("chdb://"):
        return dsn
    rest = dsn[len("chdb://"):]
    path, _, query = rest.partition("?")
    if path in ("", "memory", ":memory:"):
        return dsn
    absolute = os.path.abspath(path if path.startswith("/") else os.path.join(os.getcwd(), path))
    return f"chdb://{absolute}" + (f"?{query}" if query else "")


def safe_dsn(dsn: str) -> str:
    """The DSN without its password, for logs and error messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(slots=True)
class Rows:
    """Rows for one insert: spans and trace summaries."""

    spans: list[list[Any]]
    traces: list[list[Any]]


KeptSpanHook = Callable[[str, str, str, str, dict[str, str], int], None]
"""Told of every stored span: (trace id, service, name, status, attributes, duration ns)."""


def span_cost(prices: PriceTable | None, attributes: dict[str, str]) -> float:
    """What a stored span cost, from the price table (0 when not an LLM call or unpriced)."""
    if prices is None or not prices.priced:
        return 0.0
    usage = Usage.from_attributes(attributes)
    return (prices.cost(usage) or 0.0) if usage is not None else 0.0


_NO_EVENTS: tuple[list[Any], ...] = ([], [], [])  # read-only: most spans have no events
_NO_LINKS: tuple[list[Any], ...] = ([], [], [], [])


def _event_columns(events: Any) -> tuple[list[Any], ...]:
    return ([_ts(e.time_unix_nano) for e in events], [e.name for e in events],
            [attributes_map(e.attributes) for e in events])  # fmt: skip


def _link_columns(links: Any) -> tuple[list[Any], ...]:
    return ([lk.trace_id.hex() for lk in links], [lk.span_id.hex() for lk in links],
            [lk.trace_state for lk in links], [attributes_map(lk.attributes) for lk in links])  # fmt: skip


def decision_rows(decisions: list[Decision], prices: PriceTable | None = None,
                  on_span: KeptSpanHook | None = None) -> Rows:  # fmt: skip
    """Turn kept decisions into rows. This is the only place spans become Python objects
    after ingress, and it runs only for traces that are kept. Each span's cost comes from
    the price table at the time it is stored."""
    spans: list[list[Any]] = []
    traces: list[list[Any]] = []
    decided_ns = time.time_ns()
    for d in decisions:
        if not d.keep:
            continue
        trace_hex = d.summary.trace_id.hex()
        for fragment in d.fragments:
            for rs in TracesData.FromString(fragment.payload).resource_spans:
                service = service_name(rs.resource.attributes)
                resource = attributes_map(rs.resource.attributes)
                for ss in rs.scope_spans:
                    scope_name, scope_version = ss.scope.name, ss.scope.version
                    for s in ss.spans:
                        attrs = attributes_map(s.attributes)
                        name, status = s.name, s.status
                        status_code = STATUS_NAMES.get(status.code, "Unset")
                        duration = max(0, s.end_time_unix_nano - s.start_time_unix_nano)
                        if on_span is not None:
                            on_span(trace_hex, service, name, status_code, attrs, duration)
                        events, links = s.events, s.links
                        spans.append([
                            _ts(s.start_time_unix_nano), trace_hex, s.span_id.hex(), s.parent_span_id.hex(),
                            s.trace_state, name, KIND_NAMES.get(s.kind, "Unspecified"), service, resource,
                            scope_name, scope_version, attrs, duration, status_code, status.message,
                            *(_event_columns(events) if events else _NO_EVENTS),
                            *(_link_columns(links) if links else _NO_LINKS),
                            d.sample_rate, d.rule, span_cost(prices, attrs),
                        ])  # fmt: skip
        summary = d.summary
        root = summary.root
        traces.append([
            trace_hex, _ts(summary.start_ns), _ts(summary.end_ns), summary.duration_ns,
            root.service if root else "", root.name if root else "",
            _ts(root.start_ns) if root else 0, _ts(root.end_ns) if root else 0,
            summary.span_count, int(summary.has_error), d.sample_rate, d.rule,
            summary.source_partition, summary.source_offset, decided_ns, summary.span_count,
        ])  # fmt: skip
    return Rows(spans, traces)


def summary_from_row(row: tuple[Any, ...]) -> tuple[TraceSummary, str, float]:
    """A row of :data:`sql.RECENT_KEPT` back into what the sampler remembers."""
    (trace_hex, start, end, root_service, root_name, root_start, root_end, span_count, has_error,
     rate, rule, partition, offset) = row  # fmt: skip
    root = RootInfo(root_service, root_name, root_start, root_end) if root_start or root_name else None
    summary = TraceSummary(bytes.fromhex(trace_hex), span_count, start, end, bool(has_error), root,
                           partition, offset)  # fmt: skip
    return summary, rule, rate


class ClickHouseStore:
    """Schema, inserts and the two query shapes the API needs."""

    def __init__(self, settings: ClickHouseSettings):
        self.settings = settings
        self.dsn = normalize_dsn(settings.dsn.get_secret_value())
        self._client: Any = None

    def connect(self) -> None:
        """Open the client and create tables if they are missing (idempotent)."""
        if self._client is not None:
            return
        self._client = clickhouse_connect.get_client(dsn=self.dsn)
        self._client.command(sql.create_spans_table(self.settings.ttl_days))
        self._client.command(sql.create_traces_table(self.settings.ttl_days))
        for statement in sql.MIGRATIONS:
            self._client.command(statement)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def insert(self, rows: Rows) -> None:
        try:
            if rows.spans:
                self._client.insert(sql.SPANS_TABLE, rows.spans, column_names=sql.SPAN_COLUMNS)
            if rows.traces:
                self._client.insert(sql.TRACES_TABLE, rows.traces, column_names=sql.TRACE_COLUMNS)
        finally:
            # clickhouse-connect's insert context keeps the rows and sits in a reference cycle
            # (it stores a bound method of itself), so without this every inserted row would
            # live until a full garbage collection (see collector.runtime).
            rows.spans.clear()
            rows.traces.clear()

    def get_trace(self, trace_id_hex: str) -> list[dict[str, Any]]:
        result = self._client.query(sql.GET_TRACE, parameters={"trace_id": trace_id_hex})
        spans = []
        for (span_id, parent, name, service, kind, start, duration, status, message, attrs, res,
             ev_times, ev_names, ev_attrs, rate, rule, cost) in result.result_rows:  # fmt: skip
            spans.append({
                "span_id": span_id, "parent_span_id": parent, "name": name, "service": service,
                "kind": kind, "start_time_unix_nano": start, "end_time_unix_nano": start + duration,
                "duration_ns": duration, "status_code": status, "status_message": message,
                "attributes": attrs, "resource_attributes": res,
                "events": [{"time_unix_nano": t, "name": n, "attributes": a}
                           for t, n, a in zip(ev_times, ev_names, ev_attrs, strict=True)],
                "sample_rate": rate, "sampled_by": rule, "cost_usd": cost,
            })  # fmt: skip
        return spans

    def search_traces(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: filters.get(k) for k in
                  ("service", "name", "error", "min_duration_ns", "max_duration_ns", "since_ns", "until_ns")}
        params["limit"] = filters.get("limit") or 20
        result = self._client.query(sql.SEARCH_TRACES, parameters=params)
        traces = [
            {"trace_id": tid, "root_service": svc, "root_name": name, "start_time_unix_nano": start,
             "duration_ns": dur, "span_count": count, "error": bool(err), "sample_rate": rate,
             "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0}
            for tid, svc, name, start, dur, count, err, rate in result.result_rows
        ]  # fmt: skip
        if traces:
            by_id = {t["trace_id"]: t for t in traces}
            costs = self._client.query(sql.TRACE_COSTS, parameters={"trace_ids": list(by_id)})
            for tid, cost, tokens_in, tokens_out in costs.result_rows:
                by_id[tid].update(cost_usd=cost, input_tokens=int(tokens_in), output_tokens=int(tokens_out))
        return traces

    def stats(self, group_by: str, limit: int = 100, root_only: bool = False, service: str | None = None,
              since_ns: int | None = None, until_ns: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
        """Weighted statistics per group; see :data:`sql.STATS`."""
        params = {"group_by": group_by, "limit": limit, "root_only": int(root_only), "service": service,
                  "since_ns": since_ns, "until_ns": until_ns}  # fmt: skip
        result = self._client.query(sql.STATS, parameters=params)
        out = []
        for grp, count, errors, quantiles, tokens_in, tokens_out, cache_read, cost, stored, stderr in result.result_rows:
            p50, p95, p99 = (float(q) / 1e6 for q in quantiles)
            out.append({
                "group": grp, "count": round(count, 1), "errors": round(errors, 1),
                "error_rate": errors / count if count else 0.0,
                "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
                "input_tokens": round(tokens_in), "output_tokens": round(tokens_out),
                "cache_read_tokens": round(cache_read), "cost_usd": cost, "stored_spans": stored,
                "count_stderr": round(stderr, 1),
            })  # fmt: skip
        return out

    def recent_kept(self, window_seconds: int, limit: int) -> list[tuple[TraceSummary, str, float]]:
        result = self._client.query(sql.RECENT_KEPT, parameters={"window_seconds": window_seconds, "limit": limit})
        return [summary_from_row(row) for row in result.result_rows]

    def ping(self) -> bool:
        return bool(self._client.command(sql.PING))
