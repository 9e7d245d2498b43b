"""Batched, bounded writes to ClickHouse, off the event loop.

Kept traces accumulate here and are inserted in batches (``batch_rows`` or every
``flush_interval``). The store runs on one dedicated thread: chDB clients are not
thread-safe, and one thread also orders queries after the inserts before them.

Backpressure: once ``max_pending_rows`` are waiting (ClickHouse slow or down), ``write``
waits. The sampler then stops consuming, the queue fills, and receivers answer 429 /
RESOURCE_EXHAUSTED: overload travels back to the client instead of into memory.

Settling: ``on_settled`` is called with every batch once it is stored (or given up on), so
the Kafka queue can commit past those records; ``flush`` waits for that (rebalances).

Failures: an unreachable database (a connection error) is retried with backoff for as long
as it takes. Any other error is retried ``PERMANENT_ATTEMPTS`` times; a batch that still
fails is logged and counted (``rows_dropped``) so one bad batch cannot stall storage forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from clickhouse_connect.driver.exceptions import OperationalError

from collector.config import ClickHouseSettings
from collector.storage import ClickHouseStore, KeptSpanHook, decision_rows, safe_dsn
from processors.genai import PriceTable
from processors.spanmetrics import Histogram
from processors.sampling.sampler import Decision

log = logging.getLogger("tailsift.storage")
T = TypeVar("T")
PERMANENT_ATTEMPTS = 3


class StorageWriter:
    """Component with start/shutdown; shutdown flushes, is safe twice and without start."""

    def __init__(self, settings: ClickHouseSettings, store: ClickHouseStore | None = None,
                 on_settled: Callable[[list[Decision]], None] | None = None, prices: PriceTable | None = None,
                 on_kept_span: KeptSpanHook | None = None):  # fmt: skip
        self.settings = settings
        self.prices = prices
        self.on_kept_span = on_kept_span
        self.store = store or ClickHouseStore(settings)
        self.on_settled = on_settled
        self._inserting = 0
        self._settled = asyncio.Condition()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._pending: list[Decision] = []
        self._pending_rows = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.rows_written = 0
        self.insert_failures = 0
        self.rows_dropped = 0
        self._attempts = 0
        self.insert_latency = Histogram()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store call on the storage thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def start(self) -> None:
        try:
            await self.run(self.store.connect)
        except Exception as exc:
            raise RuntimeError(f"cannot open ClickHouse storage at {safe_dsn(self.store.dsn)}: {exc}") from None
        self._task = asyncio.create_task(self._loop(), name="storage-writer")

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    async def write(self, decisions: list[Decision]) -> None:
        kept = [d for d in decisions if d.keep]
        if not kept:
            return
        while self._pending_rows >= self.settings.max_pending_rows and not self._stopping:
            self._room.clear()
            await self._room.wait()
        self._pending.extend(kept)
        self._pending_rows += sum(sum(f.span_count for f in d.fragments) for d in kept)
        if self._pending_rows >= self.settings.batch_rows:
            self._wake.set()

    async def _loop(self) -> None:
        interval = self.settings.flush_seconds
        backoff = 0.5
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), interval)
            except TimeoutError:
                pass
            self._wake.clear()
            if not await self._flush_once():
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
            else:
                backoff = 0.5
            if self._stopping and not self._pending:
                return

    async def _flush_once(self) -> bool:
        """Insert everything pending; on failure put it back and report False."""
        if not self._pending:
            return True
        batch, rows = self._pending, self._pending_rows
        self._pending, self._pending_rows = [], 0
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            self._inserting = rows
            await self.run(lambda: self.store.insert(decision_rows(batch, self.prices, self.on_kept_span)))
            self.insert_latency.observe(loop.time() - started)
            self.rows_written += rows
            self._attempts = 0
            await self._settle(batch)
            return True
        except Exception as exc:  # noqa: BLE001 - every storage failure is retried or counted
            self.insert_failures += 1
            self._attempts += 1
            retryable = isinstance(exc, OperationalError)
            if not retryable and self._attempts >= PERMANENT_ATTEMPTS:
                log.error("insert into %s failed %d times, dropping %d rows: %s",
                          safe_dsn(self.store.dsn), self._attempts, rows, exc)  # fmt: skip
                self.rows_dropped += rows
                self._attempts = 0
                await self._settle(batch)
                return True
            log.warning("insert into %s failed, will retry: %s", safe_dsn(self.store.dsn), exc)
            self._pending = batch + self._pending
            self._pending_rows += rows
            self._inserting = 0
            return False

    async def _settle(self, batch: list[Decision]) -> None:
        self._inserting = 0
        self._room.set()
        if self.on_settled is not None:
            self.on_settled(batch)
        async with self._settled:
            self._settled.notify_all()

    async def flush(self) -> None:
        """Return once everything written so far is stored (or given up on)."""
        if self._task is None:
            return
        async with self._settled:
            while self._pending or self._inserting:
                self._wake.set()
                await self._settled.wait()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Flush what is pending (retrying until ``timeout``), then close the store."""
        if self._stopping and self._task is None:
            return
        self._stopping = True
        self._room.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.error("storage flush timed out; %d rows not written", self._pending_rows)
                self._task.cancel()
            self._task = None
            await self.run(self.store.close)
        self._executor.shutdown(wait=False)
