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
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from collector.errors import Backpressure, Unavailable
from collector.otlp import Fragment


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

    def release(self, fragments: list[Fragment]) -> None:
        """These consumed fragments are settled; a durable queue may now forget them."""
        ...

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None:
        """Register callbacks for when partitions (sets of numbers) leave or join this consumer."""
        ...

    @property
    def depth_bytes(self) -> int: ...


class MemoryQueue:
    """The embedded default: a byte-bounded in-process FIFO."""

    durable = False

    def __init__(self, max_bytes: int, retry_after: float = 1.0):
        self.max_bytes = max_bytes
        self.retry_after = retry_after
        self._items: deque[Fragment] = deque()
        self._bytes = 0
        self._closed = False
        self._ready = asyncio.Event()
        self.refused_batches = 0

    async def start(self) -> None:
        self._closed = False

    async def shutdown(self) -> None:
        self._closed = True
        self._ready.set()

    @property
    def depth_bytes(self) -> int:
        return self._bytes

    def release(self, fragments: list[Fragment]) -> None:
        """Nothing to do: a fragment left memory when it was consumed."""

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None:
        """Never called: one process owns the whole in-process queue."""

    async def publish(self, fragments: list[Fragment]) -> None:
        if self._closed:
            raise Unavailable("tailsift is shutting down", retry_after=self.retry_after)
        size = sum(f.size for f in fragments)
        if self._bytes + size > self.max_bytes:
            self.refused_batches += 1
            raise Backpressure(
                f"queue full ({self._bytes} of {self.max_bytes} bytes used); retry later",
                retry_after=self.retry_after,
            )
        self._items.extend(fragments)
        self._bytes += size
        self._ready.set()

    async def consume(self, max_items: int, timeout: float) -> list[Fragment] | None:
        if not self._items:
            if self._closed:
                return None
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return []
        out: list[Fragment] = []
        while self._items and len(out) < max_items:
            item = self._items.popleft()
            self._bytes -= item.size
            out.append(item)
        if not out and self._closed:
            return None
        return out
