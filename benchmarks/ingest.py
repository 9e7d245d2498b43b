"""Ingest benchmark: prebuilt OTLP/HTTP requests from several sender processes.

Starts its own collector (embedded chDB storage; the in-process queue, or Kafka with
``--kafka``), drives it for ``--duration`` seconds and prints spans/s accepted and carried
through sampling, ack latency percentiles, refused requests and the collector's peak RSS:

    python -m benchmarks.ingest --duration 10
    python -m benchmarks.ingest --duration 10 --no-redaction
    python -m benchmarks.ingest --duration 10 --secrets            # redaction has work to do
    python -m benchmarks.ingest --duration 10 --kafka 127.0.0.1:9092   # deploy/kafka/kafka.sh start

Figures depend on the machine; compare runs as ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.support.collector import Collector
from tests.support.kafka import kafka_queue

TRACES_PER_REQUEST = 128
SPANS = [("POST /chat", None), ("retrieve", 0), ("vector.search", 1), ("llm.chat", 0)]


SECRET = "mail ann@example.com, key sk-proj-Zx81mQ2vLr0aYbT7cNd4pEf6"


def build_request(seed: int, secrets: bool = False) -> bytes:
    """One request of LLM-shaped traces with fresh random ids: secret-free like most traffic,
    or with ``secrets`` an email and an API key in one span of 64."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "chat-api"
    ss = rs.scope_spans.add()
    now = time.time_ns()
    for _ in range(TRACES_PER_REQUEST):
        trace_id = os.urandom(16)
        ids = [os.urandom(8) for _ in SPANS]
        for i, (name, parent) in enumerate(SPANS):
            s = ss.spans.add(trace_id=trace_id, span_id=ids[i], name=name,
                             parent_span_id=ids[parent] if parent is not None else b"",
                             start_time_unix_nano=now, end_time_unix_nano=now + 50_000_000)  # fmt: skip
            s.attributes.add(key="gen_ai.request.model").value.string_value = "gpt-4o-mini"
            s.attributes.add(key="http.route").value.string_value = "/chat"
            if secrets and len(ss.spans) % 64 == 1:
                s.attributes.add(key="llm.prompt").value.string_value = SECRET
        if seed % 10 == 0:
            ss.spans[-1].status.code = 2
    return req.SerializeToString()


def sender(url: str, deadline: float, out: mp.Queue, secrets: bool) -> None:  # type: ignore[type-arg]
    bodies = [build_request(i, secrets) for i in range(32)]
    session = requests.Session()
    latencies, accepted, refused, i = [], 0, 0, 0
    while time.monotonic() < deadline:
        start = time.perf_counter()
        resp = session.post(url, data=bodies[i % len(bodies)], headers={"Content-Type": "application/x-protobuf"})
        latencies.append((time.perf_counter() - start) * 1000)
        if resp.status_code == 200:
            accepted += TRACES_PER_REQUEST * len(SPANS)
        else:
            refused += 1
        i += 1
    out.put((latencies, accepted, refused))


def accepted_total(results: list[tuple[list[float], int, int]]) -> int:
    return sum(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--no-redaction", action="store_true")
    parser.add_argument("--secrets", action="store_true", help="an email and an API key in 1 span of 64")
    parser.add_argument("--kafka", metavar="BOOTSTRAP", help="use the Kafka queue on this broker (a fresh topic)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="tailsift-bench-"))
    config = {"redaction": {"enabled": not args.no_redaction},
              "sampling": {"decision_wait": "2s", "quiet_period": "200ms"},
              **(kafka_queue(args.kafka) if args.kafka else {})}  # fmt: skip
    c = Collector(workdir, config).start()
    assert c.proc is not None
    proc = psutil.Process(c.proc.pid)
    peak = [0.0]
    stop = threading.Event()

    def watch() -> None:
        proc.cpu_percent(None)
        while not stop.wait(0.2):
            peak[0] = max(peak[0], proc.memory_info().rss / 2**20)

    threading.Thread(target=watch, daemon=True).start()
    before = c.metrics().get('tailsift_sampler_events_total{event="spans_received"}', 0.0)
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    deadline = time.monotonic() + args.duration
    started = time.monotonic()
    procs = [mp.Process(target=sender, args=(c.http_url, deadline, out, args.secrets)) for _ in range(args.senders)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - started
    cpu = proc.cpu_percent(None)
    spans_in = 'tailsift_sampler_events_total{event="spans_received"}'
    c.wait_for(lambda: c.metrics()[spans_in] - before >= accepted_total(results), 300, "the sampler to catch up")
    drained = time.monotonic() - started
    sampled = c.metrics()[spans_in] - before
    stop.set()
    latencies = sorted(x for r in results for x in r[0])
    accepted = sum(r[1] for r in results)
    refused = sum(r[2] for r in results)
    q = statistics.quantiles(latencies, n=100)
    queue = f"kafka {args.kafka}" if args.kafka else "in-process"
    traffic = "1 span in 64 with secrets" if args.secrets else "clean"
    print(f"queue: {queue}   redaction: {'off' if args.no_redaction else 'on'}   traffic: {traffic}   senders: {args.senders}   "
          f"duration: {elapsed:.1f}s")
    print(f"spans/s accepted:            {accepted / elapsed:,.0f}")
    print(f"spans/s through sampling:    {sampled / drained:,.0f}")
    print(f"ack latency ms p50/p95/p99:  {q[49]:.1f} / {q[94]:.1f} / {q[98]:.1f}")
    print(f"refused requests:            {refused}")
    print(f"collector CPU %:             {cpu:.0f}")
    print(f"collector peak RSS MB:       {peak[0]:.0f}")
    c.stop()


if __name__ == "__main__":
    main()
