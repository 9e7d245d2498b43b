"""Batched, bounded, isolated writes to ClickHouse, off the event loop.

Kept traces accumulate here and are inserted in batches: at once when ``batch_rows`` rows
or ``batch_bytes`` bytes wait, else at most one insert per ``flush_interval`` (each insert
is a new part that ClickHouse merges again; see ``_until_due``). The store runs on one
dedicated thread: chDB clients are not thread-safe, and one thread also orders queries
after the inserts before them.

Backpressure: once ``max_pending_rows`` rows or ``max_pending_bytes`` bytes are waiting
(ClickHouse slow or down), ``write`` waits. The sampler then stops consuming, the queue
fills, and receivers answer 429 / RESOURCE_EXHAUSTED: overload travels back to the client
instead of into memory.

Isolation: nothing one client sends can make another client's data disappear.
- An unreachable database (a connection error) is retried with backoff for as long as it
  takes; the batch is kept, unsettled.
- Any other refusal is about the data: the batch is split in halves and each half
  inserted again, down to one trace and then one span row. A row ClickHouse refuses even
  alone goes to the dead-letter table ``tailsift_rejected`` with its span and the reason,
  and is counted (``rows_rejected``). Everything else in the batch is stored.
- If even the dead-letter insert fails, the batch is retried later: it is never dropped.

Replays: a process can die after inserting a batch's spans and before inserting their trace
summaries, the rows that tell a restarted sampler which records are stored. Those records
are replayed and their traces decided again, in other batches (so other deduplication
tokens). The queue says which records may have been seen before (``maybe_stored``): the
spans of those traces are looked up first, and the ones already stored are not inserted
again (``rows_already_stored``). Only replays pay for the lookup.

Settling: ``on_settled`` is called with every batch once it is stored (rows or dead
letters), so the queue (Kafka, or the in-process queue's write-ahead log) can forget those
records; ``flush`` waits for that (rebalances). ``shutdown`` stops at its deadline: what is
not stored by then stays unsettled, and the durable queue replays it at the next start.

Rows are built on the storage thread as kept traces arrive, in jobs of ``ROWS_CHUNK``
traces, while less than a batch (and a quarter of ``batch_bytes``) is pending: a second's
rows built at once held the GIL in one piece of ~100 ms and showed in ack latency. Past that
(huge spans, or the database is slow) they are built at insert time, so what waits stays
bounded by its OTLP bytes.

Thread safety: ``_pending`` and the counters are touched only on the event loop; the
storage thread receives each batch as its own list and reports back by return value (a row
job's result through its ``Future``, read on the storage thread after the job ran: the
executor has one thread and runs jobs in order). It drops a stored batch's row jobs itself
(``_Kept.rows``); the event loop reads only the decisions of a batch it handed over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from collector import isolation
from collector.config import ClickHouseSettings
from collector.errors import Unavailable
from collector.memory import MemoryLimiter
from collector.rows import KeptSpanHook, NativeRowBuilder, Rejected, TraceRows
from collector.storage import ClickHouseStore, safe_dsn
from processors.genai import PriceTable
from processors.spanmetrics import Histogram
from processors.fragment import Fragment
from processors.sampling.sampler import Decision

log = logging.getLogger("tailsift.storage")
T = TypeVar("T")
ROWS_CHUNK = 32
"""Kept traces per row-building job: a few milliseconds of Python for LLM traces."""
SETTLE_CHUNK = 256
"""Kept traces settled in one step of the event loop (each 1-3 µs of Python)."""
FREE_CHUNK, YIELD_SECONDS = 512, 0.0005
"""After freeing this many kept traces' rows the storage thread sleeps, so that the event
loop, which answers clients, gets the GIL (with both busy it would get every other ms)."""
INSERT_GROWTH = 3
"""An insert briefly needs about this many times its batch's payload (Python rows, then the
Native block made from them in pieces, each freed once written, then the engine's block;
measured with 512 KiB spans on chDB). It is held with the memory limiter while the insert
runs, so new requests are refused rather than pushing the process past its limit."""
AHEAD_SHARE = 4
"""Rows are built ahead only while less than ``batch_bytes / AHEAD_SHARE`` of payload is
pending: rows cost about their payload again, and with huge spans building every pending
trace's rows ahead once held 128 MiB more than the memory limit allows for."""
Built = list[TraceRows | Exception]


def _size(d: Decision) -> tuple[int, int]:
    """(span rows, payload bytes) a kept decision adds."""
    return sum(f.span_count for f in d.fragments), sum(len(f.payload) for f in d.fragments)


@dataclass(slots=True)
class _Kept:
    """A kept decision waiting for its insert; ``rows[index]`` is its rows once the job
    built them (None: built at insert time)."""

    decision: Decision
    span_rows: int  # and payload bytes it adds (_size, counted once)
    size: int
    rows: Future[Built] | None = None
    index: int = 0


class StorageWriter:
    """Component with start/shutdown; shutdown flushes until its deadline, is safe twice and without start."""

    def __init__(self, settings: ClickHouseSettings, store: ClickHouseStore | None = None,
                 on_settled: Callable[[list[Decision]], None] | None = None, prices: PriceTable | None = None,
                 on_kept_span: KeptSpanHook | None = None, kept_span_keys: tuple[str, ...] = (),
                 maybe_stored: Callable[[tuple[int, int]], bool] | None = None,
                 memory: MemoryLimiter | None = None):  # fmt: skip
        self.settings = settings
        self.memory = memory
        self.maybe_stored = maybe_stored
        self.rows = NativeRowBuilder(prices, on_kept_span, kept_span_keys)
        self.store = store or ClickHouseStore(settings)
        self.on_settled = on_settled
        self._inserting = 0
        self._settled = asyncio.Condition()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._pending: deque[_Kept] = deque()
        self._pending_rows = 0
        self._pending_bytes = 0
        self._wake = asyncio.Event()  # something was written, or flush/shutdown wants the loop
        self._urgent = 0  # flush() calls waiting
        self._last_insert = float("-inf")  # loop time the last successful insert began
        self._room = asyncio.Event()
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False  # write() no longer waits for room
        self._closing = False  # the loop ends once nothing is pending, or at the deadline
        self._deadline = float("inf")
        self.rows_written = 0
        self.insert_failures = 0
        self.rows_rejected = 0
        self.rows_already_stored = 0
        self.insert_latency = Histogram()

    async def write_logs(self, rows: list[list[Any]]) -> None:
        """Store log records now, on the storage thread; the client is answered after. A
        failure is retryable for the client (503): logs are not queued."""
        try:
            await self.run(self.store.insert_logs, rows)
        except Exception as exc:  # noqa: BLE001 - reported in the protocol's terms
            log.warning("could not store %d log records: %s", len(rows), exc)
            raise Unavailable("log storage is unavailable; retry later") from None

    async def dead_letter(self, fragments: list[Fragment], reason: str) -> bool:
        """Store fragments that could not be sampled in the dead-letter table, whole and
        counted; False (and they stay unsettled, replayed at the next start) if that fails."""
        rejected = [Rejected(f.trace_id.hex(), "", reason[:2000], f.payload, f.span_count) for f in fragments]
        try:
            await self.run(isolation.dead_letter, self.store, rejected)
        except Exception as exc:  # noqa: BLE001 - the database is away: the queue keeps them
            log.warning("could not store %d fragments in the dead-letter table: %s", len(fragments), exc)
            return False
        self.rows_rejected += sum(r.spans for r in rejected)
        return True

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

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def _full(self) -> bool:
        s = self.settings
        return self._pending_rows >= s.max_pending_rows or self._pending_bytes >= s.max_pending_bytes

    async def write(self, decisions: list[Decision]) -> None:
        kept = [d for d in decisions if d.keep]
        if not kept:
            return
        while self._full() and not self._stopping:
            self._room.clear()
            await self._room.wait()
        maybe_stored = self.maybe_stored
        for d in kept:
            if maybe_stored is not None and not d.late:
                # Set here, on the event loop, where the queue's replay horizon changes; the
                # storage thread only reads it, after the decision was handed over (never rewritten).
                d.recheck = any(f.source is not None and maybe_stored(f.source) for f in d.fragments)
        idle = not self._pending
        for start in range(0, len(kept), ROWS_CHUNK):
            chunk = kept[start : start + ROWS_CHUNK]
            ahead = (self._pending_rows < self.settings.batch_rows and not self._closing
                     and self._pending_bytes < self.settings.batch_bytes // AHEAD_SHARE)
            built = self._executor.submit(self._build, chunk) if ahead else None
            for index, d in enumerate(chunk):
                rows, size = _size(d)
                self._pending.append(_Kept(d, rows, size, built, index))
                self._pending_rows += rows
                self._pending_bytes += size
        if idle or self._batch_ready():
            self._wake.set()  # the loop's timer starts with the first pending trace (_until_due)

    async def _loop(self) -> None:
        backoff = 0.5
        loop = asyncio.get_running_loop()
        while True:
            await self._until_due()
            if self._closing and loop.time() >= self._deadline:
                return
            if not await self._flush_once():
                await asyncio.sleep(min(backoff, max(0.0, self._deadline - loop.time())))
                backoff = min(backoff * 2, 10.0)
            else:
                backoff = 0.5
            if self._closing and not self._pending:
                return

    def _batch_ready(self) -> bool:
        s = self.settings
        return self._pending_rows >= s.batch_rows or self._pending_bytes >= s.batch_bytes

    async def _until_due(self) -> None:
        """Return when a batch is due: a full one at once; else what is pending, once
        ``flush_interval`` has passed since the last insert began (so the first kept trace
        after a quiet spell is inserted at once); and at once while closing or flushing.

        Under load that is one insert, one new part per table, per interval. ClickHouse
        merges parts in the background, rewriting each row once per merge level, so fewer,
        larger parts are less of that work (issue 15, step 15: 5 s against 1 s took the
        merges from 16.9 to 9.7 CPU-s in 120 s at 100,000 spans/s)."""
        loop = asyncio.get_running_loop()
        while not (self._closing or (self._pending and (self._urgent or self._batch_ready()))):
            wait = None if not self._pending else self._last_insert + self.settings.flush_seconds - loop.time()
            if wait is not None and wait <= 0:
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                return

    def _take_batch(self) -> tuple[list[_Kept], int, int]:
        batch: list[_Kept] = []
        rows = size = 0
        limit_rows, limit_bytes = self.settings.batch_rows, self.settings.batch_bytes
        while self._pending and (not batch or (rows < limit_rows and size < limit_bytes)):
            k = self._pending.popleft()
            batch.append(k)
            rows, size = rows + k.span_rows, size + k.size
        self._pending_rows -= rows
        self._pending_bytes -= size
        return batch, rows, size

    async def _flush_once(self) -> bool:
        """Insert one batch; on a connection failure put it back and report False."""
        if not self._pending:
            return True
        batch, rows, size = self._take_batch()
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._inserting = rows
        memory, growth = self.memory, INSERT_GROWTH * size
        if memory is not None:
            memory.hold(growth)
        try:
            rejected, already = await self.run(self._store, batch)
        except Exception as exc:  # noqa: BLE001 - the database is away: keep the batch, retry
            self.insert_failures += 1
            log.warning("insert into %s failed, will retry: %s", safe_dsn(self.store.dsn), exc)
            self._pending.extendleft(reversed(batch))
            self._pending_rows += rows
            self._pending_bytes += size
            self._inserting = 0
            return False
        finally:
            if memory is not None:
                memory.release(growth)
        self._last_insert = started  # a failed insert is retried on the backoff, not the interval
        self.insert_latency.observe(loop.time() - started)
        self.rows_written += rows - rejected - already
        self.rows_rejected += rejected
        self.rows_already_stored += already
        await self._settle([k.decision for k in batch])
        return True

    # --- on the storage thread
    def _build(self, decisions: list[Decision]) -> Built:
        """Each decision's rows, or what building them raised."""
        decided_ns = time.time_ns()
        out: Built = []
        for d in decisions:
            try:
                out.append(self.rows(d, decided_ns))
            except Exception as exc:  # noqa: BLE001 - a bug on one trace's data must not cost the batch
                log.exception("cannot build rows for trace %s", d.summary.trace_id.hex())
                out.append(exc)
        return out

    def _store(self, batch: list[_Kept]) -> tuple[int, int]:
        """Build (what was not built yet) and insert a batch, isolating what ClickHouse
        refuses; returns the number of span rows that went to the dead-letter table and of
        those found already stored. Raises only if the database is away."""
        items: list[TraceRows] = []
        rejected: list[Rejected] = []
        later = [k.decision for k in batch if k.rows is None]
        built_now = iter(self._build(later))
        for k in batch:
            d = k.decision
            got = k.rows.result()[k.index] if k.rows is not None else next(built_now)
            if isinstance(got, TraceRows):
                items.append(got)
                continue
            payload = b"".join(f.payload for f in d.fragments)
            rejected.append(Rejected(d.summary.trace_id.hex(), "", f"cannot build rows: {got!r}", payload, k.span_rows))
        already = isolation.drop_stored(self.store, [i for i in items if i.decision.recheck])
        isolation.insert_isolated(self.store, items, rejected)
        if rejected:
            isolation.dead_letter(self.store, rejected)
        del items, built_now
        for i, k in enumerate(batch, 1):  # rows freed here, a job at a time: on the loop, with the batch, they held it 5-15 ms
            k.rows = None
            if i % FREE_CHUNK == 0:
                time.sleep(YIELD_SECONDS)  # the GIL to the event loop: 5 s of rows took 12-16 ms to free
        return sum(r.spans for r in rejected), already

    # --- settling and shutdown
    async def _settle(self, batch: list[Decision]) -> None:
        self._inserting = 0
        if not self._full():
            self._room.set()
        if self.on_settled is not None:
            # In pieces, yielding between them: settling a batch is Python per fragment, and a
            # few seconds of kept traces at once held the event loop 20-30 ms (ack latency).
            for start in range(0, len(batch), SETTLE_CHUNK):
                if start:
                    await asyncio.sleep(0)
                self.on_settled(batch[start : start + SETTLE_CHUNK])
        async with self._settled:
            self._settled.notify_all()

    async def flush(self) -> None:
        """Return once everything written so far is stored."""
        if self._task is None:
            return
        self._urgent += 1  # the loop inserts what is pending without waiting for the interval
        try:
            async with self._settled:
                while (self._pending or self._inserting) and not self._task.done():
                    self._wake.set()
                    await self._settled.wait()
        finally:
            self._urgent -= 1

    def stop_waiting(self) -> None:
        """From now on ``write`` never waits for room (shutdown: everything is written at once)."""
        self._stopping = True
        self._room.set()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Insert what is pending until ``timeout``, then close the store. What is not stored
        by then stays unsettled (a durable queue replays it at the next start)."""
        if self._closing:
            return
        self._stopping = self._closing = True
        self._deadline = asyncio.get_running_loop().time() + timeout
        self._room.set()
        self._wake.set()
        if self._task is not None:
            try:  # the loop stops at the deadline itself; an insert under way may overrun it
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
            self._task = None
            if self._pending:
                log.warning("storage: %d rows not inserted before the shutdown deadline; they stay in the queue "
                            "and are stored after a restart", self._pending_rows)  # fmt: skip
            try:
                await asyncio.wait_for(self.run(self.store.close), 1.0)
            except TimeoutError:
                log.warning("storage: closing the database timed out")
        self._executor.shutdown(wait=False)
