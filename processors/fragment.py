"""The unit that travels from the receivers to storage: a *fragment*, the spans of one trace
from one request, as serialized OTLP ``TracesData`` bytes plus the few facts the sampler
decides on (see :mod:`collector.otlp`, which cuts requests into fragments).

It lives here, below both packages, so that processors (the sampler) and the collector
(queues, storage) share it while ``processors/`` never imports ``collector/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["FRAGMENT_OVERHEAD", "Fragment", "RootInfo", "Settled", "Sourced"]
FRAGMENT_OVERHEAD = 64
"""Bytes a fragment costs in a queue besides its payload."""


@dataclass(slots=True)
class RootInfo:
    """The root span of a trace (the one with no parent), as the sampler sees it."""

    service: str
    name: str
    start_ns: int
    end_ns: int


@dataclass(slots=True)
class Fragment:
    """The spans of one trace from one request. See the module docstring."""

    trace_id: bytes
    payload: bytes
    span_count: int
    start_ns: int
    end_ns: int
    has_error: bool
    root: RootInfo | None
    received_ns: int = field(default_factory=time.time_ns)
    source: tuple[int, int] | None = None
    """(partition, offset) of the Kafka record it came from; None from the in-process queue.
    The Kafka queue uses it to commit only what is settled (stored or dropped)."""

    @property
    def size(self) -> int:
        """Bytes this fragment costs in a queue: the payload dominates."""
        return len(self.payload) + FRAGMENT_OVERHEAD


class Settled(NamedTuple):
    """A fragment that is done with (its trace dropped, or stored before), as the queue needs
    it to commit past its record: the sampler's buffer keeps no ``Fragment`` object, so it
    reports these instead."""

    trace_id: bytes
    source: tuple[int, int]


Sourced = Fragment | Settled
"""What a queue's ``release`` takes: anything with the ``source`` of its record."""
