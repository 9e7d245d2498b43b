"""Process-level health: event-loop lag and garbage-collector pauses.

Every request, decision and scrape runs on one event loop, so anything that holds it (a
long sampling step, an insert that keeps the GIL, a full garbage collection) shows up as
ack latency. These two histograms tell which: ``tailsift_event_loop_lag_seconds`` is how
late a 50 ms timer fires, ``tailsift_gc_pause_seconds`` how long each collection took.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from processors.spanmetrics import Histogram

INTERVAL = 0.05


class RuntimeMonitor:
    """Component: ``start`` / ``shutdown`` (safe twice, and without start)."""

    def __init__(self) -> None:
        self.loop_lag = Histogram()
        self.gc_pause = Histogram()
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._watch(), name="loop-lag")

    async def _watch(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(INTERVAL)
            self.loop_lag.observe(max(0.0, time.perf_counter() - before - INTERVAL))

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause.observe(time.perf_counter() - self._gc_started)

    async def shutdown(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
