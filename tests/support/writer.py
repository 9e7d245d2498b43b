"""Drive the storage writer directly against the real embedded ClickHouse engine: OTLP
requests made to order, kept decisions for them, and a way to read the rows back."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import clickhouse_connect
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.config import ClickHouseSettings
from collector.otlp import split_by_trace
from collector.writer import StorageWriter
from processors.genai import PriceTable
from processors.sampling.sampler import Decision, TraceSummary

__all__ = ["DAY_NS", "NOW", "kept", "query", "request", "write_all"]

DAY_NS = 86_400 * 10**9
NOW = 1_780_000_000 * 10**9


def request(trace: int, spans: int = 2, day_step: int = 0, name: str = "op",
            attrs: dict[str, object] | None = None, now: int = NOW) -> ExportTraceServiceRequest:  # fmt: skip
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "isolation"
    ss = rs.scope_spans.add()
    for i in range(spans):
        start = now - i * day_step * DAY_NS
        s = ss.spans.add(trace_id=trace.to_bytes(16, "big"), span_id=(i + 1).to_bytes(8, "big"), name=name,
                         start_time_unix_nano=start, end_time_unix_nano=start + 1000)  # fmt: skip
        if i:
            s.parent_span_id = (1).to_bytes(8, "big")
        s.status.code = 2
        for key, value in (attrs or {}).items():
            v = s.attributes.add(key=key).value
            if isinstance(value, float):
                v.double_value = value
            else:
                v.string_value = str(value)
    return req


def kept(req: ExportTraceServiceRequest, source: tuple[int, int] | None = None) -> Decision:
    [fragment] = split_by_trace(req, NOW).fragments
    fragment.source = source
    summary = TraceSummary(fragment.trace_id)
    summary.absorb(fragment)
    return Decision(summary, True, "errors", 1.0, [fragment])


def write_all(tmp_path: Path, decisions: list[Decision], prepare: str | None = None,
              prices: PriceTable | None = None,
              maybe_stored: Callable[[tuple[int, int]], bool] | None = None,
              ) -> tuple[StorageWriter, list[list[Decision]]]:  # fmt: skip
    settled: list[list[Decision]] = []
    settings = ClickHouseSettings(dsn=f"chdb://{tmp_path / 'db'}", ttl_days=0)  # type: ignore[arg-type]
    writer = StorageWriter(settings, on_settled=settled.append, prices=prices, maybe_stored=maybe_stored)

    async def go() -> None:
        await writer.start()
        if prepare:
            await writer.run(lambda: writer.store._client.command(prepare))
        await writer.write(decisions)
        await writer.flush()
        await writer.shutdown()

    asyncio.run(go())
    return writer, settled


def query(tmp_path: Path, text: str) -> list[tuple[object, ...]]:
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path / 'db'}")
    try:
        return list(client.query(text).result_rows)
    finally:
        client.close()
