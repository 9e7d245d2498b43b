"""Idle and slowloris clients against a collector, while a real client keeps exporting.

    python -m benchmarks.slow_clients [--seconds 60] [--idle 1000] [--slowloris 200]

starts its own collector with an open-files limit of 1,024 (soft and hard, so it cannot
raise it) and the default limits (10 s to send a request head or finish a gRPC handshake,
connections capped at a quarter of the open-files limit), except a 10 s idle timeout
instead of 60 s so keep-alive closes show within a run; then, for ``--seconds``:

- ``--idle`` TCP connections that never send a byte (half to OTLP/HTTP, a fifth to
  OTLP/gRPC, the rest to the query API), each reopened as soon as the server closes it;
- ``--slowloris`` connections that send a request head one header line a second, never
  finishing it (three quarters to OTLP/HTTP, the rest to the query API), reopened likewise;
- keep-alive clients that make one request and then stay idle;

all from a separate process, while this one exports one error span every 100 ms with the
official SDK exporters (HTTP and gRPC, alternately) and polls /healthz. It prints the
exporters' latency (p50/p99/max), failures, and how long the server took to close each
kind of misbehaving connection. tests/test_slow_clients.py runs the same harness.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HEADER_TIMEOUT, IDLE_TIMEOUT = 10.0, 10.0
"""The default read_header_timeout (and gRPC handshake_timeout); the idle timeout set here."""
CONFIG: dict[str, Any] = {
    "receivers": {"otlp": {"http": {"idle_timeout": "10s"},
                           "grpc": {"keepalive": {"server_parameters": {"max_connection_idle": "10s"}}}}},
    "query": {"idle_timeout": "10s"},
}  # fmt: skip


async def _hold(port: int, stop_at: float, closed: list[float], head: bytes | None, first: bytes | None) -> None:
    """One misbehaving client, reopened whenever the server closes it: sends ``first`` (a
    whole request) and waits, or dribbles ``head`` a line a second, or sends nothing."""
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.2)
            continue
        opened = time.monotonic()
        try:
            if first is not None:
                writer.write(first)
                await reader.readuntil(b"\r\n\r\n")
                opened = time.monotonic()  # idle from the answer on
            elif head is not None:
                writer.write(head)
            while time.monotonic() < stop_at:
                if head is not None and first is None:
                    writer.write(b"X-Slow: 1\r\n")
                try:
                    data = await asyncio.wait_for(reader.read(65536), 1.0)
                except TimeoutError:
                    continue
                if not data or head is not None:
                    closed.append(time.monotonic() - opened)
                    break
        except (OSError, asyncio.IncompleteReadError):
            closed.append(time.monotonic() - opened)
        finally:
            writer.close()


async def attack(ports: dict[str, int], seconds: float, idle: int, slowloris: int, keepalive: int) -> dict[str, Any]:
    stop_at = time.monotonic() + seconds
    closed: dict[str, list[float]] = {"idle": [], "slowloris": [], "keepalive": []}
    head = b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    tasks = []
    for i in range(idle):
        port = ports["http"] if i % 10 < 5 else ports["grpc"] if i % 10 < 7 else ports["query"]
        tasks.append(_hold(port, stop_at, closed["idle"], None, None))
    for i in range(slowloris):
        tasks.append(_hold(ports["http"] if i % 4 < 3 else ports["query"], stop_at, closed["slowloris"], head, None))
    for _ in range(keepalive):
        tasks.append(_hold(ports["query"], stop_at, closed["keepalive"], None, request))
    await asyncio.gather(*tasks)
    return closed


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "p50": statistics.median(ordered), "p99": ordered[int(0.99 * (len(ordered) - 1))],
            "max": ordered[-1]}  # fmt: skip


def run(collector: Any, seconds: float, idle: int = 1000, slowloris: int = 200, keepalive: int = 20) -> dict[str, Any]:
    """Attack ``collector`` (started, plain text, no auth) for ``seconds`` while exporting."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    from opentelemetry.sdk.trace.export import SpanExportResult
    import requests

    from tests.support.otel import error_span

    ports = {"http": collector.http_port, "grpc": collector.grpc_port, "query": collector.api_port}
    attacker = subprocess.Popen([sys.executable, "-m", "benchmarks.slow_clients", "--attack", json.dumps(ports),
                                 "--seconds", str(seconds), "--idle", str(idle), "--slowloris", str(slowloris),
                                 "--keepalive", str(keepalive)], stdout=subprocess.PIPE,
                                cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    exporters = [HttpExporter(endpoint=collector.http_url, timeout=10),
                 GrpcExporter(endpoint=collector.grpc_endpoint, insecure=True, timeout=10)]  # fmt: skip
    spans = [error_span("slow-clients") for _ in range(int(seconds * 12) + 20)]
    latency: list[float] = []
    health: list[float] = []
    failures, sent = 0, []
    time.sleep(2.0)  # let the attack reach full strength
    end = time.monotonic() + seconds - 4.0
    while time.monotonic() < end:
        span, trace_id = spans.pop()
        started = time.perf_counter()
        result = exporters[len(sent) % 2].export([span])
        latency.append(time.perf_counter() - started)
        if result is SpanExportResult.SUCCESS:
            sent.append(trace_id)
        else:
            failures += 1
        started = time.perf_counter()
        ok = requests.get(collector.api + "/healthz", timeout=10).status_code == 200
        health.append(time.perf_counter() - started if ok else float("inf"))
        time.sleep(0.1)
    out, _ = attacker.communicate(timeout=seconds + 60)
    closed = json.loads(out)
    return {"exports": _summary(latency), "export_failures": failures, "healthz": _summary(health),
            "closed_after": {kind: _summary(v) for kind, v in closed.items()}, "sent": sent}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--slowloris", type=int, default=200)
    parser.add_argument("--keepalive", type=int, default=20)
    parser.add_argument("--attack", help=argparse.SUPPRESS)  # the attacking subprocess
    args = parser.parse_args()
    _raise_nofile()
    if args.attack:
        closed = asyncio.run(attack(json.loads(args.attack), args.seconds, args.idle, args.slowloris, args.keepalive))
        print(json.dumps(closed))
        return 0
    from collector.bench.target import OwnCollector

    collector = OwnCollector(CONFIG, Path(tempfile.mkdtemp(prefix="tailsift-slow-")))
    collector.nofile = 1024
    collector.start()
    try:
        report = run(collector, args.seconds, args.idle, args.slowloris, args.keepalive)
    finally:
        collector.stop()
    report.pop("sent")
    ms = {k: round(v * 1000, 1) for k, v in report["exports"].items() if k != "n"}
    print(f"exports: {report['exports']['n']} ({report['export_failures']} failed), latency ms {ms}")
    print(f"/healthz ms: { {k: round(v * 1000, 1) for k, v in report['healthz'].items() if k != 'n'} }")
    for kind, s in report["closed_after"].items():
        print(f"{kind} connections closed by the server: {s.get('n', 0)}, seconds after opening/idling: "
              f"{ {k: round(v, 2) for k, v in s.items() if k != 'n'} }")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
