"""OTEP 235 consistent sampling: the coin is the trace's randomness against a threshold,
kept spans carry ``ot=th:`` in their TraceState, and an incoming ``th`` is respected."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, Status, StatusCode, TraceFlags, TraceState

from processors.sampling import otep235
from processors.sampling.sampler import keep_by_trace_id
from tests.support.collector import Collector
from tests.support.otel import Sender
from tests.support.storage import query_rows


def test_thresholds_and_their_encoding() -> None:
    assert [otep235.encode(otep235.threshold(p)) for p in (1.0, 0.5, 0.25, 0.1, 0.05)] == [
        "0", "8", "c", "e6666666666668", "f333333333333"]  # fmt: skip
    assert otep235.parse("ot=th:c;rv:0123456789abcd,vendor=x") == (0xC << 52, 0x0123456789ABCD)
    assert otep235.probability(otep235.parse("ot=th:8")[0] or 0) == 0.5
    assert otep235.parse("ot=th:xyz;rv:12,ot2=th:8") == (None, None)  # malformed, or another key


def test_the_threshold_is_written_into_the_ot_entry_and_other_entries_stay() -> None:
    assert otep235.with_threshold("", otep235.threshold(0.05)) == "ot=th:f333333333333"
    assert otep235.with_threshold("vendor=x,ot=rv:0123456789abcd;th:8", 0) == "ot=th:0;rv:0123456789abcd,vendor=x"
    assert otep235.with_threshold("ot=th:8,vendor=x", None) == "vendor=x"  # a rate limit erases th


def ids_passing(p: float, count: int, seed: int) -> list[int]:
    """Random trace ids whose randomness passes an upstream sampler at ``p`` (what reaches us)."""
    rng, out = random.Random(seed), []
    while len(out) < count:
        tid = rng.getrandbits(128)
        if keep_by_trace_id(tid.to_bytes(16, "big"), p):
            out.append(tid)
    return out


@pytest.mark.e2e
def test_kept_spans_carry_their_threshold_and_upstream_th_multiplies_the_adjusted_count(tmp_path: Path) -> None:
    rules = [{"name": "errors", "when": [{"status": "error"}], "keep": "100%"}, {"name": "default", "keep": "5%"}]
    config = {"sampling": {"quiet_period": "200ms", "decision_wait": "1s", "rules": rules}}
    upstream = TraceState([("ot", "th:" + otep235.encode(otep235.threshold(0.1))), ("vendor", "x")])
    with Collector(tmp_path, config).start() as c:
        sender = Sender("http", c, seed=235, delay_ms=100)
        plain = []
        for _ in range(400):  # our own 5%, nothing upstream
            with sender.tracer.start_as_current_span("op") as span:
                plain.append(format(span.get_span_context().trace_id, "032x"))
        sampled = ids_passing(0.1, 400, seed=1)  # upstream kept 10%; we keep 5% of what arrives
        for i, tid in enumerate(sampled):
            parent = SpanContext(tid, 0x1000 + i, is_remote=True, trace_flags=TraceFlags(1), trace_state=upstream)
            with sender.tracer.start_as_current_span("op", context=trace.set_span_in_context(NonRecordingSpan(parent))) as span:
                if i == 0:
                    span.set_status(Status(StatusCode.ERROR))
        sender.close()
        c.wait_for(lambda: sum(v for k, v in c.metrics().items() if k.startswith("tailsift_sampler_decisions_total"))
                   >= 800, 30, "every trace decided")  # fmt: skip
    rows = {tid: (state, rate) for tid, state, rate in query_rows(c.dsn, "SELECT TraceId, TraceState, SampleRate FROM otel_traces")}

    th5 = otep235.threshold(0.05)
    kept_plain = {t for t in plain if keep_by_trace_id(bytes.fromhex(t), 0.05)}
    assert {t for t in plain if t in rows} == kept_plain and kept_plain
    assert all(rows[t] == (f"ot=th:{otep235.encode(th5)}", 20.0) for t in kept_plain)

    hexes = [format(t, "032x") for t in sampled]
    error, rest = hexes[0], hexes[1:]
    th_both = otep235.threshold(0.1 * 0.05)
    expected = {t for t in rest if otep235.randomness(bytes.fromhex(t)) >= th_both}
    assert {t for t in rest if t in rows} == expected and expected
    print(f"\nupstream 10%, ours 5%: kept {len(expected)} of {len(rest)} arrivals; adjusted count {rows[min(expected)][1]:.6g}")
    for t in expected:
        state, rate = rows[t]
        assert state == f"ot=th:{otep235.encode(th_both)},vendor=x" and rate == pytest.approx(200, rel=1e-9)
    assert rows[error][1] == pytest.approx(10, rel=1e-9)  # errors: all kept, each standing for upstream's 10
    assert rows[error][0] == f"ot=th:{otep235.encode(otep235.threshold(0.1))},vendor=x"


def test_adaptive_keeps_carry_their_threshold_and_rate_limited_ones_none() -> None:
    from collector.rows import RowBuilder
    from processors.sampling.sampler import Decision, TraceSummary
    from tests.test_sampler import fragment, rid

    rows = RowBuilder()
    rows.inconsistent = frozenset({"capped"})
    f = fragment(rid(1), 1)
    summary = TraceSummary(f.trace_id)
    summary.absorb(f)
    adaptive = rows(Decision(summary, True, "flat", 2000 / 30, [f]))
    assert adaptive.spans[0][4] == f"ot=th:{otep235.encode(otep235.threshold(30 / 2000))}"
    assert rows(Decision(summary, True, "capped", 3.0, [f])).spans[0][4] == ""
