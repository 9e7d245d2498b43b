"""Reverse compatibility: tailsift starts on an ``otel_traces`` that the OTel Collector's
ClickHouse exporter created (its DDL, a plain MergeTree) and filled (its row format, none of
tailsift's columns), and reads those traces next to its own: ``traces``, ``trace``, ``stats``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.support.collector import Collector
from tests.support.otel import error_span
from tests.test_grafana_sql import run_sql

# The exporter's DDL (exporter/clickhouseexporter/internal/sqltemplates/traces_table.sql,
# bloom-filter variant), with its default engine.
EXPORTER_DDL = """
CREATE TABLE IF NOT EXISTS otel_traces (
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Duration UInt64 CODEC(T64, ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested (Timestamp DateTime64(9), Name LowCardinality(String), Attributes Map(LowCardinality(String), String)) CODEC(ZSTD(1)),
    Links Nested (TraceId String, SpanId String, TraceState String, Attributes Map(LowCardinality(String), String)) CODEC(ZSTD(1)),
    ResourceAttributeItems Array(String) ALIAS arrayMap(kv -> concat(kv.1, '=', kv.2), CAST(ResourceAttributes, 'Array(Tuple(String, String))')),
    SpanAttributeItems Array(String) ALIAS arrayMap(kv -> concat(kv.1, '=', kv.2), CAST(SpanAttributes, 'Array(Tuple(String, String))')),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_res_attr_value mapValues(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_value mapValues(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1,
    INDEX idx_lower_span_name lower(SpanName) TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8
) ENGINE = MergeTree()
PARTITION BY toDate(Timestamp)
PRIMARY KEY (ServiceName, SpanName, toDateTime(Timestamp))
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp), Timestamp)
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1
"""
FOREIGN = "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f001"
# Two spans as the exporter writes them: a server root and its failing client call.
EXPORTER_ROWS = f"""
INSERT INTO otel_traces (Timestamp, TraceId, SpanId, ParentSpanId, TraceState, SpanName, SpanKind, ServiceName,
    ResourceAttributes, ScopeName, ScopeVersion, SpanAttributes, Duration, StatusCode, StatusMessage,
    `Events.Timestamp`, `Events.Name`, `Events.Attributes`, `Links.TraceId`, `Links.SpanId`, `Links.TraceState`,
    `Links.Attributes`)
VALUES
    (now64(9) - 2, '{FOREIGN}', 'a1a1a1a1a1a1a1a1', '', '', 'GET /legacy', 'Server', 'legacy-api',
     {{'service.name': 'legacy-api'}}, 'io.opentelemetry.http', '1.0', {{'http.route': '/legacy'}}, 900000000,
     'Error', 'upstream failed', [], [], [], [], [], [], []),
    (now64(9) - 1.9, '{FOREIGN}', 'b2b2b2b2b2b2b2b2', 'a1a1a1a1a1a1a1a1', '', 'SELECT orders', 'Client', 'legacy-api',
     {{'service.name': 'legacy-api'}}, 'io.opentelemetry.jdbc', '1.0', {{'db.system': 'postgresql'}}, 700000000,
     'Error', 'timeout', [now64(9)], ['exception'], [{{'exception.type': 'Timeout'}}], [], [], [], [])
"""


def cli(collector: Collector, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "collector.cli", *args, "--api", collector.api],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_tailsift_runs_on_the_exporters_table(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_sql(f"chdb://{data}", {}, EXPORTER_DDL, EXPORTER_ROWS)
    with Collector(tmp_path / "collector", data_dir=data).start() as c:
        span, own = error_span("tailsift-api")
        assert HttpExporter(endpoint=c.http_url, timeout=10).export([span]) is SpanExportResult.SUCCESS
        c.wait_for(lambda: c.get(f"/api/traces/{own}").status_code == 200, what="tailsift's own trace")
        listed = {t["trace_id"]: t for t in c.get("/api/traces").json()["traces"]}
        assert set(listed) == {own, FOREIGN}
        legacy = listed[FOREIGN]
        assert (legacy["root_service"], legacy["root_name"], legacy["span_count"], legacy["error"]) == \
            ("legacy-api", "GET /legacy", 2, True)
        assert c.get("/api/traces", service="legacy-api", error="true").json()["traces"][0]["trace_id"] == FOREIGN
        assert FOREIGN in cli(c, "traces")
        waterfall = cli(c, "trace", FOREIGN)
        assert "GET /legacy" in waterfall and "SELECT orders" in waterfall
        stats = {g["group"]: g for g in c.get("/api/stats").json()["groups"]}
        assert stats["legacy-api"]["count"] == 2 and stats["legacy-api"]["errors"] == 2  # SampleRate 1: as stored
        assert "legacy-api" in cli(c, "stats")
