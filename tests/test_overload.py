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


def test_huge_rootless_spans_are_refused_before_memory_runs_out(tmp_path: Path) -> None:
    """512 KiB spans whose roots never arrive, at full rate for 30 s, against a 1 GiB memory
    limit: clients get 429 with Retry-After, RSS stays under the limit plus the documented
    constant, and every acknowledged span is stored."""
    import os
    import threading
    import time

    import requests
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from tests.support.storage import span_rows

    limit = 1024 * 2**20
    config = {"memory_limiter": {"limit": "1GiB"}, "storage": {"clickhouse": {"ttl_days": 0}},
              "sampling": {"rules": [{"name": "errors", "when": [{"status": "error"}], "keep": "100%"},
                                     {"name": "default", "keep": "1%"}]}}  # fmt: skip
    c = Collector(tmp_path, config).start()
    acked: set[str] = set()
    answers: dict[int, int] = {}
    retry_after: set[str] = set()
    stop = threading.Event()
    blob = "m" * (512 * 1024)

    def send() -> None:
        session = requests.Session()
        while not stop.is_set():
            req = ExportTraceServiceRequest()
            spans = req.resource_spans.add().scope_spans.add().spans
            now = time.time_ns()
            ids = [os.urandom(16) for _ in range(8)]
            for trace_id in ids:  # a child span (its root never comes), with an error: always kept
                s = spans.add(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=os.urandom(8), name="chunk",
                              start_time_unix_nano=now, end_time_unix_nano=now + 1000)  # fmt: skip
                s.status.code = 2  # type: ignore[assignment]
                s.attributes.add(key="payload").value.string_value = blob
            try:
                resp = session.post(c.http_url, data=req.SerializeToString(),
                                    headers={"Content-Type": "application/x-protobuf"}, timeout=60)  # fmt: skip
            except requests.RequestException:
                continue
            answers[resp.status_code] = answers.get(resp.status_code, 0) + 1
            if resp.status_code == 200:
                acked.update(t.hex() for t in ids)
            elif resp.status_code == 429:
                retry_after.add(resp.headers.get("Retry-After", ""))
                time.sleep(0.2)

    threads = [threading.Thread(target=send, daemon=True) for _ in range(6)]
    peak = 0.0
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            peak = max(peak, rss_mb(c))
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(60)
        c.wait_for(lambda: c.metrics()["tailsift_storage_pending_rows"] == 0
                   and c.metrics()["tailsift_sampler_buffered_traces"] == 0, 120, "everything decided and stored")
    finally:
        stop.set()
        assert c.stop() == 0, c.log()
    print(f"\n512 KiB rootless spans for 30 s, 1 GiB limit: peak RSS {peak:.0f} MB; answers {answers}; "
          f"{len(acked)} acknowledged spans")  # fmt: skip
    assert answers.get(429, 0) > 0 and retry_after and "" not in retry_after, answers
    assert peak < limit / 2**20 + 256, f"peak RSS {peak:.0f} MB"
    stored = span_rows(c.dsn)
    missing = acked - set(stored)
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged spans not stored"
