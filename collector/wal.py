"""The write-ahead log of the in-process queue: acknowledged requests survive a crash.

Every request the in-process queue accepts is appended here (after redaction, so no secret
touches the disk) before the client is answered, and replayed at the next start until its
traces are settled (decided and stored, or dropped). It works like one Kafka partition: a
record's *sequence number* is its offset, :class:`collector.kafka.ledger.OffsetLedger`
gives the watermark below which everything is settled, and the watermark is the
*checkpoint*. Sequence numbers start from the clock for a new log, so they keep growing even
if the directory is deleted, and a stored trace can tell a replay from new data.

Files, in ``directory``: segments ``<first sequence>.wal`` of at most ``segment_bytes``,
and ``checkpoint`` (the watermark, written atomically). A record is a header (length,
CRC-32 of the payload, sequence, fragment count) and the payload. A segment whose every
record is below the checkpoint is deleted. Replay stops a segment at the first torn or
corrupt record: a crash in the middle of a write leaves one, and that request was never
acknowledged.

Durability (``fsync``):
- ``always`` (default): the answer waits for ``fdatasync``; concurrent requests share one
  (group commit). Survives a power loss.
- ``interval``: written to the OS before the answer, synced every ``fsync_interval``.
  Survives a crash of the process (SIGKILL, OOM kill), not of the machine.
- ``never``: written to the OS before the answer, never synced by tailsift.

Thread safety: called on the event loop only; ``fdatasync`` runs on the log's own thread,
which is also the only one that closes segment files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("tailsift.wal")
HEADER = struct.Struct(">IIQI")  # payload length, CRC-32, sequence, fragments
FsyncPolicy = Literal["always", "interval", "never"]


@dataclass(frozen=True, slots=True)
class Entry:
    """Where one record to replay is: read lazily, so a long log is not loaded at once."""

    path: Path
    offset: int
    length: int
    seq: int
    parts: int


class WriteAheadLog:
    """Component: ``open`` (returns what to replay), ``append``, ``checkpoint``, ``close`` (safe twice)."""

    def __init__(self, directory: Path, fsync: FsyncPolicy = "always", segment_bytes: int = 64 << 20,
                 fsync_interval: float = 0.1):  # fmt: skip
        self.directory = directory
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self._fd = -1
        self._segment_size = 0
        self._segments: list[tuple[int, Path]] = []  # (first sequence, path), oldest first
        self._next_seq = 0
        self._checkpoint = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal")
        self._waiters: list[asyncio.Future[None]] = []
        self._syncing = False
        self._timer: asyncio.Task[None] | None = None
        self.bytes_written = 0
        self.syncs = 0

    # --- start: what to replay
    def open(self) -> list[Entry]:
        """Read the checkpoint and index the records at or above it; start a new segment."""
        self.directory.mkdir(parents=True, exist_ok=True)
        mark = self.directory / "checkpoint"
        self._checkpoint = int(mark.read_text()) if mark.exists() else 0
        entries: list[Entry] = []
        last = 0
        for path in sorted(self.directory.glob("*.wal")):
            self._segments.append((int(path.stem), path))
            for entry in self._scan(path):
                last = max(last, entry.seq)
                if entry.seq >= self._checkpoint:
                    entries.append(entry)
        self._next_seq = max(last + 1, self._checkpoint, time.time_ns() // 1000)
        self._rotate()
        return entries

    @staticmethod
    def _scan(path: Path) -> Iterator[Entry]:
        with path.open("rb") as f:
            data = f.read()
        pos = 0
        while pos + HEADER.size <= len(data):
            length, crc, seq, parts = HEADER.unpack_from(data, pos)
            start = pos + HEADER.size
            if start + length > len(data) or zlib.crc32(data[start : start + length]) != crc:
                log.warning("write-ahead log %s: torn record at byte %d (a write cut short by a crash); "
                            "the rest of this segment is ignored", path.name, pos)  # fmt: skip
                return
            yield Entry(path, start, length, seq, parts)
            pos = start + length

    @staticmethod
    def read(entry: Entry) -> bytes:
        with entry.path.open("rb") as f:
            f.seek(entry.offset)
            return f.read(entry.length)

    # --- writing
    def _rotate(self) -> None:
        old = self._fd
        path = self.directory / f"{self._next_seq:020d}.wal"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments.append((self._next_seq, path))
        self._segment_size = 0
        if old >= 0:
            self._thread.submit(_sync_and_close, old)

    def append(self, payload: bytes, parts: int) -> int:
        """Write one record (to the OS, not yet synced) and return its sequence number."""
        if self._segment_size >= self.segment_bytes:
            self._rotate()
        seq = self._next_seq
        self._next_seq += 1
        record = HEADER.pack(len(payload), zlib.crc32(payload), seq, parts) + payload
        os.write(self._fd, record)
        self._segment_size += len(record)
        self.bytes_written += len(record)
        return seq

    async def durable(self) -> None:
        """Return once everything appended so far is as durable as ``fsync`` promises."""
        if self.fsync == "always":
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            if not self._syncing:
                self._syncing = True
                asyncio.get_running_loop().create_task(self._group_commit())
            await future
        elif self.fsync == "interval" and self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._periodic())

    async def _group_commit(self) -> None:
        """One fdatasync for every request that appended while the previous one ran."""
        loop = asyncio.get_running_loop()
        try:
            while self._waiters:
                waiters, self._waiters = self._waiters, []
                try:
                    await loop.run_in_executor(self._thread, os.fdatasync, self._fd)
                    self.syncs += 1
                except OSError as exc:
                    for w in waiters:
                        w.set_exception(exc)
                    continue
                for w in waiters:
                    if not w.done():
                        w.set_result(None)
        finally:
            self._syncing = False

    async def _periodic(self) -> None:
        loop = asyncio.get_running_loop()
        while self._fd >= 0:
            await asyncio.sleep(self.fsync_interval)
            if self._fd >= 0:
                await loop.run_in_executor(self._thread, os.fdatasync, self._fd)
                self.syncs += 1

    # --- truncation
    def checkpoint(self, watermark: int) -> None:
        """Everything below ``watermark`` is settled: remember it, delete whole segments below it."""
        if watermark <= self._checkpoint:
            return
        self._checkpoint = watermark
        tmp = self.directory / "checkpoint.tmp"
        tmp.write_text(str(watermark))
        os.replace(tmp, self.directory / "checkpoint")
        while len(self._segments) > 1 and self._segments[1][0] <= watermark:
            _, path = self._segments.pop(0)
            path.unlink(missing_ok=True)

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for _, p in self._segments if p.exists())

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        fd, self._fd = self._fd, -1
        if fd >= 0:
            await asyncio.get_running_loop().run_in_executor(self._thread, _sync_and_close, fd)
        self._thread.shutdown(wait=False)


def _sync_and_close(fd: int) -> None:
    try:
        os.fdatasync(fd)
    finally:
        os.close(fd)
