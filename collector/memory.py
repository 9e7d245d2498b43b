"""The process-wide memory limit: refuse new data before memory runs out, never drop accepted data.

Like the OTel Collector's memory_limiter, it watches the process's resident memory (RSS)
every ``check_interval`` and refuses new requests (429 / RESOURCE_EXHAUSTED with a retry
hint) once RSS plus the requests being received would pass the *soft limit*
(``limit - spike``). What is already accepted flows on: the sampler decides, storage
inserts, and memory goes down. Above the soft limit it gives free heap pages back to the
operating system (``malloc_trim``, and mimalloc's purge for the extension's memory: about
a millisecond) at every check and runs a full garbage collection at most once per second,
so that RSS reflects what is really in use: under 512 KiB spans the heap otherwise kept
30-100 MiB of freed rows and request copies, and mimalloc for a second the payloads of
each wave of decided traces, which are then in Python's memory as well.

Requests count before they are in RSS: a receiver reserves a body's size before reading
it and the decoded request's estimated size (:data:`DECODED_FACTOR` times the wire size)
before decoding it, and releases both when the request is answered. So a burst of large or
stalled uploads is refused up front instead of being read into memory. Storage does the
same for an insert's brief growth (:meth:`hold`): accepted data is never refused, but while
it grows, new requests are.

Each component also has its own byte bound (``queue.max_size``, ``sampling.max_buffered_bytes``,
``storage.clickhouse.max_pending_bytes``), so memory is bounded even where RSS lags.

Thread safety: used on the event loop only.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

import psutil

from collector.errors import Backpressure
from collector.runtime import stop_task
from processors._wire import release_memory

log = logging.getLogger("tailsift.memory")
DECODED_FACTOR = 4
"""Decoded protobuf objects, fragments and row-building copies of a request, per wire byte (measured ~3)."""


def _load_trim() -> Callable[[], object] | None:
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    return lambda: trim(0)


_TRIM = _load_trim()
"""glibc's ``malloc_trim`` (None elsewhere), looked up once: ``find_library`` runs a
subprocess. ctypes releases the GIL around the call."""


def _give_back() -> None:
    """Return freed memory to the OS now: glibc's heap (``malloc_trim``; a no-op elsewhere)
    and the extension's mimalloc pages, which it would otherwise keep for a second."""
    if _TRIM is not None:
        _TRIM()
    release_memory()


def default_limit() -> int:
    """2 GiB, or 80% of the container's (cgroup v2) memory limit if that is lower."""
    limit = 2 * 1024**3
    try:
        with open("/sys/fs/cgroup/memory.max") as f:
            text = f.read().strip()
        if text.isdigit():
            limit = min(limit, int(int(text) * 0.8))
    except OSError:
        pass
    return limit


class MemoryLimiter:
    """Component: ``start`` begins watching RSS, ``shutdown`` stops (safe twice, without start)."""

    def __init__(self, limit: int, spike: int, check_interval: float = 0.1, retry_after: float = 1.0):
        self.limit = limit
        self.soft_limit = max(0, limit - spike)
        self.check_interval = check_interval
        self.retry_after = retry_after
        self.reserved = 0
        self.rss = 0
        self.refused = 0
        self._process = psutil.Process()
        self._task: asyncio.Task[None] | None = None
        self._last_collect = 0.0

    async def start(self) -> None:
        self._check()
        if self.rss > self.soft_limit // 2:
            log.warning("memory: RSS at start is %d MiB, more than half the soft limit of %d MiB (memory_limiter.limit "
                        "minus spike); raise memory_limiter.limit", self.rss >> 20, self.soft_limit >> 20)  # fmt: skip
        self._task = asyncio.create_task(self._watch(), name="memory-limiter")

    async def shutdown(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            self._check()

    def _check(self) -> None:
        self.rss = self._process.memory_info().rss
        now = time.monotonic()
        if self.rss > self.soft_limit:
            # Freed rows and request copies stay in the allocator's heap and count in RSS
            # (30-100 MiB a second under huge spans): give them back at every check.
            if now - self._last_collect >= 1.0:
                self._last_collect = now
                gc.collect()
            _give_back()
            self.rss = self._process.memory_info().rss

    @property
    def in_use(self) -> int:
        """What the limit is checked against: RSS plus what requests have reserved."""
        return self.rss + self.reserved

    def reserve(self, size: int) -> None:
        """Count ``size`` bytes a request is about to hold, or refuse it (Backpressure)."""
        if self.rss + self.reserved + size > self.soft_limit:
            self.refused += 1
            raise Backpressure(f"memory limit: {self.in_use >> 20} MiB in use of {self.soft_limit >> 20} MiB "
                               "(memory_limiter.limit - spike); retry later", retry_after=self.retry_after)  # fmt: skip
        self.reserved += size

    def hold(self, size: int) -> None:
        """Count ``size`` bytes accepted data is about to grow by (an insert's rows and
        blocks), without refusing it: it is already acknowledged. New requests see it."""
        self.reserved += size

    def release(self, size: int) -> None:
        self.reserved = max(0, self.reserved - size)
