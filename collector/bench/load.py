"""The load generator of ``tailsift bench``: sender processes, each an asyncio loop with
several requests in flight, over OTLP/HTTP or OTLP/gRPC.

Each sender sends prebuilt requests with fresh trace ids (:mod:`.shapes`) as fast as it can
(``rate=None``) or on a schedule. On a schedule, latency is measured from the moment a
request *should* have been sent, not when it was, so a stalled collector cannot hide its
stall by slowing the sender down (coordinated omission).

Live counters go through a shared array (``COUNTERS``); everything else comes back once at
the end as a :class:`SenderResult`.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from collector.bench.shapes import build_set

EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
GRACE_SECONDS = 1.5
"""A request still unanswered this long after the deadline is abandoned (counted as
``unfinished_requests``): the senders stop at ``--duration``, whatever the collector does."""
COUNTERS = ("accepted_spans", "accepted_requests", "refused_requests", "failed_requests")


@dataclass
class Target:
    protocol: str  # "http" or "grpc"
    http_url: str
    grpc_endpoint: str


@dataclass
class SenderResult:
    latencies_ms: list[float] = field(default_factory=list)
    accepted_spans: int = 0
    accepted_requests: int = 0
    refused_requests: int = 0
    failed_requests: int = 0
    unfinished_requests: int = 0
    """Sent before the deadline, unanswered within :data:`GRACE_SECONDS` after it."""
    error_traces: int = 0
    """Error traces in requests the collector accepted: all of them must be stored."""
    timeline: dict[int, list[Any]] = field(default_factory=dict)
    """Second since start → [accepted spans, refused requests, latencies in ms]."""
    failures: list[str] = field(default_factory=list)


class _Http:
    def __init__(self, url: str):
        import aiohttp

        self.url = url
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def send(self, body: bytes) -> str:
        async with self.session.post(self.url, data=body, headers={"Content-Type": "application/x-protobuf"}) as r:
            await r.read()
            return "ok" if r.status == 200 else "refused" if r.status in (429, 503) else f"HTTP {r.status}"

    async def close(self) -> None:
        await self.session.close()


class _Grpc:
    def __init__(self, endpoint: str):
        import grpc

        self.grpc = grpc
        self.channel = grpc.aio.insecure_channel(endpoint, options=[("grpc.max_send_message_length", 64 << 20)])
        self.call = self.channel.unary_unary(EXPORT_METHOD, None, None)  # bytes in, bytes out

    async def send(self, body: bytes) -> str:
        try:
            await self.call(body, timeout=30)
            return "ok"
        except self.grpc.aio.AioRpcError as exc:
            code = exc.code()
            refused = code in (self.grpc.StatusCode.RESOURCE_EXHAUSTED, self.grpc.StatusCode.UNAVAILABLE)
            return "refused" if refused else f"gRPC {code.name}"

    async def close(self) -> None:
        await self.channel.close(None)


async def _drive(target: Target, shape: str, rate: float | None, concurrency: int, start: float, deadline: float,
                 counters: Any) -> SenderResult:  # fmt: skip
    templates = build_set(shape)
    client: _Http | _Grpc = _Http(target.http_url) if target.protocol == "http" else _Grpc(target.grpc_endpoint)
    result = SenderResult()
    interval = templates[0].spans / rate if rate else 0.0
    schedule = [start]
    sent = [0]

    async def worker() -> None:
        while True:
            if interval:
                due = schedule[0]
                schedule[0] += interval
                # Above capacity the schedule falls behind the clock: the clock ends the run.
                if due >= deadline or time.monotonic() >= deadline:
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                due = time.monotonic()
                if due >= deadline:
                    return
            template = templates[sent[0] % len(templates)]
            sent[0] += 1
            body = template.fresh()
            try:
                outcome = await asyncio.wait_for(client.send(body), deadline + GRACE_SECONDS - time.monotonic())
            except TimeoutError:
                result.unfinished_requests += 1
                return
            except Exception as exc:  # noqa: BLE001 - a refused connection is a result, not a crash
                outcome = f"{type(exc).__name__}: {exc}"
            now = time.monotonic()
            latency = (now - due) * 1000
            second = result.timeline.setdefault(int(now - start), [0, 0, []])
            if outcome == "ok":
                result.latencies_ms.append(latency)
                second[2].append(latency)
                result.accepted_spans += template.spans
                result.accepted_requests += 1
                result.error_traces += template.error_traces
                second[0] += template.spans
                _add(counters, 0, template.spans)
                _add(counters, 1, 1)
            elif outcome == "refused":
                result.refused_requests += 1
                second[1] += 1
                _add(counters, 2, 1)
            else:
                result.failed_requests += 1
                if len(result.failures) < 5:
                    result.failures.append(outcome)
                _add(counters, 3, 1)
                await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    return result


def _add(counters: Any, index: int, value: int) -> None:
    with counters.get_lock():
        counters[index] += value


def sender_process(target: Target, shape: str, rate: float | None, concurrency: int, start: float,
                   deadline: float, counters: Any, out: Any) -> None:  # fmt: skip
    """Entry point of one sender process: drive until ``deadline``, put a SenderResult on ``out``."""
    try:
        import uvloop

        result = uvloop.run(_drive(target, shape, rate, concurrency, start, deadline, counters))
    except ImportError:  # pragma: no cover
        result = asyncio.run(_drive(target, shape, rate, concurrency, start, deadline, counters))
    out.put(result)


def merge(results: list[SenderResult]) -> SenderResult:
    total = SenderResult()
    timeline: dict[int, list[Any]] = defaultdict(lambda: [0, 0, []])
    for r in results:
        total.latencies_ms += r.latencies_ms
        total.accepted_spans += r.accepted_spans
        total.accepted_requests += r.accepted_requests
        total.refused_requests += r.refused_requests
        total.failed_requests += r.failed_requests
        total.unfinished_requests += r.unfinished_requests
        total.error_traces += r.error_traces
        total.failures += r.failures
        for second, (spans, refused, latencies) in r.timeline.items():
            row = timeline[second]
            row[0] += spans
            row[1] += refused
            row[2] += latencies
    total.timeline = dict(sorted(timeline.items()))
    return total
