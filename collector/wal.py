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
record is below the checkpoint is deleted (renamed ``.deleted`` at once, freed by the syncer
thread). Replay stops a segment at the first torn or
corrupt record: a crash in the middle of a write leaves one, and that request was never
acknowledged.

Durability (``fsync``):
- ``always`` (default): the answer waits for ``fdatasync``; concurrent requests share one
  (group commit). Survives a power loss.
- ``interval``: written to the OS before the answer, synced every ``fsync_interval``.
  Survives a crash of the process (SIGKILL, OOM kill), not of the machine.
- ``never``: written to the OS before the answer, never synced by tailsift.

Thread safety: called on the event loop only. ``fdatasync`` runs on a native thread of the
compiled extension (``processors._wire.Syncer``), in the order asked, which is also the only
one that closes segment files once they are full; it needs no GIL, so a busy event loop does
not delay a sync, and it reports finished syncs through a pipe the loop watches. The futures
of pending syncs are touched on the event loop only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from processors._wire import Syncer, crc32
from processors.spanmetrics import LATENCY_BUCKETS, Histogram

log = logging.getLogger("tailsift.wal")
HEADER = struct.Struct(">IIQI")  # payload length, CRC-32, sequence, fragments
FsyncPolicy = Literal["always", "interval", "never"]
TRASH = ".deleted"
"""Suffix of a segment below the checkpoint that is being deleted."""


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
        self._syncer: Syncer | None = None
        self._notify = (-1, -1)  # the pipe the syncer wakes the event loop through
        self._watching: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, list[asyncio.Future[None]]] = {}  # by sync ticket
        self._committing: int | None = None  # the ticket of the group commit under way
        self._waiters: list[asyncio.Future[None]] = []  # for the next group commit
        self._timer: asyncio.Task[None] | None = None
        self.bytes_written = 0
        self.syncs = 0
        self.sync_latency = Histogram.with_bounds(LATENCY_BUCKETS)
        """Each group commit, from asking for its fdatasync to the event loop seeing it done."""
        self._commit_started = 0.0

    # --- start: what to replay
    def open(self) -> list[Entry]:
        """Read the checkpoint and index the records at or above it; start a new segment."""
        self.directory.mkdir(parents=True, exist_ok=True)
        mark = self.directory / "checkpoint"
        self._checkpoint = int(mark.read_text()) if mark.exists() else 0
        entries: list[Entry] = []
        last = 0
        for trash in self.directory.glob(f"*{TRASH}"):
            trash.unlink(missing_ok=True)  # left by a crash before the syncer deleted it
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
            if start + length > len(data) or crc32(data[start : start + length]) != crc:
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
            self._request(fd=old, close=True)  # before any sync of the new segment

    def append(self, payload: bytes, parts: int) -> int:
        """Write one record (to the OS, not yet synced) and return its sequence number."""
        if self._segment_size >= self.segment_bytes:
            self._rotate()
        seq = self._next_seq
        self._next_seq += 1
        header = HEADER.pack(len(payload), crc32(payload), seq, parts)
        os.writev(self._fd, (header, payload))  # no copy of the payload to join them
        self._segment_size += len(header) + len(payload)
        self.bytes_written += len(header) + len(payload)
        return seq

    async def durable(self) -> None:
        """Return once everything appended so far is as durable as ``fsync`` promises."""
        if self.fsync == "always":
            future = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            if self._committing is None:
                self._commit()
            await future
        elif self.fsync == "interval" and self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._periodic())

    def _commit(self) -> None:
        """Group commit: one fdatasync for every request that appended while the previous one
        ran. Its waiters are answered by :meth:`_on_synced` itself, which starts the next."""
        waiters, self._waiters = self._waiters, []
        self._commit_started = time.perf_counter()
        self._committing = self._request(fd=self._fd)
        self._watch()
        self._pending[self._committing] = waiters

    async def _periodic(self) -> None:
        while self._fd >= 0:
            await asyncio.sleep(self.fsync_interval)
            if self._fd >= 0:
                await self._sync(self._fd)
                self.syncs += 1

    # --- syncing (see the module docstring)
    def _request(self, *, fd: int, close: bool = False) -> int:
        """Ask the syncer to sync ``fd`` (then close it), after everything asked before."""
        if self._syncer is None:
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            self._notify, self._syncer = (read, write), Syncer(write)
        return self._syncer.request(fd, close)

    def _watch(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._watching is not loop:
            loop.add_reader(self._notify[0], self._on_synced)
            self._watching = loop
        return loop

    def _sync(self, fd: int, close: bool = False) -> asyncio.Future[None]:
        """:meth:`_request`, with a future that is done when the sync is (OSError if it failed)."""
        ticket = self._request(fd=fd, close=close)
        future = self._watch().create_future()
        self._pending[ticket] = [future]
        return future

    def _on_synced(self) -> None:
        """On the event loop: answer the waiters of every finished sync."""
        try:
            os.read(self._notify[0], 4096)
        except BlockingIOError:
            pass
        assert self._syncer is not None
        for ticket, errno in self._syncer.take_finished():
            if ticket == self._committing:
                self._committing = None
                self.sync_latency.observe(time.perf_counter() - self._commit_started)
                if not errno:
                    self.syncs += 1
            for future in self._pending.pop(ticket, []):
                if future.done():
                    continue
                if errno:
                    future.set_exception(OSError(errno, os.strerror(errno)))
                else:
                    future.set_result(None)
        if self._waiters and self._committing is None:
            self._commit()

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
            self._discard(path)

    def _discard(self, path: Path) -> None:
        """Delete a segment without holding the event loop: renamed at once (it is no longer a
        segment), its blocks freed by the syncer's thread (unlinking 64 MiB took ~25 ms)."""
        trash = path.with_suffix(TRASH)
        try:
            os.replace(path, trash)
        except FileNotFoundError:
            return
        if self._syncer is None:
            trash.unlink(missing_ok=True)
        else:
            self._syncer.remove(str(trash))

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for _, p in self._segments if p.exists())

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        fd, self._fd = self._fd, -1
        try:
            if fd >= 0:
                await self._sync(fd, close=True)
        finally:
            self._stop_syncer()

    def _stop_syncer(self) -> None:
        """Finish the syncs asked for, end the thread, close the pipe. Safe twice."""
        if self._syncer is None:
            return
        self._syncer.stop()
        self._syncer = None
        if self._watching is not None and not self._watching.is_closed():
            self._watching.remove_reader(self._notify[0])
        self._watching = None
        for end in self._notify:
            os.close(end)
        self._notify = (-1, -1)
