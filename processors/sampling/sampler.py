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

The buffer and the decision cache are compiled (``processors._wire.TraceBuffer``, Rust): a
waiting trace is a compact entry there, not Python objects, and rules that read only the
error flag and the duration are evaluated there too. Rules on names, services or
attributes, and rate limits, run in Python (:meth:`TailSampler._evaluate`);
tests/test_wire_contract.py holds both ways of deciding to the same answers.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from processors import _wire
from processors.fragment import Fragment, RootInfo, Sourced
from processors.sampling.settings import SamplingSettings
from processors.otlp_values import find_attribute, service_name
from processors.sampling import otep235
from processors.sampling.adaptive import Adaptive
from processors.sampling.rules import Rule, SpanLike, compile_rule, native_conditions

def keep_by_trace_id(trace_id: bytes, probability: float) -> bool:
    """Deterministic coin: every replica and every replay decides a trace id the same way,
    and so does any OTEP 235 sampler before or after us (the trace id's randomness against
    the threshold, :mod:`processors.sampling.otep235`)."""
    return otep235.keeps(otep235.randomness(trace_id), probability)


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
    would_keep: bool = True
    """What the rules said, stored with the trace: False only under ``sampling.dry_run``,
    where a trace the rules drop is stored anyway (``keep`` True, sample rate 1)."""
    recheck: bool = False
    """Set by storage for a replayed record that an earlier process may have stored before it
    crashed: its spans are checked against the database before they are inserted."""


class _View:
    """A buffered trace as the rules read it (the ``TraceView`` protocol): built only for a
    trace whose rules need more than its error flag and duration."""

    __slots__ = ("summary", "fragments", "_parsed")

    def __init__(self, summary: TraceSummary, fragments: list[Fragment]):
        self.summary = summary
        self.fragments = fragments
        self._parsed: list[tuple[str, Any, SpanLike]] | None = None

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


def _key(rule: Rule, view: _View) -> str:
    """An adaptive rule's key for a trace, from its root span (``service``, ``span_name`` or
    an attribute of the span, else of its resource); empty parts while no root is known."""
    root = view.summary.root
    parts = []
    for field in rule.keys:
        if field == "service":
            parts.append(root.service if root else "")
        elif field == "span_name":
            parts.append(root.name if root else "")
        else:
            entry = view.root()
            found, value = (False, None) if entry is None else find_attribute(entry[2].attributes, field)
            if not found and entry is not None:
                found, value = find_attribute(entry[1], field)
            parts.append(str(value) if found else "")
    return " / ".join(parts)


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
    """See the module docstring. ``clock`` returns monotonic nanoseconds (tests pass a fake).

    The buffer and the decision cache live in compiled code (``processors._wire.TraceBuffer``):
    a buffered trace is no Python object, and the rules that read only the error flag and
    the duration (the defaults) are evaluated there. Any other rule runs here
    (:meth:`_evaluate`), trace by trace. Single-threaded: the event loop's only."""

    def __init__(self, settings: SamplingSettings, clock: Callable[[], int] = time.monotonic_ns):
        self.settings = settings
        self.clock = clock
        self._share = 1.0  # this sampler's part of its consumer group's traffic (set_share)
        self._rules = self._compile(settings.rules)
        limits = (settings.max_traces, settings.max_spans_per_trace, settings.max_buffered_spans,
                  settings.max_buffered_bytes, settings.decision_cache_size, settings.dropped_cache_size)  # fmt: skip
        classes = (TraceSummary, Decision)  # what the buffer makes Python objects of (and its own classes)
        self._buffer = _wire.TraceBuffer(self._native(settings.rules), limits, classes, self._evaluate)
        self._buffer.set_dry_run(settings.dry_run)
        self.stats: Counter[str] = Counter()
        self.decisions: Counter[tuple[str, bool]] = Counter()
        self._settled: list[Sourced] = []

    def _compile(self, rules: list[Rule]) -> list[tuple[Rule, Callable[[Any], bool], _RateLimit | None, Adaptive | None]]:
        return [(r, compile_rule(r), _RateLimit(r.rate_limit) if r.rate_limit is not None else None,
                 self._adaptive(r) if r.target is not None else None)
                for r in rules]  # fmt: skip

    def _adaptive(self, rule: Rule) -> Adaptive:
        assert rule.target is not None
        adaptive = Adaptive(rule.target, rule.window or 30 * 10**9, rule.max_keys or 1000, self.clock)
        adaptive.share = self._share
        return adaptive

    @staticmethod
    def _native(rules: list[Rule]) -> list[tuple[list[tuple[Any, ...]] | None, float | None, str]]:
        return [(native_conditions(r), r.keep, r.name) for r in rules]

    def reload(self, settings: SamplingSettings) -> list[str]:
        """Take new rules and waits (a configuration reload) without losing a buffered trace:
        they decide what is buffered from now on. Returns the keys that need a restart to
        change (the buffer's bounds and cache sizes), which keep their old values."""
        fixed = ("max_traces", "max_spans_per_trace", "max_buffered_spans", "max_buffered_bytes",
                 "decision_cache_size", "dropped_cache_size")  # fmt: skip
        ignored = [f"sampling.{k}" for k in fixed if getattr(settings, k) != getattr(self.settings, k)]
        rules = self._compile(settings.rules)  # adaptive ones start from this sampler's share
        self._buffer.set_rules(self._native(settings.rules))
        self._buffer.set_dry_run(settings.dry_run)
        self._rules = rules
        self.settings = settings.model_copy(update={k: getattr(self.settings, k) for k in fixed})
        return ignored

    @property
    def inconsistent_rules(self) -> frozenset[str]:
        """Rules whose keeps are not an OTEP 235 coin (rate limits): their kept spans carry no
        ``th``. A new set after each reload (never changed in place: storage reads it)."""
        return frozenset(r.name for r in self.settings.rules if r.rate_limit is not None)

    @property
    def buffered_traces(self) -> int:
        return int(self._buffer.traces)

    @property
    def buffered_spans(self) -> int:
        return int(self._buffer.spans)

    @property
    def buffered_bytes(self) -> int:
        return int(self._buffer.size)

    @property
    def native_bytes(self) -> int:
        """Memory the buffer holds outside the Python heap (its tables and queues)."""
        return int(self._buffer.native_bytes)

    def add(self, fragments: list[Fragment]) -> list[Decision]:
        """Buffer fragments; returns decisions forced by bounds or late spans."""
        out, late = self._buffer.add(fragments, self.clock())
        out = self._dry(out)
        for fragment in late:
            out.extend(self._late(fragment))
        self._count()
        return out

    def due(self, limit: int | None = None) -> list[Decision]:
        """Decide the traces whose wait or quiet period has passed, at most ``limit`` of them
        (the caller comes back for the rest, so one call never holds the event loop long)."""
        return self._due(limit, True)[0]

    def due_kept(self, limit: int | None = None) -> tuple[list[Decision], int]:
        """:meth:`due`, returning only the decisions to keep, and how many traces were decided.
        The pipeline's way: a dropped trace is counted, settled and cached without becoming
        a Python object, and it is most of the traffic."""
        return self._due(limit, False)

    def _due(self, limit: int | None, dropped: bool) -> tuple[list[Decision], int]:
        s = self.settings
        out, decided = self._buffer.due(self.clock(), s.decision_wait, s.quiet_period,
                                        2**62 if limit is None else limit, dropped)  # fmt: skip
        self._count()
        return self._dry(out), decided

    def flush(self, dropped: bool = True) -> list[Decision]:
        """Decide everything still buffered (shutdown); ``dropped`` False: the kept only."""
        out = self._buffer.flush(dropped)
        self._count()
        return self._dry(out)

    def _dry(self, out: list[Decision]) -> list[Decision]:
        """Under ``dry_run`` every trace is stored: at sample rate 1 (it stands for itself),
        with what the rules said in ``would_keep``. The buffer counted and cached the real
        decision, and handed dropped traces over with their fragments."""
        if not self.settings.dry_run:
            return out
        return [replace(d, keep=True, sample_rate=1.0, would_keep=d.keep) for d in out]

    def take_settled(self) -> list[Sourced]:
        """Fragments (from a durable queue) finished without needing storage since the last call."""
        settled, self._settled = self._buffer.take_settled() + self._settled, []
        return settled

    def forget(self, partitions: set[int]) -> int:
        """Drop, undecided, the buffered traces read from these Kafka partitions (revoked in
        a rebalance). Their records stay uncommitted, so the partition's next owner replays
        and decides them: no trace is decided by two samplers. Returns the traces dropped."""
        gone = self._buffer.forget(set(partitions))
        self._settled = [f for f in self._settled if f.source is None or f.source[0] not in partitions]
        self._count()
        return int(gone)

    def decision_for(self, trace_id: bytes) -> tuple[str, str, float] | None:
        """What this sampler knows of a trace: ("buffered", "", 0) while it waits for a
        decision, ("kept" or "dropped", rule, sample rate) while the decision cache holds
        it, None otherwise. For the query API's answer to a trace it does not have."""
        if self._buffer.is_buffered(trace_id):
            return "buffered", "", 0.0
        decided = self._buffer.decided(trace_id)
        if decided is None:
            return None
        keep, rule, rate, _ = decided
        return ("kept" if keep else "dropped"), rule, rate

    def remember_kept(self, kept: list[tuple[TraceSummary, str, float]]) -> None:
        """Seed the decision cache with traces kept earlier (read back from storage), without
        overriding what this sampler decided itself."""
        for summary, rule, rate in kept:
            tid = summary.trace_id
            if self._buffer.decided(tid) is None and not self._buffer.is_buffered(tid):
                self._buffer.remember(tid, True, rule, rate, summary)

    def _count(self) -> None:
        """Fold the buffer's counts since the last call into ``stats`` and ``decisions``."""
        events, decisions = self._buffer.take_counts()
        for event, count in events:
            self.stats[event] += count
        for rule, keep, count in decisions:
            self.decisions[(rule, keep)] += count

    def _evaluate(self, summary: TraceSummary, fragments: list[Fragment], p_up: float = 1.0,
                  r: int | None = None) -> tuple[bool, int, float]:  # fmt: skip
        """The rules in order, first match wins: (keep, rule index or -1, sample rate).
        ``p_up`` is what upstream kept (OTEP 235 ``th``), ``r`` the trace's randomness: a
        rule keeping p keeps p_up x p overall, and its sample rate is the adjusted count."""
        if r is None:
            r = otep235.randomness(summary.trace_id)
        view = _View(summary, fragments)
        for index, (rule, matches, limiter, adaptive) in enumerate(self._rules):
            try:
                matched = matches(view)
            except Exception:  # noqa: BLE001 - odd span data must not stop decisions
                self.stats["rule_errors"] += 1
                matched = False
            if not matched:
                continue
            if limiter is not None:
                keep, rate = limiter.take()
                return keep, index, rate / p_up
            probability = adaptive.probability(_key(rule, view)) if adaptive is not None else rule.keep or 0.0
            keep = probability >= 1.0 or otep235.keeps(r, p_up * probability)
            return keep, index, (1.0 / p_up) * (1.0 / probability) if probability > 0 else 0.0
        return False, -1, 1.0

    def set_share(self, share: float) -> None:
        """This sampler's part of its consumer group's traffic (assigned partitions over all):
        adaptive rules keep their target times it, so the group keeps about the target."""
        self._share = share
        for *_, adaptive in self._rules:
            if adaptive is not None:
                adaptive.share = share

    def _settle(self, fragments: list[Fragment]) -> None:
        self._settled.extend(f for f in fragments if f.source is not None)

    def _late(self, fragment: Fragment) -> list[Decision]:
        decided = self._buffer.decided(fragment.trace_id)
        if decided is None:  # forgotten since (the cache is bounded): a new trace again
            out, _ = self._buffer.add([fragment], self.clock())
            return list(out)
        keep, rule, rate, summary = decided
        if not keep and self.settings.dry_run:  # stored anyway; the compact cache kept no summary
            self.stats["late_spans_kept"] += fragment.span_count
            alone = TraceSummary(fragment.trace_id)
            alone.absorb(fragment)
            return [Decision(alone, True, rule, 1.0, [fragment], late=True, would_keep=False)]
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
        return [Decision(replace(summary), True, rule, 1.0 if self.settings.dry_run else rate, [fragment], late=True)]
