"""Process-level health: event-loop lag and garbage-collector pauses, and keeping the
latter short.

Every request, decision and scrape runs on one event loop, so anything that holds it (a
long sampling step, an insert that keeps the GIL, a full garbage collection) shows up as
ack latency. These two histograms tell which: ``tailsift_event_loop_lag_seconds`` is how
late a 50 ms timer fires, ``tailsift_gc_pause_seconds`` how long each collection took.

Why the collector freezes the heap every second: the sampler buffers hundreds of thousands
of small objects for a few seconds each. Python's cyclic GC re-examines every tracked
object that survived a collection, so buffered fragments made each collection longer the
more traffic was buffered (pauses of 10-250 ms, straight into ack latency). Buffered
objects are freed by reference counting when their trace is decided, never by the cyclic
collector. So the youngest generation is collected often and cheaply (a small threshold),
older generations are never collected automatically, and every second the survivors are
moved out of the collector's sight (``gc.freeze``). Reference cycles among frozen objects
(request objects that were still in flight when frozen) are reclaimed by a full
collection every ``FULL_EVERY`` seconds: one longer pause a minute instead of many.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from processors.spanmetrics import Histogram

INTERVAL = 0.05
FREEZE_EVERY = 1.0
FULL_EVERY = 60.0
YOUNG_THRESHOLD = 5_000
NEVER = 10**9


class RuntimeMonitor:
    """Component: ``start`` / ``shutdown`` (safe twice, and without start)."""

    def __init__(self) -> None:
        self.loop_lag = Histogram()
        self.gc_pause = Histogram()
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None
        self._thresholds: tuple[int, int, int] | None = None

    async def start(self) -> None:
        gc.collect()
        gc.freeze()
        self._thresholds = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, NEVER, NEVER)
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._watch(), name="loop-lag")

    async def _watch(self) -> None:
        frozen = full = time.perf_counter()
        while True:
            before = time.perf_counter()
            await asyncio.sleep(INTERVAL)
            now = time.perf_counter()
            self.loop_lag.observe(max(0.0, now - before - INTERVAL))
            if now - full >= FULL_EVERY:
                gc.unfreeze()
                gc.collect()
                full = frozen = now
            elif now - frozen >= FREEZE_EVERY:
                gc.freeze()
                frozen = now

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause.observe(time.perf_counter() - self._gc_started)

    async def shutdown(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        if self._thresholds is not None:  # leave the interpreter as we found it (tests embed pipelines)
            gc.set_threshold(*self._thresholds)
            gc.unfreeze()
            self._thresholds = None
        task, self._task = self._task, None
        await stop_task(task)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a component's background task and wait for it to end (None: nothing to do)."""
    if task is not None:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
