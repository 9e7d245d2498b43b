"""The queue between receivers and the sampler.

Receivers ``publish`` fragments; the sampler ``consume``s them and ``release``s each one once
it is settled (stored, or dropped by sampling). Two implementations: :class:`MemoryQueue`
here (the embedded default) and :class:`collector.kafka.queue.KafkaQueue`; swapping one for
the other changes no processor. A publish either takes the whole batch or raises:
:class:`Backpressure` when full (the client retries later), :class:`Unavailable` when the
queue cannot take data now. Memory is bounded by bytes, because spans vary in size by
orders of magnitude.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from collector.errors import Backpressure, Unavailable
from collector.kafka.envelope import EnvelopeError, pack, unpack
from collector.kafka.ledger import OffsetLedger
from collector.wal import Entry, WriteAheadLog
from processors.fragment import Fragment, Sourced, stamp_source, total_size

log = logging.getLogger("tailsift.queue")
RECORD_FRAGMENTS = 512
"""Fragments per write-ahead log record at most (a request of more becomes several)."""


RebalanceHook = Callable[[set[int]], Awaitable[None]]


class Queue(Protocol):
    """Receivers → sampler transport. Every implementation passes ``tests/test_contracts.py``."""

    durable: bool
    """True if what was published survives this process (Kafka): shutdown need not drain it."""

    async def start(self) -> None: ...

    async def shutdown(self) -> None:
        """Stop taking data; what was accepted can still be consumed. Safe twice, safe without start."""
        ...

    async def publish(self, fragments: list[Fragment]) -> None:
        """Take all fragments or raise Backpressure/Unavailable; nothing is half-taken."""
        ...

    async def consume(self, max_items: int, timeout: float) -> list[Fragment] | None:
        """Up to ``max_items`` fragments; ``[]`` when none arrived within ``timeout``;
        ``None`` once shut down and drained."""
        ...

    def release(self, fragments: Sequence[Sourced]) -> None:
        """These consumed fragments are settled; a durable queue may now forget them."""
        ...

    def maybe_stored(self, source: tuple[int, int]) -> bool:
        """True if this record (partition, offset) may have been stored by an earlier process
        that did not live to settle it: it was in the queue before this one started or took
        the partition. Storage then checks before inserting its spans again."""
        ...

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None:
        """Register callbacks for when partitions (sets of numbers) leave or join this consumer."""
        ...

    @property
    def depth_bytes(self) -> int: ...


class MemoryQueue:
    """The embedded default: a byte-bounded in-process FIFO, crash-safe with a write-ahead log.

    With ``wal`` (the default in ``tailsift run``) every published batch is appended to the
    log before ``publish`` returns, each fragment carries its record's position (partition
    0, sequence), and ``release`` settles it in an :class:`OffsetLedger` exactly as the
    Kafka queue does; the settled watermark is checkpointed every ``checkpoint_interval``
    and whole segments below it are deleted. At start the records at or above the
    checkpoint are replayed first, read lazily, before anything published since.
    """

    def __init__(self, max_bytes: int, retry_after: float = 1.0, wal: WriteAheadLog | None = None,
                 checkpoint_interval: float = 1.0):  # fmt: skip
        self.max_bytes = max_bytes
        self.retry_after = retry_after
        self.wal = wal
        self.durable = wal is not None
        self.checkpoint_interval = checkpoint_interval
        # Published batches, whole: a request's fragments are queued and taken as one list
        # (one Python step per request, not per trace); ``_head`` fragments of the first are
        # taken already.
        self._batches: deque[list[Fragment]] = deque()
        self._head = 0
        self._bytes = 0
        self._closed = False
        self._ready = asyncio.Event()
        self._ledger = OffsetLedger()
        self._replay: deque[Entry] = deque()
        self._replay_end = 0  # records below this sequence number were logged by an earlier process
        self._last_checkpoint = 0.0
        self.refused_batches = 0
        self.replayed_records = 0

    async def start(self) -> None:
        self._closed = False
        if self.wal is not None:
            entries = self.wal.open()
            for entry in entries:
                self._ledger.track(0, entry.seq, entry.parts)
            self._replay.extend(entries)
            self._replay_end = max((e.seq + 1 for e in entries), default=0)
            if entries:
                log.info("write-ahead log: replaying %d accepted requests not yet stored", len(entries))

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._ready.set()
        if self.wal is not None:
            self._checkpoint()
            await self.wal.close()

    @property
    def depth_bytes(self) -> int:
        return self._bytes

    @property
    def replay_pending(self) -> int:
        """Logged records still to be replayed (after a restart)."""
        return len(self._replay)

    def maybe_stored(self, source: tuple[int, int]) -> bool:
        return source[1] < self._replay_end

    def release(self, fragments: Sequence[Sourced]) -> None:
        """Settled: with the log, these records may be truncated once all before them are too."""
        self._ledger.release(fragments)

    def _checkpoint(self) -> None:
        assert self.wal is not None
        self._last_checkpoint = time.monotonic()
        mark = self._ledger.watermark(0)
        if mark is not None:
            self.wal.checkpoint(mark)

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None:
        """Never called: one process owns the whole in-process queue."""

    async def publish(self, fragments: list[Fragment]) -> None:
        if self._closed:
            raise Unavailable("tailsift is shutting down", retry_after=self.retry_after)
        size = total_size(fragments)
        if self._bytes + size > self.max_bytes:
            self.refused_batches += 1
            raise Backpressure(
                f"queue full ({self._bytes} of {self.max_bytes} bytes used); retry later",
                retry_after=self.retry_after,
            )
        if self.wal is not None:
            await self._log(fragments)
        self._batches.append(list(fragments))  # a copy: the list stays the caller's
        self._bytes += size
        self._ready.set()

    async def _log(self, fragments: list[Fragment]) -> None:
        """Append to the write-ahead log and wait until it is durable; on a disk error the
        client gets 503 (and the records count as settled: they were never acknowledged).
        A large batch becomes several records, with the event loop free in between."""
        assert self.wal is not None
        written: list[tuple[int, list[Fragment]]] = []
        for start in range(0, len(fragments), RECORD_FRAGMENTS):
            chunk = fragments[start : start + RECORD_FRAGMENTS]
            seq = self.wal.append(pack(chunk), len(chunk))
            self._ledger.track(0, seq, len(chunk))
            written.append((seq, chunk))
            if len(fragments) > RECORD_FRAGMENTS:
                await asyncio.sleep(0)
        try:
            await self.wal.durable()
        except OSError as exc:
            for seq, chunk in written:
                for _ in chunk:
                    self._ledger.settle(0, seq)
            raise Unavailable(f"cannot write the write-ahead log: {exc.strerror}", retry_after=self.retry_after) from None
        for seq, chunk in written:
            stamp_source(chunk, 0, seq)

    async def consume(self, max_items: int, timeout: float) -> list[Fragment] | None:
        if self.wal is not None and time.monotonic() - self._last_checkpoint >= self.checkpoint_interval:
            self._checkpoint()
        if self._replay:
            return self._replayed(max_items)
        if not self._batches:
            if self._closed:
                return None
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return []
        out: list[Fragment] = []
        while self._batches and len(out) < max_items:
            batch, head = self._batches[0], self._head
            take = max_items - len(out)
            if head == 0 and len(batch) <= take:
                out.extend(batch)
                self._batches.popleft()
                continue
            out.extend(batch[head : head + take])
            self._head = head + take
            if self._head >= len(batch):
                self._batches.popleft()
                self._head = 0
        self._bytes -= total_size(out)
        if not out and self._closed:
            return None
        return out

    def _replayed(self, max_items: int) -> list[Fragment]:
        out: list[Fragment] = []
        while self._replay and len(out) < max_items:
            entry = self._replay.popleft()
            self.replayed_records += 1
            try:
                out.extend(unpack(WriteAheadLog.read(entry), (0, entry.seq)))
            except (EnvelopeError, OSError) as exc:
                log.error("write-ahead log: record %d cannot be read (%s); skipped", entry.seq, exc)
                for _ in range(entry.parts):
                    self._ledger.settle(0, entry.seq)
        return out
