"""Outside readers: the SQL that Grafana's ClickHouse data source generates (OTel defaults,
trace-id lookup on) and the OTel ClickHouse exporter's README queries run on tailsift's
tables as they would on the exporter's, without FINAL. The lookup table is filled by its
view as spans are stored, and once from existing spans when it is created late."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import pytest

from tests.support.collector import Collector
from tests.support.kafka import kafka_queue
from tests.support.load import Load
from tests.support.otel import exporter, llm_trace
from tests.test_durability import QUICK, restart_and_check

# Grafana clickhouse-datasource 4.x, "Traces" query type, trace-id mode, OTel column defaults,
# "Use trace timestamp table" on (the exporter's otel_traces_trace_id_ts).
GRAFANA_TRACE_BY_ID = """
WITH '{trace_id}' as trace_id,
  (SELECT min(Start) FROM "default"."otel_traces_trace_id_ts" WHERE TraceId = trace_id) as trace_start,
  (SELECT max(End) + 1 FROM "default"."otel_traces_trace_id_ts" WHERE TraceId = trace_id) as trace_end
SELECT "TraceId" as traceID, "SpanId" as spanID, "ParentSpanId" as parentSpanID, "ServiceName" as serviceName,
  "SpanName" as operationName, multiply(toUnixTimestamp64Nano("Timestamp"), 0.000001) as startTime,
  multiply("Duration", 0.000001) as duration,
  arrayMap(key -> map('key', key, 'value',"SpanAttributes"[key]), mapKeys("SpanAttributes")) as tags,
  arrayMap(key -> map('key', key, 'value',"ResourceAttributes"[key]), mapKeys("ResourceAttributes")) as serviceTags
FROM "default"."otel_traces"
WHERE traceID = trace_id AND "Timestamp" >= trace_start AND "Timestamp" <= trace_end
LIMIT 1000
"""
# Grafana's trace search (root spans in the time range).
GRAFANA_SEARCH = """
SELECT "TraceId" as traceID, "ServiceName" as serviceName, "SpanName" as operationName,
  "Timestamp" as startTime, multiply("Duration", 0.000001) as duration
FROM "default"."otel_traces"
WHERE ( "Timestamp" >= now() - INTERVAL 1 HOUR AND "Timestamp" <= now() + INTERVAL 1 HOUR ) AND ( "ParentSpanId" = '' )
ORDER BY startTime DESC LIMIT 1000
"""
# The exporter README's "find spans by trace id" (with the lookup bounding the time range).
EXPORTER_TRACE = """
WITH '{trace_id}' as trace_id,
     (SELECT min(Start) FROM otel_traces_trace_id_ts WHERE TraceId = trace_id) as start,
     (SELECT max(End) + 1 FROM otel_traces_trace_id_ts WHERE TraceId = trace_id) as end
SELECT Timestamp, TraceId, SpanId, ParentSpanId, SpanName, SpanKind, ServiceName, Duration, StatusCode,
       StatusMessage, toString(SpanAttributes), toString(ResourceAttributes), toString(Events.Name), toString(Links.TraceId)
FROM otel_traces
WHERE TraceId = trace_id AND Timestamp >= start AND Timestamp <= end
LIMIT 100
"""

_RUN = """
import json, sys, clickhouse_connect
client = clickhouse_connect.get_client(dsn=sys.argv[1])
for statement in sys.argv[2:]:
    client.command(statement)
queries = json.loads(sys.stdin.read())
print(json.dumps({name: [list(map(str, row)) for row in client.query(q).result_rows] for name, q in queries.items()}))
"""


def run_sql(dsn: str, queries: dict[str, str], *commands: str) -> dict[str, list[list[str]]]:
    """Queries on a stopped collector's chDB directory, in a subprocess (one chDB path a process)."""
    out = subprocess.run([sys.executable, "-c", _RUN, dsn, *commands], input=json.dumps(queries),
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def send_traces(collector: Collector, count: int) -> list[str]:
    provider = TracerProvider(resource=Resource.create({"service.name": "grafana-reader"}))
    provider.add_span_processor(BatchSpanProcessor(exporter("http", collector)))
    tracer = provider.get_tracer("grafana")
    ids = [llm_trace(tracer, error_in="llm.chat") for _ in range(count)]  # errors: all kept
    provider.shutdown()
    collector.wait_for(lambda: all(collector.get(f"/api/traces/{t}").status_code == 200 for t in ids),
                       what="traces stored")  # fmt: skip
    return ids


def test_grafana_and_exporter_queries_read_tailsift_tables(tmp_path: Path) -> None:
    collector = Collector(tmp_path / "collector").start()
    try:
        ids = send_traces(collector, 5)
    finally:
        collector.stop()
    queries: dict[str, Any] = {"search": GRAFANA_SEARCH}
    for i, trace_id in enumerate(ids):
        queries[f"grafana {i}"] = GRAFANA_TRACE_BY_ID.format(trace_id=trace_id)
        queries[f"exporter {i}"] = EXPORTER_TRACE.format(trace_id=trace_id)
    rows = run_sql(collector.dsn, queries)
    assert {r[0] for r in rows["search"]} == set(ids)
    for i, trace_id in enumerate(ids):
        for source in ("grafana", "exporter"):
            spans = rows[f"{source} {i}"]
            assert len(spans) == 4, (source, spans)  # root, retrieve, vector.search, llm.chat: each once
            assert len({s[2] if source == "exporter" else s[1] for s in spans}) == 4


@pytest.mark.e2e
def test_outside_readers_count_each_span_once_after_a_kafka_crash_and_replay(tmp_path: Path, kafka: str) -> None:
    """SIGKILL under load with the Kafka queue: uncommitted records are replayed to a new
    process, some of them already stored (in other batches, some without their summary).
    Grafana's and the exporter's queries, without FINAL, then see every span once."""
    import signal

    config = {**QUICK, **kafka_queue(kafka)}
    first = Collector(tmp_path / "first", config, data_dir=tmp_path / "data").start()
    load = Load(first.http_url, threads=4).start()
    time.sleep(12)
    assert first.proc is not None
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    load.stop()
    stored = restart_and_check(tmp_path, config, load)  # every acknowledged error trace, each span once
    sample = sorted(load.acked_errors)[:: max(1, len(load.acked_errors) // 40)]
    queries: dict[str, Any] = {"search": GRAFANA_SEARCH,
                               "totals": "SELECT count(), uniqExact(TraceId, SpanId) FROM otel_traces"}  # fmt: skip
    for trace_id in sample:
        queries[f"grafana {trace_id}"] = GRAFANA_TRACE_BY_ID.format(trace_id=trace_id)
        queries[f"exporter {trace_id}"] = EXPORTER_TRACE.format(trace_id=trace_id)
    rows = run_sql(f"chdb://{tmp_path / 'data'}", queries)
    [[total, distinct]] = rows["totals"]
    assert total == distinct, f"{int(total) - int(distinct)} span rows stored twice"
    roots = [r[0] for r in rows["search"]]
    assert roots and len(roots) == len(set(roots)), "a trace listed twice by Grafana's search"
    for trace_id in sample:
        grafana = [r[1] for r in rows[f"grafana {trace_id}"]]
        exporter_rows = [r[2] for r in rows[f"exporter {trace_id}"]]
        spans = stored[trace_id][1]
        assert len(grafana) == len(set(grafana)) == spans and len(exporter_rows) == len(set(exporter_rows)) == spans
    print(f"\nKafka SIGKILL: {len(load.acked_errors)} acknowledged error traces stored; {total} span rows, "
          f"all distinct; {len(sample)} traces read by Grafana's and the exporter's SQL, each span once")


def test_the_lookup_is_filled_from_existing_spans_when_created(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = Collector(tmp_path / "first", data_dir=data).start()
    try:
        ids = send_traces(first, 3)
    finally:
        first.stop()
    # A database from before the lookup existed: without it, and without its view.
    run_sql(first.dsn, {}, "DROP VIEW otel_traces_trace_id_ts_mv", "DROP TABLE otel_traces_trace_id_ts")
    second = Collector(tmp_path / "second", data_dir=data).start()
    time.sleep(0.5)
    second.stop()
    rows = run_sql(first.dsn, {t: f"SELECT count(), min(Start) <= max(End) FROM otel_traces_trace_id_ts "
                                  f"WHERE TraceId = '{t}'" for t in ids})  # fmt: skip
    assert all(int(rows[t][0][0]) >= 1 and rows[t][0][1] in ("1", "True") for t in ids), rows


_TWICE = """
import sys, time
from collector.config import ClickHouseSettings
from collector.storage import ClickHouseStore, Rows
from collector import sql
store = ClickHouseStore(ClickHouseSettings(dsn=sys.argv[1]))
store.connect()
now = time.time_ns()
def block(span_ids):
    return [[now, "ab" * 16, s, "", "", "retried", "Server", "svc", {}, "", "", {}, 1000, "Error", "", [], [], [], [],
             [], [], [], [], 1.0, "errors", 0.0, {}, {}] for s in span_ids]
for attempt in range(2):  # an insert retried after its answer was lost: the very same block
    store.insert(Rows(block(["0000000000000001", "0000000000000002"]), []))
store.insert(Rows(block(["0000000000000003"]), []))  # a different block goes in
print(store._client.command("SELECT count() FROM otel_traces"))
"""


def test_a_block_sent_twice_is_stored_once(tmp_path: Path) -> None:
    """Physical duplicates are prevented, not just hidden: outside readers (Grafana,
    ClickStack) read without FINAL. Each insert carries a token made from its rows."""
    out = subprocess.run([sys.executable, "-c", _TWICE, f"chdb://{tmp_path / 'data'}"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "3"


def test_sample_weight_is_whole_and_unbiased_for_clickstack(tmp_path: Path) -> None:
    """keep 30% stores SampleRate 3.33; ClickStack weights by integers, so SampleWeight is 3
    or 4 per trace (the same on all its spans), 3.33 on average."""
    from tests.support.otel import Sender

    rules = [{"name": "default", "keep": "30%"}]
    config = {"sampling": {"decision_wait": "1s", "quiet_period": "100ms", "rules": rules}}
    collector = Collector(tmp_path / "collector", config).start()
    try:
        sender = Sender("http", collector, seed=11)
        for _ in range(1500):
            with sender.tracer.start_as_current_span("GET /items"):
                with sender.tracer.start_as_current_span("SELECT items"):
                    pass
        sender.close()
        collector.wait_for(lambda: collector.metrics().get("tailsift_sampler_buffered_traces") == 0
                           and collector.metrics().get("tailsift_storage_pending_rows") == 0, what="all decided")  # fmt: skip
    finally:
        collector.stop()
    rows = run_sql(collector.dsn, {"w": "SELECT TraceId, min(SampleWeight), max(SampleWeight), any(SampleRate) "
                                        "FROM otel_traces GROUP BY TraceId"})["w"]  # fmt: skip
    assert len(rows) > 300
    weights = [int(low) for _, low, high, _ in rows if low == high]
    assert len(weights) == len(rows), "a trace's spans disagree on their weight"
    assert set(weights) == {3, 4} and all(abs(float(rate) - 1 / 0.3) < 1e-9 for *_, rate in rows)
    mean = sum(weights) / len(weights)
    assert abs(mean - 1 / 0.3) < 0.15, mean  # unbiased: ~3.33 (standard error ~0.03 here)
