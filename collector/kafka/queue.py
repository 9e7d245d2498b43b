"""The production queue: Apache Kafka between receivers and samplers.

Receivers send each trace fragment to the partition its trace id hashes to (so a trace lives
on one partition), the fragments of one request bound for one partition together in one
record: the versioned envelope batch of :mod:`collector.kafka.envelope`. The
client is answered only once the broker acknowledged every record (``acks=all``, idempotent
producer): a span acknowledged to a client is in Kafka.

Samplers form a consumer group and never auto-commit. Each consumed record stays open in
an :class:`OffsetLedger` until its spans are settled (stored or dropped); the committed
offset is the ledger's watermark. A crash therefore replays what was not yet durable, and
storage is idempotent so a replay adds nothing twice.

Errors, in the protocol's terms (see :mod:`collector.errors`):
- more than ``max_in_flight`` bytes awaiting acknowledgement → :class:`Backpressure` (429);
- no acknowledgement within ``ack_timeout``, or the broker is known to be unreachable →
  :class:`Unavailable` (503). Records already handed to the producer may still arrive;
  the client's retry then duplicates them, which idempotent storage absorbs.
- records that do not decode go to the dead-letter topic, are counted, and are skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from functools import partial
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from collector.kafka.settings import KafkaQueue as KafkaSettings
from collector.errors import Backpressure, RequestTooLarge, Unavailable
from collector.kafka.envelope import EnvelopeError, decode, encode, partition_of
from collector.kafka.ledger import OffsetLedger
from collector.queue import RebalanceHook
from processors.fragment import Fragment, Sourced

log = logging.getLogger("tailsift.kafka")
TOPIC_ALREADY_EXISTS = 36


async def _nothing(partitions: set[int]) -> None:
    """Default rebalance hook."""


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """aiokafka calls these around every rebalance (eager: all partitions are revoked first)."""

    def __init__(self, queue: KafkaQueue):
        self.queue = queue

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.queue._revoked({tp.partition for tp in revoked if tp.topic == self.queue.settings.topic})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.queue._assigned({tp.partition for tp in assigned if tp.topic == self.queue.settings.topic})


class KafkaQueue:
    """Implements :class:`collector.queue.Queue`. ``produce``/``consume`` select the role's half."""

    durable = True

    def __init__(self, settings: KafkaSettings, retry_after: float = 1.0, *, produce: bool = True,
                 consume: bool = True):  # fmt: skip
        self.settings = settings
        self.retry_after = retry_after
        self._produce, self._consume = produce, consume
        self._producer: Any = None
        self._consumer: Any = None
        self._ledger = OffsetLedger()
        self._in_flight = 0
        self._partition_count = 1  # read from the broker at start
        self._stuck_since: float | None = None  # first unacknowledged failure, while not recovered
        self._closed = False
        self._last_commit = 0.0
        self._committed: dict[int, int] = {}
        self._seen_end: dict[int, int] = {}  # partition -> its end offset when assigned (see maybe_stored)
        self._generation = 0  # bumped on every revoke; a batch read before it is stale
        self._on_revoked: RebalanceHook = _nothing
        self._on_assigned: RebalanceHook = _nothing
        self.stats: Counter[str] = Counter()

    # --- lifecycle
    async def start(self) -> None:
        """Connect, create the topics if missing, join the group. Fails fast if Kafka is unreachable."""
        s = self.settings
        try:
            await self._ensure_topics()
            self._producer = AIOKafkaProducer(
                **s.client_options(), client_id=f"{s.client_id}-producer", acks="all",
                enable_idempotence=True, linger_ms=s.linger // 1_000_000,
                max_batch_size=s.max_record_size + 64 * 1024, max_request_size=s.max_record_size + 64 * 1024,
                request_timeout_ms=30_000,
            )  # fmt: skip
            await self._producer.start()
            self._partition_count = len(await self._producer.partitions_for(s.topic))
            if self._consume:
                self._consumer = AIOKafkaConsumer(
                    **s.client_options(), client_id=f"{s.client_id}-sampler", group_id=s.group,
                    enable_auto_commit=False, auto_offset_reset="earliest",
                    max_partition_fetch_bytes=s.max_record_size + 64 * 1024, fetch_max_bytes=16 * 1024 * 1024,
                    rebalance_timeout_ms=60_000, session_timeout_ms=10_000, heartbeat_interval_ms=3_000,
                )  # fmt: skip
                await self._consumer.start()
                self._consumer.subscribe([s.topic], listener=_Listener(self))
        except KafkaError as exc:
            await self._stop_clients()
            raise RuntimeError(f"cannot use Kafka at {s.bootstrap_servers}: {exc}") from None

    async def _ensure_topics(self) -> None:
        s = self.settings
        admin = AIOKafkaAdminClient(**s.client_options(), client_id=f"{s.client_id}-admin")
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            missing = [t for t in (s.topic, s.dead_letters) if t not in existing]
            if missing:
                response = await admin.create_topics(
                    [NewTopic(t, s.partitions, s.replication_factor) for t in missing])  # fmt: skip
                for topic, code, *rest in response.topic_errors:
                    if code not in (0, TOPIC_ALREADY_EXISTS):
                        raise RuntimeError(f"cannot create Kafka topic {topic!r}: error {code} {rest[:1]}")
                log.info("created Kafka topics %s (%d partitions)", ", ".join(missing), s.partitions)
        finally:
            await admin.close()

    @property
    def partition_count(self) -> int:
        """The topic's partitions (a sampler's share of the group's traffic is its part of them)."""
        return self._partition_count

    def on_rebalance(self, revoked: RebalanceHook, assigned: RebalanceHook) -> None:
        self._on_revoked, self._on_assigned = revoked, assigned

    async def shutdown(self) -> None:
        """Commit what is settled, leave the group, flush the producer. Safe twice and unstarted."""
        if self._closed:
            return
        self._closed = True
        if self._consumer is not None:
            await self._commit(set(self._ledger.partitions()))
        await self._stop_clients()

    async def _stop_clients(self) -> None:
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        for client in (consumer, producer):
            if client is not None:
                try:
                    await client.stop()
                except KafkaError as exc:
                    log.warning("stopping a Kafka client: %s", exc)

    @property
    def depth_bytes(self) -> int:
        """Bytes handed to Kafka and not yet acknowledged."""
        return self._in_flight

    # --- receiver side
    async def publish(self, fragments: list[Fragment]) -> None:
        if self._closed or self._producer is None:
            raise Unavailable("tailsift is shutting down", retry_after=self.retry_after)
        s = self.settings
        by_partition: dict[int, list[Fragment]] = {}
        for f in fragments:
            by_partition.setdefault(partition_of(f.trace_id, self._partition_count), []).append(f)
        records = [(p, value) for p, group in by_partition.items() for value in encode(group, s.max_record_size)]
        size = sum(len(value) for _, value in records)
        if self._stuck_since is not None and self._in_flight:
            self.stats["refused_unavailable"] += 1
            raise self._unavailable(f"not acknowledging writes (for {time.monotonic() - self._stuck_since:.0f}s)")
        if self._in_flight + size > s.max_in_flight:
            self.stats["refused_full"] += 1
            raise Backpressure(f"Kafka producer buffer full ({self._in_flight} of {s.max_in_flight} bytes "
                               "awaiting acknowledgement); retry later", retry_after=self.retry_after)  # fmt: skip
        deadline = asyncio.get_running_loop().time() + s.ack_timeout / 1e9
        futures = await self._send_all(records, size, deadline)
        done, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        if pending:
            self._mark_stuck()
            raise self._unavailable(f"did not acknowledge within {s.ack_timeout / 1e9:g}s")
        failed = next((f.exception() for f in done if f.exception() is not None), None)
        if failed is not None:
            raise self._unavailable(str(failed))

    async def _send_all(self, records: list[tuple[int, bytes]], size: int, deadline: float) -> list[asyncio.Future[Any]]:
        """Hand every record (``size`` bytes in all) to the producer by ``deadline``; each
        one's bytes count as in flight until the broker answers for it (``_acked``)."""
        unsent = size
        self._in_flight += unsent
        futures = []
        try:
            async with asyncio.timeout_at(deadline):
                for partition, value in records:
                    future = await self._producer.send(self.settings.topic, value, partition=partition)
                    unsent -= len(value)
                    future.add_done_callback(partial(self._acked, len(value)))
                    futures.append(future)
        except MessageSizeTooLargeError as exc:
            raise RequestTooLarge(f"Kafka refused a record as too large: {exc}") from None
        except (TimeoutError, KafkaError) as exc:
            self._mark_stuck()
            raise self._unavailable(str(exc) or "did not take the records in time") from None
        finally:
            self._in_flight -= unsent
        return futures

    def _unavailable(self, why: str) -> Unavailable:
        return Unavailable(f"Kafka at {self.settings.bootstrap_servers}: {why}", retry_after=self.retry_after)

    def _acked(self, size: int, future: asyncio.Future[Any]) -> None:
        self._in_flight -= size
        if future.cancelled() or future.exception() is not None:  # .exception() also marks it retrieved
            self.stats["records_failed"] += 1
            self._mark_stuck()
        else:
            self.stats["records_acked"] += 1
            self._stuck_since = None

    def _mark_stuck(self) -> None:
        if self._stuck_since is None:
            self._stuck_since = time.monotonic()
            log.warning("Kafka at %s is not acknowledging; answering 503 until it does", self.settings.bootstrap_servers)

    # --- sampler side
    async def consume(self, max_items: int, timeout: float) -> list[Fragment] | None:
        if self._closed or self._consumer is None:
            return None
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000), max_records=max_items)
        except KafkaError as exc:
            self.stats["consume_errors"] += 1
            log.warning("consuming from Kafka: %s", exc)
            await asyncio.sleep(timeout)
            return []
        generation = self._generation
        out: list[Fragment] = []
        for tp, records in batches.items():
            for record in records:
                try:
                    fragments = decode(record.value, (tp.partition, record.offset))
                except EnvelopeError as exc:
                    self._ledger.track(tp.partition, record.offset)
                    await self._dead_letter(record, str(exc))
                    self._ledger.settle(tp.partition, record.offset)
                    continue
                self._ledger.track(tp.partition, record.offset, len(fragments))
                out.extend(fragments)
        self.stats["records_consumed"] += sum(len(r) for r in batches.values())
        if time.monotonic() - self._last_commit >= self.settings.commit_interval / 1e9:
            await self._commit(set(self._ledger.partitions()))
        if generation != self._generation:
            return []  # revoked while we awaited: the next owner replays these records
        return out

    def release(self, fragments: Sequence[Sourced]) -> None:
        self._ledger.release(fragments)

    async def _dead_letter(self, record: Any, reason: str) -> None:
        """Copy an undecodable record to the dead-letter topic, retrying until Kafka takes it:
        its offset is not committed before, so it is never silently lost."""
        s = self.settings
        log.error("record %s[%d]@%d cannot be decoded (%s); sending it to %s",
                  record.topic, record.partition, record.offset, reason, s.dead_letters)  # fmt: skip
        headers = [("tailsift.error", reason.encode()[:1000]),
                   ("tailsift.source", f"{record.topic}/{record.partition}/{record.offset}".encode())]  # fmt: skip
        while True:
            try:
                await self._producer.send_and_wait(s.dead_letters, record.value, key=record.key, headers=headers)
                self.stats["records_dead_lettered"] += 1
                return
            except KafkaError as exc:
                self.stats["dead_letter_errors"] += 1
                log.warning("writing to the dead-letter topic failed, retrying: %s", exc)
                await asyncio.sleep(1.0)

    async def _commit(self, partitions: set[int]) -> None:
        self._last_commit = time.monotonic()
        offsets = {}
        for partition in partitions:
            mark = self._ledger.watermark(partition)
            if mark is not None and mark != self._committed.get(partition):
                offsets[TopicPartition(self.settings.topic, partition)] = mark
        if not offsets or self._consumer is None:
            return
        try:
            await self._consumer.commit(offsets)
            self._committed.update({tp.partition: mark for tp, mark in offsets.items()})
            self.stats["commits"] += 1
        except KafkaError as exc:  # a rebalance in progress, or Kafka away: the next commit catches up
            self.stats["commit_failures"] += 1
            log.warning("committing offsets failed (will retry): %s", exc)

    async def _revoked(self, partitions: set[int]) -> None:
        self._generation += 1
        self.stats["rebalances"] += 1
        await self._on_revoked(partitions)  # the pipeline settles what it can and forgets the rest
        await self._commit(partitions)
        self._ledger.forget(partitions)
        for partition in partitions:
            self._committed.pop(partition, None)
            self._seen_end.pop(partition, None)

    async def _assigned(self, partitions: set[int]) -> None:
        log.info("assigned partitions %s of %s", sorted(partitions), self.settings.topic)
        tps = [TopicPartition(self.settings.topic, p) for p in partitions]
        try:
            ends = await self._consumer.end_offsets(tps) if tps else {}
            self._seen_end.update({tp.partition: offset for tp, offset in ends.items()})
        except KafkaError as exc:  # every record of these partitions is then checked: slower, never wrong
            log.warning("reading end offsets of %s: %s; replayed spans are checked against storage", sorted(partitions), exc)
            self._seen_end.update({p: 2**63 for p in partitions})
        await self._on_assigned(partitions)

    def maybe_stored(self, source: tuple[int, int]) -> bool:
        """Records up to the partition's end when it was assigned may have been stored by its
        previous owner (which may have crashed before committing them)."""
        partition, offset = source
        return offset < self._seen_end.get(partition, 0)

    def lag(self) -> int:
        """Records on assigned partitions not yet consumed (for /metrics)."""
        consumer = self._consumer
        if consumer is None:
            return 0
        total = 0
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            position = self._ledger.watermark(tp.partition)
            if high is not None and position is not None:
                total += max(0, high - position)
        return total

    def assigned(self) -> int:
        """Partitions assigned to this consumer now (for /metrics)."""
        return len(self._consumer.assignment()) if self._consumer is not None else 0

    @property
    def open_records(self) -> int:
        return self._ledger.open_records()
