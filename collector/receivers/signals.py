"""OTLP metrics and logs: accepted, counted and dropped (``receivers.otlp.metrics`` / ``logs``).

tailsift stores traces. But an app instrumented with an OTel SDK or agent exports its
metrics and logs to the same endpoint too. Answered with 404 / UNIMPLEMENTED, every SDK
logs an export error at every interval, which buries the one line that matters in a
first run. So by default both are taken like traces (decoded, so a malformed body is
still a 400), counted in ``tailsift_receiver_signals_dropped_total{signal}`` (data points,
log records), and discarded. The start line says so. ``off`` serves neither, as before.
Nothing of their content is stored, queued or logged.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest, ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from collector.errors import InvalidRequest

Signal = Literal["metrics", "logs"]
SignalAction = Literal["drop", "off"]
SERVICES: dict[Signal, str] = {
    "metrics": "opentelemetry.proto.collector.metrics.v1.MetricsService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
}
_REQUESTS: dict[Signal, Any] = {"metrics": ExportMetricsServiceRequest, "logs": ExportLogsServiceRequest}
RESPONSES: dict[Signal, Any] = {"metrics": ExportMetricsServiceResponse, "logs": ExportLogsServiceResponse}


def _items(signal: Signal, request: Any) -> int:
    """Data points of a metrics request, log records of a logs request."""
    if signal == "logs":
        return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    total = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                total += len(getattr(metric, kind).data_points) if kind else 0
    return total


class DroppedSignals:
    """Counts what is dropped, per signal, in ``items`` and ``requests`` (read by /metrics)."""

    def __init__(self) -> None:
        self.items: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()

    def __call__(self, signal: Signal, body: bytes, as_json: bool) -> None:
        """Decode (a malformed body is the client's error, as for traces), count, drop."""
        request = _REQUESTS[signal]()
        try:
            if as_json:
                json_format.Parse(body, request, ignore_unknown_fields=True)
            else:
                request.ParseFromString(body)
        except (DecodeError, json_format.ParseError, ValueError, TypeError) as exc:
            raise InvalidRequest(f"malformed OTLP {signal} request: {exc}") from None
        self.items[signal] += _items(signal, request)
        self.requests[signal] += 1
