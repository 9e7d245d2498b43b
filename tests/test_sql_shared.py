"""One code path: the http:// transport runs exactly the SQL of the embedded one.

Two collectors get the very same spans (one SDK provider, one exporter to each): one stores
in the embedded chDB engine, the other over ClickHouse's HTTP protocol (served by the
ClickHouse engine, see ``tests/support/clickhouse_http.py``). Their query API answers must
be identical, and every statement that crossed the wire must be one of ``collector/sql.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

from collector import sql
from tests.support.collector import Collector
from tests.support.otel import error_span, exporter, llm_trace

SAMPLING = {"decision_wait": "2s", "quiet_period": "200ms", "rules": [
    {"name": "errors", "when": [{"status": "error"}], "keep": "100%"}, {"name": "default", "keep": "50%"}]}  # fmt: skip


def _normalise(sql_text: str) -> str:
    text = sql_text.removesuffix("\n FORMAT Native").replace("`", "")
    return " ".join(text.split())


def _expected_statements() -> set[str]:
    insert = "INSERT INTO {table} ({cols}) FORMAT Native"
    return {_normalise(s) for s in (
        sql.create_spans_table(7), sql.create_traces_table(7), sql.create_rejected_table(7), sql.GET_TRACE, sql.SEARCH_TRACES, sql.PING,
        sql.RECENT_KEPT, sql.TRACE_COSTS, sql.STATS, *sql.MIGRATIONS, sql.COLUMN_TYPES,
        sql.create_lookup_table(7), sql.create_logs_table(7), sql.TRACE_LOGS, sql.CREATE_LOOKUP_VIEW, sql.LOOKUP_EXISTS, sql.LOOKUP_BACKFILL, sql.DEDUPLICATION_WINDOW,
        # span rows are built as RowBinary in compiled code (collector.rows.NativeRowBuilder), and
        # inserted as one Native block converted from them (or as they are, if the table has a
        # column type the converter does not know)
        insert.format(table=sql.SPANS_TABLE, cols=", ".join(sql.SPAN_COLUMNS)),
        insert.replace("Native", "RowBinary").format(table=sql.SPANS_TABLE, cols=", ".join(sql.SPAN_COLUMNS)),
        # trace summaries are RowBinary, made with each trace's rows (collector.rows.encode_trace_row)
        insert.replace("Native", "RowBinary").format(table=sql.TRACES_TABLE, cols=", ".join(sql.TRACE_COLUMNS)),
        insert.format(table=sql.REJECTED_TABLE, cols=", ".join(sql.REJECTED_COLUMNS)),
        insert.format(table=sql.LOGS_TABLE, cols=", ".join(sql.LOG_COLUMNS)),
    )}  # fmt: skip


def test_http_transport_runs_the_same_sql_with_the_same_results(
    tmp_path: Path, clickhouse_http: tuple[str, Path]
) -> None:
    dsn, statements = clickhouse_http
    embedded = Collector(tmp_path / "embedded", {"sampling": SAMPLING}).start()
    server = Collector(tmp_path / "server", {"sampling": SAMPLING, "storage": {"clickhouse": {"dsn": dsn}}}).start()
    try:
        provider = TracerProvider(resource=Resource.create({"service.name": "twin"}))
        for target in (embedded, server):
            provider.add_span_processor(BatchSpanProcessor(exporter("http", target)))
        tracer = provider.get_tracer("sql-shared")
        ids = [llm_trace(tracer, "llm.chat" if i % 4 == 0 else None) for i in range(40)]
        provider.force_flush()
        provider.shutdown()

        def listing(c: Collector) -> Any:
            return c.get("/api/traces", limit=100).json()["traces"]

        for c in (embedded, server):
            c.wait_for(lambda c=c: c.metrics()["tailsift_sampler_buffered_traces"] == 0
                       and c.metrics()["tailsift_storage_pending_rows"] == 0
                       and c.metrics().get('tailsift_sampler_decisions_total{decision="kept",rule="errors"}') == 10,
                       30, "decisions")  # fmt: skip
        embedded_list, server_list = listing(embedded), listing(server)
        assert len(embedded_list) >= 10
        assert server_list == embedded_list
        for trace_id in ids[:8]:
            a, b = embedded.get(f"/api/traces/{trace_id}"), server.get(f"/api/traces/{trace_id}")
            assert a.status_code == b.status_code
            assert a.json() == b.json()
        filtered = {"error": "true", "min_duration_ms": "0", "service": "twin", "since": "1h", "limit": "5"}
        assert server.get("/api/traces", **filtered).json() == embedded.get("/api/traces", **filtered).json()
        for group_by in ("service", "model", "span_name", "http.route"):
            a, b = embedded.get("/api/stats", group_by=group_by), server.get("/api/stats", group_by=group_by)
            assert a.status_code == b.status_code == 200 and a.json() == b.json() and a.json()["groups"]
    finally:
        assert server.stop() == 0, server.log()
        assert embedded.stop() == 0, embedded.log()

    sent = [json.loads(line)["sql"] for line in statements.read_text().splitlines()]
    # clickhouse-connect's own statements: connection set-up, and DESCRIBE before an insert
    client = ("SELECT version()", "SELECT name, value", "SELECT 1 AS check", "DESCRIBE TABLE")
    ours = {_normalise(s) for s in sent if not s.startswith(client)}
    assert len(sent) > len(ours) > 0
    assert ours <= _expected_statements(), ours - _expected_statements()
    assert {_normalise(q) for q in (sql.GET_TRACE, sql.SEARCH_TRACES, sql.create_spans_table(7), sql.STATS)} <= ours
    assert "s3cret-pw" not in server.log()


_PARSE = """
import json, sys, chdb
for statement in json.loads(sys.stdin.read()):
    chdb.query("EXPLAIN AST " + statement, "CSV")  # raises on a syntax error
"""


def test_cluster_ddl_parses_and_keeps_the_single_node_columns() -> None:
    statements = sql.cluster_ddl("tailsift", "otel", 7)
    checked = subprocess.run([sys.executable, "-c", _PARSE], input=json.dumps(statements), capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    (database, spans_local, spans, traces_local, traces, rejected_local, rejected, lookup_local, lookup, logs_local, logs,
     view) = statements  # fmt: skip
    assert "ReplicatedMergeTree(" in logs_local and "Distributed(" in logs
    assert "ReplicatedAggregatingMergeTree(" in lookup_local and "Distributed(" in lookup
    assert "TO otel.otel_traces_trace_id_ts_local" in view and "FROM otel.otel_traces_local" in view
    assert "ReplicatedMergeTree(" in rejected_local and "Distributed(" in rejected
    assert database.startswith("CREATE DATABASE IF NOT EXISTS otel ON CLUSTER 'tailsift'")
    columns = lambda ddl: ddl[ddl.index("(") : ddl.index(") ENGINE")]  # noqa: E731
    assert columns(spans_local) == columns(sql.create_spans_table(7))
    assert columns(traces_local) == columns(sql.create_traces_table(7))
    assert "ReplicatedReplacingMergeTree(" in spans_local and "Version)" in traces_local.split("ENGINE")[1]
    for ddl in (spans, traces):
        assert "ENGINE = Distributed('tailsift', 'otel'" in ddl and "cityHash64(TraceId)" in ddl


def test_https_clickhouse_is_verified(tmp_path: Path, clickhouse_https: tuple[str, Path]) -> None:
    """https:// DSNs verify the server's certificate by default: with the private CA in
    ``ca_file`` the collector stores; without it, it refuses to start and says why."""
    dsn, ca = clickhouse_https
    untrusted = Collector(tmp_path / "untrusted", {"storage": {"clickhouse": {"dsn": dsn}}})
    with pytest.raises(RuntimeError) as refused:
        untrusted.start()
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value) or "certificate verify failed" in str(refused.value)
    assert "s3cret-pw" not in str(refused.value)
    config = {"storage": {"clickhouse": {"dsn": dsn, "ca_file": str(ca)}}}
    with Collector(tmp_path / "trusted", config).start() as c:
        span, trace_id = error_span("over-https-clickhouse")
        assert HttpExporter(endpoint=c.http_url, timeout=10).export([span]) is SpanExportResult.SUCCESS
        c.wait_for(lambda: c.get(f"/api/traces/{trace_id}").status_code == 200, what="the trace stored over https")
