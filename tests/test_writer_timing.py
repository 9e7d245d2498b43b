"""When the storage writer inserts. Each insert is a new part in three tables, which
ClickHouse merges again in the background, so under load the writer makes at most one
insert per ``flush_interval``; but a kept trace after a quiet spell is not made to wait,
a full batch goes at once, and ``flush`` (rebalances, shutdown) never waits for the interval."""

from __future__ import annotations

import asyncio
from pathlib import Path

from collector.config import ClickHouseSettings
from collector.writer import StorageWriter
from tests.support.writer import kept, query, request

INTERVAL = "60s"  # far longer than any wait below: what is stored sooner was not waiting for it


async def _until(check: object, timeout: float = 20.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


def test_inserts_wait_for_the_interval_unless_idle_full_or_flushed(tmp_path: Path) -> None:
    settings = ClickHouseSettings(dsn=f"chdb://{tmp_path / 'db'}", ttl_days=0, flush_interval=INTERVAL,  # type: ignore[arg-type]
                                  batch_rows=10)  # fmt: skip
    writer = StorageWriter(settings)
    seen: dict[str, object] = {}

    async def go() -> None:
        await writer.start()
        # 1. the first kept trace after a quiet spell (here: since the start) is inserted at once
        await writer.write([kept(request(1))])
        seen["first"] = await _until(lambda: writer.rows_written == 2)
        # 2. the next waits for the interval: nothing is inserted while it has not passed
        await writer.write([kept(request(2))])
        await asyncio.sleep(1.5)
        seen["waiting"] = (writer.rows_written, writer.pending_rows)
        # 3. a full batch (batch_rows: 10 rows, with what waited before it) goes at once; the
        #    last trace is not in it and waits
        await writer.write([kept(request(trace)) for trace in range(3, 8)])
        seen["full"] = await _until(lambda: writer.rows_written == 12)
        await asyncio.sleep(1.0)
        seen["left"] = (writer.rows_written, writer.pending_rows)
        # 4. flush() inserts what is pending without waiting for the interval
        await writer.write([kept(request(8))])
        await asyncio.sleep(0.5)
        seen["before flush"] = writer.pending_rows
        await asyncio.wait_for(writer.flush(), 20)
        seen["flushed"] = (writer.rows_written, writer.pending_rows)
        await writer.shutdown()

    asyncio.run(go())
    assert seen["first"] is True
    assert seen["waiting"] == (2, 2)
    assert seen["full"] is True
    assert seen["left"] == (12, 2)
    assert seen["before flush"] == 4
    assert seen["flushed"] == (16, 0)
    assert len(query(tmp_path, "SELECT DISTINCT TraceId FROM otel_traces")) == 8
    assert len(query(tmp_path, "SELECT TraceId FROM tailsift_traces FINAL")) == 8
