"""ClickHouse storage through clickhouse-connect: one code path for both transports.

``chdb://PATH`` opens the real ClickHouse engine in-process (the embedded default);
``http(s)://user:pass@host:8123/db`` talks to a server. Both give the same client API, and
every statement comes from :mod:`collector.sql`, so nothing here branches on transport.

This class is synchronous and not thread-safe; :class:`collector.writer.StorageWriter`
runs it on one dedicated thread so the event loop never blocks on the database.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
import clickhouse_connect.driver.options
from clickhouse_connect.driver.exceptions import OperationalError
from collector import sql
from processors.fragment import RootInfo
from processors.otlp_values import typed
from collector.config import ClickHouseSettings
from collector.rows import Rejected, encode_span_row, span_keys
from processors._wire import NativeEncoder
from processors.sampling.sampler import TraceSummary


log = logging.getLogger("tailsift.storage")
STORED_SPANS_CHUNK = 2000
"""Trace ids per ``stored_spans`` query (70 kB of parameters)."""
INSERT_CHUNK_BYTES = 2 * 2**20
"""Span rows are encoded for an insert this many bytes at a time, and each piece is freed
as soon as the client has written it, before the engine reads it. Encoding a whole 32 MiB
batch of huge spans at once held the rows, the block and the encoder's columns together
(tests/test_overload.py's 512 KiB spans went up to 29 MB over their bound). The engine squashes
the pieces back into one block: one part and one deduplication token per insert, as before."""

ENGINE_MALLOC_CONF = "JE_MALLOC_CONF", "dirty_decay_ms:1000"
"""chDB's allocator (jemalloc) keeps freed pages for 5 s (ClickHouse's ``dirty_decay_ms``;
jemalloc's background purge thread is off in chDB). An insert's blocks and a merge's buffers
were then still in RSS seconds later, and under 512 KiB spans back-to-back inserts added
100-200 MB of freed engine memory on top of what the memory limiter saw coming
(tests/test_overload.py). One second, like the extension's allocator, lowered those peaks by
about 150 MB. Set in the environment before chDB loads (jemalloc reads it once); a value
the user set is kept."""


def _engine_memory(dsn: str) -> None:
    """Ask the embedded engine's allocator to give freed memory back within a second (see
    :data:`ENGINE_MALLOC_CONF`), if the engine is not loaded yet."""
    if dsn.startswith("chdb:") and "chdb" not in sys.modules:
        os.environ.setdefault(*ENGINE_MALLOC_CONF)


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
    """Rows for one insert: spans and trace summaries. A span row is ``(RowBinary bytes, trace
    id hex, span id hex)`` (:class:`collector.rows.NativeRowBuilder`'s) or a list of column
    values (the reference builder's, encoded at insert)."""

    spans: list[Any]
    traces: list[bytes]  # RowBinary (collector.rows.encode_trace_row)
    keys: str | None = None  # collector.rows.span_keys of ``spans``, if made already


def summary_from_row(row: tuple[Any, ...]) -> tuple[TraceSummary, str, float]:
    """A row of :data:`sql.RECENT_KEPT` back into what the sampler remembers."""
    (trace_hex, start, end, root_service, root_name, root_start, root_end, span_count, has_error,
     rate, rule, partition, offset) = row  # fmt: skip
    root = RootInfo(root_service, root_name, root_start, root_end) if root_start or root_name else None
    summary = TraceSummary(bytes.fromhex(trace_hex), span_count, start, end, bool(has_error), root,
                           partition, offset)  # fmt: skip
    return summary, rule, rate


def _typed(values: dict[str, str], types: dict[str, str]) -> dict[str, Any]:
    """Attribute values as their types (``502``, ``true``, ``["a", "b"]``), not strings."""
    return {key: typed(value, types.get(key)) for key, value in values.items()} if types else dict(values)


def insert_pieces(parts: list[bytes], encode: Callable[[list[bytes]], bytes]) -> Iterator[bytes]:
    """``encode`` of consecutive runs of ``parts`` of about :data:`INSERT_CHUNK_BYTES`,
    all made before the first is yielded (an encoder's error is raised here, before the
    insert starts, not in the middle of a client's upload), and each dropped once yielded.
    clickhouse-connect never sends a generator twice: a connection lost during the upload
    is an OperationalError, and the writer retries the batch, encoding it again."""
    pieces: list[bytes] = []
    start, size = 0, 0
    for i, part in enumerate(parts):
        size += len(part)
        if size >= INSERT_CHUNK_BYTES or i == len(parts) - 1:
            pieces.append(encode(parts[start:i + 1]))
            start, size = i + 1, 0
    pieces.reverse()

    def drain() -> Iterator[bytes]:
        while pieces:
            yield pieces.pop()

    return drain()


def block_token(keys: str) -> str:
    """The deduplication token of a block of rows, from each row's key in order, joined (spans:
    ``"<trace id>:<span id>;"``, :func:`collector.rows.span_keys`). The same block sent again
    gets the same token, and ClickHouse stores it once. The keys are made with an f-string:
    on the storage thread, holding the GIL, that is ~0.2 µs a row where joining ``str()`` of
    each column was ~1 µs; span keys are made with each trace's rows, not at insert."""
    return hashlib.sha256(keys.encode()).hexdigest()


class ClickHouseStore:
    """Schema, inserts and the two query shapes the API needs."""

    def __init__(self, settings: ClickHouseSettings):
        self.settings = settings
        self.dsn = normalize_dsn(settings.dsn.get_secret_value())
        self._client: Any = None
        self._native: NativeEncoder | None = None
        """Span rows into one ``Native`` block at insert (see native/src/block.rs); None:
        inserted as ``RowBinary``. Set at connect and dropped by an insert the database
        refused as Native, both on the storage thread (the only one that uses it)."""

    def connect(self) -> None:
        """Open the client and create tables if they are missing (idempotent)."""
        if self._client is not None:
            return
        _engine_memory(self.dsn)
        self._client = clickhouse_connect.get_client(dsn=self.dsn, **self._tls_options())
        self._client.command(sql.create_spans_table(self.settings.ttl_days))
        self._client.command(sql.create_traces_table(self.settings.ttl_days))
        self._client.command(sql.create_rejected_table(self.settings.ttl_days))
        self._client.command(sql.create_logs_table(self.settings.ttl_days))
        for statement in sql.MIGRATIONS:
            self._client.command(statement)
        try:
            self._client.command(sql.DEDUPLICATION_WINDOW)
        except Exception as exc:  # noqa: BLE001 - e.g. a Distributed table: its shards have their own
            log.warning("could not turn on insert deduplication for %s: %s", sql.SPANS_TABLE, exc)
        self._create_lookup()
        self._native = self._span_encoder()
        # clickhouse-connect imports pandas (if installed) at the first insert, to check
        # whether the rows are a DataFrame: ~0.7 s of the storage thread, in the middle of the
        # first batch of traffic. Done here, it is part of starting up.
        getattr(clickhouse_connect.driver.options, "pd", None)

    def _create_lookup(self) -> None:
        """The exporter's trace-id lookup and the view that fills it; on a database that
        had spans before the lookup existed, it is filled from them once (min/max make a
        second fill harmless, so the view comes first and nothing is missed)."""
        existed = bool(self._client.command(sql.LOOKUP_EXISTS))
        self._client.command(sql.create_lookup_table(self.settings.ttl_days))
        self._client.command(sql.CREATE_LOOKUP_VIEW)
        if not existed:
            self._client.command(sql.LOOKUP_BACKFILL)

    def _span_encoder(self) -> NativeEncoder | None:
        """An encoder for the spans table's columns as the database declares them (a
        table made by an older version, or by hand, may differ), or None (RowBinary)."""
        try:  # a user without access to system.columns gets RowBinary, not a failed start
            declared = dict(self._client.query(sql.COLUMN_TYPES, parameters={"table": sql.SPANS_TABLE}).result_rows)
            return NativeEncoder([(name, declared[name]) for name in sql.SPAN_COLUMNS])
        except Exception as exc:  # noqa: BLE001 - KeyError (a column missing), ValueError (a type), refusals
            log.info("span rows are inserted as RowBinary: no Native block for %s (%s)", sql.SPANS_TABLE, exc)
            return None

    def _tls_options(self) -> dict[str, Any]:
        """TLS for https:// DSNs, the certificate verified by default (``verify``/``ca_file``).

        clickhouse-connect does not read the scheme of a DSN (an ``https://`` DSN alone would
        connect in plain text, sending the password in the clear), so it is said here."""
        s = self.settings
        if not self.dsn.startswith("https://"):
            return {}
        options: dict[str, Any] = {"interface": "https", "secure": True, "verify": s.verify}
        if s.ca_file:
            options["ca_cert"] = s.ca_file
        if s.cert_file:
            options.update(client_cert=s.cert_file, client_cert_key=s.key_file)
        return options

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def insert(self, rows: Rows) -> None:
        try:
            if rows.spans:
                self._insert_spans(rows.spans, rows.keys)
            if rows.traces:
                self._client.raw_insert(sql.TRACES_TABLE, sql.TRACE_COLUMNS, b"".join(rows.traces), fmt="RowBinary")
        finally:
            # clickhouse-connect's insert context keeps the rows and sits in a reference cycle
            # (it stores a bound method of itself), so without this every inserted row would
            # live until a full garbage collection (see collector.runtime).
            rows.spans.clear()
            rows.traces.clear()

    def _insert_spans(self, spans: list[Any], keys: str | None = None) -> None:
        """One insert of span rows: as one Native block (half the engine's CPU), else as
        their RowBinary. A database that refuses the block and takes the same rows as
        RowBinary (an older server may not convert the block's plain types) gets RowBinary
        from then on; if it refuses both, the RowBinary error is raised, for the writer to
        isolate the row at fault."""
        # optimize_on_insert 0: ClickHouse would otherwise apply ReplacingMergeTree's
        # deduplication to every inserted block, half the engine's cost of an insert
        # (measured: 7,168 LLM span rows, 165 -> 82 ms on chDB). Readers deduplicate anyway
        # (LIMIT 1 BY), as they must for copies in different blocks.
        settings = {"insert_deduplication_token": block_token(span_keys(spans) if keys is None else keys),
                    "optimize_on_insert": 0}  # fmt: skip
        parts = [r[0] if isinstance(r, tuple) else encode_span_row(r) for r in spans]  # the rows' own bytes, not copies
        native, refused = self._native, None
        if native is not None:
            try:
                blocks = insert_pieces(parts, native.encode)
                self._client.raw_insert(sql.SPANS_TABLE, sql.SPAN_COLUMNS, blocks, fmt="Native", settings=settings)
                return
            except OperationalError:
                raise
            except Exception as exc:  # noqa: BLE001 - tried again as RowBinary just below
                refused = exc
        pieces = insert_pieces(parts, b"".join)
        self._client.raw_insert(sql.SPANS_TABLE, sql.SPAN_COLUMNS, pieces, fmt="RowBinary", settings=settings)
        if refused is not None:
            log.warning("%s refused span rows as a Native block and took them as RowBinary; RowBinary from now "
                        "on: %s", safe_dsn(self.dsn), str(refused).split("\n")[0])  # fmt: skip
            self._native = None

    def insert_rejected(self, rejected: list[Rejected]) -> None:
        """Dead letters: rows ClickHouse refused, with the span and the reason."""
        now = time.time_ns()
        rows = [[now, r.trace_id, r.span_id, r.reason[:2000], base64.b64encode(r.payload).decode()] for r in rejected]
        self._client.insert(sql.REJECTED_TABLE, rows, column_names=sql.REJECTED_COLUMNS)

    def insert_logs(self, rows: list[list[Any]]) -> None:
        """Log records, with a token (time, trace, span, body) so that a request retried
        after a lost answer is stored once."""
        token = block_token("".join([f"{r[0]}:{r[1]}:{r[2]}:{r[7]};" for r in rows]))
        self._client.insert(sql.LOGS_TABLE, rows, column_names=sql.LOG_COLUMNS,
                            settings={"insert_deduplication_token": token})

    def trace_logs(self, trace_id_hex: str, tenant: str | None = None) -> list[dict[str, Any]]:
        """The log records of a trace (only ``tenant``'s, when given), oldest first."""
        result = self._client.query(sql.TRACE_LOGS, parameters={"trace_id": trace_id_hex, "tenant": tenant})
        return [{"time_unix_nano": t, "span_id": span, "severity_text": text, "severity_number": number,
                 "service": service, "body": body, "attributes": attrs}
                for t, span, text, number, service, body, attrs in result.result_rows]  # fmt: skip

    def get_trace(self, trace_id_hex: str, tenant: str | None = None) -> list[dict[str, Any]]:
        """A trace's spans (only ``tenant``'s, when given)."""
        result = self._client.query(sql.GET_TRACE, parameters={"trace_id": trace_id_hex, "tenant": tenant})
        spans = []
        for (span_id, parent, name, service, kind, start, duration, status, message, attrs, res, ev_times, ev_names,
             ev_attrs, rate, rule, cost, attr_types, res_types, ev_types, scope, scope_version, trace_state,
             link_traces, link_spans, link_states, link_attrs) in result.result_rows:  # fmt: skip
            spans.append({
                "span_id": span_id, "parent_span_id": parent, "name": name, "service": service,
                "kind": kind, "start_time_unix_nano": start, "end_time_unix_nano": start + duration,
                "duration_ns": duration, "status_code": status, "status_message": message,
                "attributes": _typed(attrs, attr_types), "resource_attributes": _typed(res, res_types),
                "scope": {"name": scope, "version": scope_version}, "trace_state": trace_state,
                "events": [{"time_unix_nano": t, "name": n, "attributes": _typed(a, types)}
                           for t, n, a, types in zip(ev_times, ev_names, ev_attrs,
                                                     ev_types or [{}] * len(ev_names), strict=False)],
                "links": [{"trace_id": t, "span_id": sp, "trace_state": st, "attributes": a}
                          for t, sp, st, a in zip(link_traces, link_spans, link_states, link_attrs, strict=False)],
                "sample_rate": rate, "sampled_by": rule, "cost_usd": cost,
            })  # fmt: skip
        return spans

    def search_traces(self, **filters: Any) -> list[dict[str, Any]]:
        params = {k: filters.get(k) for k in
                  ("service", "name", "error", "min_duration_ns", "max_duration_ns", "since_ns", "until_ns", "tenant")}
        attributes: list[tuple[str, str]] = filters.get("attributes") or []
        span_name, span_service = filters.get("span_name"), filters.get("span_service")
        params.update(limit=filters.get("limit") or 20, span_name=span_name, span_service=span_service,
                      attr_keys=[k for k, _ in attributes], attr_values=[v for _, v in attributes],
                      span_filter=int(bool(attributes or span_name or span_service)))  # fmt: skip
        result = self._client.query(sql.SEARCH_TRACES, parameters=params)
        traces = [
            {"trace_id": tid, "root_service": svc, "root_name": name, "start_time_unix_nano": start,
             "duration_ns": dur, "span_count": count, "error": bool(err), "sample_rate": rate,
             "sampled_by": rule, "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0}
            for tid, svc, name, start, dur, count, err, rate, rule in result.result_rows
        ]  # fmt: skip
        if traces:
            by_id = {t["trace_id"]: t for t in traces}
            costs = self._client.query(sql.TRACE_COSTS, parameters={"trace_ids": list(by_id)})
            for tid, cost, tokens_in, tokens_out in costs.result_rows:
                by_id[tid].update(cost_usd=cost, input_tokens=int(tokens_in), output_tokens=int(tokens_out))
        return traces

    def stats(self, group_by: str, limit: int = 100, root_only: bool = False, service: str | None = None,
              since_ns: int | None = None, until_ns: int | None = None, tenant: str | None = None,
              fallback: str = "") -> list[dict[str, Any]]:  # fmt: skip
        """Weighted statistics per group; see :data:`sql.STATS`. Standard errors: the count's
        from the Horvitz-Thompson variance, the error rate's by the delta method for a ratio
        of two such estimates (errors and count, whose covariance is the errors' variance)."""
        params = {"group_by": group_by, "limit": limit, "root_only": int(root_only), "service": service,
                  "since_ns": since_ns, "until_ns": until_ns, "tenant": tenant, "fallback": fallback}  # fmt: skip
        result = self._client.query(sql.STATS, parameters=params)
        out = []
        for grp, count, errors, quantiles, tokens_in, tokens_out, cache_read, cost, stored, var_n, var_e in result.result_rows:
            rate = errors / count if count else 0.0
            rate_var = (var_e - 2 * rate * var_e + rate * rate * var_n) / (count * count) if count else 0.0
            p50, p95, p99 = (float(q) / 1e6 for q in quantiles)
            out.append({
                "group": grp, "count": round(count, 1), "errors": round(errors, 1),
                "error_rate": rate, "error_rate_stderr": math.sqrt(max(0.0, rate_var)),
                "p50_ms": p50, "p95_ms": p95, "p99_ms": p99,
                "input_tokens": round(tokens_in), "output_tokens": round(tokens_out),
                "cache_read_tokens": round(cache_read), "cost_usd": cost, "stored_spans": stored,
                "count_stderr": round(math.sqrt(max(0.0, var_n)), 1),
            })  # fmt: skip
        return out

    def stored_spans(self, trace_ids: list[str], start_ns: int, end_ns: int) -> set[tuple[str, str]]:
        """(trace id, span id) of the spans of ``trace_ids`` already stored between the bounds,
        asked in chunks so that the query stays small for an HTTP server."""
        found: set[tuple[str, str]] = set()
        for i in range(0, len(trace_ids), STORED_SPANS_CHUNK):
            result = self._client.query(sql.STORED_SPANS, parameters={
                "trace_ids": trace_ids[i : i + STORED_SPANS_CHUNK], "start_ns": start_ns, "end_ns": end_ns})  # fmt: skip
            found.update((str(t), str(s)) for t, s in result.result_rows)
        return found

    def refill_lookup(self, trace_ids: list[str]) -> None:
        """The trace-id lookup's rows for traces whose spans are stored (min/max: a row that is
        there already changes nothing). Grafana's and the exporter's trace queries find a
        trace's time range there, so a trace without its row is not found by id."""
        for i in range(0, len(trace_ids), STORED_SPANS_CHUNK):
            self._client.command(sql.LOOKUP_REFILL, parameters={"trace_ids": trace_ids[i : i + STORED_SPANS_CHUNK]})

    def recent_kept(self, window_seconds: int, limit: int) -> list[tuple[TraceSummary, str, float]]:
        result = self._client.query(sql.RECENT_KEPT, parameters={"window_seconds": window_seconds, "limit": limit})
        return [summary_from_row(row) for row in result.result_rows]

    def ping(self) -> bool:
        return bool(self._client.command(sql.PING))
