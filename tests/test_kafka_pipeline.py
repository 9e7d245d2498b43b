"""Kafka production mode against a real Apache Kafka broker (started by deploy/kafka/kafka.sh).

Crash and replay, two samplers sharing partitions, a broker outage during ingest, and a
poison record: nothing acknowledged is lost, and nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult

from processors.sampling.sampler import keep_by_trace_id
from tests.support.collector import Collector, deep_merge
from tests.support.kafka import SASL_PASSWORD, SASL_USER, Broker, kafka_queue
from tests.support.otel import Sender, error_span, llm_trace
from tests.support.storage import span_rows

RULES = [{"name": "errors", "when": [{"status": "error"}], "keep": "100%"}, {"name": "default", "keep": "10%"}]
QUICK = {"decision_wait": "3s", "quiet_period": "300ms", "rules": RULES}


def send_llm_traces(collector: Collector, n: int, seed: int) -> tuple[set[str], set[str]]:
    """n four-span traces over gRPC, ~10% with an error; returns (error ids, ok ids)."""
    rng = random.Random(seed)
    sender = Sender("grpc", collector)
    errors, oks = set(), set()
    for _ in range(n):
        failed = rng.random() < 0.1
        (errors if failed else oks).add(llm_trace(sender.tracer, "llm.chat" if failed else None))
    sender.close()
    return errors, oks


def accepted_spans(collector: Collector) -> float:
    return collector.metrics().get('tailsift_receiver_spans_total{outcome="accepted"}', 0.0)


def stored(collector: Collector, error: bool) -> set[str]:
    body = collector.get("/api/traces", error=str(error).lower(), limit=1000).json()
    return {t["trace_id"] for t in body["traces"]}


def assert_each_span_once(rows: dict[str, tuple[int, int]], traces: set[str], spans_each: int = 4) -> None:
    for trace_id in traces:
        assert rows.get(trace_id) == (spans_each, spans_each), (trace_id, rows.get(trace_id))
    duplicated = {t: r for t, r in rows.items() if r[0] != r[1]}
    assert not duplicated, f"spans stored twice: {duplicated}"


def test_sigkill_before_decisions_loses_nothing_and_replays_once(tmp_path: Path, kafka: str) -> None:
    queue = kafka_queue(kafka)  # one topic and group for all three lives
    never_commit = deep_merge(queue, {"queue": {"kafka": {"commit_interval": "1h"}}})
    data = tmp_path / "data"
    # First life: decide and store 150 traces, then die. It never commits an offset, so
    # every later life replays these records too: they must not be stored again.
    first = Collector(tmp_path / "first", {"sampling": QUICK, **never_commit}, data_dir=data).start()
    errors_a, oks_a = send_llm_traces(first, 150, seed=1)
    first.wait_for(lambda: stored(first, True) >= errors_a, 60, "first errors stored")
    first.wait_for(lambda: first.metrics()["tailsift_sampler_buffered_traces"] == 0, 30, "first decisions")
    first.wait_for(lambda: first.metrics()["tailsift_storage_pending_rows"] == 0, 30, "first inserts")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    # Second life: 150 more traces, all acknowledged, killed before their decision wait ends.
    waiting = {"sampling": {**QUICK, "decision_wait": "10m", "quiet_period": "10m"}, **never_commit}
    second = Collector(tmp_path / "second", waiting, data_dir=data).start()
    errors_b, oks_b = send_llm_traces(second, 150, seed=2)
    assert accepted_spans(second) == 600  # every span acknowledged to the client
    second.wait_for(lambda: second.metrics()["tailsift_sampler_buffered_traces"] >= 150, 60, "buffering")
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL  # no shutdown, no flush, no commit

    third = Collector(tmp_path / "third", {"sampling": QUICK, **queue}, data_dir=data).start()
    errors, oks = errors_a | errors_b, oks_a | oks_b
    try:
        third.wait_for(lambda: stored(third, True) >= errors, 60, "every error trace")
        third.wait_for(lambda: third.metrics()["tailsift_sampler_buffered_traces"] == 0, 30, "decisions")
        third.wait_for(lambda: third.metrics()["tailsift_storage_pending_rows"] == 0, 30, "inserts")
        assert stored(third, True) == errors
        kept = stored(third, False)
        assert kept == {t for t in oks if keep_by_trace_id(bytes.fromhex(t), 0.10)}  # near 10%, exactly the hash's
        assert 0 < len(kept) < len(oks) * 0.25
        replayed = third.metrics()['tailsift_sampler_events_total{event="replayed_spans_skipped"}']
        assert replayed >= 4 * len(errors_a)  # the first life's stored traces were recognised, not re-stored
    finally:
        assert third.stop() == 0, third.log()
    assert_each_span_once(span_rows(third.dsn), errors | kept)


def test_two_samplers_share_partitions_and_store_each_error_trace_once(
    tmp_path: Path, kafka: str, clickhouse_http: tuple[str, Path]
) -> None:
    dsn, _ = clickhouse_http
    config = {"sampling": QUICK, **kafka_queue(kafka), "storage": {"clickhouse": {"dsn": dsn}}}
    receiver = Collector(tmp_path / "receiver", config, role="receiver").start()
    sampler_a = Collector(tmp_path / "a", config, role="sampler").start()
    samplers = [sampler_a]
    try:
        errors, oks = send_llm_traces(receiver, 200, seed=3)
        sampler_b = Collector(tmp_path / "b", config, role="sampler").start()  # joins mid-stream: a rebalance
        samplers.append(sampler_b)
        sampler_b.wait_for(lambda: re.search(r"assigned partitions \[\d", sampler_b.log()), 60, "the rebalance")
        more_errors, more_oks = send_llm_traces(receiver, 200, seed=4)
        errors, oks = errors | more_errors, oks | more_oks
        assert accepted_spans(receiver) == 1600
        assert receiver.get("/api/traces").status_code == 404  # a receiver has no storage to query

        sampler_a.wait_for(lambda: stored(sampler_a, True) >= errors, 90, "every error trace")
        for s in samplers:
            s.wait_for(lambda s=s: s.metrics()["tailsift_sampler_buffered_traces"] == 0, 30, "decisions")
            s.wait_for(lambda s=s: s.metrics()["tailsift_storage_pending_rows"] == 0, 30, "inserts")
        kept = stored(sampler_b, False)
        assert kept == {t for t in oks if keep_by_trace_id(bytes.fromhex(t), 0.10)}
        assert stored(sampler_b, True) == errors
        for s in samplers:  # both did work
            m = s.metrics()
            assert m['tailsift_kafka_events_total{event="records_consumed"}'] > 0, s.log()
            assert sum(v for k, v in m.items() if k.startswith("tailsift_sampler_decisions_total")) > 0
        assert_each_span_once(span_rows(dsn), errors | kept)
    finally:
        for c in (receiver, *samplers):
            assert c.stop() == 0, c.log()


def _error_trace_request(index: int) -> tuple[str, bytes]:
    """One raw OTLP/protobuf request: a single-span trace with an error (so it is kept)."""
    trace_id = random.randbytes(16)
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "outage"
    now = time.time_ns()
    span = rs.scope_spans.add().spans.add(trace_id=trace_id, span_id=random.randbytes(8), name=f"op-{index}",
                                          start_time_unix_nano=now, end_time_unix_nano=now + 1000)  # fmt: skip
    span.status.code = 2
    return trace_id.hex(), request.SerializeToString()


def test_broker_outage_gives_retryable_errors_and_recovers(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker").start()
    sampling = {"decision_wait": "1s", "quiet_period": "100ms", "rules": RULES}
    collector = Collector(tmp_path / "c", {"sampling": sampling, **kafka_queue(broker.bootstrap, ack_timeout="2s")})
    collector.start()
    results: list[tuple[float, str, int, float]] = []  # (time sent, trace id, status, seconds taken)
    stop = threading.Event()

    def client() -> None:
        session, i = requests.Session(), 0
        while not stop.is_set():
            trace_id, body = _error_trace_request(i := i + 1)
            started = time.monotonic()
            try:
                status = session.post(collector.http_url, data=body, timeout=30,
                                      headers={"Content-Type": "application/x-protobuf"}).status_code  # fmt: skip
            except requests.RequestException:
                status = -1
            results.append((started, trace_id, status, time.monotonic() - started))
            time.sleep(0.02)

    thread = threading.Thread(target=client)
    try:
        thread.start()
        time.sleep(2)
        broker.stop()  # returns once the broker process is gone
        down_at = time.monotonic()
        time.sleep(6)
        up_at = time.monotonic()
        broker.start()
        collector.wait_for(lambda: any(s == 200 and t > up_at for t, _, s, _ in results), 60, "ingest to recover")
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
    during = [(s, took) for t, _, s, took in results if down_at < t < up_at]
    assert during and {s for s, _ in during} <= {503, 429}, sorted({s for s, _ in during})  # retryable, no 500s
    assert max(took for _, took in during) < 5  # bounded by ack_timeout, no hanging clients
    assert sum(s == 200 for t, _, s, _ in results if t > up_at) > 10  # recovered on its own
    acknowledged = {trace_id for _, trace_id, s, _ in results if s == 200}
    collector.wait_for(lambda: collector.metrics()["tailsift_sampler_buffered_traces"] == 0, 60, "decisions")
    collector.wait_for(lambda: collector.metrics()["tailsift_storage_pending_rows"] == 0, 30, "inserts")
    try:
        kept = {t["trace_id"] for t in collector.get("/api/traces", error="true", limit=1000).json()["traces"]}
        assert acknowledged <= kept, f"{len(acknowledged - kept)} acknowledged traces lost"
    finally:
        assert collector.stop() == 0, collector.log()
        broker.stop()


async def _poison(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"not": "an envelope"}', key=b"k" * 16)
        await producer.send_and_wait(topic, b"\x01\x00\x00\x00\x10garbage-not-zstd", key=b"k" * 16)
    finally:
        await producer.stop()


async def _read_topic(bootstrap: str, topic: str, want: int) -> list[Any]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = time.monotonic() + 30
        while len(records) < want and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records += batch
    finally:
        await consumer.stop()
    return records


def test_poison_records_go_to_the_dead_letter_topic(tmp_path: Path, kafka: str) -> None:
    queue = kafka_queue(kafka)
    topic = queue["queue"]["kafka"]["topic"]
    collector = Collector(tmp_path, {"sampling": QUICK, **queue}).start()
    try:
        before, _ = send_llm_traces(collector, 40, seed=5)
        asyncio.run(_poison(kafka, topic))
        after, _ = send_llm_traces(collector, 40, seed=6)
        collector.wait_for(lambda: stored(collector, True) >= before | after, 60, "traces around the poison")
        assert collector.metrics()['tailsift_kafka_events_total{event="records_dead_lettered"}'] == 2
    finally:
        assert collector.stop() == 0, collector.log()
    dead = asyncio.run(_read_topic(kafka, f"{topic}-dlq", 2))
    assert [r.value for r in dead] == [b'{"not": "an envelope"}', b"\x01\x00\x00\x00\x10garbage-not-zstd"]
    reasons = [dict(r.headers)["tailsift.error"].decode() for r in dead]
    assert "unknown envelope version 123" in reasons[0] and "bad zstd" in reasons[1]
    assert all(dict(r.headers)["tailsift.source"].decode().startswith(f"{topic}/") for r in dead)


def test_roles_need_the_kafka_queue(tmp_path: Path) -> None:
    collector = Collector(tmp_path, role="sampler")
    with pytest.raises(RuntimeError) as exited:
        collector.start()
    assert "--role sampler needs queue.kind: kafka" in str(exited.value)


def test_unreachable_kafka_at_start_is_a_clear_error(tmp_path: Path) -> None:
    collector = Collector(tmp_path, kafka_queue("127.0.0.1:1"), role="receiver")
    with pytest.raises(RuntimeError) as exited:
        collector.start()
    assert "cannot use Kafka at 127.0.0.1:1" in str(exited.value)


def test_kafka_tls_verifies_the_broker(tmp_path: Path, kafka_ssl: tuple[str, str]) -> None:
    """Over SSL the broker's certificate is checked: without its CA the collector does not
    start (and says why); the e2e pipeline tests run over SSL with it (test_e2e_pipeline)."""
    bootstrap, _ = kafka_ssl
    collector = Collector(tmp_path, kafka_queue(bootstrap, security_protocol="SSL"), role="receiver")
    with pytest.raises(RuntimeError) as exited:
        collector.start(timeout=90)
    assert f"cannot use Kafka at {bootstrap}" in str(exited.value)


def test_kafka_sasl_ssl_with_the_password_from_the_environment(
    tmp_path: Path, kafka_sasl: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SASL/PLAIN over TLS: the password comes from the environment and is never logged;
    a wrong one is a start-up error, the right one carries traces through."""
    bootstrap, ca = kafka_sasl
    queue = kafka_queue(bootstrap, security_protocol="SASL_SSL", tls={"ca_file": ca},
                        sasl={"mechanism": "PLAIN", "username": SASL_USER})  # fmt: skip
    monkeypatch.setenv("TAILSIFT_QUEUE__KAFKA__SASL__PASSWORD", "not-the-password")
    wrong = Collector(tmp_path / "wrong", queue, role="receiver")
    with pytest.raises(RuntimeError) as refused:
        wrong.start(timeout=90)
    assert f"cannot use Kafka at {bootstrap}" in str(refused.value)
    monkeypatch.setenv("TAILSIFT_QUEUE__KAFKA__SASL__PASSWORD", SASL_PASSWORD)
    with Collector(tmp_path / "right", queue).start() as c:
        span, trace_id = error_span("over-sasl")
        assert HttpExporter(endpoint=c.http_url, timeout=10).export([span]) is SpanExportResult.SUCCESS
        c.wait_for(lambda: c.get(f"/api/traces/{trace_id}").status_code == 200, what="a trace through SASL_SSL")
    assert SASL_PASSWORD not in c.log() and "not-the-password" not in wrong.log()
