"""Every kind of bad input gets its protocol's code, and a valid export still works after."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import orjson
import pytest
import requests
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from collector.ingest import Ingest
from collector.queue import MemoryQueue
from collector.server_config import GrpcServerSettings, HttpServerSettings
from collector.receivers.grpc import GrpcReceiver
from collector.receivers.http import HttpReceiver
from tests.support.collector import Collector
from tests.support.otel import Sender, llm_trace

LIMIT = 64 * 1024
NOW = time.time_ns()  # storage has a TTL: spans from 1970 would expire at once
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def request_with(*spans: tuple[bytes, bytes, bytes], attr_size: int = 0) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    kv = rs.resource.attributes.add(key="service.name")
    kv.value.string_value = "bad-input-test"
    ss = rs.scope_spans.add()
    for trace_id, span_id, parent in spans:
        s = ss.spans.add(trace_id=trace_id, span_id=span_id, parent_span_id=parent, name="op",
                         start_time_unix_nano=NOW, end_time_unix_nano=NOW + 500_000_000)  # fmt: skip
        if attr_size:
            a = s.attributes.add(key="blob")
            a.value.string_value = "x" * attr_size
    return req


def valid_request(attr_size: int = 0) -> ExportTraceServiceRequest:
    return request_with((b"\x11" * 16, b"\x22" * 8, b""), attr_size=attr_size)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Collector]:
    config = {"receivers": {"otlp": {"max_request_size": LIMIT}},
              "sampling": {"decision_wait": "1s", "quiet_period": "100ms", "rules": [{"name": "all", "keep": 1.0}]}}  # fmt: skip
    c = Collector(tmp_path_factory.mktemp("bad"), config).start()
    yield c
    assert c.stop() == 0, c.log()


def post(c: Collector, body: bytes, content_type: str = "application/x-protobuf", **headers: str) -> requests.Response:
    return requests.post(c.http_url, data=body, headers={"Content-Type": content_type, **headers}, timeout=30)


def grpc_call(endpoint: str, body: bytes) -> bytes:
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        return call(body, timeout=10)  # type: ignore[no-any-return]


def assert_valid_export_still_works(c: Collector) -> None:
    for kind in ("grpc", "http"):
        sender = Sender(kind, c, service=f"after-{kind}")
        trace_id = llm_trace(sender.tracer)
        sender.close()
        c.wait_for(lambda: c.get(f"/api/traces/{trace_id}").status_code == 200, 30, f"{kind} export")


@pytest.mark.parametrize(
    ("body", "content_type", "headers", "status"),
    [
        (b"\x0a\xff\xff\xff\xff\x0f", "application/x-protobuf", {}, 400),
        (b'{"resourceSpans": [', "application/json", {}, 400),
        (b'["not", "an", "object"]', "application/json", {}, 400),
        (b'{"resourceSpans": {"a": 1}}', "application/json", {}, 400),
        (b"hello", "text/plain", {}, 415),
        (valid_request().SerializeToString(), "application/x-protobuf", {"Content-Encoding": "br"}, 415),
        (b"not gzip at all", "application/x-protobuf", {"Content-Encoding": "gzip"}, 400),
        (valid_request(LIMIT * 2).SerializeToString(), "application/x-protobuf", {}, 413),
        (gzip.compress(valid_request(LIMIT * 20).SerializeToString()), "application/x-protobuf",
         {"Content-Encoding": "gzip"}, 413),
    ],
    ids=["bad-protobuf", "bad-json", "json-array", "json-wrong-shape", "content-type", "encoding", "bad-gzip",
         "too-large", "gzip-bomb"],
)  # fmt: skip
def test_http_bad_input(collector: Collector, body: bytes, content_type: str, headers: dict[str, str], status: int) -> None:
    resp = post(collector, body, content_type, **headers)
    assert resp.status_code == status, resp.content
    assert collector.proc is not None and collector.proc.poll() is None


def test_gzip_body_is_small_before_decompression(collector: Collector) -> None:
    # the bomb above is well under the limit compressed: the 413 came from inflation
    assert len(gzip.compress(valid_request(LIMIT * 20).SerializeToString())) < LIMIT


def test_grpc_bad_input(collector: Collector) -> None:
    with pytest.raises(grpc.RpcError) as bad:
        grpc_call(collector.grpc_endpoint, b"\x0a\xff\xff\xff\xff\x0f")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as big:
        grpc_call(collector.grpc_endpoint, valid_request(LIMIT * 2).SerializeToString())
    assert big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_valid_export_still_works(collector)


def test_invalid_ids_are_rejected_through_partial_success(collector: Collector) -> None:
    good_trace = b"\x42" * 16
    req = request_with(
        (good_trace, b"\x01" * 8, b""),
        (good_trace, b"\x02" * 4, b""),  # short span id
        (bytes(16), b"\x03" * 8, b""),  # all-zero trace id
        (good_trace, b"\x04" * 8, b"\x05" * 3),  # bad parent id
    )
    reply = ExportTraceServiceResponse.FromString(grpc_call(collector.grpc_endpoint, req.SerializeToString()))
    assert reply.partial_success.rejected_spans == 3
    assert "span_id" in reply.partial_success.error_message
    doc = {"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "ab" * 16, "spanId": "cd" * 8, "name": "ok", "startTimeUnixNano": str(NOW), "endTimeUnixNano": str(NOW + 1000)},
        {"traceId": "zz" * 16, "spanId": "cd" * 8, "name": "bad hex"},
    ]}]}]}  # fmt: skip
    resp = post(collector, orjson.dumps(doc), "application/json")
    assert resp.status_code == 200
    assert int(resp.json()["partialSuccess"]["rejectedSpans"]) == 1
    collector.wait_for(lambda: collector.get("/api/traces/" + "ab" * 16).status_code == 200, 30, "json span")
    collector.wait_for(lambda: collector.get("/api/traces/" + good_trace.hex()).status_code == 200, 30, "valid span")
    stored = collector.get("/api/traces/" + good_trace.hex()).json()
    assert [s["span_id"] for s in stored["spans"]] == ["01" * 8]
    assert_valid_export_still_works(collector)


class LoopThread:
    """Real receivers and a real queue on an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_full_queue_pushes_back_with_retry_hints() -> None:
    """Nothing consumes this queue, so the second request finds it full."""
    size = len(valid_request(20_000).SerializeToString())
    loop = LoopThread()
    queue = MemoryQueue(max_bytes=int(size * 1.5), retry_after=3.0)
    ingest = Ingest(queue, redactor=None)
    grpc_rx = GrpcReceiver(GrpcServerSettings(endpoint="127.0.0.1:0"), ingest, LIMIT)
    http_rx = HttpReceiver(HttpServerSettings(endpoint="127.0.0.1:0"), ingest, LIMIT)
    try:
        loop.run(grpc_rx.start())
        loop.run(http_rx.start())
        body = valid_request(20_000).SerializeToString()
        grpc_call(f"127.0.0.1:{grpc_rx.port}", body)  # fills the queue
        with pytest.raises(grpc.RpcError) as full:
            grpc_call(f"127.0.0.1:{grpc_rx.port}", body)
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(full.value)  # type: ignore[arg-type]
        assert status is not None
        info = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(info) and info.retry_delay.seconds == 3
        resp = requests.post(f"http://127.0.0.1:{http_rx.port}/v1/traces", data=body,
                             headers={"Content-Type": "application/x-protobuf"}, timeout=10)  # fmt: skip
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
        assert ingest.stats["requests_refused"] == 2 and ingest.stats["requests_accepted"] == 1
        # what was accepted before is still there, whole
        batch = loop.run(queue.consume(100, 0.1))
        assert [f.span_count for f in batch] == [1]
        grpc_call(f"127.0.0.1:{grpc_rx.port}", body)  # room again: accepted
    finally:
        loop.run(grpc_rx.shutdown())
        loop.run(http_rx.shutdown())
        loop.close()


def test_absurd_timestamps_do_not_stall_storage(collector: Collector) -> None:
    """OTLP allows any uint64 timestamp; ClickHouse's DateTime ends in 2106: clamped to 2100, stored."""
    req = request_with((b"\x61" * 16, b"\x62" * 8, b""), (b"\x71" * 16, b"\x72" * 8, b""))
    span = req.resource_spans[0].scope_spans[0].spans[0]
    span.start_time_unix_nano = 2**64 - 1
    span.end_time_unix_nano = 2**64 - 1
    span.events.add(name="far future", time_unix_nano=2**64 - 2)
    grpc_call(collector.grpc_endpoint, req.SerializeToString())
    collector.wait_for(lambda: collector.get("/api/traces/" + "71" * 16).status_code == 200, 30, "normal span")
    odd = collector.get("/api/traces/" + "61" * 16).json()["spans"][0]
    assert odd["start_time_unix_nano"] == 4_102_444_800 * 1_000_000_000
    assert collector.metrics()["tailsift_storage_rows_rejected_total"] == 0
    assert_valid_export_still_works(collector)
