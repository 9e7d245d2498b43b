"""The tail sampler on its own, with a fake clock: rules, timing, bounds, the decision cache."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.otlp import split_by_trace
from processors.fragment import Fragment
from processors.otlp_values import add_attributes
from processors.sampling.sampler import TailSampler, keep_by_trace_id
from processors.sampling.settings import SamplingSettings

S = 1_000_000_000


def rid(n: int) -> int:
    """A random-looking trace id for ``n``: the coin reads a trace id's last 56 bits (OTEP
    235), which small numbers leave at zero."""
    return int.from_bytes(hashlib.blake2b(n.to_bytes(8, "big"), digest_size=16).digest(), "big") or 1


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def fragment(trace: int, span: int, parent: int | None = None, *, error: bool = False, duration_s: float = 0.1,
             service: str = "api", attrs: dict[str, Any] | None = None, name: str = "op") -> Fragment:  # fmt: skip
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add(key="service.name")
    kv.value.string_value = service
    s = rs.scope_spans.add().spans.add(
        trace_id=trace.to_bytes(16, "big"), span_id=span.to_bytes(8, "big"), name=name,
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        start_time_unix_nano=10 * S, end_time_unix_nano=10 * S + int(duration_s * S),
    )  # fmt: skip
    s.status.code = 2 if error else 0
    add_attributes(s.attributes, attrs or {})
    (frag,) = split_by_trace(req).fragments
    return frag


def sampler(rules: list[dict[str, Any]] | None = None, **limits: Any) -> tuple[TailSampler, Clock]:
    clock = Clock()
    settings = SamplingSettings.model_validate(
        {"decision_wait": "10s", "quiet_period": "1s", "rules": rules or [{"name": "all", "keep": "100%"}], **limits}
    )
    return TailSampler(settings, clock=clock), clock


def test_waits_for_the_decision_wait_without_a_root() -> None:
    s, clock = sampler()
    assert s.add([fragment(1, 2, parent=9)]) == []
    clock.now = 9 * S
    assert s.due() == []
    clock.now = 10 * S
    (d,) = s.due()
    assert d.keep and d.summary.span_count == 1 and s.stats["decided_wait_elapsed"] == 1


def test_decides_early_once_the_root_is_in_and_quiet() -> None:
    s, clock = sampler()
    s.add([fragment(1, 2, parent=1), fragment(1, 1)])
    clock.now = S // 2
    assert s.due() == []
    s.add([fragment(1, 3, parent=1)])  # a new span restarts the quiet period
    clock.now = S + S // 4
    assert s.due() == []
    clock.now = 2 * S
    (d,) = s.due()
    assert d.summary.span_count == 3 and len(d.fragments) == 3 and s.stats["decided_root_quiet"] == 1


@pytest.mark.parametrize(
    ("rules", "frag", "expected_rule"),
    [
        ([{"name": "e", "when": [{"status": "error"}], "keep": 1.0}], dict(error=True), "e"),
        ([{"name": "slow", "when": [{"duration": ">= 2s"}], "keep": 1.0}], dict(duration_s=3), "slow"),
        ([{"name": "svc", "when": [{"service": "billing"}], "keep": 1.0}], dict(service="billing"), "svc"),
        ([{"name": "re", "when": [{"span_name": "^GET ", "op": "matches"}], "keep": 1.0}], dict(name="GET /x"), "re"),
        ([{"name": "tok", "when": [{"attribute": "gen_ai.usage.output_tokens", "op": ">", "value": 4000}],
           "keep": 1.0}], dict(attrs={"gen_ai.usage.output_tokens": 5000}), "tok"),
        ([{"name": "tok", "when": [{"attribute": "gen_ai.usage.output_tokens", "op": ">", "value": 4000}],
           "keep": 1.0}], dict(attrs={"gen_ai.usage.output_tokens": 10}), "rest"),
        ([{"name": "in", "when": [{"attribute": "tier", "op": "in", "value": ["gold", "vip"]}], "keep": 1.0}],
         dict(attrs={"tier": "vip"}), "in"),
        ([{"name": "ex", "when": [{"attribute": "tier", "op": "not_exists"}], "keep": 1.0}], dict(), "ex"),
        ([{"name": "both", "when": [{"status": "error"}, {"service": "api"}], "keep": 1.0}],
         dict(error=True, service="web"), "rest"),
    ],
)  # fmt: skip
def test_rules_first_match_wins(rules: list[dict[str, Any]], frag: dict[str, Any], expected_rule: str) -> None:
    s, _ = sampler([*rules, {"name": "rest", "keep": "0%"}])
    s.add([fragment(1, 1, **frag)])
    (d,) = s.flush()
    assert d.rule == expected_rule
    assert d.keep == (expected_rule != "rest")


def test_probabilistic_keep_is_deterministic_and_close_to_rate() -> None:
    ids = [rid(i).to_bytes(16, "big") for i in range(1, 20001)]
    kept = sum(keep_by_trace_id(t, 0.05) for t in ids)
    assert 800 < kept < 1200
    assert [keep_by_trace_id(t, 0.05) for t in ids[:500]] == [keep_by_trace_id(t, 0.05) for t in ids[:500]]
    s, _ = sampler([{"name": "d", "keep": "5%"}])
    s.add([fragment(rid(i), 1) for i in range(1, 2001)])
    decisions = s.flush()
    assert {d.sample_rate for d in decisions} == {20.0}
    assert [d.keep for d in decisions] == [keep_by_trace_id(rid(i).to_bytes(16, "big"), 0.05) for i in range(1, 2001)]
    assert 60 < sum(d.keep for d in decisions) < 140


def test_max_traces_decides_the_oldest_and_counts_it() -> None:
    s, _ = sampler(max_traces=3)
    out = s.add([fragment(i, 1, parent=7) for i in range(1, 6)])
    assert [d.summary.trace_id[-1] for d in out] == [1, 2]
    assert s.buffered_traces == 3 and s.stats["decided_early_max_traces"] == 2


def test_span_limits_decide_early_and_later_spans_follow() -> None:
    s, _ = sampler(max_spans_per_trace=3, max_buffered_spans=100)
    out = s.add([fragment(1, i, parent=99) for i in range(1, 5)])
    assert len(out) == 2  # decided at the 3rd span; the 4th is a late span of a kept trace
    assert out[0].summary.span_count == 3 and out[1].late and s.stats["late_spans_kept"] == 1
    s2, _ = sampler(max_buffered_spans=4)
    out2 = s2.add([fragment(t, 1, parent=99) for t in range(1, 7)])
    assert len(out2) == 2 and s2.buffered_spans == 4 and s2.stats["decided_early_max_buffered_spans"] == 2


def test_late_spans_follow_the_decision_and_update_the_summary() -> None:
    s, clock = sampler([{"name": "e", "when": [{"status": "error"}], "keep": 1.0}, {"name": "r", "keep": 0.0}])
    s.add([fragment(1, 1, error=True), fragment(2, 1)])
    clock.now = 5 * S
    kept, dropped = sorted(s.due(), key=lambda d: not d.keep)
    assert kept.keep and not dropped.keep
    (late,) = s.add([fragment(1, 2, parent=1), fragment(2, 2, parent=1)])
    assert late.late and late.rule == "e" and late.summary.span_count == 2
    assert s.stats["late_spans_dropped"] == 1


def test_rate_limit_rule_caps_kept_traces() -> None:
    s, _ = sampler([{"name": "rl", "rate_limit": "5/s"}])
    s.add([fragment(i, 1) for i in range(1, 101)])
    kept = [d for d in s.flush() if d.keep]
    assert 5 <= len(kept) <= 6


@pytest.mark.parametrize("rules", [
    [{"name": "e", "when": [{"status": "error"}], "keep": 1.0}, {"name": "rest", "keep": 0.3}],  # decided natively
    [{"name": "svc", "when": [{"service": "api"}], "keep": 0.5}, {"name": "rest", "keep": 0.0}],  # in Python
])  # fmt: skip
def test_kept_only_decisions_are_the_kept_part_of_all_decisions(rules: list[dict[str, Any]]) -> None:
    """The pipeline asks for kept decisions only (``due_kept``, ``flush(dropped=False)``):
    the same traces kept, with the same summaries, and the same counts, cache and settling
    as a sampler that builds every decision."""
    every, clock_a = sampler(rules)
    kept_only, clock_b = sampler(rules)
    frags = [fragment(rid(t), 1, parent=None if t % 3 else 9, error=t % 7 == 0, service="api" if t % 2 else "web")
             for t in range(1, 301)]  # fmt: skip
    for f in frags:
        f.source = (0, f.trace_id[-1])
    for s in (every, kept_only):
        s.add(frags)
    clock_a.now = clock_b.now = 2 * S  # the rooted ones are due, the others wait
    all_due = every.due(limit=120)
    kept_due, decided = kept_only.due_kept(limit=120)
    assert decided == len(all_due) == 120
    clock_a.now = clock_b.now = 30 * S
    all_due += every.due() + every.flush()
    kept_due += kept_only.due_kept()[0] + kept_only.flush(dropped=False)

    def seen(decisions: list[Any]) -> list[tuple[Any, ...]]:
        return [(d.summary, d.rule, d.sample_rate, [f.trace_id for f in d.fragments]) for d in decisions]

    assert seen(kept_due) == seen([d for d in all_due if d.keep]) and 0 < len(kept_due) < len(all_due)
    assert every.stats == kept_only.stats and every.decisions == kept_only.decisions
    assert [f.trace_id for f in every.take_settled()] == [f.trace_id for f in kept_only.take_settled()]
    for f in frags:
        assert every.decision_for(f.trace_id) == kept_only.decision_for(f.trace_id)


@pytest.mark.parametrize("rules", [
    [{"name": "errors", "when": [{"status": "error"}], "keep": "100%"}, {"name": "health", "keep": "0%"}],
    [{"name": "errors", "when": [{"attribute": "http.route", "op": "!=", "value": "/health"}], "keep": "100%"},
     {"name": "health", "keep": "0%"}],  # decided by the Python rules
])  # fmt: skip
def test_dropped_decisions_never_push_kept_ones_out_of_the_cache(rules: list[dict[str, Any]]) -> None:
    """Kept and dropped decisions are cached apart: a flood of dropped traces (most of the
    traffic) leaves the kept ones remembered, so their late spans are still stored; and a
    ``keep: 0%`` rule drops, counted under its name."""
    s, clock = sampler(rules, decision_cache_size=5, dropped_cache_size=50)
    kept_ids = list(range(1, 6))
    s.add([fragment(t, 1, error=True, attrs={"http.route": "/chat"}) for t in kept_ids])
    s.add([fragment(t, 1, attrs={"http.route": "/health"}) for t in range(100, 400)])
    clock.now = 2 * S
    decided = s.due()
    assert sorted(int.from_bytes(d.summary.trace_id, "big") for d in decided if d.keep) == kept_ids
    assert s.decisions[("errors", True)] == 5 and s.decisions[("health", False)] == 300
    for t in kept_ids:
        assert s.decision_for(t.to_bytes(16, "big")) == ("kept", "errors", 1.0)
        (late,) = s.add([fragment(t, 7, parent=1)])
        assert late.keep and late.late and late.rule == "errors"
    assert s.decision_for((399).to_bytes(16, "big")) == ("dropped", "health", 0.0)  # the newest 50 dropped
    assert s.decision_for((100).to_bytes(16, "big")) is None  # the oldest dropped are forgotten
    assert s.add([fragment(399, 7, parent=1)]) == [] and s.stats["late_spans_dropped"] == 1


def test_dropped_fragments_of_one_record_are_settled_together_and_settle_it_exactly() -> None:
    """The buffer reports the dropped fragments of one record as one ``Settled`` with their
    count (not one object per trace); the ledger settles a record only once all of its
    fragments are counted, whether they come as one run or several."""
    from collector.kafka.ledger import OffsetLedger

    s, clock = sampler([{"name": "none", "keep": "0%"}])
    records = [(0, 7)] * 3 + [(0, 8)] * 2 + [(0, 7)] + [(0, 9)]  # record 7 holds 4, record 8 two, record 9 one
    frags = [fragment(rid(t), 1) for t in range(1, len(records) + 1)]
    for f, source in zip(frags, records, strict=True):
        f.source = source
    s.add(frags[:-1])  # record 9's fragment is still waiting
    clock.now = 30 * S
    assert all(not d.keep for d in s.due())
    settled = s.take_settled()
    assert len(settled) == 3  # runs: 7 x3, 8 x2, 7 x1
    assert sorted((x.source, x.count) for x in settled) == [((0, 7), 1), ((0, 7), 3), ((0, 8), 2)]
    ledger = OffsetLedger()
    for offset, parts in ((7, 4), (8, 2), (9, 1)):
        ledger.track(0, offset, parts)
    ledger.release(settled[:1])  # three of record 7's four: still open
    assert ledger.watermark(0) == 7
    ledger.release(settled[1:])
    assert ledger.watermark(0) == 9  # 7 and 8 settled; 9 is not
    s.add(frags[-1:])
    clock.now = 60 * S
    s.due()
    ledger.release(s.take_settled())
    assert ledger.watermark(0) == 10
