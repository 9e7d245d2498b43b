"""Batched, bounded, isolated writes to ClickHouse, off the event loop.

Kept traces accumulate here and are inserted in batches (at most ``batch_rows`` rows and
``batch_bytes`` bytes, or every ``flush_interval``). The store runs on one dedicated
thread: chDB clients are not thread-safe, and one thread also orders queries after the
inserts before them.

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

from clickhouse_connect.driver.exceptions import OperationalError

from collector.config import ClickHouseSettings
from collector.errors import Unavailable
from collector.memory import MemoryLimiter
from collector.rows import KeptSpanHook, NativeRowBuilder, Rejected, TraceRows, raw_span
from collector.storage import ClickHouseStore, Rows, safe_dsn
from processors.genai import PriceTable
from processors.spanmetrics import Histogram
from processors.fragment import Fragment
from processors.sampling.sampler import Decision

log = logging.getLogger("tailsift.storage")
T = TypeVar("T")
ROWS_CHUNK = 32
"""Kept traces per row-building job: a few milliseconds of Python for LLM traces."""
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
        self._wake = asyncio.Event()
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
            await self.run(self._dead_letter, rejected)
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
        if self._pending_rows >= self.settings.batch_rows or self._pending_bytes >= self.settings.batch_bytes:
            self._wake.set()

    async def _loop(self) -> None:
        interval = self.settings.flush_seconds
        backoff = 0.5
        while True:
            if not self._pending or not self._closing:
                try:
                    await asyncio.wait_for(self._wake.wait(), interval)
                except TimeoutError:
                    pass
            self._wake.clear()
            if self._closing and asyncio.get_running_loop().time() >= self._deadline:
                return
            if not await self._flush_once():
                await asyncio.sleep(min(backoff, max(0.0, self._deadline - asyncio.get_running_loop().time())))
                backoff = min(backoff * 2, 10.0)
            else:
                backoff = 0.5
            if self._closing and not self._pending:
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
        already = self._drop_stored([i for i in items if i.decision.recheck])
        self._insert_isolated(items, rejected)
        if rejected:
            self._dead_letter(rejected)
        del items, built_now
        for k in batch:  # rows freed here, a job at a time: on the loop, with the batch, they held it 5-15 ms
            k.rows = None
        return sum(r.spans for r in rejected), already

    def _drop_stored(self, items: list[TraceRows]) -> int:
        """Remove the span rows of replayed traces that are stored already; their summary
        rows stay (a summary is what was missing)."""
        if not items:
            return 0
        try:
            stored = self.store.stored_spans(sorted({i.decision.summary.trace_id.hex() for i in items}),
                                             min(i.decision.summary.start_ns for i in items),
                                             max(i.decision.summary.end_ns for i in items))  # fmt: skip
        except OperationalError:
            raise
        except Exception as exc:  # noqa: BLE001 - a duplicate row is better than a stalled writer
            log.warning("replay: could not look up stored spans (%s); inserting them again", exc)
            return 0
        if not stored:
            return 0
        try:  # their lookup rows may be what a crash left out (see sql.LOOKUP_REFILL)
            self.store.refill_lookup(sorted({trace for trace, _ in stored}))
        except OperationalError:
            raise
        except Exception as exc:  # noqa: BLE001 - the spans are stored; only Grafana's by-id lookup may miss them
            log.warning("replay: could not refill the trace-id lookup (%s)", exc)
        dropped = 0
        for item in items:
            before = len(item.spans)
            item.spans[:] = [row for row in item.spans if (row[1], row[2]) not in stored]
            dropped += before - len(item.spans)
        if dropped:
            log.info("replay: %d span rows were stored before the restart; not inserted again", dropped)
        return dropped

    def _insert_isolated(self, items: list[TraceRows], rejected: list[Rejected]) -> None:
        if not items:
            return
        try:
            # New lists each time: ClickHouseStore.insert clears what it is given.
            self.store.insert(Rows([r for i in items for r in i.spans], [r for i in items for r in i.traces]))
            return
        except OperationalError:
            raise
        except Exception as exc:  # noqa: BLE001 - a refusal of the data: find the rows that cause it
            if len(items) > 1:
                middle = len(items) // 2
                self._insert_isolated(items[:middle], rejected)
                self._insert_isolated(items[middle:], rejected)
                return
            item = items[0]
            if len(item.spans) > 1:
                self._insert_isolated(list(item.halves()), rejected)
                return
            reason = str(exc).split("\n")[0][:2000]
            trace_id = item.decision.summary.trace_id.hex()
            for span in item.spans:
                rejected.append(Rejected(trace_id, span[2], reason, raw_span(item.decision, span[2])))
            if item.traces and not item.spans:
                log.error("trace summary of %s refused: %s", trace_id, reason)
            elif item.traces:
                try:
                    self.store.insert(Rows([], list(item.traces)))
                except OperationalError:
                    raise
                except Exception:  # noqa: BLE001 - spans are in the dead-letter table, with their reason
                    log.exception("trace summary of %s refused", trace_id)

    def _dead_letter(self, rejected: list[Rejected]) -> None:
        log.error("%d span rows refused by ClickHouse, stored in tailsift_rejected: %s",
                  len(rejected), rejected[0].reason)  # fmt: skip
        try:
            self.store.insert_rejected(rejected)
        except OperationalError:
            raise
        except Exception as exc:  # noqa: BLE001 - keep the reason even if the payload cannot be kept
            for r in rejected:
                r.reason, r.payload = f"{r.reason} (payload not kept: {exc})"[:2000], b""
            self.store.insert_rejected(rejected)

    # --- settling and shutdown
    async def _settle(self, batch: list[Decision]) -> None:
        self._inserting = 0
        if not self._full():
            self._room.set()
        if self.on_settled is not None:
            self.on_settled(batch)
        async with self._settled:
            self._settled.notify_all()

    async def flush(self) -> None:
        """Return once everything written so far is stored."""
        if self._task is None:
            return
        async with self._settled:
            while (self._pending or self._inserting) and not self._task.done():
                self._wake.set()
                await self._settled.wait()

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
