"""Contract tests, parametrised over every implementation (the opentelemetry-python way).

Every component: start/shutdown, shutdown safe twice and safe without start.
Every queue: all-or-nothing publish, FIFO consume, backpressure, drain after shutdown.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.config import KafkaQueue as KafkaSettings
from collector.config import load_config
from collector.errors import Backpressure, Unavailable
from collector.ingest import Ingest
from collector.kafka.queue import KafkaQueue
from collector.otlp import split_by_trace
from processors.contract import RequestProcessor
from collector.pipeline import Pipeline
from collector.queue import MemoryQueue, Queue
from collector.server_config import GrpcServerSettings, HttpServerSettings
from collector.receivers.grpc import GrpcReceiver
from collector.receivers.http import HttpReceiver
from collector.writer import StorageWriter
from processors.fragment import Fragment
from tests.support.kafka import kafka_queue

def _memory(bootstrap: str) -> Callable[[int], Queue]:
    return lambda max_bytes: MemoryQueue(max_bytes)


def _kafka(bootstrap: str) -> Callable[[int], Queue]:
    """Every queue made by one factory shares a topic and a consumer group."""
    base = kafka_queue(bootstrap)["queue"]["kafka"]
    return lambda max_bytes: KafkaQueue(KafkaSettings(**base, max_in_flight=max_bytes))


QUEUES: dict[str, Callable[[str], Callable[[int], Queue]]] = {"memory": _memory, "kafka": _kafka}


def frag(trace: int, size: int = 100, span: int = 1) -> Fragment:
    """A real one-span fragment; the random attribute keeps it incompressible."""
    request = ExportTraceServiceRequest()
    s = request.resource_spans.add().scope_spans.add().spans.add(
        trace_id=trace.to_bytes(16, "big"), span_id=span.to_bytes(8, "big"), name="op", start_time_unix_nano=1,
        end_time_unix_nano=2,
    )  # fmt: skip
    s.attributes.add(key="blob").value.bytes_value = os.urandom(size)
    return split_by_trace(request, received_ns=trace).fragments[0]


async def _consume_all(q: Queue, want: int, timeout: float = 30.0) -> list[Fragment]:
    got: list[Fragment] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        batch = await q.consume(10, 0.2)
        assert batch is not None
        got += batch
    return got


def _key(f: Fragment) -> tuple[bytes, bytes]:
    return f.trace_id, f.payload


@pytest.mark.parametrize("kind", QUEUES)
def test_queue_contract(kind: str, request: pytest.FixtureRequest) -> None:
    make = QUEUES[kind](request.getfixturevalue("kafka") if kind == "kafka" else "")

    async def scenario() -> None:
        q = make(2000)
        await q.start()
        a, b, a2 = frag(1), frag(2), frag(1, span=2)
        await q.publish([a, b])
        with pytest.raises(Backpressure) as full:
            await q.publish([frag(3, 1200), frag(4, 1200)])  # does not fit: nothing is taken
        assert full.value.retry_after is not None
        await q.publish([a2])
        got = await _consume_all(q, 3)
        assert sorted(map(_key, got)) == sorted(map(_key, [a, b, a2]))  # nothing lost, nothing half-taken
        same_trace = [f for f in got if f.trace_id == a.trace_id]
        assert [_key(f) for f in same_trace] == [_key(a), _key(a2)]  # one trace stays in order
        assert all(f.span_count == 1 and f.received_ns == a.received_ns for f in same_trace)
        assert await q.consume(10, 0.2) == []  # empty: times out
        q.release(got)
        c = frag(5)
        await q.publish([c])
        await q.shutdown()
        with pytest.raises(Unavailable):
            await q.publish([frag(6)])
        rest = []
        while (batch := await q.consume(10, 0.2)) is not None:
            rest += batch
        if q.durable:  # what was not consumed stays in the log for the next consumer
            assert rest == []
            again = make(2000)
            await again.start()
            rest = await _consume_all(again, 1)
            # Its earlier consumer may have stored it before dying: storage will check.
            assert all(f.source is not None and again.maybe_stored(f.source) for f in rest)
            await again.shutdown()
        assert list(map(_key, rest)) == [_key(c)]  # accepted data outlives shutdown
        await q.shutdown()

    asyncio.run(scenario())


def _components(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Callable[[], Any]]:
    settings = load_config(None, {
        "storage": {"clickhouse": {"dsn": f"chdb://{tmp_path}/data"}},
        "receivers": {"otlp": {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}}},
        "query": {"endpoint": "127.0.0.1:0"},
    })  # fmt: skip
    ingest = Ingest(MemoryQueue(1 << 20), None)
    return {
        "grpc-receiver": lambda: GrpcReceiver(GrpcServerSettings(endpoint="127.0.0.1:0"), ingest, 1 << 20),
        "http-receiver": lambda: HttpReceiver(HttpServerSettings(endpoint="127.0.0.1:0"), ingest, 1 << 20),
        "memory-queue": lambda: MemoryQueue(1 << 20),
        "kafka-queue": lambda: _kafka(request.getfixturevalue("kafka"))(1 << 20),
        "storage-writer": lambda: StorageWriter(settings.storage.clickhouse),
        "pipeline": lambda: Pipeline(settings),
    }


COMPONENTS = ["grpc-receiver", "http-receiver", "memory-queue", "kafka-queue", "storage-writer", "pipeline"]


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_lifecycle(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    async def scenario() -> None:
        make = _components(tmp_path, request)[name]
        never_started = make()
        await never_started.shutdown()
        await never_started.shutdown()
        started = make()
        await started.start()
        await started.shutdown()
        await started.shutdown()

    asyncio.run(scenario())


def _processors() -> dict[str, Callable[[], Any]]:
    from processors.cardinality import CardinalityProcessor, CardinalitySettings
    from processors.genai import PriceTable
    from processors.redaction import RedactionSettings, Redactor
    from processors.redaction.prefilter import BACKENDS
    from processors.spanmetrics import SpanMetrics

    salted = RedactionSettings(salt="pepper", builtin={"email": "hash", "us_ssn": "drop"})  # type: ignore[arg-type]
    out: dict[str, Callable[[], Any]] = {f"redaction-{b}": lambda b=b: Redactor(salted, prefilter_backend=b)
                                         for b in BACKENDS}  # fmt: skip
    hashing = CardinalitySettings(high_cardinality_action="hash", original_name_attribute="tailsift.original_name")
    out["cardinality"] = lambda: CardinalityProcessor(hashing, b"pepper")
    out["span-metrics"] = lambda: SpanMetrics(CardinalitySettings(label_keys=["prompt_key"]), PriceTable([]))
    return out


def _busy_request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "api"
    spans = rs.scope_spans.add().spans
    for i, (name, value) in enumerate([("GET /users/42", "ann@example.com"), ("charge", "ssn 078-05-1120"),
                                       ("chat gpt-4o", "plain"), ("GET /health", "")]):  # fmt: skip
        span = spans.add(name=name, trace_id=b"\x01" * 16, span_id=bytes([i + 1]) * 8, end_time_unix_nano=10**6)
        span.attributes.add(key="note").value.string_value = value
        span.attributes.add(key="user.id").value.string_value = f"u{i}"
        span.attributes.add(key="prompt_key").value.string_value = "v1"
    return request


@pytest.mark.parametrize("name", list(_processors()))
def test_ingress_processor_contract(name: str) -> None:
    """Every request processor (processors.contract.RequestProcessor): takes an empty request
    and reports nothing done; gives the same request and the same counts whether or not it
    gets the raw bytes (they are only a shortcut); reports a change exactly when the request
    changed, and changes nothing if it does not mutate; is idempotent on what it changes."""
    make = _processors()[name]
    assert isinstance(make(), RequestProcessor) and make().name
    assert not +make()(ExportTraceServiceRequest(), b"")
    with_raw, without_raw = _busy_request(), _busy_request()
    before = with_raw.SerializeToString()
    counts_with = make()(with_raw, before)
    counts_without = make()(without_raw, None)
    assert isinstance(counts_with, Counter) and dict(counts_with) == dict(counts_without)
    assert with_raw.SerializeToString() == without_raw.SerializeToString()
    changed = with_raw.SerializeToString() != before
    assert changed == bool(+counts_with) if make().mutates else not changed
    once = with_raw.SerializeToString()
    processor = make()
    again = processor(with_raw, once)
    assert with_raw.SerializeToString() == once
    if processor.mutates:
        assert not +again  # nothing left to change, nothing reported
