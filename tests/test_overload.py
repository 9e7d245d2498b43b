"""Ten times more traces than the sampler may buffer: memory stays bounded, overflow is counted."""

from __future__ import annotations

from pathlib import Path

import psutil

from tests.support.collector import Collector
from tests.support.otel import Sender

MAX_TRACES = 400
SPANS_PER_TRACE = 10
PAYLOAD = 8192  # bytes of attribute per span: ~80 KB per trace, so growth dwarfs allocator noise


def send_traces(collector: Collector, count: int, tag: int) -> None:
    sender = Sender("http", collector, service="overload")
    blob = "y" * PAYLOAD
    for i in range(count):
        with sender.tracer.start_as_current_span("root") as root:
            root.set_attribute("blob", f"{tag}-{i}-{blob}")
            for j in range(SPANS_PER_TRACE - 1):
                with sender.tracer.start_as_current_span(f"child-{j}") as child:
                    child.set_attribute("blob", blob)
        if i % 200 == 199:
            sender.provider.force_flush(60_000)
    sender.close()


def drained(c: Collector, spans: int) -> bool:
    m = c.metrics()
    return m['tailsift_receiver_spans_total{outcome="accepted"}'] >= spans and m["tailsift_queue_bytes"] == 0


def rss_mb(collector: Collector) -> float:
    assert collector.proc is not None
    return float(psutil.Process(collector.proc.pid).memory_info().rss) / 2**20


def test_rss_stays_bounded_when_traces_overflow_the_buffer(tmp_path: Path) -> None:
    config = {"sampling": {
        "decision_wait": "10m", "quiet_period": "10m",  # nothing is decided by time: only bounds act
        "max_traces": MAX_TRACES, "max_buffered_spans": MAX_TRACES * SPANS_PER_TRACE,
        "rules": [{"name": "errors", "when": [{"status": "error"}], "keep": "100%"}, {"name": "default", "keep": "1%"}],
    }}  # fmt: skip
    c = Collector(tmp_path, config).start()
    try:
        send_traces(c, 2 * MAX_TRACES, tag=0)  # the buffer is full from here on
        c.wait_for(lambda: drained(c, 2 * MAX_TRACES * SPANS_PER_TRACE), 60, "first batch")
        baseline = rss_mb(c)
        send_traces(c, 8 * MAX_TRACES, tag=1)  # 10x the bound in total
        total_spans = 10 * MAX_TRACES * SPANS_PER_TRACE
        c.wait_for(lambda: drained(c, total_spans), 120, "all spans")
        after = rss_mb(c)
        m = c.metrics()
        assert m["tailsift_sampler_buffered_traces"] <= MAX_TRACES
        assert m["tailsift_sampler_buffered_spans"] <= MAX_TRACES * SPANS_PER_TRACE
        evicted = m['tailsift_sampler_events_total{event="decided_early_max_traces"}'] + m.get(
            'tailsift_sampler_events_total{event="decided_early_max_buffered_spans"}', 0)
        assert evicted >= 10 * MAX_TRACES - MAX_TRACES  # every trace beyond the bound was decided early
        # 8x the bound more was sent (~250 MB of span data); an unbounded buffer would grow by that much.
        unbounded_growth_mb = 8 * MAX_TRACES * SPANS_PER_TRACE * PAYLOAD / 2**20
        assert after - baseline < unbounded_growth_mb / 2, (baseline, after)
        print(f"\nRSS after 2x bound {baseline:.0f} MB, after 10x {after:.0f} MB "
              f"(unbounded would add ~{unbounded_growth_mb:.0f} MB); early decisions {evicted:.0f}")  # fmt: skip
    finally:
        assert c.stop() == 0, c.log()
