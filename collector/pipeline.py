"""Wiring: receivers → ingest (redaction) → queue → tail sampler → storage, plus the query API.

Start order is storage first (so nothing is accepted that cannot be stored), then the
sampler task, then the receivers. Shutdown runs the other way and loses nothing that was
acknowledged: receivers stop taking requests, the queue is drained into the sampler,
every buffered trace is decided, storage is flushed, and only then the query API stops.
"""

from __future__ import annotations

import asyncio
import logging

from collector.config import Settings
from collector.ingest import Ingest
from collector.query_api import QueryApi
from collector.queue import MemoryQueue, Queue
from collector.receivers.grpc import GrpcReceiver
from collector.receivers.http import HttpReceiver
from collector.writer import StorageWriter
from processors.redaction import Redactor
from processors.sampling.sampler import TailSampler

log = logging.getLogger("tailsift")
CONSUME_BATCH = 4096
TICK_SECONDS = 0.1


def make_queue(settings: Settings) -> Queue:
    """The queue named by ``queue.kind``."""
    if settings.queue.kind == "memory":
        return MemoryQueue(settings.queue.max_size, settings.queue.retry_after)
    raise NotImplementedError("queue.kind: kafka is not available yet")


class Pipeline:
    """The whole collector as one component: ``start`` / ``shutdown`` (safe twice, and without start)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.queue = make_queue(settings)
        self.ingest = Ingest(self.queue, Redactor() if settings.redaction.enabled else None)
        self.sampler = TailSampler(settings.sampling)
        self.writer = StorageWriter(settings.storage.clickhouse)
        otlp = settings.receivers.otlp
        self.grpc = GrpcReceiver(otlp.grpc.endpoint, self.ingest, otlp.max_request_size) if otlp.grpc else None
        self.http = HttpReceiver(otlp.http.endpoint, self.ingest, otlp.max_request_size) if otlp.http else None
        self.query = QueryApi(settings.query.endpoint, self)
        self._sampling_task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        await self.writer.start()
        await self.queue.start()
        self._sampling_task = asyncio.create_task(self._sample(), name="tail-sampler")
        await self.query.start()
        for receiver in (self.grpc, self.http):
            if receiver is not None:
                await receiver.start()

    async def _sample(self) -> None:
        """Feed queued fragments to the sampler and decided traces to storage."""
        while True:
            batch = await self.queue.consume(CONSUME_BATCH, TICK_SECONDS)
            if batch is None:
                return
            try:
                decisions = self.sampler.add(batch) if batch else []
                decisions += self.sampler.due()
            except Exception:  # a bug here must not stop sampling for everyone
                log.exception("tail sampler failed on a batch of %d fragments", len(batch))
                self.sampler.stats["batch_failures"] += 1
                continue
            await self.writer.write(decisions)

    async def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for receiver in (self.grpc, self.http):
            if receiver is not None:
                await receiver.shutdown()
        await self.queue.shutdown()
        if self._sampling_task is not None:
            await self._sampling_task
            self._sampling_task = None
        decisions = self.sampler.flush()
        await self.writer.write(decisions)
        log.info("shutdown: decided %d buffered traces", len(decisions))
        await self.writer.shutdown()
        await self.query.shutdown()
