"""Wiring: receivers → ingest (redaction) → queue → tail sampler → storage, plus the query API.

A process has a role. ``all`` (the default) runs everything; with the Kafka queue,
``receiver`` runs only receivers and the producer, and ``sampler`` only the consumer,
sampler, storage and query API, so the two scale separately.

Start order is storage first (so nothing is accepted that cannot be stored), then the
queue and the sampler task, then the receivers. Shutdown runs the other way and loses
nothing that was acknowledged: receivers stop taking requests; the sampler task drains
the in-process queue (Kafka needs no draining: unsettled records stay in the topic);
every buffered trace is decided; storage is flushed; and only then does the queue close
(Kafka: commit the watermark) and the query API stop.

With Kafka, a rebalance runs the revoke hook between two sampling steps (``_step``
guards each step with a lock): traces buffered from revoked partitions are forgotten, so
their next owner decides them, and storage is flushed so the commit covers what was kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from collector.config import Role, Settings
from collector.ingest import Ingest
from collector.kafka.queue import KafkaQueue
from collector.memory import MemoryLimiter
from collector.query_api import QueryApi
from collector.queue import MemoryQueue, Queue
from collector.reader import StoredTraces
from collector.receivers.grpc import GrpcReceiver
from collector.receivers.http import HttpReceiver
from collector.runtime import RuntimeMonitor
from collector.telemetry import build_registry
from collector.wal import WriteAheadLog
from collector.writer import StorageWriter
from processors.cardinality import CardinalityProcessor
from processors.fragment import Fragment, Sourced
from processors.genai import PriceTable
from processors.redaction import Redactor
from processors.spanmetrics import Histogram, SpanMetrics
from processors.sampling.sampler import Decision, TailSampler

log = logging.getLogger("tailsift")
CONSUME_BATCH = 256
DECIDE_BATCH = 256
"""Fragments taken and traces decided per sampling step: small steps keep the event loop
free for the receivers between them (ack latency), and the loop comes straight back."""
TICK_SECONDS = 0.1
BEHIND_BUDGET = 0.005
"""Seconds of sampling steps in a row, without yielding to the receivers, while each step
finds a full batch waiting (the sampler is behind). One step per turn of the event loop was
too little once many requests were in flight: at 16 per sender the receivers took 200k+
spans/s while sampling managed ~55k, the queue filled, and clients were refused at a third
of the rate the collector sustains."""
RECALL_SECONDS = 3600
"""How far back kept decisions are read from storage to seed the decision cache."""

RELOADABLE = ("sampling", "redaction", "genai")
"""Configuration sections a reload applies; any other change needs a restart."""


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Key paths whose values differ between two settings models (nested models walked)."""
    if isinstance(old, BaseModel) and type(old) is type(new):
        return [key for name in type(old).model_fields
                for key in _changed(getattr(old, name), getattr(new, name), f"{prefix}{name}.")]  # fmt: skip
    return [] if old == new else [prefix.rstrip(".")]


def make_queue(settings: Settings, role: Role = "all") -> Queue:
    """The queue named by ``queue.kind``, with the halves ``role`` needs."""
    q = settings.queue
    if q.kind == "memory":
        if role != "all":
            raise ValueError(f"--role {role} needs queue.kind: kafka; the in-process queue cannot be shared")
        wal = WriteAheadLog(settings.wal_dir, q.wal.fsync, q.wal.segment_size) if q.wal.enabled else None
        return MemoryQueue(q.max_size, q.retry_after, wal)
    return KafkaQueue(q.kafka, q.retry_after, produce=role != "sampler", consume=role != "receiver")


class Pipeline:
    """The whole collector as one component: ``start`` / ``shutdown`` (safe twice, and without start)."""

    def __init__(self, settings: Settings, role: Role = "all"):
        self.settings = settings
        self.role = role
        self.queue = make_queue(settings, role)
        receives, samples = role != "sampler", role != "receiver"
        redactor = Redactor(settings.redaction) if settings.redaction.enabled else None
        self.prices = PriceTable(settings.genai.prices)
        self.metrics = SpanMetrics(settings.cardinality, self.prices) if receives and settings.metrics.enabled else None
        cardinality = CardinalityProcessor(settings.cardinality, settings.salt)
        limits = settings.memory_limiter
        self.memory = MemoryLimiter(limits.limit_bytes, limits.spike_bytes, limits.check_interval / 1e9,
                                    settings.queue.retry_after) if receives else None  # fmt: skip
        self.ingest = Ingest(self.queue, redactor, cardinality, self.metrics, self.memory,
                             settings.storage.clickhouse.ttl_days) if receives else None  # fmt: skip
        self.sampler = TailSampler(settings.sampling) if samples else None
        self.writer = StorageWriter(settings.storage.clickhouse, on_settled=self._stored, prices=self.prices,
                                    on_kept_span=self.metrics.observe_kept if self.metrics else None,
                                    kept_span_keys=tuple(self.metrics.label_keys) if self.metrics else (),
                                    maybe_stored=self.queue.maybe_stored, memory=self.memory) if samples else None
        if self.writer is not None and self.sampler is not None:
            self.writer.rows.inconsistent = self.sampler.inconsistent_rules
        otlp = settings.receivers.otlp
        self.grpc = self.http = None
        served = tuple(otlp.served_signals)
        if self.ingest is not None and self.writer is not None and otlp.logs == "store":
            self.ingest.store_logs = self.writer.write_logs
        if self.ingest is not None:
            self.grpc = GrpcReceiver(otlp.grpc, self.ingest, otlp.max_request_size, served) if otlp.grpc else None
            self.http = HttpReceiver(otlp.http, self.ingest, otlp.max_request_size, served) if otlp.http else None
        reader = StoredTraces(self.writer, self.sampler) if self.writer is not None else None
        self.query = QueryApi(settings.query, reader, build_registry(self), role)
        self.queue.on_rebalance(self._revoked, self._assigned)
        self.decision_latency = Histogram()
        self.runtime = RuntimeMonitor()
        self._step_lock = asyncio.Lock()
        self._rebalances = 0
        self.config_reloads: Counter[str] = Counter()  # by outcome (collector.reload)
        self._draining = False
        self._sampling_task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        await self.runtime.start()
        if self.memory is not None:
            await self.memory.start()
        if self.writer is not None:
            await self.writer.start()
            await self._recall_decisions()
        await self.queue.start()
        if self.sampler is not None:
            self._sampling_task = asyncio.create_task(self._sample(), name="tail-sampler")
        await self.query.start()
        for receiver in (self.grpc, self.http):
            if receiver is not None:
                await receiver.start()

    async def _sample(self) -> None:
        """Feed queued fragments to the sampler and decided traces to storage."""
        more_due = False
        loop = asyncio.get_running_loop()
        turn = loop.time()
        while True:
            batch = await self.queue.consume(CONSUME_BATCH, 0.0 if more_due else TICK_SECONDS)
            generation = self._rebalances
            if batch is None or (self._draining and (not batch or self.queue.durable)):
                return
            async with self._step_lock:
                if generation != self._rebalances:
                    continue  # a rebalance came in between: these records are replayed to their owner
                more_due = await self._step(batch)
            # The in-process queue hands out what it holds without awaiting anything, so
            # without this a backlog would be worked off in one go, stalling every client.
            # Behind (a full batch), the sampler keeps the loop for up to BEHIND_BUDGET.
            if len(batch) < CONSUME_BATCH or loop.time() - turn >= BEHIND_BUDGET:
                await asyncio.sleep(0)
                turn = loop.time()

    async def _step(self, batch: list[Fragment]) -> bool:
        """One sampling step; True when more traces may be due right away."""
        assert self.sampler is not None and self.writer is not None
        try:
            decisions = self.sampler.add(batch) if batch else []
            due, decided = self.sampler.due_kept(DECIDE_BATCH)
            decisions += due
        except Exception as exc:  # a bug here must not stop sampling for everyone, nor lose the batch
            log.exception("tail sampler failed on a batch of %d fragments; they go to tailsift_rejected", len(batch))
            self.sampler.stats["batch_failures"] += 1
            if await self.writer.dead_letter(batch, f"tail sampler failed: {exc!r}"):
                self._settle(batch)
            return False
        self._settle(self.sampler.take_settled())
        now = time.time_ns()
        for d in decisions:
            if d.fragments:
                self.decision_latency.observe(max(0, now - min(f.received_ns for f in d.fragments)) / 1e9)
        await self.writer.write(decisions)
        return decided >= DECIDE_BATCH

    def _stored(self, decisions: list[Decision]) -> None:
        """Storage finished these kept traces: their records may be committed."""
        self._settle([f for d in decisions for f in d.fragments])

    def _settle(self, fragments: Sequence[Sourced]) -> None:
        """The one place records are declared done, so the queue may forget them (commit the
        Kafka offset, checkpoint the write-ahead log): a fragment is settled once its trace
        is stored (the writer's ``on_settled``), dropped or found already stored by the
        sampler (``take_settled``), or stored in the dead-letter table. (The queues settle on
        their own only records they never handed out: undecodable ones they dead-letter, and
        write-ahead log records whose write failed, which the client was never told were taken.)"""
        self.queue.release(fragments)

    async def _recall_decisions(self) -> None:
        """Seed the decision cache with recently kept traces, so late spans join them."""
        if self.writer is None or self.sampler is None or self.settings.sampling.decision_cache_size == 0:
            return
        store, limit = self.writer.store, self.settings.sampling.decision_cache_size
        try:
            kept = await self.writer.run(store.recent_kept, RECALL_SECONDS, limit)
        except Exception as exc:  # noqa: BLE001 - a cold cache is a degraded mode, not a failure
            log.warning("could not read recent decisions from storage: %s", exc)
            return
        self.sampler.remember_kept(kept)

    def reload(self, settings: Settings) -> list[str]:
        """Take new sampling rules, redaction rules and prices (SIGHUP, ``--watch``) without a
        restart and without losing a buffered trace. Returns the changed keys that need a
        restart; they keep their running values."""
        restart = [key for name in type(settings).model_fields if name not in RELOADABLE
                   for key in _changed(getattr(self.settings, name), getattr(settings, name), f"{name}.")]  # fmt: skip
        if self.sampler is not None:
            restart += self.sampler.reload(settings.sampling)
        if self.ingest is not None:
            self.ingest.set_redactor(Redactor(settings.redaction) if settings.redaction.enabled else None)
        self.prices = PriceTable(settings.genai.prices)
        if self.metrics is not None:
            self.metrics.prices = self.prices
        if self.writer is not None:
            # Read on the storage thread: reference swaps to objects nobody modifies.
            self.writer.rows.prices = self.prices
            if self.sampler is not None:
                self.writer.rows.inconsistent = self.sampler.inconsistent_rules
        self.settings = self.settings.model_copy(update={name: getattr(settings, name) for name in RELOADABLE})
        return restart

    async def _revoked(self, partitions: set[int]) -> None:
        async with self._step_lock:
            self._rebalances += 1
            if self.sampler is None or self.writer is None:
                return
            forgotten = self.sampler.forget(partitions)
            self._settle(self.sampler.take_settled())
            await self.writer.flush()
            if partitions:
                log.info("partitions %s revoked: %d buffered traces left to their next owner",
                         sorted(partitions), forgotten)  # fmt: skip

    async def _assigned(self, partitions: set[int]) -> None:
        async with self._step_lock:
            total = getattr(self.queue, "partition_count", 0)
            if self.sampler is not None and total:
                self.sampler.set_share(len(partitions) / total)  # adaptive targets are per group
            await self._recall_decisions()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop within ``timeout`` (default ``shutdown_timeout``), whatever the load.

        Receivers stop taking requests; the sampler decides what it buffered; storage
        inserts until the deadline (less a reserve for closing the queue). With a durable
        queue (Kafka, or the write-ahead log) nothing more is read from it, and what is not
        stored by the deadline stays unsettled and is replayed at the next start. Without
        one, the in-process queue is drained first: those requests exist nowhere else."""
        if self._stopped:
            return
        self._stopped = True
        loop = asyncio.get_running_loop()
        budget = self.settings.shutdown_timeout / 1e9 if timeout is None else timeout
        deadline = loop.time() + budget
        reserve = min(2.0, budget / 4)  # for the queue (Kafka: commit, leave the group) and the rest
        if self.grpc is not None:
            await self.grpc.shutdown(min(1.0, budget / 8))
        if self.http is not None:
            await self.http.shutdown()
        self._draining = True
        if self.writer is not None:
            self.writer.stop_waiting()  # a sampling step blocked on a full writer finishes now
        if self._sampling_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._sampling_task), max(0.1, deadline - reserve - loop.time()))
            except TimeoutError:
                log.warning("shutdown: stopped reading the queue at the deadline")
                self._sampling_task.cancel()
                await asyncio.gather(self._sampling_task, return_exceptions=True)
            self._sampling_task = None
        if self.sampler is not None and self.writer is not None:
            async with self._step_lock:
                buffered = self.sampler.buffered_traces
                decisions = self.sampler.flush(dropped=False)
                self._settle(self.sampler.take_settled())
                await self.writer.write(decisions)
            log.info("shutdown: decided %d buffered traces (%d kept)", buffered, len(decisions))
            await self.writer.shutdown(max(0.1, deadline - reserve - loop.time()))
        await self.queue.shutdown()
        if self.memory is not None:
            await self.memory.shutdown()
        await self.query.shutdown()
        await self.runtime.shutdown()
