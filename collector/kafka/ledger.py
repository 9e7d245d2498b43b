"""The commit watermark: which Kafka offsets may be committed.

A record is *open* from the moment it is consumed until its spans are settled: stored in
ClickHouse, or dropped by the sampler. The offset committed for a partition is the lowest
open one (or the next to consume, when none is open), so after a crash or a rebalance the
next owner replays exactly the records whose outcome is not yet durable. Records settle
out of order (a trace waits for its decision while later ones are dropped at once), which
is why this is more than "the last offset seen". A record holds the fragments of several
traces (envelope version 2), so it is settled once every one of them is.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from processors.fragment import Sourced


class OffsetLedger:
    """Open and settled offsets per partition. Single-threaded, O(1) amortised per record."""

    def __init__(self) -> None:
        self._open: dict[int, deque[int]] = {}  # consumed offsets, in order, not yet passed
        self._settled: dict[int, set[int]] = {}  # of those, the ones already settled
        self._parts: dict[int, dict[int, int]] = {}  # offset -> fragments not yet settled
        self._next: dict[int, int] = {}  # next offset to consume

    def track(self, partition: int, offset: int, parts: int = 1) -> None:
        """A record of ``parts`` fragments was consumed (offsets increase per partition)."""
        self._open.setdefault(partition, deque()).append(offset)
        self._settled.setdefault(partition, set())
        self._parts.setdefault(partition, {})[offset] = parts
        self._next[partition] = offset + 1

    def release(self, items: Iterable[Sourced]) -> None:
        """Settle ``item.count`` fragments of the record ``item.source`` per item (a source of
        None: not from a durable queue), summed per record first: a request's fragments share one."""
        counts: dict[tuple[int, int], int] = {}
        for item in items:
            source = item.source
            if source is not None:
                counts[source] = counts.get(source, 0) + item.count
        for (partition, offset), count in counts.items():
            self.settle(partition, offset, count)

    def settle(self, partition: int, offset: int, count: int = 1) -> None:
        """``count`` fragments of the record are stored or dropped; the record is settled
        with its last one. Unknown partitions (revoked) and offsets are ignored."""
        settled, open_, parts = self._settled.get(partition), self._open.get(partition), self._parts.get(partition)
        if settled is None or not open_ or parts is None or not open_[0] <= offset < self._next[partition]:
            return
        left = parts.get(offset, 1) - count
        if left > 0:
            parts[offset] = left
            return
        parts.pop(offset, None)
        settled.add(offset)

    def watermark(self, partition: int) -> int | None:
        """The offset to commit for ``partition``: everything below it is settled."""
        open_, settled = self._open.get(partition), self._settled.get(partition)
        if open_ is None or settled is None:
            return None
        while open_ and open_[0] in settled:
            settled.discard(open_.popleft())
        return open_[0] if open_ else self._next[partition]

    def partitions(self) -> list[int]:
        return list(self._open)

    def open_records(self) -> int:
        """Records consumed and not yet settled (what a crash right now would replay)."""
        return sum(len(q) - len(self._settled[p]) for p, q in self._open.items())

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: their next owner starts from the committed watermark."""
        for partition in partitions:
            self._open.pop(partition, None)
            self._settled.pop(partition, None)
            self._parts.pop(partition, None)
            self._next.pop(partition, None)
