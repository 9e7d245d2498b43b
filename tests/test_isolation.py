"""One client's bad data never costs another client's traces (storage isolation).

The writer is driven directly against the real embedded ClickHouse engine. A poison trace
is put in the same insert batch as 60 good error traces; ClickHouse refusing the batch
must cost nothing but the rows it refuses even alone, and those land in the dead-letter
table ``tailsift_rejected`` with their span and reason.
"""

from __future__ import annotations

import base64
import math
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from processors.genai import Price, PriceTable, parse_count
from tests.support.collector import Collector, deep_merge
from tests.support.writer import kept, query, request, write_all
from tests.support.otel import Sender, Status, StatusCode, llm_trace

GOOD = list(range(1, 61))


def test_a_refused_row_costs_only_itself(tmp_path: Path) -> None:
    """A span ClickHouse refuses (here: a table constraint) among 60 error traces: the 60 are
    stored, the refused span is in the dead-letter table with its OTLP bytes, its trace's
    other spans and summary are stored, and the batch is settled."""
    poison = request(999, spans=3, name="fine")
    poison.resource_spans[0].scope_spans[0].spans[1].name = "poison"
    decisions = [kept(request(t)) for t in GOOD[:30]] + [kept(poison)] + [kept(request(t)) for t in GOOD[30:]]
    writer, settled = write_all(tmp_path, decisions,
                                prepare="ALTER TABLE otel_traces ADD CONSTRAINT no_poison CHECK SpanName != 'poison'")
    stored = {int(t, 16) for (t,) in query(tmp_path, "SELECT DISTINCT TraceId FROM otel_traces")}
    assert set(GOOD) <= stored and 999 in stored
    assert query(tmp_path, "SELECT count() FROM otel_traces WHERE TraceId = '%032x'" % 999) == [(2,)]
    [(trace_id, span_id, reason, payload)] = query(tmp_path, "SELECT TraceId, SpanId, Reason, Payload FROM tailsift_rejected")
    assert trace_id == "%032x" % 999 and span_id == (2).to_bytes(8, "big").hex()
    assert "no_poison" in reason
    assert TracesData.FromString(base64.b64decode(payload)).resource_spans[0].scope_spans[0].spans[0].name == "poison"
    assert writer.rows_rejected == 1 and writer.rows_written == 60 * 2 + 2
    assert sum(len(b) for b in settled) == len(decisions)
    assert query(tmp_path, "SELECT count() FROM tailsift_traces") == [(61,)]


def test_spans_on_150_days_are_stored_without_costing_the_batch(tmp_path: Path) -> None:
    """ClickHouse refuses an insert touching more than 100 partitions: the batch is split
    until every part fits, so everything is stored and nothing is a dead letter."""
    decisions = [kept(request(t)) for t in GOOD] + [kept(request(1000, spans=150, day_step=1))]
    writer, _ = write_all(tmp_path, decisions)
    assert query(tmp_path, "SELECT count(DISTINCT TraceId), count() FROM otel_traces") == [(61, 60 * 2 + 150)]
    assert writer.rows_rejected == 0 and writer.insert_failures == 0


def test_poison_token_counts_are_clamped_not_fatal(tmp_path: Path) -> None:
    prices = PriceTable([Price(model="gpt-*", input=1.0, output=2.0)])
    poison = [request(2000 + i, attrs={"gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": value,
                                       "gen_ai.usage.output_tokens": value})
              for i, value in enumerate((math.inf, math.nan, -5.0, 1e300, "inf", "NaN", "1e400"))]  # fmt: skip
    decisions = [kept(request(t)) for t in GOOD] + [kept(p) for p in poison]
    writer, _ = write_all(tmp_path, decisions, prices=prices)
    assert query(tmp_path, "SELECT count(DISTINCT TraceId) FROM otel_traces") == [(67,)]
    [(max_cost, finite)] = query(tmp_path, "SELECT max(CostUsd), min(isFinite(CostUsd)) FROM otel_traces")
    assert finite == 1 and max_cost <= 2 * 3.0 * 10**12 / 1e6  # 1e300 is capped at MAX_TOKENS
    assert writer.rows.clamped["token_count"] >= 2 * 6
    assert [parse_count(v) for v in (math.inf, -math.inf, math.nan, -3, "x", None, "12", 7.9)] == [0, 0, 0, 0, 0, 0, 12, 7]


# --- end to end: poison requests among good ones, through the real receivers and both queues

POISON_CONFIG = {
    "storage": {"clickhouse": {"ttl_days": 365}},  # spans on 150 past days are within retention
    "genai": {"prices": [{"model": "gpt-*", "input": 2.5, "output": 10.0}]},
    "sampling": {"decision_wait": "2s", "quiet_period": "300ms"},
}


def raw_request(trace: int, spans: int = 1, day_step: int = 0, attributes: int = 0, big: int = 0) -> bytes:
    req = request(trace, spans, day_step, now=time.time_ns())
    span = req.resource_spans[0].scope_spans[0].spans[0]
    for i in range(attributes):
        span.attributes.add(key=f"k{i}")
    if big:
        span.attributes.add(key="big").value.string_value = "z" * big
    return req.SerializeToString()


@pytest.mark.e2e
def test_poison_among_good_error_traces_costs_nothing(tmp_path: Path, queue_config: dict[str, Any]) -> None:
    c = Collector(tmp_path, deep_merge(POISON_CONFIG, queue_config)).start()
    try:
        good: list[str] = []
        sender = Sender("http", c, service="good-client")
        poison_sdk = Sender("grpc", c, service="poison-client")
        tokens = [math.inf, math.nan, -5, 1e300, "inf", "NaN", -1e300]

        def bad_usage(value: Any) -> Any:
            return lambda span: (span.set_attribute("gen_ai.usage.input_tokens", value),
                                 span.set_attribute("gen_ai.usage.output_tokens", value))  # fmt: skip

        for i in range(60):
            good.append(llm_trace(sender.tracer, error_in="llm.chat"))
            if i < len(tokens):
                llm_trace(poison_sdk.tracer, error_in="llm.chat", extra=bad_usage(tokens[i]))
            if i == 20:  # raw OTLP poison, in the middle of the good traffic
                for body in (raw_request(7001, spans=150, day_step=1), raw_request(7002, attributes=1_000_000),
                             raw_request(7003, big=10 * 1024 * 1024)):  # fmt: skip
                    resp = requests.post(c.http_url, data=body, headers={"Content-Type": "application/x-protobuf"},
                                         timeout=120)  # fmt: skip
                    assert resp.status_code == 200, resp.text
        with_big = Sender("http", c, service="poison-client")
        with with_big.tracer.start_as_current_span("huge") as span:
            span.set_attribute("blob", "q" * (10 * 1024 * 1024))
            span.set_status(Status(StatusCode.ERROR, "huge"))
        for s in (sender, poison_sdk, with_big):
            s.close()
        c.wait_for(lambda: all(c.get(f"/api/traces/{t}").status_code == 200 for t in good), 120, "60 good error traces")
        for trace in (7001, 7002, 7003):
            c.wait_for(lambda: c.get("/api/traces/%032x" % trace).status_code == 200, 120, f"poison trace {trace}")
        assert len(c.get("/api/traces/%032x" % 7001).json()["spans"]) == 150
        m = c.metrics()
        assert m["tailsift_storage_values_clamped_total{kind=\"token_count\"}"] >= 6
        assert m.get("tailsift_storage_rows_rejected_total", 0) == 0  # everything was storable after clamping
        assert "Traceback" not in c.log()
        stats = c.get("/api/stats", group_by="model").json()["groups"]
        assert all(math.isfinite(g["cost_usd"]) and g["input_tokens"] >= 0 for g in stats)
    finally:
        assert c.stop() == 0, c.log()


def test_a_batch_the_sampler_fails_on_is_dead_lettered_not_lost(tmp_path: Path) -> None:
    """A sampler bug on one batch (here: forced on the batch holding trace 666) must not lose
    what was acknowledged: the batch's spans go whole to ``tailsift_rejected``, counted, and
    everything else is sampled and stored as usual."""
    import asyncio

    from collector.config import load_config
    from collector.otlp import split_by_trace
    from collector.pipeline import Pipeline

    settings = load_config(None, {
        "storage": {"clickhouse": {"dsn": f"chdb://{tmp_path / 'db'}", "flush_interval": "100ms"}},
        "receivers": {"otlp": {"grpc": None, "http": None}}, "query": {"endpoint": "127.0.0.1:0"},
        "queue": {"wal": {"enabled": False}},
        "sampling": {"decision_wait": "200ms", "rules": [{"name": "all", "keep": "100%"}]},
    })  # fmt: skip
    pipeline = Pipeline(settings)
    assert pipeline.sampler is not None and pipeline.ingest is not None
    add = pipeline.sampler.add

    def failing_add(batch: list[Any]) -> list[Any]:
        if any(f.trace_id == (666).to_bytes(16, "big") for f in batch):
            raise RuntimeError("a bug in the sampler")
        return add(batch)

    pipeline.sampler.add = failing_add  # type: ignore[method-assign]

    async def go() -> None:
        await pipeline.start()
        for trace in (1, 2, 666, 3):
            await pipeline.queue.publish(split_by_trace(request(trace, spans=3, now=time.time_ns())).fragments)
            await asyncio.sleep(0.3)  # one batch each
        await asyncio.sleep(1.5)
        await pipeline.shutdown()

    asyncio.run(go())
    assert pipeline.writer is not None and pipeline.writer.rows_rejected == 3
    stored = {int(t, 16) for (t,) in query(tmp_path, "SELECT DISTINCT TraceId FROM otel_traces")}
    assert stored == {1, 2, 3}
    [(trace_id, reason, payload)] = query(tmp_path, "SELECT TraceId, Reason, Payload FROM tailsift_rejected")
    assert int(str(trace_id), 16) == 666 and "a bug in the sampler" in str(reason)
    assert len(TracesData.FromString(base64.b64decode(str(payload))).resource_spans[0].scope_spans[0].spans) == 3


@pytest.mark.parametrize("batch_rows", [20_000, 1])  # rows built as decisions arrive / built at insert time
def test_a_trace_whose_rows_cannot_be_built_is_a_dead_letter_whenever_they_are_built(
        tmp_path: Path, batch_rows: int) -> None:  # fmt: skip
    """Rows are built on the storage thread ahead of the insert while less than a batch is
    pending, else at insert time. Either way a trace whose rows raise goes to the dead-letter
    table whole, the others of its row-building job and batch are stored, and all settle."""
    import asyncio

    from collector.config import ClickHouseSettings
    from collector.writer import StorageWriter

    def hook(trace_hex: str, *_: Any) -> None:
        if int(trace_hex, 16) == 666:
            raise RuntimeError("a bug while building rows")

    decisions = [kept(request(t)) for t in GOOD[:40]] + [kept(request(666, spans=3))] + [kept(request(t)) for t in GOOD[40:]]
    settled: list[list[Any]] = []
    settings = ClickHouseSettings(dsn=f"chdb://{tmp_path / 'db'}", ttl_days=0, batch_rows=batch_rows)  # type: ignore[arg-type]
    writer = StorageWriter(settings, on_settled=settled.append, on_kept_span=hook)

    async def go() -> None:
        await writer.start()
        for start in range(0, len(decisions), 7):  # several writes, as sampling steps make them
            await writer.write(decisions[start : start + 7])
        await writer.flush()
        await writer.shutdown()

    asyncio.run(go())
    stored = {int(t, 16) for (t,) in query(tmp_path, "SELECT DISTINCT TraceId FROM otel_traces")}
    assert stored == set(GOOD)
    [(trace_id, reason, payload)] = query(tmp_path, "SELECT TraceId, Reason, Payload FROM tailsift_rejected")
    assert int(str(trace_id), 16) == 666 and "a bug while building rows" in str(reason)
    assert len(TracesData.FromString(base64.b64decode(str(payload))).resource_spans[0].scope_spans[0].spans) == 3
    assert writer.rows_rejected == 3 and writer.rows_written == 60 * 2
    assert sum(len(b) for b in settled) == len(decisions)


def test_an_insert_holds_its_growth_with_the_memory_limiter_and_gives_it_back(tmp_path: Path) -> None:
    """An insert briefly needs a multiple of its batch's payload (rows, then the engine's
    block). The writer holds that with the memory limiter while it inserts, so requests
    arriving meanwhile are refused instead of pushing RSS past the limit, and gives it back."""
    import asyncio

    from collector.config import ClickHouseSettings
    from collector.errors import Backpressure
    from collector.memory import MemoryLimiter
    from collector.writer import INSERT_GROWTH, StorageWriter

    decisions = [kept(request(t)) for t in GOOD[:10]]
    sizes = {sum(len(f.payload) for f in d.fragments) for d in decisions}
    memory = MemoryLimiter(limit=2**30, spike=0)
    held: list[int] = []
    refused: list[bool] = []

    def hook(*_: Any) -> None:  # runs while the rows are built, inside the insert (batch_bytes=1)
        held.append(memory.reserved)
        try:  # a request that would fit were the insert's growth not held
            memory.reserve(memory.soft_limit - memory.rss - memory.reserved + min(sizes))
            refused.append(False)
        except Backpressure:
            refused.append(True)

    # One trace per batch, and rows built at insert time (nothing is built ahead past batch_bytes / 4).
    settings = ClickHouseSettings(dsn=f"chdb://{tmp_path / 'db'}", ttl_days=0, batch_bytes=1)  # type: ignore[arg-type]
    writer = StorageWriter(settings, on_kept_span=hook, memory=memory)

    async def go() -> None:
        await writer.start()
        await writer.write(decisions)
        await writer.flush()
        await writer.shutdown()

    asyncio.run(go())
    assert writer.rows_written == 10 * 2
    assert held and set(held) <= {INSERT_GROWTH * s for s in sizes}, (held, sizes)
    assert all(refused), "a request that fits only without the insert's growth is refused during it"
    assert memory.reserved == 0
