"""The bench's send-to-queryable probes: they must measure the query path without loading it.

Each probe is one error trace, polled through the query API until it is served. Probes are
decided in the order they were sent, so only the oldest unserved one is polled; polling
every pending probe made ~15 trace lookups a second, and the engine's work for them showed
in the ack latency the bench was measuring."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.bench.target import Probes


class FakeApi:
    """OTLP/HTTP intake and query API in one: records the probes sent and the lookups made;
    a trace is served (200) once it is in ``served``."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.asked: list[str] = []
        self.served: set[str] = set()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                api.sent.append(request.resource_spans[0].scope_spans[0].spans[0].trace_id.hex())
                self._answer(200)

            def do_GET(self) -> None:  # noqa: N802
                trace_id = self.path.rsplit("/", 1)[-1]
                api.asked.append(trace_id)
                self._answer(200 if trace_id in api.served else 404)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    yield fake
    fake.server.shutdown()


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@contextmanager
def probing(api: FakeApi, timeout: float) -> Iterator[Probes]:
    """Probes sent to ``api`` every 0.1 s while the block runs; finished (waited for, then
    given up) after it, so ``lost`` is final."""
    probes = Probes(api.url + "/v1/traces", api.url, every=0.1, timeout=timeout)
    probes.start()
    try:
        yield probes
    finally:
        probes.stop_sending()
        probes.finish()


def test_only_the_oldest_unserved_probe_is_polled(api: FakeApi) -> None:
    with probing(api, timeout=2.0) as probes:
        _until(lambda: len(api.sent) >= 4)
        first = api.sent[0]
        assert set(api.asked) == {first}, "a younger probe was polled while the oldest was not served"
        api.served.update(api.sent[:2])
        _until(lambda: api.sent[2] in api.asked)
        # Served in order; the third is now the oldest unserved, and nothing younger was asked.
        assert set(api.asked) <= set(api.sent[:3])
        assert probes.latencies_ms and len(probes.latencies_ms) == 2
        pending = len(api.sent) - 2
    # Every probe the collector took is either served or given up at the timeout and counted.
    assert probes.lost >= pending and probes.lost == probes.accepted - len(probes.latencies_ms)


def test_an_unserved_probe_is_given_up_at_the_timeout_and_the_next_is_polled(api: FakeApi) -> None:
    with probing(api, timeout=0.5) as probes:
        _until(lambda: len(api.sent) >= 2)
        second = api.sent[1]
        api.served.add(second)
        _until(lambda: len(probes.latencies_ms) >= 1)  # after the first was given up
        assert second in api.asked
    assert probes.lost >= 1 and probes.lost == probes.accepted - len(probes.latencies_ms)
