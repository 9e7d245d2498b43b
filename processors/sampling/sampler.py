"""The tail sampler: buffer spans by trace, decide each whole trace once, remember it.

This is a stateful transform (vector's "task transform"): it owns the buffer and is
driven by two calls, ``add`` (new fragments) and ``due`` (the clock moved). It performs
no I/O, so the pipeline decides where kept traces go and tests can drive the clock.

A trace is decided when the first of these happens:
- ``decision_wait`` has passed since its first span arrived;
- its root span has arrived and ``quiet_period`` passed with no new span (early decision);
- a memory bound is hit (``max_traces``, ``max_buffered_spans``, ``max_buffered_bytes``: the
  oldest trace is decided now; ``max_spans_per_trace``: that trace is decided now). Each is
  counted in ``stats``. Deciding early never drops anything a rule would keep.

Spans arriving after their trace was decided follow the remembered decision (a bounded
decision cache), so a kept trace is stored whole and a dropped one stays dropped. The
pipeline seeds that cache with recently kept traces from storage (``remember_kept``), so
late spans still join their trace after a restart or a Kafka rebalance.

With the Kafka queue every fragment carries its record position. Fragments the sampler is
done with and that need no storage (dropped, or replays of spans already stored) are
reported by ``take_settled`` so the queue can commit past them; kept ones are settled by
storage.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from processors import _wire
from processors.fragment import FRAGMENT_OVERHEAD, Fragment, RootInfo
from processors.sampling.settings import SamplingSettings
from processors.otlp_values import service_name
from processors.sampling.rules import Rule, SpanLike, compile_rule

_HASH_SPACE = float(2**64)


def keep_by_trace_id(trace_id: bytes, probability: float) -> bool:
    """Deterministic coin: every replica and every replay decides a trace id the same way."""
    if probability >= 1.0:
        return True
    if probability <= 0.0:
        return False
    return _wire.trace_hash(trace_id) < probability * _HASH_SPACE  # BLAKE2b, 8-byte digest, big-endian


@dataclass(slots=True)
class TraceSummary:
    """Per-trace facts stored in the summary table; updated if late spans arrive."""

    trace_id: bytes
    span_count: int = 0
    start_ns: int = 2**63
    end_ns: int = 0
    has_error: bool = False
    root: RootInfo | None = None
    source_partition: int = -1
    source_offset: int = -1
    """Newest Kafka record absorbed (-1: none). Stored with the summary, it tells a replayed
    record (offset <= this, already stored) from a genuinely late one after a restart."""

    def absorb(self, fragment: Fragment) -> None:
        if fragment.source is not None:
            self.source_partition, offset = fragment.source
            self.source_offset = max(self.source_offset, offset)
        self.span_count += fragment.span_count
        self.start_ns = min(self.start_ns, fragment.start_ns)
        self.end_ns = max(self.end_ns, fragment.end_ns)
        self.has_error = self.has_error or fragment.has_error
        if fragment.root is not None:
            self.root = fragment.root

    @property
    def duration_ns(self) -> int:
        """Root start to last end (or first start to last end while no root is known)."""
        begin = self.root.start_ns if self.root is not None else self.start_ns
        return max(0, self.end_ns - begin)


@dataclass(slots=True)
class Decision:
    """The verdict on a trace, with the fragments to store when ``keep`` is true."""

    summary: TraceSummary
    keep: bool
    rule: str
    sample_rate: float
    fragments: list[Fragment]
    late: bool = False
    recheck: bool = False
    """Set by storage for a replayed record that an earlier process may have stored before it
    crashed: its spans are checked against the database before they are inserted."""


@dataclass(slots=True)
class _Buffered:
    summary: TraceSummary
    first_seen: int
    last_seen: int
    fragments: list[Fragment] = field(default_factory=list)
    _parsed: list[tuple[str, Any, SpanLike]] | None = None

    # --- the TraceView protocol the rules read
    @property
    def has_error(self) -> bool:
        return self.summary.has_error

    @property
    def duration_ns(self) -> int:
        return self.summary.duration_ns

    def spans(self) -> Iterator[tuple[str, Any, SpanLike]]:
        if self._parsed is None:
            self._parsed = []
            for fragment in self.fragments:
                data = TracesData.FromString(fragment.payload)
                for rs in data.resource_spans:
                    service = service_name(rs.resource.attributes)
                    for ss in rs.scope_spans:
                        self._parsed.extend((service, rs.resource.attributes, s) for s in ss.spans)
        return iter(self._parsed)

    def root(self) -> tuple[str, Any, SpanLike] | None:
        return next((entry for entry in self.spans() if not entry[2].parent_span_id), None)  # type: ignore[attr-defined]


class _RateLimit:
    """Token bucket for ``rate_limit`` rules; also estimates the sample rate it applies."""

    def __init__(self, per_second: float):
        self.rate = per_second
        self.tokens = per_second
        self.updated = time.monotonic()
        self.window_start = self.updated
        self.matched = self.kept = 0
        self.last_ratio = 1.0

    def take(self) -> tuple[bool, float]:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if now - self.window_start >= 1.0:
            self.last_ratio = max(1.0, self.matched / max(1, self.kept))
            self.window_start, self.matched, self.kept = now, 0, 0
        self.matched += 1
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.kept += 1
            return True, self.last_ratio
        return False, self.last_ratio


class TailSampler:
    """See the module docstring. ``clock`` returns monotonic nanoseconds (tests pass a fake)."""

    def __init__(self, settings: SamplingSettings, clock: Callable[[], int] = time.monotonic_ns):
        self.settings = settings
        self.clock = clock
        self._rules: list[tuple[Rule, Callable[[Any], bool], _RateLimit | None]] = [
            (r, compile_rule(r), _RateLimit(r.rate_limit) if r.rate_limit is not None else None)
            for r in settings.rules
        ]
        self._buffer: OrderedDict[bytes, _Buffered] = OrderedDict()  # by first arrival
        self._rooted: OrderedDict[bytes, None] = OrderedDict()  # root seen, by last arrival
        self._decided: OrderedDict[bytes, tuple[bool, str, float, TraceSummary]] = OrderedDict()
        self.buffered_spans = 0
        self.buffered_bytes = 0
        self.stats: Counter[str] = Counter()
        self.decisions: Counter[tuple[str, bool]] = Counter()
        self._settled: list[Fragment] = []

    @property
    def buffered_traces(self) -> int:
        return len(self._buffer)

    def add(self, fragments: list[Fragment]) -> list[Decision]:
        """Buffer fragments; returns decisions forced by bounds or late spans."""
        out: list[Decision] = []
        now = self.clock()
        limits = self.settings
        buffer, decided, rooted = self._buffer, self._decided, self._rooted
        received = 0
        for fragment in fragments:
            trace_id, spans = fragment.trace_id, fragment.span_count
            received += spans
            if trace_id in decided:
                out.extend(self._late(fragment))
                continue
            entry = buffer.get(trace_id)
            if entry is None:
                if len(buffer) >= limits.max_traces:
                    self.stats["decided_early_max_traces"] += 1
                    out.append(self._decide_oldest())
                entry = buffer[trace_id] = _Buffered(TraceSummary(trace_id), first_seen=now, last_seen=now)
            entry.fragments.append(fragment)
            summary = entry.summary
            summary.absorb(fragment)
            entry.last_seen = now
            entry._parsed = None
            self.buffered_spans += spans
            self.buffered_bytes += len(fragment.payload) + FRAGMENT_OVERHEAD
            if summary.root is not None:
                rooted[trace_id] = None
                rooted.move_to_end(trace_id)
            if summary.span_count >= limits.max_spans_per_trace:
                self.stats["decided_early_max_spans_per_trace"] += 1
                out.append(self._decide(trace_id))
            while self.buffered_spans > limits.max_buffered_spans and buffer:
                self.stats["decided_early_max_buffered_spans"] += 1
                out.append(self._decide_oldest())
            while self.buffered_bytes > limits.max_buffered_bytes and buffer:
                self.stats["decided_early_max_buffered_bytes"] += 1
                out.append(self._decide_oldest())
        self.stats["spans_received"] += received
        return out

    def due(self, limit: int | None = None) -> list[Decision]:
        """Decide the traces whose wait or quiet period has passed, at most ``limit`` of them
        (the caller comes back for the rest, so one call never holds the event loop long)."""
        now = self.clock()
        out: list[Decision] = []
        wait, quiet = self.settings.decision_wait, self.settings.quiet_period
        limit = limit if limit is not None else 2**62
        buffer, rooted, decide = self._buffer, self._rooted, self._decide
        while rooted and len(out) < limit:
            trace_id = next(iter(rooted))
            if buffer[trace_id].last_seen + quiet > now:
                break
            out.append(decide(trace_id))
        quieted = len(out)
        while buffer and len(out) < limit:
            trace_id, entry = next(iter(buffer.items()))
            if entry.first_seen + wait > now:
                break
            out.append(decide(trace_id))
        if out:
            self.stats["decided_root_quiet"] += quieted
            self.stats["decided_wait_elapsed"] += len(out) - quieted
        return out

    def flush(self) -> list[Decision]:
        """Decide everything still buffered (shutdown)."""
        self.stats["decided_on_shutdown"] += len(self._buffer)
        return [self._decide(tid) for tid in list(self._buffer)]

    def take_settled(self) -> list[Fragment]:
        """Fragments (from Kafka) finished without needing storage since the last call."""
        settled, self._settled = self._settled, []
        return settled

    def forget(self, partitions: set[int]) -> int:
        """Drop, undecided, the buffered traces read from these Kafka partitions (revoked in
        a rebalance). Their records stay uncommitted, so the partition's next owner replays
        and decides them: no trace is decided by two samplers. Returns the traces dropped."""
        gone = [tid for tid, entry in self._buffer.items()
                if any(f.source is not None and f.source[0] in partitions for f in entry.fragments)]  # fmt: skip
        for trace_id in gone:
            entry = self._buffer.pop(trace_id)
            self._rooted.pop(trace_id, None)
            self.buffered_spans -= entry.summary.span_count
            self.buffered_bytes -= sum(f.size for f in entry.fragments)
        self._settled = [f for f in self._settled if f.source is None or f.source[0] not in partitions]
        self.stats["forgotten_on_rebalance"] += len(gone)
        return len(gone)

    def decision_for(self, trace_id: bytes) -> tuple[str, str, float] | None:
        """What this sampler knows of a trace: ("buffered", "", 0) while it waits for a
        decision, ("kept" or "dropped", rule, sample rate) while the decision cache holds
        it, None otherwise. For the query API's answer to a trace it does not have."""
        if trace_id in self._buffer:
            return "buffered", "", 0.0
        decided = self._decided.get(trace_id)
        if decided is None:
            return None
        keep, rule, rate, _ = decided
        return ("kept" if keep else "dropped"), rule, rate

    def remember_kept(self, kept: list[tuple[TraceSummary, str, float]]) -> None:
        """Seed the decision cache with traces kept earlier (read back from storage), without
        overriding what this sampler decided itself."""
        for summary, rule, rate in kept:
            if summary.trace_id not in self._decided and summary.trace_id not in self._buffer:
                self._remember(summary.trace_id, True, rule, rate, summary)

    def _settle(self, fragments: list[Fragment]) -> None:
        self._settled.extend(f for f in fragments if f.source is not None)

    def _decide_oldest(self) -> Decision:
        return self._decide(next(iter(self._buffer)))

    def _decide(self, trace_id: bytes) -> Decision:
        entry = self._buffer.pop(trace_id)
        self._rooted.pop(trace_id, None)
        fragments = entry.fragments
        self.buffered_spans -= entry.summary.span_count
        self.buffered_bytes -= sum([len(f.payload) for f in fragments]) + FRAGMENT_OVERHEAD * len(fragments)
        keep, rule_name, rate = False, "", 1.0
        for rule, matches, limiter in self._rules:
            try:
                matched = matches(entry)
            except Exception:  # noqa: BLE001 - odd span data must not stop decisions
                self.stats["rule_errors"] += 1
                matched = False
            if not matched:
                continue
            rule_name = rule.name
            if limiter is not None:
                keep, rate = limiter.take()
            else:
                probability = rule.keep or 0.0
                keep = keep_by_trace_id(trace_id, probability)
                rate = 1.0 / probability if probability > 0 else 0.0
            break
        self.decisions[(rule_name, keep)] += 1
        self._remember(trace_id, keep, rule_name, rate, entry.summary)
        if keep:
            return Decision(entry.summary, True, rule_name, rate, fragments)
        for f in fragments:
            if f.source is not None:
                self._settled.append(f)
        return Decision(entry.summary, False, rule_name, rate, [])

    def _remember(self, trace_id: bytes, keep: bool, rule: str, rate: float, summary: TraceSummary) -> None:
        if self.settings.decision_cache_size == 0:
            return
        # A kept trace's summary grows with late spans, so the cache holds a copy; a dropped
        # trace's summary is never touched again (and copying it costs ~3 µs per trace).
        self._decided[trace_id] = (keep, rule, rate, replace(summary) if keep else summary)
        if len(self._decided) > self.settings.decision_cache_size:
            self._decided.popitem(last=False)

    def _late(self, fragment: Fragment) -> list[Decision]:
        keep, rule, rate, summary = self._decided[fragment.trace_id]
        if not keep:
            self.stats["late_spans_dropped"] += fragment.span_count
            self._settle([fragment])
            return []
        if (fragment.source is not None and fragment.source[0] == summary.source_partition
                and fragment.source[1] <= summary.source_offset):  # fmt: skip
            self.stats["replayed_spans_skipped"] += fragment.span_count  # stored before a restart
            self._settle([fragment])
            return []
        self.stats["late_spans_kept"] += fragment.span_count
        summary.absorb(fragment)
        return [Decision(replace(summary), True, rule, rate, [fragment], late=True)]
