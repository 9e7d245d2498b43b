"""Contract tests, parametrised over every implementation (the opentelemetry-python way).

Every component: start/shutdown, shutdown safe twice and safe without start.
Every queue: all-or-nothing publish, FIFO consume, backpressure, drain after shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.config import load_config
from collector.errors import Backpressure, Unavailable
from collector.ingest import Ingest
from collector.otlp import Fragment
from collector.pipeline import Pipeline
from collector.queue import MemoryQueue, Queue
from collector.receivers.grpc import GrpcReceiver
from collector.receivers.http import HttpReceiver
from collector.writer import StorageWriter

QUEUES: dict[str, Callable[[int], Queue]] = {"memory": lambda max_bytes: MemoryQueue(max_bytes)}


def frag(n: int, size: int = 100) -> Fragment:
    return Fragment(n.to_bytes(16, "big"), b"x" * size, 1, 0, 1, False, None, received_ns=n)


@pytest.mark.parametrize("make", QUEUES.values(), ids=QUEUES.keys())
def test_queue_contract(make: Callable[[int], Queue]) -> None:
    async def scenario() -> None:
        q = make(1000)
        await q.start()
        await q.publish([frag(1), frag(2)])
        with pytest.raises(Backpressure) as full:
            await q.publish([frag(3, 500), frag(4, 500)])  # does not fit: nothing is taken
        assert full.value.retry_after is not None
        assert await q.consume(1, 0.1) == [frag(1)]
        assert await q.consume(10, 0.1) == [frag(2)]
        assert await q.consume(10, 0.05) == []  # empty: times out
        await q.publish([frag(5)])
        await q.shutdown()
        with pytest.raises(Unavailable):
            await q.publish([frag(6)])
        assert await q.consume(10, 0.1) == [frag(5)]  # accepted data drains after shutdown
        assert await q.consume(10, 0.1) is None
        await q.shutdown()

    asyncio.run(scenario())


def _components(tmp_path: Path) -> dict[str, Callable[[], Any]]:
    settings = load_config(None, {
        "storage": {"clickhouse": {"dsn": f"chdb://{tmp_path}/data"}},
        "receivers": {"otlp": {"grpc": {"endpoint": "127.0.0.1:0"}, "http": {"endpoint": "127.0.0.1:0"}}},
        "query": {"endpoint": "127.0.0.1:0"},
    })  # fmt: skip
    ingest = Ingest(MemoryQueue(1 << 20), None)
    return {
        "grpc-receiver": lambda: GrpcReceiver("127.0.0.1:0", ingest, 1 << 20),
        "http-receiver": lambda: HttpReceiver("127.0.0.1:0", ingest, 1 << 20),
        "memory-queue": lambda: MemoryQueue(1 << 20),
        "storage-writer": lambda: StorageWriter(settings.storage.clickhouse),
        "pipeline": lambda: Pipeline(settings),
    }


COMPONENTS = ["grpc-receiver", "http-receiver", "memory-queue", "storage-writer", "pipeline"]


@pytest.mark.parametrize("name", COMPONENTS)
def test_component_lifecycle(name: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        make = _components(tmp_path)[name]
        never_started = make()
        await never_started.shutdown()
        await never_started.shutdown()
        started = make()
        await started.start()
        await started.shutdown()
        await started.shutdown()

    asyncio.run(scenario())
