"""The write-ahead log of the in-process queue: replay, truncation, torn records, group commit."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.otlp import split_by_trace
from collector.queue import MemoryQueue
from collector.wal import HEADER, WriteAheadLog
from processors.fragment import Fragment


def fragments(first: int, count: int) -> list[Fragment]:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for t in range(first, first + count):
        spans.add(trace_id=t.to_bytes(16, "big"), span_id=b"\x01" * 8, start_time_unix_nano=1, end_time_unix_nano=2)
    return split_by_trace(req).fragments


def trace_numbers(batch: list[Fragment] | None) -> list[int]:
    return [int.from_bytes(f.trace_id, "big") for f in batch or []]


def test_unsettled_records_are_replayed_in_order_and_settled_ones_are_not(tmp_path: Path) -> None:
    async def first_life() -> None:
        queue = MemoryQueue(1 << 30, wal=WriteAheadLog(tmp_path, segment_bytes=1 << 20))
        await queue.start()
        for n in range(5):
            await queue.publish(fragments(1 + 10 * n, 3))  # records: traces 1-3, 11-13, ..., 41-43
        got = await queue.consume(100, 0.1)
        assert trace_numbers(got) == [1, 2, 3, 11, 12, 13, 21, 22, 23, 31, 32, 33, 41, 42, 43]
        assert got is not None and all(f.source is not None for f in got)
        assert not any(queue.maybe_stored(f.source) for f in got if f.source)  # this process logged them
        queue.release(got[:6])  # the first two records are settled (stored or dropped)
        queue.release(got[9:12])  # the fourth too, but the third is still open
        await queue.shutdown()  # writes the checkpoint: everything below the third record

    async def second_life() -> list[int]:
        queue = MemoryQueue(1 << 30, wal=WriteAheadLog(tmp_path))
        await queue.start()
        old = await queue.consume(100, 0.1)
        # An earlier process may have stored these before it died: storage checks them.
        assert old and all(f.source is not None and queue.maybe_stored(f.source) for f in old)
        await queue.publish(fragments(100, 1))
        new = await queue.consume(100, 0.1)
        assert new and not any(f.source is not None and queue.maybe_stored(f.source) for f in new)
        replayed = trace_numbers(old) + trace_numbers(new)
        await queue.shutdown()
        return replayed

    asyncio.run(first_life())
    # Records from the watermark on come back (a settled record after an open one too: the
    # sampler recognises kept traces already stored by their log position), then new data.
    assert asyncio.run(second_life()) == [21, 22, 23, 31, 32, 33, 41, 42, 43, 100]


def test_a_torn_record_ends_the_replay_of_its_segment(tmp_path: Path) -> None:
    async def write() -> None:
        wal = WriteAheadLog(tmp_path)
        wal.open()
        for payload in (b"one", b"two", b"three"):
            wal.append(payload, 1)
        await wal.durable()
        await wal.close()

    asyncio.run(write())
    [segment] = sorted(tmp_path.glob("*.wal"))
    data = segment.read_bytes()
    segment.write_bytes(data[: len(data) - 2])  # the last write was cut short by a crash
    wal = WriteAheadLog(tmp_path)
    entries = wal.open()
    assert [WriteAheadLog.read(e) for e in entries] == [b"one", b"two"]
    corrupt = bytearray(data)
    corrupt[HEADER.size + 1] ^= 0xFF  # a flipped bit in the first payload: its checksum fails
    segment.write_bytes(bytes(corrupt))
    assert WriteAheadLog(tmp_path).open() == []


def test_segments_below_the_checkpoint_are_deleted(tmp_path: Path) -> None:
    async def run() -> tuple[int, int]:
        wal = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
        wal.open()
        seqs = [wal.append(b"x" * (300 << 10), 1) for _ in range(12)]  # ~3.6 MB: 3 segments or more
        await wal.durable()
        before = len(list(tmp_path.glob("*.wal")))
        wal.checkpoint(seqs[-1] + 1)  # everything settled
        after = len(list(tmp_path.glob("*.wal")))
        await wal.close()
        return before, after

    before, after = asyncio.run(run())
    assert before >= 3 and after == 1  # only the segment being written remains
    assert WriteAheadLog(tmp_path).open() == []


def test_concurrent_requests_share_one_fdatasync(tmp_path: Path) -> None:
    async def run() -> tuple[int, int]:
        wal = WriteAheadLog(tmp_path, fsync="always")
        wal.open()

        async def one(i: int) -> None:
            wal.append(b"request %d" % i, 1)
            await wal.durable()

        await asyncio.gather(*(one(i) for i in range(200)))
        syncs = wal.syncs
        await wal.close()
        return syncs, 200

    syncs, requests = asyncio.run(run())
    assert 1 <= syncs < requests / 10


def test_a_failed_sync_fails_its_waiters_and_the_log_goes_on(tmp_path: Path) -> None:
    """A sync the disk refuses is an OSError for every request waiting on it (the queue
    answers them 503: never acknowledged), and the syncs after it still work."""

    async def run() -> tuple[OSError, int]:
        wal = WriteAheadLog(tmp_path, fsync="always")
        wal.open()
        good, (pipe_read, pipe_write) = wal._fd, os.pipe()
        wal._fd = pipe_write  # fdatasync on a pipe fails with EINVAL, as a failing disk would
        wal.append(b"lost", 1)
        with pytest.raises(OSError) as failed:
            await asyncio.gather(wal.durable(), wal.durable())
        wal._fd = good
        wal.append(b"kept", 1)
        await wal.durable()
        await wal.close()
        for end in (pipe_read, pipe_write):
            os.close(end)
        return failed.value, wal.syncs

    error, syncs = asyncio.run(run())
    assert error.errno == errno.EINVAL and syncs == 1
    assert [WriteAheadLog.read(e) for e in WriteAheadLog(tmp_path).open()] == [b"kept"]


def test_deleted_segments_leave_nothing_behind(tmp_path: Path) -> None:
    """Segments below the checkpoint are freed off the event loop, and gone by the time the
    log is closed; one a crash left half-deleted is removed at the next open."""

    async def run() -> list[str]:
        wal = WriteAheadLog(tmp_path, segment_bytes=1 << 20)
        wal.open()
        seqs = [wal.append(b"x" * (300 << 10), 1) for _ in range(12)]
        await wal.durable()
        wal.checkpoint(seqs[-1] + 1)
        await wal.close()
        return sorted(p.suffix for p in tmp_path.iterdir())

    assert asyncio.run(run()) == ["", ".wal"]  # the checkpoint and the segment being written
    (tmp_path / "00000000000000000001.deleted").write_bytes(b"x" * 1000)
    WriteAheadLog(tmp_path).open()
    assert not list(tmp_path.glob("*.deleted"))


def test_a_consumer_takes_published_batches_in_parts_and_the_bytes_add_up(tmp_path: Path) -> None:
    """Batches are queued whole and may be taken in parts: order kept, nothing taken twice,
    and the queue's byte count back to zero once all is consumed."""

    async def scenario() -> None:
        queue = MemoryQueue(1 << 30, wal=WriteAheadLog(tmp_path))
        await queue.start()
        first, second = fragments(1, 5), fragments(11, 3)
        await queue.publish(first)
        await queue.publish(second)
        assert queue.depth_bytes == sum(f.size for f in first + second)
        assert trace_numbers(await queue.consume(4, 0.1)) == [1, 2, 3, 4]
        assert queue.depth_bytes == first[4].size + sum(f.size for f in second)
        assert trace_numbers(await queue.consume(3, 0.1)) == [5, 11, 12]
        assert trace_numbers(await queue.consume(10, 0.1)) == [13]
        assert queue.depth_bytes == 0
        assert await queue.consume(10, 0.05) == []
        await queue.shutdown()

    asyncio.run(scenario())


def test_the_record_checksum_is_zlibs_crc32() -> None:
    """Records carry the same CRC-32 as ``zlib.crc32``, so logs written before the checksum
    moved into the extension replay, and a log can be checked with any zlib."""
    import zlib

    from processors._wire import crc32

    for data in (b"", b"\x00", b"a", os.urandom(7), os.urandom(65_536), os.urandom(1 << 20) + b"tail"):
        assert crc32(data) == zlib.crc32(data)
